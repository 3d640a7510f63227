"""hydra/launcher=local and mlp_lab.resume, with real processes and real signals: a job's death is
that job's alone, and one command finishes what was killed."""

import contextlib
import fcntl
import functools
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import torch
from commands import Command, run_module
from conftest import fast_overrides
from omegaconf import OmegaConf

from mlp_lab import resume, runs


def start_sweep(root: Path, sweep: Path, *args: str, **options) -> Command:
    sweep_args = ["-m", "hydra/launcher=local", f"hydra.sweep.dir={sweep}"]
    return Command("mlp_lab.train", *sweep_args, *fast_overrides(root, *args), **options)


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False)["state_dict"]


def test_a_killed_job_is_its_own_and_resume_finishes_it_as_if_never_killed(
    synthetic_root, tmp_path, capsys
):
    sweep = tmp_path / "sweep"
    # Each seed twice: job 1, killed, has job 0 as its uninterrupted twin. Batches of 16 make an
    # epoch long enough to kill job 1 inside its second.
    seeds = "seed=0,0,1,1,2,2"
    args = (seeds, "hydra.launcher.n_jobs=2", "trainer.max_epochs=3", "data.batch_size=16")
    process = start_sweep(synthetic_root, sweep, *args, "model.dropout=0.2")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        record = runs.earlier_record(sweep / "1")
        if len(record.get("history", [])) >= 1:
            pid = record["attempts"][-1]["pid"]
            assert pid != process.pid  # a process of its own
            time.sleep(0.1)
            subprocess.run(["kill", "-KILL", str(pid)], check=True)
            break
        time.sleep(0.01)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 1, err[-3000:]
    assert err.strip().splitlines()[-1] == (
        f"error: 6 runs: 5 completed, 1 killed (resume with: python -m mlp_lab.resume {sweep})"
    )
    assert "Traceback" not in out + err
    killed = runs.read_record(sweep / "1")
    assert killed["status"] == "killed", killed
    assert killed["error"].startswith("killed by SIGKILL in epoch ")
    assert runs.describe(sweep / "1", killed).endswith(
        f"resume with `python -m mlp_lab.train resume={sweep / '1'}`"
    )
    others = [runs.read_record(sweep / str(n)) for n in (0, 2, 3, 4, 5)]
    assert [r["status"] for r in others] == ["completed"] * 5
    assert [r["config"]["seed"] for r in others] == [0, 1, 1, 2, 2]

    resumed = run_module("mlp_lab.resume", str(sweep))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.strip().splitlines()[-1] == (
        f"1 run: 1 completed (report: python -m mlp_lab.report {sweep})"
    )
    record = runs.read_record(sweep / "1")
    assert record["status"] == "completed"
    assert [e["epoch"] for e in record["history"]] == [1, 2, 3]
    a, b = weights(sweep / "1"), weights(sweep / "0")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Its TensorBoard log goes on in the folder that names it by what the sweep varies.
    logs = {p.parent.relative_to(sweep / "1") for p in (sweep / "1").rglob("events.out.*")}
    assert logs == {Path("tensorboard/seed=0")}

    assert resume.main([str(sweep)]) == 0
    assert capsys.readouterr().out.strip() == f"nothing to resume under {sweep}"


def enter_group(group: Path) -> None:
    (group / "cgroup.procs").write_text(str(os.getpid()))


