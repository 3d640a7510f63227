"""Sweeps, searches and DDP through a real SLURM cluster: one node, this machine, started here."""

import re
import subprocess
import time
import uuid

import optuna
import pytest
from commands import Command, run_module
from conftest import assert_checkpoint_scores, fast_overrides, quiet
from slurm_cluster import SlurmCluster, unavailable

from mlp_lab import directories, messages, runs
from mlp_lab.trial import open_storage

State = optuna.trial.TrialState
POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
# No GPUs, one core per task, no memory request: what this one-node cluster has.
SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=null",
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    slurm = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    slurm.start()
    yield slurm
    slurm.stop()


def submit(cluster, *args, wait=True):
    """`python -m mlp_lab.train` on this machine, its jobs sent to the cluster."""
    command = Command("mlp_lab.train", *args, *SLURM, env=cluster.env)  # -m first
    if not wait:
        return command
    out, err = command.communicate(timeout=600)
    return subprocess.CompletedProcess(command.args, command.returncode, out, err)


def test_a_sweep_runs_each_job_through_slurm_and_records_its_job_id(
    cluster, synthetic_root, tmp_path
):
    sweep = tmp_path / "sweep"
    sweep_args = ["-m", "seed=0,1", f"hydra.sweep.dir={sweep}"]
    result = submit(cluster, *sweep_args, *fast_overrides(synthetic_root, "trainer.max_epochs=1"))
    assert result.returncode == 0, result.stderr[-3000:]
    records = [runs.read_record(sweep / str(n)) for n in range(2)]
    assert [r["status"] for r in records] == ["completed", "completed"]
    jobs = [r["attempts"][-1]["slurm_job"] for r in records]
    # One job array, one task per run: <array job>_<task>, as submitit's folders name them.
    assert re.fullmatch(r"\d+_0", jobs[0]) and jobs[1] == jobs[0][:-1] + "1"
    assert (sweep / ".submitit" / jobs[0].split("_")[0]).is_dir()
    # This cluster keeps no accounting, so each of submitit's polls of sacct fails: said once.
    output = result.stdout + result.stderr
    assert "Bypassing sacct error" not in output and output.count("sacct fails here") == 1


@pytest.mark.parametrize("storage", ["postgresql", "journal"])
def test_a_search_whose_workers_are_a_job_array_shares_one_study(
    storage, cluster, synthetic_root, tmp_path
):
    if storage == "postgresql":
        url = POSTGRES
        try:
            open_storage(url)
        except SystemExit as err:
            pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is not reachable: {err}")
    else:
        url = f"journal:{tmp_path}/search.log"  # a file on the filesystem the nodes share
    name = f"slurm-{uuid.uuid4().hex[:8]}"
    search = [
        "hparams_search=optuna",
        f"hydra.sweeper.storage={url}",
        f"hydra.sweeper.study_name={name}",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.pruner.name=halving",
        "hydra.sweeper.pruner.warmup_epochs=1",
        # Nothing left to search: the learning rate, fixed, makes a trial good or hopeless.
        "optimizer.weight_decay=0",
        "model.dropout=0",
        "model.hidden=[32]",
        "model.batch_norm=false",
    ]
    fast = fast_overrides(synthetic_root, "trainer.max_epochs=3", "model.init_std=null")
    try:
        # Four good trials, then two hopeless ones: each array's two workers share the trials,
        # and the second array's are pruned after one epoch by the values the first's reported
        # (hopeless trials alike tie with each other, and a tie is never pruned).
        for n, (lr, trials) in enumerate([("0.1", 4), ("0.0001", 2)]):
            this = [f"optimizer.lr={lr}", f"hydra.sweeper.n_trials={trials}"]
            result = submit(cluster, *search, *this, f"hydra.sweep.dir={tmp_path}/sweep{n}", *fast)
            assert result.returncode == 0, result.stderr[-3000:]
        study = optuna.load_study(study_name=name, storage=open_storage(url))
        done = study.trials
        assert [t.number for t in done] == list(range(6))  # none lost, none run twice
        assert [t.state for t in done] == [State.COMPLETE] * 4 + [State.PRUNED] * 2
        assert [len(t.intermediate_values) for t in done] == [3, 3, 3, 3, 1, 1]
        for n, numbers in ((0, range(4)), (1, range(4, 6))):
            records = [runs.read_record(tmp_path / f"sweep{n}" / str(k)) for k in numbers]
            assert [r["config"]["trial"]["number"] for r in records] == list(numbers)
            assert all(r["config"]["num_threads"] == 1 for r in records)  # cpus_per_task
            # The tasks of one job array ran the trials; of the first four, both tasks.
            tasks = {r["attempts"][-1]["slurm_job"] for r in records}
            (array,) = {t.split("_")[0] for t in tasks}
            assert tasks <= {f"{array}_0", f"{array}_1"}, tasks
            assert n == 1 or len(tasks) == 2, tasks
    finally:
        if storage == "postgresql":
            optuna.delete_study(study_name=name, storage=open_storage(url))


