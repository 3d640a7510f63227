import json
import re
import signal
import sys
import time
from dataclasses import asdict

import optuna
import pytest
import torch
import yaml
from commands import Command, run_module
from conftest import assert_checkpoint_scores, fast_overrides, quiet
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from mlp_lab import runs
from mlp_lab.checkpoints import resumed_config
from mlp_lab.config import ConfigError
from mlp_lab.datasets import idx_files, load_split
from mlp_lab.fit import train
from mlp_lab.module import MLPClassifier, TrainingDiverged
from mlp_lab.report.studies import find_studies
from mlp_lab.train import load_config

RECORD_KEYS = {
    "status",
    "config",
    "params",
    "epochs",
    "history",
    "best_val_acc",
    "best_epoch",
    "test_acc",
    "test_loss",
    "fit_time_s",
    "wall_time_s",
    "checkpoint",
}
EPOCH_KEYS = {"train_loss", "train_acc", "val_loss", "val_acc", "epoch_time_s"}


def test_training_lowers_loss_and_records_the_run(synthetic_root, tmp_path):
    cfg = load_config(
        *fast_overrides(
            synthetic_root, "trainer.max_epochs=3", "model.hidden=[64,32]", "model.init_std=null"
        )
    )
    run_dir = tmp_path / "run"
    record = train(cfg, run_dir)

    assert json.loads((run_dir / "metrics.json").read_text()) == record
    assert record.keys() >= RECORD_KEYS and record["status"] == "completed"
    assert record["config"] == asdict(cfg)  # the settings come whole from the config
    history = record["history"]
    assert [e["epoch"] for e in history] == [1, 2, 3] and all(
        e.keys() >= EPOCH_KEYS for e in history
    )
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert record["params"] == 784 * 64 + 64 + 64 * 32 + 32 + 32 * 10 + 10
    best = max(history, key=lambda e: e["val_acc"])
    assert (record["best_epoch"], record["best_val_acc"]) == (best["epoch"], best["val_acc"])
    # Its file is named by the same epoch, counted from 1 as the record counts.
    name = f"epoch{best['epoch']:02d}-val_acc{best['val_acc']:.4f}.ckpt"
    assert record["checkpoint"] == f"checkpoints/{name}"
    assert record["best_val_acc"] > 0.9
    assert (
        all(e["epoch_time_s"] > 0 for e in history)
        and record["wall_time_s"] >= record["fit_time_s"]
    )
    for figure in ("curves", "predictions", "confusion"):
        assert (run_dir / f"{figure}.png").read_bytes()[:4] == b"\x89PNG"

    # TensorBoard's own reader finds the same per-epoch values, the figures and the hparams.
    events = EventAccumulator(
        str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0}
    )
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert [e.value for e in events.Scalars("val/acc")] == pytest.approx(
        [e["val_acc"] for e in history], abs=1e-6
    )
    assert len(events.Scalars("train/loss")) == len(events.Scalars("time/epoch_s")) == 3
    assert "lr-SGD" in scalars and {"test/acc", "test/loss"} <= set(scalars)
    assert {"curves", "predictions", "confusion"} <= set(events.Tags()["images"])
    # HPARAMS compares the settings that define a run, not where its files are.
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = HParamsPluginData.FromString(content).session_start_info.hparams
    assert {"model/hidden", "optimizer/lr", "loss/name", "data/name", "seed"} <= hparams.keys()
    assert {
        "trainer/max_epochs",
        "data/shift",
        "data/flip",
        "loss/label_smoothing",
    } <= hparams.keys()
    assert not {"data/root", "ckpt_path", "data/download", "loss/gamma"} & hparams.keys()

    # test_acc is the best checkpoint's accuracy on the official test split, recomputed here.
    ckpt = run_dir / record["checkpoint"]
    assert ckpt.is_file() and (run_dir / "checkpoints/last.ckpt").is_file()
    model = MLPClassifier.load_from_checkpoint(ckpt).eval()
    x, y = load_split("mnist", synthetic_root, "test")
    with torch.no_grad():
        acc = (model(x.reshape(-1, 1, 28, 28)).argmax(1) == y).float().mean().item()
    assert record["test_acc"] == pytest.approx(acc, abs=1e-6)