def memory_cgroup(limit_bytes: int) -> Path | None:
    """A new memory cgroup (v1 or v2) below this process's, limited to `limit_bytes`; None when
    this machine does not let the test make one."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            base, limit = Path("/sys/fs/cgroup", path.lstrip("/")), "memory.max"
        elif "memory" in controllers.split(","):
            base, limit = Path("/sys/fs/cgroup/memory", path.lstrip("/")), "memory.limit_in_bytes"
        else:
            continue
        group = base / f"mlp-lab-test-{uuid.uuid4().hex[:8]}"
        try:
            group.mkdir()
            (group / limit).write_text(str(limit_bytes))
            return group
        except OSError:
            with contextlib.suppress(OSError):
                group.rmdir()
    return None


def test_a_job_the_kernel_kills_for_memory_says_so_and_the_others_complete(
    synthetic_root, tmp_path
):
    # The sweep in a cgroup of 1.5 GB: job 1's 20000-wide layers (1.6 GB of weights) exceed it
    # while they are drawn, and the kernel's out-of-memory killer takes the largest process.
    group = memory_cgroup(1536 * 2**20)
    if group is None:
        pytest.skip("no memory cgroup can be made here (needs root and a cgroup filesystem)")
    sweep = tmp_path / "sweep"

    try:
        process = start_sweep(
            synthetic_root,
            sweep,
            "model.hidden=[32],[20000,20000],[32]",
            "hydra.launcher.n_jobs=2",
            "trainer.max_epochs=1",
            setup=functools.partial(enter_group, group),
        )
        out, err = process.communicate(timeout=300)
    finally:
        for _ in range(50):  # the cgroup can go once its last process has
            with contextlib.suppress(OSError):
                group.rmdir()
                break
            time.sleep(0.1)
    assert process.returncode == 1, err[-3000:]
    assert err.strip().splitlines()[-1] == (
        f"error: 3 runs: 2 completed, 1 killed (resume with: python -m mlp_lab.resume {sweep})"
    )
    killed = runs.read_record(sweep / "1")
    assert killed["status"] == "killed"
    assert killed["error"].startswith("out of memory (the kernel's out-of-memory killer)")
    assert [runs.read_record(sweep / str(n))["status"] for n in (0, 2)] == ["completed"] * 2


def test_sigterm_stops_the_running_jobs_and_starts_no_more(synthetic_root, tmp_path):
    sweep = tmp_path / "sweep"
    args = ("seed=0,1,2,3", "hydra.launcher.n_jobs=2", "trainer.max_epochs=50")
    process = start_sweep(synthetic_root, sweep, *args, "data.batch_size=16")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all(
        runs.earlier_record(sweep / str(n)).get("history") for n in (0, 1)
    ):
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 1, err[-3000:]
    assert err.strip().splitlines()[-1] == (
        "error: 4 runs: 2 interrupted, 2 not started "
        f"(resume with: python -m mlp_lab.resume {sweep})"
    )
    assert [runs.read_record(sweep / str(n))["status"] for n in (0, 1)] == ["interrupted"] * 2
    assert not (sweep / "2").exists() and "Traceback" not in out + err


def test_a_run_another_resume_command_holds_is_left_alone(tmp_path, capsys):
    run = tmp_path / "sweep" / "0"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("trainer: {}\ntrial: {number: null}\n")
    runs.write_record(run, {"status": "killed", "error": "killed by SIGKILL in epoch 2"})
    with (run / ".resume.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as the other command's lock on it
        assert resume.main([str(tmp_path / "sweep")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"left alone: {run}: being resumed by another command",
        f"nothing to resume under {tmp_path / 'sweep'}",
    ]


def spans_on(records: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """Each device's (start, end) spans of the jobs it was given, from their records."""
    spans: dict[str, list[tuple[float, float]]] = {}
    for record in records:
        part = record["attempts"][-1]
        end = part.get("ended") or part["started"] + part["wall_time_s"]
        spans.setdefault(part["cuda_visible_devices"], []).append((part["started"], end))
    return spans


def overlapping(spans: list[tuple[float, float]]) -> int:
    """The most spans alive at one of their starts."""
    return max(sum(s <= start < e for s, e in spans) for start, _ in spans)


def test_a_device_pool_gives_each_job_its_gpu_two_at_a_time(synthetic_root, tmp_path):
    sweep = tmp_path / "sweep"
    pool = ("hydra.launcher.devices=[0,1]", "hydra.launcher.jobs_per_device=2")
    args = ("seed=0,1,2,3", *pool, "trainer.accelerator=cpu", "trainer.max_epochs=2")
    result = start_sweep(synthetic_root, sweep, *args).communicate(timeout=300)
    records = [runs.read_record(sweep / str(n)) for n in range(4)]
    assert sorted(r["attempts"][-1]["cuda_visible_devices"] for r in records) == [
        "0",
        "0",
        "1",
        "1",
    ]
    assert all(overlapping(s) <= 2 for s in spans_on(records).values())
    # What each ran on: the CPU, its cores shared by the four jobs.
    assert {r["attempts"][-1]["device"] for r in records} == {"cpu (1 threads)"}
    assert result[0].strip().splitlines()[-1] == (
        f"4 runs on 2 GPUs, 2 at a time on each: 4 completed "
        f"(report: python -m mlp_lab.report {sweep})"
    )