@pytest.mark.real_data
def test_ddp_whose_two_processes_slurm_starts_logs_the_val_acc_of_its_checkpoint(
    cluster, real_data_root, tmp_path
):
    sweep = tmp_path / "sweep"
    ddp = ["trainer=ddp", "trainer.devices=2", "hydra.launcher.tasks_per_node=2"]
    run_args = [*quiet(real_data_root, "trainer.max_epochs=1"), f"hydra.sweep.dir={sweep}"]
    result = submit(cluster, "-m", *ddp, *run_args)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = directories.find_runs(sweep)
    record = runs.read_record(run)  # one run, written by rank 0 alone
    assert record["status"] == "completed" and len(record["attempts"]) == 1
    # Lightning took each process's rank and the world size from SLURM's environment; each task
    # trained with the one CPU SLURM gave it.
    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in logs and "GLOBAL_RANK: 1, MEMBER: 2/2" in logs
    assert logs.count("parameters; 1 torch threads") == 2

    assert_checkpoint_scores(run, record, real_data_root)


def _wait_for_epochs(run_dir, n, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = runs.earlier_record(run_dir)
        if len(record.get("history", [])) >= n:
            return record
        time.sleep(0.2)
    raise AssertionError(f"{run_dir} did not reach {n} epochs in {timeout} s")


@pytest.mark.parametrize("stop", ["scancel", "time limit"])
def test_a_job_slurm_stops_says_so_and_resumes_while_the_sweep_goes_on(
    stop, cluster, synthetic_root, tmp_path
):
    sweep = tmp_path / "sweep"
    # Job 1 trains far longer than it is let; job 0 is quick.
    slow = ["data.batch_size=4", "trainer.max_epochs=2,500"]
    # SLURM may send submitit's warning up to a minute before it is due: 30 s before a 2-minute
    # limit leaves the run time to start.
    limit = ["hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=30"]
    sweep_args = ["-m", f"hydra.sweep.dir={sweep}", *fast_overrides(synthetic_root, *slow)]
    process = submit(cluster, *sweep_args, *(limit if stop == "time limit" else []), wait=False)
    job = _wait_for_epochs(sweep / "1", 1)["attempts"][-1]["slurm_job"]
    if stop == "scancel":
        subprocess.run(["scancel", job], env=cluster.env, check=True)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 1, err[-3000:]  # a job did not complete; the sweep says so
    assert runs.read_record(sweep / "0")["status"] == "completed"
    stopped = runs.read_record(sweep / "1")
    assert stopped["status"] == "interrupted", stopped.get("error")
    expected = "reached its time limit" if stop == "time limit" else f"SLURM stopped job {job}"
    assert expected in stopped["error"] and "resume=" in stopped["error"]
    done = len(stopped["history"])
    assert done >= 1 and (sweep / "1/checkpoints/last.ckpt").is_file()

    resumed = run_module("mlp_lab.train", f"resume={sweep / '1'}", f"trainer.max_epochs={done + 1}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    record = runs.read_record(sweep / "1")
    assert record["status"] == "completed"
    assert [e["epoch"] for e in record["history"]] == list(range(1, done + 2))


def test_a_job_killed_outright_without_accounting_is_marked_and_the_sweep_ends(
    cluster, synthetic_root, tmp_path
):
    # This cluster keeps no accounting (no sacct): the kill is seen from squeue and the heartbeat.
    sweep = tmp_path / "sweep"
    slow = ["data.batch_size=4", "trainer.max_epochs=1,500"]
    sweep_args = ["-m", f"hydra.sweep.dir={sweep}", *fast_overrides(synthetic_root, *slow)]
    process = submit(cluster, *sweep_args, wait=False)
    pid = _wait_for_epochs(sweep / "1", 1)["attempts"][-1]["pid"]
    subprocess.run(["kill", "-KILL", str(pid)], check=True)
    killed_at = time.monotonic()
    _, err = process.communicate(timeout=300)
    # Seen from squeue and the run's process, without waiting out the grace for a late result.
    assert time.monotonic() - killed_at < 25
    assert process.returncode == 1, err[-3000:]
    assert err.strip().splitlines()[-1] == (
        f"error: 2 runs: 1 completed, 1 killed (resume with: python -m mlp_lab.resume {sweep})"
    )
    assert "Traceback" not in err
    killed = runs.read_record(sweep / "1")
    assert killed["status"] == "killed"
    assert "ended without a result (SIGKILL, out of memory or a lost node)" in killed["error"]
    assert runs.read_record(sweep / "0")["status"] == "completed"


def test_squeue_says_so_of_a_job_id_it_does_not_know(cluster):
    # What the SLURM launcher reads as "this job left the queue long ago".
    asked = ["squeue", "--noheader", "--jobs", "987654321", "--format", "%i"]
    answer = subprocess.run(asked, env=cluster.env, capture_output=True, text=True)
    assert answer.returncode != 0 and messages.squeue_forgot(answer.stderr), answer.stderr
