import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest
from commands import Command, run_module
from conftest import fast_overrides

from mlp_lab import runs
from mlp_lab.report.studies import find_studies
from mlp_lab.report.write import write_report
from mlp_lab.trial import open_storage

State = optuna.trial.TrialState


def search(storage, sweep_dir, *args):
    """`python -m mlp_lab.train hparams_search=optuna` on a study named "s" in `storage`."""
    return [
        "hparams_search=optuna",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=s",
        f"hydra.sweep.dir={sweep_dir}",
        *args,
    ]


def trials(storage):
    return optuna.load_study(study_name="s", storage=open_storage(storage)).trials


@pytest.mark.parametrize("pruner", ["median", "halving"])
def test_a_trial_far_behind_the_others_is_pruned_and_its_record_says_so(
    pruner, synthetic_root, tmp_path
):
    storage = f"sqlite:///{tmp_path}/search.db"
    # Two good trials, then one whose learning rate is a thousand times too small: every swept
    # setting fixed on the command line (which takes it out of the search space), so the order is
    # certain. Pruning may start after two epochs: for the median pruner once two trials have
    # finished; successive halving keeps the best third of the trials at epoch 2 (the two good
    # ones, equal, tie for it).
    pruner = [
        f"hydra.sweeper.pruner.name={pruner}",
        "hydra.sweeper.pruner.startup_trials=2",
        "hydra.sweeper.pruner.warmup_epochs=2",
    ]
    fixed = ["optimizer.weight_decay=0", "model.dropout=0", "model.hidden=[32]"]
    fixed.append("model.batch_norm=false")
    for n, (lr, trials_) in enumerate([("0.1", 2), ("0.0001", 1)]):
        result = run_module(
            "mlp_lab.train",
            *search(storage, tmp_path / f"sweep{n}", f"hydra.sweeper.n_trials={trials_}"),
            *pruner,
            *fixed,
            f"optimizer.lr={lr}",
            *fast_overrides(synthetic_root, "trainer.max_epochs=5", "model.init_std=null"),
        )
        assert result.returncode == 0, result.stderr[-2000:]
    good, _, slow = trials(storage)
    assert [t.state for t in trials(storage)] == [State.COMPLETE, State.COMPLETE, State.PRUNED]
    # The study names what it maximised, for the dashboard and Optuna's plots.
    assert optuna.load_study(study_name="s", storage=storage).metric_names == ["val/acc"]
    assert good.params == slow.params == {}  # nothing left to search
    assert len(good.intermediate_values) == 5 and len(slow.intermediate_values) == 2
    assert slow.intermediate_values[2] < good.intermediate_values[2]
    record = runs.read_record(tmp_path / "sweep1/2")
    assert record["status"] == "pruned" and [e["epoch"] for e in record["history"]] == [1, 2]
    assert [e["val_acc"] for e in record["history"]] == pytest.approx(
        [slow.intermediate_values[1], slow.intermediate_values[2]], abs=1e-6
    )
    (study,) = find_studies([tmp_path / "sweep1"])
    assert study.skipped == {tmp_path / "sweep1/2": "pruned after 2 epochs by its search"}
    # The trial's own line says so, and the search ends with its summary.
    lines = result.stdout.strip().splitlines()
    assert any("pruned by its search after epoch 2 " in line for line in lines)
    assert lines[-1] == (
        f"1 trial: 1 pruned (report: python -m mlp_lab.report {tmp_path / 'sweep1'})"
    )