def test_a_killed_jobs_gpu_goes_to_the_next_job(synthetic_root, tmp_path):
    sweep = tmp_path / "sweep"
    # One job per GPU: job 2 waits for a free one, which job 0's death gives it.
    pool = ("hydra.launcher.devices=[0,1]", "hydra.launcher.jobs_per_device=1")
    args = ("seed=0,1,2", *pool, "trainer.max_epochs=4", "data.batch_size=16")
    process = start_sweep(synthetic_root, sweep, *args)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        record = runs.earlier_record(sweep / "0")
        if len(record.get("history", [])) >= 1:
            assert not (sweep / "2").exists()  # waiting: both GPUs are taken
            killed_at = time.time()
            os.kill(record["attempts"][-1]["pid"], signal.SIGKILL)
            break
        time.sleep(0.01)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 1, err[-3000:]
    killed, other, next_job = (runs.read_record(sweep / str(n)) for n in range(3))
    assert (killed["status"], other["status"], next_job["status"]) == (
        "killed", "completed", "completed",
    )  # fmt: skip
    given = [r["attempts"][-1]["cuda_visible_devices"] for r in (killed, other, next_job)]
    assert given[0] != given[1] and given[2] == given[0]
    # Its record ends when its launcher saw it die, before the next job began on its GPU.
    assert killed_at <= killed["attempts"][-1]["ended"] <= next_job["attempts"][-1]["started"]
    assert all(overlapping(s) == 1 for s in spans_on([killed, other, next_job]).values())


def test_the_pool_counts_gpus_without_initialising_cuda(monkeypatch):
    # No GPU here: a machine with two is faked where the launcher counts them (NVML's count).
    from mlp_lab import cluster
    from mlp_lab.sweeps import local as launcher

    monkeypatch.setattr(cluster, "cuda_gpus", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert launcher.pool_devices("auto") == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert launcher.pool_devices("auto") == ["3", "5"]
    pool = launcher.DevicePool(launcher.pool_devices("auto"), per_device=2)

    def job():
        return os.environ["CUDA_VISIBLE_DEVICES"], torch.cuda.is_initialized()

    endings = launcher.run_jobs([job] * 4, n_jobs=4, threads=1, pool=pool, wanted=[1] * 4)
    assert sorted(e.result for e in endings) == [
        ("3", False),
        ("3", False),
        ("5", False),
        ("5", False),
    ]
    assert not torch.cuda.is_initialized()  # nor in the sweep's own process
    assert pool.load == {"3": 0, "5": 0}


def test_without_gpus_the_launcher_runs_as_before(monkeypatch):
    from mlp_lab import cluster
    from mlp_lab.sweeps import local as launcher

    monkeypatch.setattr(cluster, "cuda_gpus", lambda: 0)
    assert launcher.pool_devices("auto") == []
    local = launcher.LocalLauncher()  # devices=auto, jobs_per_device=4
    jobs = [OmegaConf.create({"trainer": {"accelerator": "auto", "devices": 1}})] * 2
    assert local._pool(jobs) == (None, [0, 0])  # no pool: the cores shared as before
    # With GPUs, a job takes its trainer.devices of them; a CPU job none, unless given a list.
    monkeypatch.setattr(cluster, "cuda_gpus", lambda: 2)
    cpu = OmegaConf.create({"trainer": {"accelerator": "cpu", "devices": 1}})
    two = OmegaConf.create({"trainer": {"accelerator": "gpu", "devices": 2}})
    pool, wanted = local._pool([cpu, two])
    assert (pool.devices, pool.per_device, wanted) == (["0", "1"], 4, [0, 2])
    assert launcher.LocalLauncher(devices=[0, 1])._pool([cpu])[1] == [1]
    with pytest.raises(launcher.PoolTooSmall, match="trainer.devices=2 GPUs, the sweep has 1"):
        launcher.LocalLauncher(devices=[0])._pool([two])
