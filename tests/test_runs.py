import contextlib
import json
import os
import random
import signal
import socket
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import torch
from commands import Command, run_module
from conftest import classifier, datamodule, fast_overrides, quiet_trainer

from mlp_lab import checkpoints, directories, runs
from mlp_lab.checkpoints import load_model
from mlp_lab.datasets import PROJECT_DIR
from mlp_lab.module import MLPClassifier
from mlp_lab.report.studies import find_studies
from mlp_lab.runs import RunError, Status


def test_a_checkpoint_that_is_not_mlp_labs_is_refused(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(RunError, match="not an mlp_lab checkpoint"):
        load_model(path)
    (tmp_path / "text.ckpt").write_text("hello")
    with pytest.raises(RunError, match="is not a checkpoint"):
        load_model(tmp_path / "text.ckpt")


def test_an_unfinished_run_directory_is_refused_with_what_to_do(tmp_path):
    record = {"status": "interrupted", "history": [], "error": "interrupted in epoch 3"}
    (tmp_path / "metrics.json").write_text(json.dumps(record))
    with pytest.raises(RunError, match="not a finished run \\(status interrupted\\)"):
        load_model(tmp_path)


def test_a_saved_model_loads_back_in_eval_mode_with_its_settings(tmp_path):
    torch.manual_seed(0)
    module = classifier("model.hidden=[16]", "model.dropout=0.5")
    trainer = quiet_trainer(max_epochs=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    loaded = load_model(tmp_path / "model.ckpt")
    assert not loaded.training and loaded.hparams.model == module.hparams.model
    x = torch.rand(3, 784)
    torch.testing.assert_close(loaded(x), module.eval()(x))


def test_record_round_trips_and_a_corrupt_one_is_named(tmp_path):
    record = {"format": runs.FORMAT, "status": "running", "history": [{"epoch": 1}]}
    runs.write_record(tmp_path, record)
    assert runs.read_record(tmp_path) == record
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary left behind
    (tmp_path / "metrics.json").write_text('{"status": ')
    with pytest.raises(RunError, match=r"^corrupt metrics.json \("):
        runs.read_record(tmp_path)
    with pytest.raises(RunError, match="^no metrics.json: crashed or still running"):
        runs.read_record(tmp_path / "elsewhere")


def write_records(run_dir: Path) -> None:
    for i in range(100_000):
        runs.write_record(run_dir, {"n": i, "history": [{"epoch": e} for e in range(200)]})


def test_a_reader_never_sees_half_a_record(tmp_path):
    # A writer process replaces the record as fast as it can while this process reads it.
    runs.write_record(tmp_path, {"n": -1})
    writer = Command(write_records, tmp_path)
    seen, deadline = set(), time.monotonic() + 60
    try:
        while len(seen) < 200 and time.monotonic() < deadline:
            seen.add(runs.read_record(tmp_path)["n"])  # raises on half a file
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    assert len(seen) == 200  # the record changed under the reader 200 times, each one whole


def test_runs_are_found_in_launch_order_and_overrides_read(tmp_path):
    for n in (10, 2, 1):
        (tmp_path / str(n) / ".hydra").mkdir(parents=True)
    (tmp_path / "2/.hydra/overrides.yaml").write_text("- seed=3\n- +model.dropout=0.1\n")
    assert directories.find_runs(tmp_path) == [tmp_path / "1", tmp_path / "2", tmp_path / "10"]
    assert directories.overrides(tmp_path / "2") == {"seed": "3", "model.dropout": "0.1"}
    assert directories.overrides(tmp_path / "1") == {}


def claim_at(parent: str, start_at: float) -> None:
    time.sleep(max(0.0, start_at - time.time()))
    print(directories.new_dir(parent))


def test_commands_started_in_the_same_second_claim_a_directory_each(tmp_path):
    # Eight processes wait for the same moment, then each claims a directory under one parent.
    start_at = time.time() + 1
    procs = [Command(claim_at, str(tmp_path / "runs"), start_at) for _ in range(8)]
    claimed = [proc.communicate(timeout=60)[0].strip() for proc in procs]
    assert len(set(claimed)) == 8 and all(Path(path).is_dir() for path in claimed)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(
        Path(path).name for path in claimed
    )


def test_a_taken_name_gives_the_next_one(tmp_path, monkeypatch):
    monkeypatch.setattr(directories, "_claimed", {})
    stamp = datetime.now()
    for seconds in range(3):  # whichever second new_dir reads, its plain name is taken
        taken = (stamp + timedelta(seconds=seconds)).strftime("%Y-%m-%d_%H-%M-%S")
        (tmp_path / taken).mkdir()
    path = Path(directories.new_dir(str(tmp_path)))
    assert path.name.endswith("_2") and path.is_dir()
    assert directories.new_dir(str(tmp_path)) == str(path)  # asked again, the same directory


def test_a_record_of_a_dead_process_is_reported_killed(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra/config.yaml").write_text("seed: 1\n")
    part = runs.new_attempt(time.time())
    record = {
        "status": "running",
        "history": [{"epoch": 1, "epoch_time_s": 2.0}],
        "attempts": [part],
    }
    assert runs.status(record) is Status.RUNNING  # this very process
    dead = Command(time.sleep, 0)
    dead.wait()
    record["attempts"] = [{**part, "pid": dead.pid, "process_start": "1"}]
    assert runs.status(record) is Status.KILLED
    assert runs.describe(tmp_path, record) == (
        f"killed in epoch 2: resume with `python -m mlp_lab.train resume={tmp_path}`"
    )
    # Its launcher's word, why included, makes the same line with the same command.
    said = {**record, "status": "killed", "error": "killed by SIGKILL in epoch 2"}
    assert runs.describe(tmp_path, said) == (
        f"killed by SIGKILL in epoch 2: resume with `python -m mlp_lab.train resume={tmp_path}`"
    )
    # On another host only the heartbeat tells: ten minutes without one is a dead run.
    elsewhere = {**part, "host": "elsewhere", "heartbeat": time.time() - 601}
    assert runs.status({**record, "attempts": [elsewhere]}) is Status.KILLED
    alive = {**record, "attempts": [{**elsewhere, "heartbeat": time.time() - 60}]}
    assert runs.status(alive) is Status.RUNNING


def test_times_add_up_over_the_attempts_of_a_run():
    attempts = [
        {"started": 100.0, "heartbeat": 130.0, "fit_started": 104.0},  # killed: up to its heartbeat
        {"started": 200.0, "heartbeat": 220.0, "ended": 225.0, "fit_started": 203.0},  # SIGTERM
        {"started": 300.0, "heartbeat": 340.0, "wall_time_s": 45.0, "fit_time_s": 38.0},
    ]
    assert runs.total_times(attempts) == {
        "wall_time_s": 30.0 + 25.0 + 45.0,
        "fit_time_s": 26.0 + 22.0 + 38.0,
    }


def _start(cwd, *args):
    return Command("mlp_lab.train", *args, cwd=cwd)


def test_runs_started_together_each_keep_their_own_directory(synthetic_root, tmp_path):
    procs = [
        _start(tmp_path, f"seed={seed}", *fast_overrides(synthetic_root, "trainer.max_epochs=2"))
        for seed in range(4)
    ]
    for proc in procs:
        err = proc.communicate(timeout=300)[1]
        assert proc.returncode == 0, err[-2000:]
    run_dirs = directories.find_runs(tmp_path / "outputs/runs")
    records = {run: runs.read_record(run) for run in run_dirs}
    assert sorted(r["config"]["seed"] for r in records.values()) == [0, 1, 2, 3]
    for run, record in records.items():
        # The run's own last checkpoint: its history, and its weights give the recorded val loss.
        checkpoint = torch.load(checkpoints.last_checkpoint(run), weights_only=False)
        assert checkpoint["epoch_history"] == record["history"]
        dm = datamodule(
            "fashion_mnist", synthetic_root, val_size=200, seed=record["config"]["seed"]
        )
        dm.setup()
        x, y = dm.splits["val"]
        model = MLPClassifier.load_from_checkpoint(checkpoints.last_checkpoint(run)).eval()
        with torch.no_grad():
            loss = torch.nn.functional.cross_entropy(model(x), y).item()
        assert loss == pytest.approx(record["history"][-1]["val_loss"], abs=1e-5)
        # TensorBoard names each event file after the process that writes it: this run's alone.
        events = list((run / "tensorboard").glob("events.out.tfevents.*"))
        pids = {int(path.name.rsplit(".", 2)[1]) for path in events}
        assert events and pids == {record["attempts"][-1]["pid"]}


def test_sweeps_started_together_each_keep_their_own_directory(synthetic_root, tmp_path):
    args = ["-m", "seed=1,2", *fast_overrides(synthetic_root, "trainer.max_epochs=1")]
    procs = [_start(tmp_path, *args) for _ in range(2)]
    for proc in procs:
        err = proc.communicate(timeout=300)[1]
        assert proc.returncode == 0, err[-2000:]
    sweeps = sorted((tmp_path / "outputs/multirun").iterdir())
    assert len(sweeps) == 2
    for sweep in sweeps:
        records = [runs.read_record(run) for run in directories.find_runs(sweep)]
        assert [(r["status"], r["config"]["seed"]) for r in records] == [
            ("completed", 1),
            ("completed", 2),
        ]


def test_a_run_directory_that_holds_a_run_is_refused(synthetic_root, tmp_path):
    run = tmp_path / "run"
    overrides = [*fast_overrides(synthetic_root, "trainer.max_epochs=1"), f"hydra.run.dir={run}"]
    assert run_module("mlp_lab.train", *overrides).returncode == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    again = run_module("mlp_lab.train", "seed=3", *overrides)
    assert again.returncode == 1 and again.stderr.strip().splitlines() == [
        f"error: hydra.run.dir={run} already holds a run (completed, 1 epochs): continue it with "
        f"resume={run}, or leave hydra.run.dir out for a new directory"
    ]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def _wait_for(predicate, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def _own_record(run, proc):
    """The record, once the process `proc` has written its part of the run."""
    try:
        record = runs.read_record(run)
    except RunError:
        return None
    return record if record["attempts"][-1]["pid"] == proc.pid else None


def test_sigkill_anywhere_then_resume_ends_as_an_uninterrupted_run(synthetic_root, tmp_path):
    # Epochs of about a second, half of it validation (1,000 images one at a time): random kills
    # land in training and in validation.
    overrides = fast_overrides(
        synthetic_root,
        "trainer.max_epochs=8",
        "data.batch_size=2",
        "data.val_size=1000",
        "data.eval_batch_size=1",
        "model.dropout=0.2",
    )
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert run_module("mlp_lab.train", *overrides, f"hydra.run.dir={whole}").returncode == 0

    rng = random.Random(0)
    proc = _start(PROJECT_DIR, *overrides, f"hydra.run.dir={killed}")
    # First right after an epoch ends (its record written, its checkpoint maybe not yet), then at
    # random moments of the resumed processes: in training, in validation, between them.
    assert _wait_for(lambda: len((_own_record(killed, proc) or {}).get("history", [])) >= 1, proc)
    kills = 0
    while kills < 4:
        if kills:
            assert _wait_for(lambda p=proc: _own_record(killed, p) is not None, proc)
            time.sleep(rng.uniform(0.2, 2.0))
        with contextlib.suppress(ProcessLookupError):  # its last epoch may end before the kill
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        record = runs.read_record(killed)
        if record["status"] == "completed":  # it finished just before the kill
            break
        kills += 1
        assert record["status"] == "running" and runs.status(record) is Status.KILLED
        (study,) = find_studies([killed])
        assert study.skipped[killed].startswith("killed in epoch ")
        proc = _start(PROJECT_DIR, f"resume={killed}")
    else:
        err = proc.communicate(timeout=300)[1]
        assert proc.returncode == 0, err[-2000:]

    record, reference = runs.read_record(killed), runs.read_record(whole)
    assert record["status"] == "completed"
    assert [e["epoch"] for e in record["history"]] == list(range(1, 9))
    strip = ("epoch_time_s",)
    assert [{k: v for k, v in e.items() if k not in strip} for e in record["history"]] == [
        {k: v for k, v in e.items() if k not in strip} for e in reference["history"]
    ]
    a = torch.load(checkpoints.last_checkpoint(killed), weights_only=False)["state_dict"]
    b = torch.load(checkpoints.last_checkpoint(whole), weights_only=False)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert record["test_acc"] == reference["test_acc"]
    # Every start of the run is a part, and its times are their sums.
    assert kills >= 2 and len(record["attempts"]) == kills + 1
    assert record["wall_time_s"] == pytest.approx(
        sum(runs.attempt_times(part)[0] for part in record["attempts"])
    )
    assert record["wall_time_s"] > record["attempts"][-1]["wall_time_s"]


def test_a_live_run_is_not_resumed_and_a_killed_one_is_reported(synthetic_root, tmp_path):
    run = tmp_path / "run"
    overrides = fast_overrides(synthetic_root, "trainer.max_epochs=500", "data.batch_size=4")
    proc = _start(PROJECT_DIR, *overrides, f"hydra.run.dir={run}")
    try:
        assert _wait_for(lambda: len((_own_record(run, proc) or {}).get("history", [])) >= 1, proc)
        (study,) = find_studies([run])
        assert study.skipped[run].startswith("running: ")
        assert study.skipped[run].endswith(f"(pid {proc.pid} on {socket.gethostname()})")
        refused = run_module("mlp_lab.train", f"resume={run}")
        assert refused.returncode == 1 and refused.stderr.strip().splitlines()[-1].startswith(
            f"error: resume={run}: the run is still going (pid {proc.pid} on "
        )
        assert "Traceback" not in refused.stderr
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    (study,) = find_studies([run])
    done = len(runs.read_record(run)["history"])
    assert study.skipped[run] == (
        f"killed in epoch {done + 1}: resume with `python -m mlp_lab.train resume={run}`"
    )
    assert not list((run / ".hydra").glob("resumed_*"))  # the refused resume wrote nothing


def test_a_refused_run_leaves_its_folder_as_it_found_it(tmp_path):
    # Its directory is claimed (outputs/runs/<time>/) while the config resolves; refused, the
    # command removes it and the folders it made for it, never the working directory.
    (tmp_path / "mine").mkdir()
    result = run_module("mlp_lab.train", "optimizer.lr=-1")
    assert result.returncode == 1 and result.stderr.startswith("error: optimizer.lr=-1.0")
    # A study given without -m: its sweep directory was claimed too (outputs/multirun/<time>/).
    result = run_module("mlp_lab.train", "experiment=batch_norm")
    assert result.returncode == 1 and "run it with -m" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    (tmp_path / "outputs/runs/kept").mkdir(parents=True)  # a folder of the user's stays
    assert run_module("mlp_lab.train", "optimizer.lr=-1").returncode == 1
    assert (tmp_path / "outputs/runs/kept").is_dir()


def test_a_0_2_0_record_is_read_in_this_versions_format(tmp_path):
    attempt = {"host": "h", "pid": 1, "started": 0.0, "heartbeat": 1.0}
    old = {"status": "completed", "history": [], "parts": [attempt]}  # 0.2.0 wrote no format
    (tmp_path / "metrics.json").write_text(json.dumps(old))
    record = runs.read_record(tmp_path)
    assert record == {"format": 2, "status": "completed", "history": [], "attempts": [attempt]}
    (tmp_path / "metrics.json").write_text(json.dumps(record))
    assert runs.read_record(tmp_path) == record  # this version's own, as written
