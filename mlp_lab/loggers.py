"""The run's loggers: built from the config, the settings they show, and what each is sent at the
end of a run.

The run's own record stays metrics.json; the loggers are views of it for TensorBoard, a CSV table
or MLflow (conf/logger/). Lightning is imported by the functions that build and feed them, so that
the report can read which settings define a run without it.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlp_lab.config import ConfigError, LoggerConfig, MLflowConfig, TrainConfig

if TYPE_CHECKING:
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.loggers import Logger, MLFlowLogger

SQLITE = "sqlite:///"

# Where files are and how a run is carried out or watched, not what it computes: left out of the
# settings that TensorBoard's HPARAMS tab compares and of the report's variant labels.
LOGISTICS = (
    *("data.root", "data.download", "data.eval_batch_size", "model.compile", "callbacks.rich"),
    *("num_threads", "resume", "ckpt_path", "trial", "logger"),
    *(f"trainer.{key}" for key in ("accelerator", "devices", "strategy", "num_nodes", "profiler")),
    *(f"trainer.{key}" for key in ("fast_dev_run", "detect_anomaly", "log_every_n_steps")),
    *(f"trainer.{key}" for key in ("enable_progress_bar", "progress_bar_refresh_rate")),
    *(f"trainer.{key}" for key in ("enable_model_summary", "num_sanity_val_steps")),
)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys: {"model": {"hidden": ...}} → {"model.hidden": ...}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run_settings(cfg: TrainConfig, first: Sequence[str] = ()) -> dict[str, Any]:
    """The settings that define a run, flat ("model/hidden"): the config less its logistics and
    the options that its loss does not take; those under the keys `first` (a sweep's) lead."""
    unused = {f"loss.{k}" for k in set(vars(cfg.loss)) - {"name", *cfg.loss.params()}}
    settings = {
        name: value
        for name, value in flatten(asdict(cfg)).items()
        if name not in LOGISTICS and name.split(".")[0] not in LOGISTICS and name not in unused
    }
    lead = [n for n in settings if any(n == k or n.startswith(f"{k}.") for k in first)]
    return {name.replace(".", "/"): settings[name] for name in [*lead, *settings]}


def build(cfg: LoggerConfig, run_dir: Path) -> list[Logger]:
    """The Lightning loggers of a run in `run_dir`; an MLflow run is created here, before training,
    so that a store it cannot reach stops the run at once."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    loggers: list[Logger] = []
    if cfg.tensorboard is not None:
        loggers.append(
            TensorBoardLogger(run_dir, name="tensorboard", version="", default_hp_metric=False)
        )
    if cfg.csv is not None:
        # One version per part of the run: a resumed part would otherwise replace metrics.csv.
        loggers.append(CSVLogger(run_dir, name="csv"))
    if cfg.mlflow is not None:
        loggers.append(mlflow_logger(cfg.mlflow, run_dir))
    return loggers


def callbacks(loggers: list[Logger]) -> list[Callback]:
    """The learning rate per epoch, for the loggers; LearningRateMonitor refuses a run without."""
    from lightning.pytorch.callbacks import LearningRateMonitor

    return [LearningRateMonitor("epoch")] if loggers else []


def mlflow_logger(cfg: MLflowConfig, run_dir: Path) -> MLFlowLogger:
    """An MLflow run named after the run directory (a sweep's job: <sweep>/<job>)."""
    try:
        import mlflow
    except ImportError:
        raise ConfigError("logger=mlflow needs MLflow: pip install 'mlp_lab[mlflow]'") from None
    from lightning.pytorch.loggers import MLFlowLogger
    from sqlalchemy.exc import SQLAlchemyError

    uri, artifacts = cfg.tracking_uri, None
    if uri.startswith(("http://", "https://")):
        check_reachable(uri)
    elif uri.startswith(SQLITE):
        # A local store keeps its artifacts beside its database, not in ./mlruns.
        database = Path(uri.removeprefix(SQLITE))
        try:
            database.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"logger.mlflow.tracking_uri={uri!r}: {err}") from None
        artifacts = (database.parent / "mlartifacts").resolve().as_uri()
    name = run_dir.name if not run_dir.name.isdigit() else f"{run_dir.parent.name}/{run_dir.name}"
    try:
        logger = MLFlowLogger(
            experiment_name=cfg.experiment_name,
            run_name=name,
            tracking_uri=uri,
            tags={"run_dir": str(run_dir.resolve())},
            artifact_location=artifacts,
        )
        logger.run_id  # noqa: B018  (creates the experiment and the run)
    except (mlflow.MlflowException, SQLAlchemyError) as err:
        raise ConfigError(
            f"logger.mlflow.tracking_uri={uri!r}: MLflow could not start a run in experiment "
            f"{cfg.experiment_name!r} ({str(err).strip().splitlines()[0]})"
        ) from None
    return logger


def check_reachable(uri: str) -> None:
    """Fail in seconds when no server answers, rather than after MLflow's minutes of retries."""
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10).close()
    except urllib.error.HTTPError:
        pass  # something answered: MLflow's own requests tell what it is
    except (urllib.error.URLError, TimeoutError) as err:
        reason = getattr(err, "reason", err)
        raise ConfigError(
            f"logger.mlflow.tracking_uri={uri!r} cannot be reached ({reason}): start the server "
            "(mlflow server --host 127.0.0.1 --port 5000) or give one that runs"
        ) from None


def send_results(
    loggers: list[Logger], settings: dict[str, Any], finals: dict[str, float], figures, step: int
) -> None:
    """Send every logger the run's settings with its final metrics and its figures, then close it.

    `settings` are run_settings ("model/hidden"), `finals` the final/* metrics, `figures` the
    run's matplotlib figures by name.
    """
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger

    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            # The HPARAMS tab compares a sweep's runs: the settings beside their final metrics.
            # torch's writer files a bool as a number (0.0000); as text it reads true or false.
            shown = {k: str(v).lower() if isinstance(v, bool) else v for k, v in settings.items()}
            logger.log_hyperparams(shown, metrics=finals)
            for name, figure in figures.items():
                logger.experiment.add_figure(name, figure, close=False)
        else:
            logger.log_hyperparams(settings)  # CSV: hparams.yaml; MLflow: params
            logger.log_metrics(finals, step=step)
        if isinstance(logger, MLFlowLogger):
            for name, figure in figures.items():
                logger.experiment.log_figure(logger.run_id, figure, f"{name}.png")
        # Closes TensorBoard's event file and writes CSV's files: the run directory may go next.
        logger.finalize("success")
