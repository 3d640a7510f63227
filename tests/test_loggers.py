"""The logger group: each option composes and runs; CSV and MLflow, read back with their own
readers, hold what the run's record holds."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import mlflow
import pytest
import yaml
from commands import run_module
from conftest import fast_overrides
from mlflow import MlflowClient

from mlp_lab import loggers
from mlp_lab.config import ConfigError
from mlp_lab.fit import train
from mlp_lab.loggers import run_settings
from mlp_lab.train import load_config

FIGURES = {"curves.png", "predictions.png", "confusion.png"}


@pytest.mark.parametrize(
    ("choice", "chosen"),
    [
        ((), {"tensorboard"}),  # the default
        ("logger=tensorboard", {"tensorboard"}),
        ("logger=csv", {"csv"}),
        ("logger=mlflow", {"mlflow"}),
        ("logger=many", {"tensorboard", "csv", "mlflow"}),
        ("logger=none", set()),
        ("logger=[csv,mlflow]", {"csv", "mlflow"}),
        ("logger=[mlflow,tensorboard]", {"tensorboard", "mlflow"}),
    ],
)
def test_every_logger_option_composes(choice, chosen):
    cfg = load_config(*choice) if isinstance(choice, tuple) else load_config(choice)
    assert {name for name, section in asdict(cfg.logger).items() if section is not None} == chosen
    assert not any(key.startswith("logger") for key in run_settings(cfg))  # not in HPARAMS
    if "mlflow" in chosen:
        assert cfg.logger.mlflow.tracking_uri == "sqlite:///outputs/mlflow.db"


def test_csv_logger_holds_the_record(synthetic_root, tmp_path):
    cfg = load_config(
        *fast_overrides(synthetic_root, "trainer.max_epochs=2", "model.hidden=[16]", "logger=csv")
    )
    record = train(cfg, tmp_path / "run")

    csv_dir = tmp_path / "run" / "csv" / "version_0"
    with open(csv_dir / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    val_acc = [float(row["val/acc"]) for row in rows if row["val/acc"]]
    assert val_acc == pytest.approx([e["val_acc"] for e in record["history"]], abs=1e-6)
    assert len([row for row in rows if row["time/epoch_s"]]) == 2
    assert len([row for row in rows if row["lr-SGD"]]) == 2
    (finals,) = [row for row in rows if row["final/test_acc"]]
    for key in ("best_val_acc", "test_acc", "test_loss"):
        assert float(finals[f"final/{key}"]) == pytest.approx(record[key], abs=1e-6)
    assert yaml.safe_load((csv_dir / "hparams.yaml").read_text()) == run_settings(cfg)
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_no_logger_still_records_the_run(synthetic_root, tmp_path):
    cfg = load_config(
        *fast_overrides(synthetic_root, "trainer.max_epochs=1", "model.hidden=[16]", "logger=none")
    )
    run_dir = tmp_path / "run"
    record = train(cfg, run_dir)  # no LearningRateMonitor, which refuses a run without loggers

    assert json.loads((run_dir / "metrics.json").read_text()) == record
    assert record["status"] == "completed" and len(record["history"]) == 1
    for figure in FIGURES:
        assert (run_dir / figure).read_bytes()[:4] == b"\x89PNG"
    assert not (run_dir / "tensorboard").exists() and not (run_dir / "csv").exists()


def test_a_sweep_with_every_logger_reads_back_in_mlflow(synthetic_root, tmp_path):
    store = f"sqlite:///{tmp_path}/mlflow.db"
    sweep = tmp_path / "sweep"
    result = run_module(
        "mlp_lab.train",
        "-m",
        *fast_overrides(synthetic_root, "trainer.max_epochs=2", "model.hidden=[16]"),
        "seed=1,2",
        "logger=many",
        f"logger.mlflow.tracking_uri={store}",
        "logger.mlflow.experiment_name=sweep",
        f"hydra.sweep.dir={sweep}",
        # Both jobs at once, on a store neither has created yet.
        "hydra/launcher=local",
        "hydra.launcher.n_jobs=2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("test_acc=")]
    opened = f"mlflow ui --backend-store-uri {store}, then http://127.0.0.1:5000/#/experiments/"
    assert len(lines) == 2 and all(f" mlflow: {opened}" in line for line in lines)
    assert all(line.endswith("?workflowType=machine_learning") for line in lines)

    client = MlflowClient(store)
    mlflow.set_tracking_uri(store)
    # Marked as model training: MLflow 3 opens it on its runs, not on GenAI traces.
    experiment = client.get_experiment_by_name("sweep")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    found = mlflow.search_runs(experiment_names=["sweep"], output_format="list")
    # Named by the job and what its sweep varies.
    assert sorted(run.info.run_name for run in found) == ["sweep/0 seed=1", "sweep/1 seed=2"]
    for run in found:
        job = sweep / run.info.run_name.split()[0].split("/")[1]
        record = json.loads((job / "metrics.json").read_text())
        cfg = load_config(*yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
        assert run.info.status == "FINISHED" and run.data.tags["run_dir"] == str(job.resolve())
        assert run.data.params == {k: str(v) for k, v in run_settings(cfg).items()}
        history = client.get_metric_history(run.info.run_id, "val/acc")
        assert [m.value for m in history] == pytest.approx(
            [e["val_acc"] for e in record["history"]], abs=1e-6
        )
        for key in ("best_val_acc", "test_acc", "test_loss"):
            assert run.data.metrics[f"final/{key}"] == pytest.approx(record[key], abs=1e-6)
        assert record["mlflow"] == {
            "tracking_uri": store,
            "experiment_id": experiment.experiment_id,
            "run_id": run.info.run_id,
        }
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert artifacts == FIGURES
        # The local store keeps its artifacts beside its database.
        assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())
        # The other two loggers of logger=many wrote into the job's directory.
        assert list((job / "tensorboard").rglob("events.out.tfevents.*"))
        assert (job / "csv" / "version_0" / "metrics.csv").is_file()
    assert {run.data.params["seed"] for run in found} == {"1", "2"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_server(folder: Path, port: int):
    """`mlflow server` on 127.0.0.1:port, its store in `folder`; its process group stopped after."""
    command = [
        *(sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)),
        *("--workers", "1", "--backend-store-uri", f"sqlite:///{folder}/server.db"),
        *("--artifacts-destination", str(folder / "server-artifacts")),
    ]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner to start
    with open(folder / "server.log", "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=log, env=env, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while True:
                assert server.poll() is None, (folder / "server.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the MLflow server did not answer in 120 s"
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                    break
                except OSError:
                    time.sleep(0.5)
            yield
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)


def test_an_mlflow_server_receives_the_run(synthetic_root, tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    overrides = fast_overrides(synthetic_root, "trainer.max_epochs=1", "model.hidden=[16]")
    cfg = load_config(*overrides, "logger=mlflow", f"logger.mlflow.tracking_uri={uri}")
    # No server yet: the run stops before training, in seconds, naming the setting.
    with pytest.raises(ConfigError, match=r"logger\.mlflow\.tracking_uri='http.*cannot be reached"):
        train(cfg, tmp_path / "refused")
    refused = json.loads((tmp_path / "refused" / "metrics.json").read_text())
    assert refused["history"] == [] and refused["config"] == asdict(cfg)  # what it wrote stays

    with mlflow_server(tmp_path, port):
        record = train(cfg, tmp_path / "run")
        client = MlflowClient(uri)
        (run,) = client.search_runs([client.get_experiment_by_name("mlp_lab").experiment_id])
        assert run.info.run_name == "run" and run.info.status == "FINISHED"
        assert run.data.params["model/hidden"] == "[16]"
        assert run.data.metrics["final/test_acc"] == pytest.approx(record["test_acc"], abs=1e-6)
        assert run.data.metrics["val/acc"] == pytest.approx(record["best_val_acc"], abs=1e-6)
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == FIGURES


def test_mlflow_missing_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what an environment without MLflow gives
    with pytest.raises(ConfigError) as err:
        loggers.build(load_config("logger=mlflow").logger, tmp_path)
    assert str(err.value) == "logger=mlflow needs MLflow: pip install 'mlp_lab[mlflow]'"
