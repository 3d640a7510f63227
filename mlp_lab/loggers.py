"""The run's loggers (TensorBoard, CSV, MLflow): views of metrics.json, built from the config."""

from __future__ import annotations

import contextlib
import fcntl
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlp_lab.config import ConfigError, LoggerConfig, MLflowConfig, TrainConfig
from mlp_lab.messages import first_line

if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger, MLFlowLogger

SQLITE = "sqlite:///"

# Where files are and how a run is carried out or watched, not what it computes: left out of the
# settings that TensorBoard's HPARAMS tab compares and of the report's variant labels.
LOGISTICS = (
    *("data.root", "data.download", "data.eval_batch_size", "model.compile", "callbacks.rich"),
    *("num_threads", "resume", "ckpt_path", "trial", "logger", "study"),
    *(f"trainer.{key}" for key in ("accelerator", "devices", "strategy", "num_nodes", "profiler")),
    *(f"trainer.{key}" for key in ("fast_dev_run", "detect_anomaly", "log_every_n_steps")),
    *(f"trainer.{key}" for key in ("enable_progress_bar", "progress_bar_refresh_rate")),
    *(f"trainer.{key}" for key in ("enable_model_summary", "num_sanity_val_steps")),
)


def is_logistics(key: str) -> bool:
    """Whether a dotted setting or override key is logistics, or lies in a section that is."""
    return any(key == k or key.startswith(f"{k}.") for k in LOGISTICS)


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
    """The settings that define a run, flat ("model/hidden"), the keys in `first` leading."""
    from mlp_lab.losses import own_options  # torch, which a run has imported by now

    unused = {f"loss.{k}" for k in set(vars(cfg.loss)) - {"name", *own_options(cfg.loss)}}
    settings = {
        name: value
        for name, value in flatten(asdict(cfg)).items()
        if not is_logistics(name) and name not in unused
    }
    leading = [n for n in settings if any(n == k or n.startswith(f"{k}.") for k in first)]
    return {name.replace(".", "/"): settings[name] for name in [*leading, *settings]}


def build(cfg: LoggerConfig, run_dir: Path, label: str = "") -> list[Logger]:
    """The Lightning loggers of a run; an unreachable MLflow store stops it before training."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    loggers: list[Logger] = []
    if cfg.tensorboard is not None:
        # A resumed run goes on writing where it began, whatever its command line now says.
        began = sorted(p.parent for p in (run_dir / "tensorboard").rglob("events.out.tfevents.*"))
        version = str(began[0].relative_to(run_dir / "tensorboard")) if began else label
        version = "" if version == "." else version
        loggers.append(
            TensorBoardLogger(run_dir, name="tensorboard", version=version, default_hp_metric=False)
        )
    if cfg.csv is not None:
        # One version per part of the run: a resumed part would otherwise replace metrics.csv.
        loggers.append(CSVLogger(run_dir, name="csv"))
    if cfg.mlflow is not None:
        loggers.append(mlflow_logger(cfg.mlflow, run_dir, label))
    return loggers


def mlflow_logger(cfg: MLflowConfig, run_dir: Path, label: str = "") -> MLFlowLogger:
    """An MLflow run named after the run directory and what its sweep varies."""
    try:
        import mlflow
    except ImportError:
        raise ConfigError("logger=mlflow needs MLflow: pip install 'mlp_lab[mlflow]'") from None
    from lightning.pytorch.loggers import MLFlowLogger
    from sqlalchemy.exc import SQLAlchemyError

    uri, artifacts, alone = cfg.tracking_uri, None, contextlib.nullcontext()
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
        # Runs starting together would each create a new store's tables, and its experiment.
        alone = one_at_a_time(database.with_name(f"{database.name}.lock"))
    name = run_dir.name if not run_dir.name.isdigit() else f"{run_dir.parent.name}/{run_dir.name}"
    name = f"{name} {label}" if label else name
    try:
        with alone:
            logger = MLFlowLogger(
                experiment_name=cfg.experiment_name,
                run_name=name,
                tracking_uri=uri,
                tags={"run_dir": str(run_dir.resolve())},
                artifact_location=artifacts,
            )
            logger.run_id  # noqa: B018  (creates the experiment and the run)
            # MLflow 3 opens an experiment of this kind on its runs, not on GenAI traces.
            kind = ("mlflow.experimentKind", "custom_model_development")
            logger.experiment.set_experiment_tag(logger.experiment_id, *kind)
    except (mlflow.MlflowException, SQLAlchemyError) as err:
        raise ConfigError(
            f"logger.mlflow.tracking_uri={uri!r}: MLflow could not start a run in experiment "
            f"{cfg.experiment_name!r} ({first_line(err)})"
        ) from None
    return logger


@contextlib.contextmanager
def one_at_a_time(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file `lock` (the kernel drops it if the process dies)."""
    with lock.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        yield


def mlflow_run(loggers: list[Logger], cfg: LoggerConfig) -> dict:
    """Where the run's MLflow run is, for its record; {} without one."""
    from lightning.pytorch.loggers import MLFlowLogger

    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            ids = {"experiment_id": logger.experiment_id, "run_id": logger.run_id}
            return {"mlflow": {"tracking_uri": cfg.mlflow.tracking_uri, **ids}}
    return {}


def mlflow_view(run: dict) -> str:
    """The MLflow address of a run's experiment, opened on its training runs."""
    page = f"#/experiments/{run['experiment_id']}?workflowType=machine_learning"
    uri = run["tracking_uri"]
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{page}"
    return f"mlflow ui --backend-store-uri {uri}, then http://127.0.0.1:5000/{page}"


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
    """Send every logger the run's settings, final metrics and figures, then close it."""
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