HALF = max(1, os.cpu_count() // 2)


@pytest.mark.parametrize(
    "kind, workers, threads",
    [
        ("sqlite", ["hydra.sweeper.n_jobs=2"], HALF),  # two processes, half the cores each
        ("journal", ["hydra.sweeper.n_jobs=2"], HALF),
        # A job array of two tasks, as on a SLURM cluster; submitit's local executor runs them,
        # each with the threads of its cpus_per_task.
        (
            "journal",
            [
                "hydra.sweeper.n_jobs=2",
                "hydra/launcher=submitit_local",
                "hydra.launcher.cpus_per_task=3",
            ],
            3,
        ),
    ],
    ids=["processes-sqlite", "processes-journal", "job-array-journal"],
)
def test_two_workers_share_one_study_with_no_trial_lost_or_run_twice(
    kind, workers, threads, synthetic_root, tmp_path
):
    storage = f"sqlite:///{tmp_path}/s.db" if kind == "sqlite" else f"journal:{tmp_path}/s.log"
    sweep = tmp_path / "sweep"
    result = run_module(
        "mlp_lab.train",
        *search(storage, sweep, "hydra.sweeper.n_trials=4", *workers),
        "hydra.sweeper.pruner.name=none",
        *fast_overrides(synthetic_root, "trainer.max_epochs=1"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    done = trials(storage)
    assert [t.number for t in done] == [0, 1, 2, 3]
    assert all(t.state == State.COMPLETE for t in done)
    for t in done:  # each trial is one run, whose best val accuracy is the trial's value
        record = runs.read_record(sweep / str(t.number))
        assert record["best_val_acc"] == t.value and record["config"]["trial"]["number"] == t.number
        assert record["config"]["num_threads"] == threads
    assert len({t.user_attrs["worker"]["pid"] for t in done}) == 2  # two processes took trials
    # The report on the search adds Optuna's figures of it.
    text = write_report([sweep], tmp_path / "report").read_text()
    for figure in ("history", "importances", "epochs"):
        assert f"![{sweep.name}_{figure}.png]" in text
        assert (tmp_path / f"report/{sweep.name}_{figure}.png").read_bytes()[:4] == b"\x89PNG"


def test_a_diverging_trial_fails_and_the_search_goes_on(synthetic_root, tmp_path):
    storage = f"sqlite:///{tmp_path}/s.db"
    result = run_module(
        "mlp_lab.train",
        *search(storage, tmp_path / "sweep", "hydra.sweeper.n_trials=2"),
        # The learning rate alone is searched, and the random sampler seeded 10 draws the
        # diverging one first, then the good one.
        "hydra.sweeper.sampler.name=random",
        "hydra.sweeper.sampler.seed=10",
        "optimizer.lr=choice(1e12,0.1)",
        "optimizer.weight_decay=0",
        "model.dropout=0",
        "model.hidden=[32]",
        "model.batch_norm=false",
        *fast_overrides(synthetic_root, "trainer.max_epochs=2", "model.init_std=null"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    first, second = trials(storage)
    assert [first.params, second.params] == [{"optimizer.lr": 1e12}, {"optimizer.lr": 0.1}]
    assert [first.state, second.state] == [State.FAIL, State.COMPLETE]
    record = runs.read_record(tmp_path / "sweep/0")
    assert record["status"] == "failed" and record["error"].startswith("training loss is nan")
    assert second.value == runs.read_record(tmp_path / "sweep/1")["best_val_acc"]


def test_a_killed_workers_trial_is_failed_when_the_search_starts_again(synthetic_root, tmp_path):
    storage = f"sqlite:///{tmp_path}/s.db"
    args = ["hydra.sweeper.pruner.name=none"]
    slow = fast_overrides(synthetic_root, "trainer.max_epochs=500", "data.batch_size=4")
    proc = Command(
        "mlp_lab.train",
        *search(storage, tmp_path / "first", "hydra.sweeper.n_trials=2", *args, *slow),
    )
    record = tmp_path / "first/0/metrics.json"
    deadline = time.monotonic() + 120
    while not record.is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert [t.state for t in trials(storage)] == [State.RUNNING]

    result = run_module(
        "mlp_lab.train",
        *search(storage, tmp_path / "again", "hydra.sweeper.n_trials=1", *args),
        *fast_overrides(synthetic_root, "trainer.max_epochs=1"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert [t.state for t in trials(storage)] == [State.FAIL, State.COMPLETE]


@pytest.mark.parametrize(
    "override, message",
    [
        ("hydra.sweeper.pruner.name=sometimes", "hydra.sweeper.pruner.name='sometimes' is not"),
        ("hydra.sweeper.sampler.name=grid", "hydra.sweeper.sampler.name=grid: use one of tpe"),
        ("hydra.sweeper.storage=nosuchdb://x", "hydra.sweeper.storage=nosuchdb://x cannot be"),
        ("hydra.sweeper.storage=postgresql://127.0.0.1:1/test", "hydra.sweeper.storage=post"),
        ("optimizer.lr=interval(0.5,0.1)", "search range optimizer.lr: `low <= high` must hold"),
    ],
)
def test_bad_search_settings_are_one_line_before_any_trial(override, message, tmp_path):
    storage = f"sqlite:///{tmp_path}/s.db"
    result = run_module("mlp_lab.train", *search(storage, tmp_path / "sweep", override))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {message}")
    assert not list(tmp_path.rglob("metrics.json"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_dashboard_serves_the_trials_and_their_epochs(synthetic_root, tmp_path):
    storage = f"sqlite:///{tmp_path}/s.db"
    result = run_module(
        "mlp_lab.train",
        *search(storage, tmp_path / "sweep", "hydra.sweeper.n_trials=2"),
        *fast_overrides(synthetic_root, "trainer.max_epochs=2"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    port = _free_port()
    dashboard = os.path.join(os.path.dirname(sys.executable), "optuna-dashboard")
    server = subprocess.Popen(
        [dashboard, storage, "--host", "127.0.0.1", "--port", str(port), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def get(path):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
                return json.loads(answer.read())

        deadline = time.monotonic() + 60
        while True:
            try:
                studies = get("/api/studies")["study_summaries"]
                break
            except OSError:
                assert time.monotonic() < deadline, "the dashboard did not answer in 60 s"
                time.sleep(0.2)
        (study,) = studies
        assert study["study_name"] == "s"
        served = get(f"/api/studies/{study['study_id']}")["trials"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    expected = trials(storage)
    assert [t["number"] for t in served] == [t.number for t in expected]
    assert [t["values"] for t in served] == [[t.value] for t in expected]
    assert [[v["value"] for v in t["intermediate_values"]] for t in served] == [
        list(t.intermediate_values.values()) for t in expected
    ]