def test_same_seed_same_run(synthetic_root, tmp_path):
    overrides = fast_overrides(synthetic_root, "trainer.max_epochs=1", "model.hidden=[16]")
    a = train(load_config(*overrides), tmp_path / "a")
    b = train(load_config(*overrides), tmp_path / "b")
    assert a["history"][0]["train_loss"] == b["history"][0]["train_loss"]
    assert a["test_acc"] == b["test_acc"]


def test_diverging_loss_stops_with_clear_error_and_saves_no_broken_checkpoint(
    synthetic_root, tmp_path
):
    cfg = load_config(*fast_overrides(synthetic_root, "trainer.max_epochs=4", "optimizer.lr=1e12"))
    with pytest.raises(
        TrainingDiverged, match=r"training loss is nan at epoch 1: lower optimizer.lr"
    ):
        train(cfg, tmp_path / "run")
    assert not list((tmp_path / "run").rglob("*.ckpt"))  # the NaN weights are never saved


def test_cli_trains_and_prints_one_summary_line(synthetic_root, tmp_path):
    result = run_module(
        "mlp_lab.train",
        *fast_overrides(synthetic_root, "trainer.max_epochs=1", f"hydra.run.dir={tmp_path}"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("test_acc=") and "params=269,322" in last and str(tmp_path) in last
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "train.log").is_file()


def test_a_model_too_big_for_memory_is_one_line_and_its_record_says_so(synthetic_root, tmp_path):
    # 784 × 4e9 float weights: 12.5 TB, which no allocator hands out.
    overrides = fast_overrides(synthetic_root, "model.hidden=[4000000000]")
    result = run_module("mlp_lab.train", *overrides, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: out of memory (11,682.5 GiB in one piece): use a smaller model.hidden or "
        "data.batch_size, or fewer jobs at once"
    )
    record = _metrics(tmp_path)
    assert record["status"] == "failed" and record["error"].startswith("out of memory")


def test_cli_corrupt_dataset_is_refused_before_training(synthetic_root, tmp_path):
    path = synthetic_root / "FashionMNIST/raw" / idx_files("train")[1]
    path.write_bytes(b"\x00\x00\x08\x03" + path.read_bytes()[4:])
    result = run_module(
        "mlp_lab.train", *fast_overrides(synthetic_root), f"hydra.run.dir={tmp_path / 'run'}"
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: {path} is not an IDX file") and "mlp_lab.data" in error
    assert not (tmp_path / "run").exists()  # refused before any work: no run directory


@pytest.mark.real_data
def test_one_epoch_on_real_fashion_mnist(real_data_root, tmp_path):
    # torch's default initialisation: the lab's N(0, 0.01²) weights start slowly and sit at
    # 0.746-0.770 val accuracy after one epoch depending on the seed (0.870 after ten).
    cfg = load_config(*quiet(real_data_root, "trainer.max_epochs=1", "model.init_std=null"))
    record = train(cfg, tmp_path / "run")
    assert record["config"]["data"]["name"] == "fashion_mnist" and record["params"] == 269_322
    assert record["best_val_acc"] >= 0.75
    assert 0.7 <= record["test_acc"] <= 1 and 0 < record["test_loss"] < 1.5


def test_study_sweep_runs_every_variant(synthetic_root, tmp_path):
    sweep = tmp_path / "sweep"
    overrides = fast_overrides(synthetic_root, "trainer.max_epochs=1", f"hydra.sweep.dir={sweep}")
    result = run_module("mlp_lab.train", "-m", "experiment=width", *overrides)
    assert result.returncode == 0, result.stderr[-2000:]
    hidden = [_metrics(sweep / str(n))["config"]["model"]["hidden"] for n in range(3)]
    assert hidden == [[256, 256], [512, 256], [256, 128]]


def test_scratch_network_with_dropout_and_batch_norm_trains(synthetic_root, tmp_path):
    overrides = ["model.impl=scratch", "model.dropout=0.2", "model.batch_norm=true"]
    cfg = load_config(*fast_overrides(synthetic_root, "trainer.max_epochs=2", *overrides))
    record = train(cfg, tmp_path / "run")
    assert record["config"]["model"]["impl"] == "scratch" and record["best_val_acc"] > 0.9
    assert record["history"][-1]["train_loss"] < record["history"][0]["train_loss"]


def _metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def _weights(run_dir):
    return torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False)["state_dict"]


def test_sigterm_then_resume_ends_as_an_uninterrupted_run(synthetic_root, tmp_path):
    # Batches of 4 make an epoch last about a second, long enough to stop the run inside epoch 3.
    # Dropout draws from the random state, which the resumed run must continue too.
    overrides = fast_overrides(
        synthetic_root, "trainer.max_epochs=4", "data.batch_size=4", "model.dropout=0.2"
    )
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert run_module("mlp_lab.train", *overrides, f"hydra.run.dir={whole}").returncode == 0

    proc = Command("mlp_lab.train", *overrides, f"hydra.run.dir={stopped}")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        metrics = stopped / "metrics.json"
        if metrics.is_file() and len(_metrics(stopped)["history"]) >= 2:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.02)
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == 1, stderr[-2000:]
    assert f"continue with `python -m mlp_lab.train resume={stopped}`" in stderr
    record = _metrics(stopped)
    assert record["status"] == "interrupted" and 2 <= len(record["history"]) < 4

    resumed = run_module("mlp_lab.train", f"resume={stopped}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    record, reference = _metrics(stopped), _metrics(whole)
    assert record["status"] == "completed" and [e["epoch"] for e in record["history"]] == [
        1,
        2,
        3,
        4,
    ]
    strip = ("epoch_time_s",)
    assert [{k: v for k, v in e.items() if k not in strip} for e in record["history"]] == [
        {k: v for k, v in e.items() if k not in strip} for e in reference["history"]
    ]
    a, b = _weights(stopped), _weights(whole)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert record["test_acc"] == reference["test_acc"]
    # One TensorBoard log, continued: four val/acc points, the first run's .hydra kept.
    events = EventAccumulator(str(stopped / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("val/acc")] == [
        e.step for e in EventAccumulator(str(whole / "tensorboard")).Reload().Scalars("val/acc")
    ]
    assert yaml.safe_load((stopped / ".hydra/overrides.yaml").read_text()) == overrides[:]
    assert list((stopped / ".hydra").glob("resumed_*/overrides.yaml"))


def test_stopped_in_its_first_epoch_a_run_says_nothing_is_saved_and_starts_again(
    synthetic_root, tmp_path
):
    # Batches of two images and validation one at a time make the first epoch last seconds, so the
    # signal lands in it even on a loaded machine (0.3 s after fit began was once too late in CI).
    slow = ["data.val_size=1000", "data.eval_batch_size=1", "data.batch_size=2"]
    slow.append("trainer.max_epochs=2")
    run = tmp_path / "run"
    proc = Command("mlp_lab.train", *fast_overrides(synthetic_root, *slow), f"hydra.run.dir={run}")
    deadline = time.monotonic() + 120
    while "fit_started" not in str(runs.earlier_record(run)) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # Lightning's own SIGTERM handling begins with fit
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == 1 and _metrics(run)["history"] == [], stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == (
        "stopped: interrupted in epoch 1: no epoch had ended, so none is saved; start it again "
        f"with `python -m mlp_lab.train resume={run}`"
    )
    resumed = run_module("mlp_lab.train", f"resume={run}", "trainer.max_epochs=1")
    assert resumed.returncode == 0 and [e["epoch"] for e in _metrics(run)["history"]] == [1]


def test_resume_keeps_the_saved_config_and_refuses_group_changes(synthetic_root, tmp_path):
    run = tmp_path / "run"
    overrides = fast_overrides(synthetic_root, "trainer.max_epochs=1", "model.hidden=[32]")
    assert run_module("mlp_lab.train", *overrides, f"hydra.run.dir={run}").returncode == 0
    before = (run / "metrics.json").read_text()

    cfg = resumed_config(run, [f"resume={run}", "trainer.max_epochs=3"])
    assert cfg.model.hidden == [32] and cfg.trainer.max_epochs == 3 and cfg.resume == str(run)
    with pytest.raises(ConfigError, match="model=wide cannot change the saved config"):
        resumed_config(run, ["model=wide"])

    result = run_module("mlp_lab.train", f"resume={run}", "model=wide")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (run / "metrics.json").read_text() == before  # the finished run's record is untouched
    result = run_module("mlp_lab.train", f"resume={run}", "trainer.max_epochs=2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert [e["epoch"] for e in _metrics(run)["history"]] == [1, 2]


def test_nan_job_fails_cleanly_while_its_sibling_succeeds(synthetic_root, tmp_path):
    sweep = tmp_path / "sweep"
    overrides = fast_overrides(
        synthetic_root, "trainer.max_epochs=2", "model.init_std=null", f"hydra.sweep.dir={sweep}"
    )
    result = run_module("mlp_lab.train", "-m", "optimizer.lr=1e12,0.1", *overrides)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: training loss is nan at epoch 1: lower optimizer.lr" in result.stderr
    failed, done = _metrics(sweep / "0"), _metrics(sweep / "1")
    assert failed["status"] == "failed" and failed["error"].startswith("training loss is nan")
    assert done["status"] == "completed" and done["best_val_acc"] > 0.9
    (study,) = find_studies([sweep])
    assert [run.path for run in study.runs] == [sweep / "1"]
    assert study.skipped[sweep / "0"].startswith("failed: training loss is nan at epoch 1")


def test_ddp_inside_a_sweep_is_refused_before_any_training(tmp_path):
    result = run_module(
        "mlp_lab.train", "-m", "seed=0,1", "trainer=ddp", f"hydra.sweep.dir={tmp_path}"
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: trainer.strategy=ddp cannot run inside a sweep (-m)")
    )
    assert not list(tmp_path.rglob("*.ckpt"))


def test_optuna_search_stopped_and_started_again_continues_its_study(synthetic_root, tmp_path):
    storage = f"sqlite:///{tmp_path}/search.db"
    values = []
    for session, trials in (("first", 3), ("again", 2)):
        result = run_module(
            "mlp_lab.train",
            "hparams_search=optuna",
            f"hydra.sweeper.n_trials={trials}",
            f"hydra.sweeper.storage={storage}",
            f"hydra.sweep.dir={tmp_path / session}",
            *fast_overrides(synthetic_root, "trainer.max_epochs=1"),
        )
        assert result.returncode == 0, result.stderr[-2000:]
        runs = sorted((tmp_path / session).glob("*/metrics.json"))
        assert len(runs) == trials
        values += [json.loads(path.read_text())["best_val_acc"] for path in runs]
    study = optuna.load_study(study_name="fashion_mnist", storage=storage)
    assert len(study.trials) == 5 and all(t.state.name == "COMPLETE" for t in study.trials)
    # Each trial's value is its run's best val accuracy, the one train.py returns.
    assert sorted(t.value for t in study.trials) == sorted(values)
    assert f"Best value: {max(values)}" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "launcher",
    [["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], ["hydra/launcher=submitit_local"]],
)
def test_parallel_and_cluster_launchers_run_every_job(launcher, synthetic_root, tmp_path):
    overrides = fast_overrides(
        synthetic_root, "trainer.max_epochs=1", f"hydra.sweep.dir={tmp_path}"
    )
    result = run_module("mlp_lab.train", "-m", "seed=0,1", *launcher, *overrides)
    assert result.returncode == 0, result.stderr[-2000:]
    records = [_metrics(tmp_path / str(n)) for n in range(2)]
    assert [r["config"]["seed"] for r in records] == [0, 1]
    assert all(r["status"] == "completed" and len(r["history"]) == 1 for r in records)
    assert result.stdout.strip().splitlines()[-1] == (
        f"2 runs: 2 completed (report: python -m mlp_lab.report {tmp_path})"
    )
    # TensorBoard names each run by what the sweep varies, and draws it against the epoch.
    events = EventAccumulator(str(tmp_path / "0" / "tensorboard" / "seed=0"))
    events.Reload()
    assert [s.step for s in events.Scalars("val/acc")] == [1] and "epoch" not in events.Tags()
    # HPARAMS: the swept key first, the others after; a boolean reads true or false.
    content = events.PluginTagToContent("hparams")
    infos = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment.hparam_infos
    assert infos[0].name == "seed" and "model/batch_norm" in [i.name for i in infos[1:]]
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["model/batch_norm"].string_value == "false"


@pytest.mark.real_data
def test_ddp_on_two_cpu_processes_logs_the_val_acc_of_its_checkpoint(real_data_root, tmp_path):
    run = tmp_path / "run"
    result = run_module(
        "mlp_lab.train",
        "trainer=ddp",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        f"data.root={real_data_root}",
        f"hydra.run.dir={run}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "distributed_backend=gloo" in result.stdout + result.stderr
    assert result.stdout.count("test_acc=") == 1  # rank 0 alone reports and writes
    record = _metrics(run)
    assert (run / "train_ddp_process_1.log").is_file()

    assert_checkpoint_scores(run, record, real_data_root)


def test_every_training_option_together_trains(synthetic_root, tmp_path):
    options = [
        "data.shift=2",
        "data.flip=true",
        "optimizer.momentum=0.9",
        "optimizer.nesterov=true",
        "optimizer.schedule=onecycle",
        "loss.label_smoothing=0.1",
        "model.max_norm=3.0",
        "model.batch_norm=true",
        "model.init_std=null",
    ]
    cfg = load_config(*fast_overrides(synthetic_root, "trainer.max_epochs=3", *options))
    record = train(cfg, tmp_path / "run")
    # Chance is 0.1; shifting by 2 rows moves this synthetic data's class stripe onto its
    # neighbour's, so it cannot reach the 0.9+ of unshifted training here.
    assert record["best_val_acc"] > 0.5
    assert record["history"][-1]["train_loss"] < record["history"][0]["train_loss"]
    model = MLPClassifier.load_from_checkpoint(tmp_path / "run/checkpoints/last.ckpt")
    assert all((lin.weight.norm(dim=1) <= 3.0 + 1e-5).all() for lin in model.model.linear_layers())


def test_compile_option_trains_the_compiled_module(synthetic_root, tmp_path, monkeypatch):
    # torch.compile itself takes minutes on this CPU (README: it does not pay here); the test
    # checks the wiring with a stand-in that records what it was given.
    compiled = []

    def fake_compile(module):
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    cfg = load_config(*fast_overrides(synthetic_root, "trainer.max_epochs=1", "model.compile=true"))
    train(cfg, tmp_path / "run")
    assert len(compiled) == 1 and isinstance(compiled[0], MLPClassifier)
    assert not load_config().model.compile  # off by default


@pytest.mark.parametrize(
    "option",
    [
        "callbacks=early_stopping",
        "callbacks=[early_stopping,rich]",
        "debug=overfit",
        "debug=limit",
        "debug=profiler",
        "debug=anomaly",
        "trainer.gradient_clip_val=0.5",
        "trainer.accumulate_grad_batches=3",
    ],
)
def test_each_trainer_option_runs_an_epoch(option, synthetic_root, tmp_path):
    cfg = load_config(
        option, *fast_overrides(synthetic_root, "trainer.max_epochs=1", "model.hidden=[16]")
    )
    record = train(cfg, tmp_path / "run")
    assert record["status"] == "completed" and record["epochs"] == 1
    assert record["config"] == asdict(cfg)


@pytest.mark.parametrize("bar", ["tqdm", "rich"])
def test_the_progress_bar_counts_epochs_from_1_and_rich_shows_its_summary(
    bar, synthetic_root, tmp_path, capsys, monkeypatch
):
    overrides = fast_overrides(synthetic_root, "trainer.max_epochs=2", "model.hidden=[16]")
    shown = ["trainer.enable_progress_bar=true", "trainer.enable_model_summary=true"]
    chosen = ["callbacks=rich"] if bar == "rich" else []
    cfg = load_config(*chosen, *overrides, *shown)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # as on a terminal
    train(cfg, tmp_path / "run")
    out, err = capsys.readouterr()
    assert "Epoch 2/2" in out + err and "Epoch 0" not in out + err
    if bar == "rich":
        assert "┏" in out and "Total params" in out and "━" in out  # Rich's table and bar


def test_written_to_a_file_a_run_says_each_epoch_once_and_draws_no_bar(synthetic_root, tmp_path):
    overrides = fast_overrides(synthetic_root, "trainer.max_epochs=3", "model.hidden=[16]")
    result = run_module("mlp_lab.train", *overrides, "trainer.enable_progress_bar=true")
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert "\r" not in output and "it/s]" not in output  # no bar's refreshes
    epochs = [
        line.split(" - ", 1)[1].split(":")[0]
        for line in output.splitlines()
        if ": train loss" in line
    ]
    assert epochs == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]


def test_early_stopping_records_where_it_stopped_and_a_resume_stays_stopped(
    synthetic_root, tmp_path
):
    # val/acc must rise by 0.5 to count as better: only the first epoch does, so with a patience
    # of 1 the run stops after epoch 2 of 5.
    options = [
        "callbacks=early_stopping",
        "callbacks.early_stopping.patience=1",
        "callbacks.early_stopping.min_delta=0.5",
        "trainer.max_epochs=5",
        "model.hidden=[16]",
    ]
    run = tmp_path / "run"
    first = run_module(
        "mlp_lab.train", *fast_overrides(synthetic_root, *options), f"hydra.run.dir={run}"
    )
    assert first.returncode == 0, first.stderr[-2000:]
    assert "stopped early at epoch 2" in first.stdout
    record = _metrics(run)
    assert record["status"] == "completed" and record["epochs"] == 2
    assert record["stopped_early"] == {"epoch": 2, "patience": 1}
    weights = _weights(run)

    resumed = run_module("mlp_lab.train", f"resume={run}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    record = _metrics(run)
    assert [e["epoch"] for e in record["history"]] == [1, 2] and len(record["attempts"]) == 2
    assert record["stopped_early"] == {"epoch": 2, "patience": 1}
    after = _weights(run)
    assert all(torch.equal(after[k], weights[k]) for k in weights)  # not one more step


def test_the_profilers_table_is_saved_in_the_run_and_names_the_training_step(
    synthetic_root, tmp_path
):
    overrides = fast_overrides(synthetic_root, "model.hidden=[16]")
    train(load_config("debug=profiler", *overrides), tmp_path / "run")
    table = (tmp_path / "run/fit-profile.txt").read_text()
    assert "Profiler Report" in table and "training_step" in table
    assert (tmp_path / "run/metrics.json").is_file()


def test_fast_dev_run_runs_one_batch_of_each_and_records_nothing(synthetic_root, tmp_path):
    run = tmp_path / "run"
    result = run_module(
        "mlp_lab.train", "debug=fdr", *fast_overrides(synthetic_root), f"hydra.run.dir={run}"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("fast_dev_run passed: one batch of each split; test_acc=")
    assert last.endswith("(nothing recorded)")
    assert not (run / "metrics.json").exists() and not (run / "checkpoints").exists()
    assert not (run / "tensorboard").exists()


def test_anomaly_detection_names_the_operation_in_one_line(synthetic_root, tmp_path):
    run = tmp_path / "run"
    overrides = fast_overrides(synthetic_root, "optimizer.lr=1e12", "model.hidden=[16]")
    result = run_module("mlp_lab.train", "debug=anomaly", *overrides, f"hydra.run.dir={run}")
    # Anomaly mode's own warning shows the forward line ("Traceback of forward call"): its point.
    assert result.returncode == 1 and "Traceback (most recent call last)" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"error: Function '\w+Backward\d*' returned nan values in its \d+th output\. "
        r"\(anomaly detection, epoch 1\): lower optimizer\.lr or change the loss",
        error,
    ), error
    assert _metrics(run)["status"] == "failed"


def test_ddp_sim_trains_on_two_cpu_processes(synthetic_root, tmp_path):
    run = tmp_path / "run"
    overrides = fast_overrides(synthetic_root, "trainer.max_epochs=1", "model.hidden=[16]")
    result = run_module("mlp_lab.train", "trainer=ddp_sim", *overrides, f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "distributed_backend=gloo" in result.stdout + result.stderr
    assert result.stdout.count("test_acc=") == 1 and _metrics(run)["status"] == "completed"
    # Each step sees both processes' batches: said, so that no one compares it with one device.
    said = "2 processes, each with batches of 64: a step sees 128 images"
    assert said in result.stdout + result.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none on this machine")
def test_gpu_preset_trains_in_bf16_and_its_checkpoint_scores_as_logged(synthetic_root, tmp_path):
    cfg = load_config("trainer=gpu", *quiet(synthetic_root, "trainer.max_epochs=2"))
    record = train(cfg, tmp_path / "run")
    assert record["status"] == "completed" and record["best_val_acc"] > 0.9
    model = MLPClassifier.load_from_checkpoint(tmp_path / "run" / record["checkpoint"]).eval()
    x, y = load_split("mnist", synthetic_root, "test")
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert record["test_acc"] == pytest.approx(acc, abs=0.02)  # bf16 against float32 here
