"""Train one MLP and leave a complete record of the run.

python -m mlp_lab.train                         # the lab's baseline on Fashion-MNIST
python -m mlp_lab.train data=mnist optimizer.lr=0.05
python -m mlp_lab.train -m model.hidden=[256],[256,256]   # a sweep
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torchmetrics.functional.classification import multiclass_confusion_matrix

from mlp_lab.config import ConfigError, SweepError, TrainConfig, check_sweep, register
from mlp_lab.data import DataError, MNISTDataModule, TensorBatches
from mlp_lab.module import MLPClassifier
from mlp_lab.report import plot_confusion, plot_curves, plot_predictions

log = logging.getLogger(__name__)
MONITOR = "val/acc"


class TrainingDiverged(RuntimeError):
    """The training loss stopped being a finite number."""


class RunInterrupted(RuntimeError):
    """Ctrl-C or SIGTERM stopped the run; its completed epochs are saved."""


class JobFailed(CompactHydraException):
    """One job of a sweep failed; Hydra prints only this message once the other jobs are done."""


class EpochHistory(L.Callback):
    """Per-epoch train/val loss and accuracy and wall time (train + validation).

    Every checkpoint carries the history and the random state, so a resumed run continues both.
    """

    def __init__(self, on_epoch: Callable[[list[dict]], None] | None = None, verbose=False):
        self.epochs: list[dict] = []
        self.on_epoch, self.verbose = on_epoch, verbose
        self._pending: tuple[int, float] | None = None

    def on_train_epoch_start(self, trainer, pl_module):
        self._record(trainer)
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        # Callbacks run before the module logs its training metrics, so they are read later.
        self._pending = (trainer.current_epoch + 1, time.perf_counter() - self._start)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        # Checkpoints are saved at the end of an epoch, after its training metrics are logged.
        self._record(trainer)
        checkpoint["epoch_history"] = self.epochs
        checkpoint["torch_rng_state"] = torch.get_rng_state()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        if trainer.state.fn != TrainerFn.FITTING:  # testing the best checkpoint changes nothing
            return
        self.epochs = list(checkpoint.get("epoch_history", []))
        if "torch_rng_state" in checkpoint:  # dropout goes on with the masks it would have drawn
            torch.set_rng_state(checkpoint["torch_rng_state"])

    def on_train_end(self, trainer, pl_module):
        self._record(trainer)

    def _record(self, trainer) -> None:
        if self._pending is None:
            return
        (epoch, seconds), self._pending = self._pending, None
        metrics = {k: round(float(v), 6) for k, v in trainer.callback_metrics.items()}
        if not math.isfinite(metrics["train/loss"]):
            kept = "; the checkpoints of the epochs before it are kept" if epoch > 1 else ""
            raise TrainingDiverged(
                f"training loss is {metrics['train/loss']} at epoch {epoch}: lower optimizer.lr "
                f"or change the loss{kept}"
            )
        if trainer.logger is not None:
            trainer.logger.log_metrics({"time/epoch_s": seconds}, step=trainer.global_step)
        entry = {
            "epoch": epoch,
            "train_loss": metrics["train/loss"],
            "train_acc": metrics["train/acc"],
            "val_loss": metrics.get("val/loss"),
            "val_acc": metrics.get("val/acc"),
            "epoch_time_s": round(seconds, 4),
        }
        self.epochs.append(entry)
        if self.verbose and trainer.is_global_zero:
            log.info(
                "epoch %d/%d: train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.2f s",
                epoch,
                trainer.max_epochs,
                *(entry[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc")),
                seconds,
            )
        if self.on_epoch is not None and trainer.is_global_zero:
            self.on_epoch(self.epochs)


def write_record(run_dir: Path, record: dict) -> None:
    """metrics.json, replaced whole, so a reader never sees half a file."""
    path = run_dir / "metrics.json"
    path.with_suffix(".part").write_text(json.dumps(record, indent=2) + "\n")
    path.with_suffix(".part").replace(path)


def start_checkpoint(cfg: TrainConfig, module: MLPClassifier) -> Path | None:
    """The checkpoint that training continues from: resume's last.ckpt, ckpt_path, or none."""
    if cfg.resume:
        path = Path(cfg.resume) / "checkpoints" / "last.ckpt"
        if not path.is_file():
            raise ConfigError(
                f"resume={cfg.resume}: no checkpoints/last.ckpt there; give the directory of a "
                "run of mlp_lab.train (outputs/runs/<time>)"
            )
    elif cfg.ckpt_path:
        path = Path(cfg.ckpt_path)
    else:
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state)
    except (OSError, KeyError, RuntimeError, pickle.UnpicklingError) as err:
        reason = str(err).strip().splitlines()[0]
        raise ConfigError(f"{path} is not a checkpoint of this model: {reason}") from None
    return path


def train(cfg: TrainConfig, run_dir: Path) -> dict:
    """Fit, pick the checkpoint with the best val accuracy, test it; return the run's record."""
    wall_start = time.perf_counter()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    L.seed_everything(cfg.seed, workers=True)
    dm = MNISTDataModule(**asdict(cfg.data), seed=cfg.seed)
    dm.prepare_data()  # a missing or corrupt dataset stops the run here, before anything is built
    norm = {"mean": dm.info.mean, "std": dm.info.std} if cfg.model.normalize else {}
    module = MLPClassifier(
        in_features=dm.in_features,
        num_classes=dm.num_classes,
        hidden=list(cfg.model.hidden),
        activation=cfg.model.activation,
        init_std=cfg.model.init_std,
        **norm,
        dropout=cfg.model.dropout,
        batch_norm=cfg.model.batch_norm,
        impl=cfg.model.impl,
        loss=cfg.loss.name,
        loss_params=cfg.loss.params(),
        optimizer=cfg.optimizer.name,
        lr=cfg.optimizer.lr,
        momentum=cfg.optimizer.momentum,
        weight_decay=cfg.optimizer.weight_decay,
        nesterov=cfg.optimizer.nesterov,
        schedule=cfg.optimizer.schedule,
        warmup=cfg.optimizer.warmup,
        max_norm=cfg.model.max_norm,
        dataset=dm.name,
        class_names=dm.class_names,
    )
    widths = "-".join(map(str, [dm.in_features, *cfg.model.hidden, dm.num_classes]))
    log.info(
        "MLP %s %s: %s parameters; %d torch threads",
        widths,
        cfg.model.activation,
        f"{module.num_parameters:,}",
        torch.get_num_threads(),
    )
    start_from = start_checkpoint(cfg, module)

    record = {
        "status": "running",
        "dataset": dm.name,
        "hidden": list(cfg.model.hidden),
        "activation": cfg.model.activation,
        "loss": cfg.loss.name,
        "dropout": cfg.model.dropout,
        "batch_norm": cfg.model.batch_norm,
        "impl": cfg.model.impl,
        "optimizer": cfg.optimizer.name,
        "lr": cfg.optimizer.lr,
        "batch_size": cfg.data.batch_size,
        "params": module.num_parameters,
        "seed": cfg.seed,
    }

    def write_history(epochs: list[dict]) -> None:
        write_record(run_dir, {**record, "epochs": len(epochs), "history": epochs})

    # Without a progress bar, a line per epoch.
    history = EpochHistory(write_history, verbose=not cfg.trainer.enable_progress_bar)
    # Both save at the epoch's very end, once its training metrics are logged: a checkpoint then
    # holds whole epochs only, and resuming starts the next one.
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="epoch{epoch:02d}-val_acc{val/acc:.4f}",
        auto_insert_metric_name=False,
        monitor=MONITOR,
        mode="max",
        save_on_train_epoch_end=True,
    )
    # A second callback rather than save_last: Lightning 2.6 refreshes "last" only in epochs that
    # improve the monitored metric when it saves at the epoch's end.
    latest = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="last",
        enable_version_counter=False,
        save_on_train_epoch_end=True,
    )
    logger = TensorBoardLogger(run_dir, name="tensorboard", version="", default_hp_metric=False)
    trainer_args = asdict(cfg.trainer)
    refresh_rate = trainer_args.pop("progress_bar_refresh_rate")
    callbacks = [checkpoint, latest, history, LearningRateMonitor(logging_interval="epoch")]
    if cfg.trainer.enable_progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=refresh_rate))
    trainer = L.Trainer(
        **trainer_args, default_root_dir=run_dir, logger=logger, callbacks=callbacks
    )

    # Lightning unwraps a compiled module for checkpoints, so they load into a plain one.
    fitted = torch.compile(module) if cfg.model.compile else module
    fit_start = time.perf_counter()
    try:
        trainer.fit(fitted, datamodule=dm, ckpt_path=start_from)
    except SystemExit:  # Lightning's answer to SIGTERM and Ctrl-C, after its own clean-up
        if not trainer.interrupted:
            raise
        done = len(history.epochs)
        raise RunInterrupted(
            f"interrupted in epoch {done + 1}: {done} completed epochs are saved in "
            f"{run_dir / 'checkpoints' / 'last.ckpt'}; continue with "
            f"`python -m mlp_lab.train resume={run_dir}`"
        ) from None
    fit_time = time.perf_counter() - fit_start
    test = trainer.test(fitted, datamodule=dm, ckpt_path=checkpoint.best_model_path, verbose=False)[
        0
    ]
    if not trainer.is_global_zero:  # under DDP, rank 0 alone writes the run's record
        return record

    best = max(history.epochs, key=lambda e: e["val_acc"])
    record.update(
        status="completed",
        epochs=len(history.epochs),
        history=history.epochs,
        best_val_acc=best["val_acc"],
        best_epoch=best["epoch"],
        test_acc=test["test/acc"],
        test_loss=test["test/loss"],
        fit_time_s=fit_time,
        mean_epoch_time_s=statistics.fmean(e["epoch_time_s"] for e in history.epochs),
        wall_time_s=time.perf_counter() - wall_start,
        checkpoint=str(Path(checkpoint.best_model_path).relative_to(run_dir)),
    )
    if start_from is not None:
        record["started_from"] = str(start_from)
    write_record(run_dir, record)
    # The HPARAMS tab compares a sweep's runs: the settings with their final metrics, logged once.
    finals = {f"final/{k}": record[k] for k in ("best_val_acc", "test_acc", "test_loss")}
    logger.log_hyperparams(asdict(cfg), metrics=finals)
    save_figures(module, dm, history.epochs, run_dir, logger)
    logger.finalize("success")  # closes the event file: the run directory may go right after
    return record


def save_figures(module, dm, history, run_dir: Path, logger, n: int = 12) -> None:
    """curves.png, predictions.png and confusion.png in the run directory and in TensorBoard."""
    x, y = dm.splits["test"]
    module.eval()
    with torch.no_grad():
        batches = TensorBatches(x, y, dm.eval_batch_size)
        preds = torch.cat([module(xb.to(module.device)).argmax(1).cpu() for xb, _ in batches])
    x, y = x[:n].cpu(), y.cpu()
    names = dm.class_names
    matrix = multiclass_confusion_matrix(preds, y, len(names))
    figures = {
        "curves": plot_curves(history, run_dir / "curves.png"),
        "predictions": plot_predictions(x, y[:n], preds[:n], names, run_dir / "predictions.png", n),
        "confusion": plot_confusion(matrix, names, run_dir / "confusion.png"),
    }
    for name, figure in figures.items():
        logger.experiment.add_figure(name, figure, close=False)


def resumed_config(run_dir: Path, overrides: list[str]) -> TrainConfig:
    """The config a run was started with, and what this command line changes in it."""
    saved = run_dir / ".hydra" / "config.yaml"
    if not saved.is_file():
        raise ConfigError(
            f"resume={run_dir} is not a run directory (no .hydra/config.yaml): give one of "
            "outputs/runs/<time>"
        )
    changes = [o for o in overrides if not o.startswith(("resume=", "hydra."))]
    try:
        cfg = OmegaConf.merge(
            OmegaConf.structured(TrainConfig),
            OmegaConf.load(saved),
            OmegaConf.from_dotlist(changes),
        )
    except OmegaConfBaseException as err:
        raise ConfigError(
            f"resume: {' '.join(changes)} cannot change the saved config of {run_dir} "
            f"({str(err).splitlines()[0]}); only key=value overrides such as "
            "trainer.max_epochs=20 can"
        ) from None
    cfg.resume = str(run_dir)
    return OmegaConf.to_object(cfg)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Entry point; returns the best validation accuracy for Hydra's sweepers."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    # Lightning's advertisement and a deprecation inside Lightning itself: noise in every run.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "Tip:" not in record.getMessage()
    )
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        config = OmegaConf.to_object(cfg)
        if multirun:
            check_sweep(str(config.trainer.strategy), str(hydra_cfg.launcher.get("_target_")))
        if config.resume:
            config = resumed_config(Path(config.resume), list(hydra_cfg.overrides.task))
        record = train(config, run_dir)
    except SweepError as err:  # no job of this sweep could run: stop it here
        raise SystemExit(f"error: {err}") from None
    except (ConfigError, DataError, TrainingDiverged, RunInterrupted) as err:
        message = f"{'stopped' if isinstance(err, RunInterrupted) else 'error'}: {err}"
        if rank_zero_only.rank == 0:
            _record_error(run_dir, err)
        if multirun and not isinstance(err, RunInterrupted):  # the sweep's other jobs go on
            log.error(message)
            raise JobFailed(message) from None
        raise SystemExit(message) from None  # Ctrl-C or SIGTERM stops a sweep too
    if rank_zero_only.rank == 0:
        print(
            f"test_acc={record['test_acc']:.4f} best_val_acc={record['best_val_acc']:.4f} "
            f"(epoch {record['best_epoch']}) params={record['params']:,} "
            f"wall={record['wall_time_s']:.1f}s run={run_dir}"
        )
    return record.get("best_val_acc", math.nan)


def _record_error(run_dir: Path, err: Exception) -> None:
    """Mark the run failed or interrupted in its metrics.json, keeping the history it has."""
    path = run_dir / "metrics.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        record = {}
    if record.get("status", "running") != "running":
        return  # a resume that never started: the run's own record stays as it was
    status = "interrupted" if isinstance(err, RunInterrupted) else "failed"
    run_dir.mkdir(parents=True, exist_ok=True)
    write_record(run_dir, {**record, "status": status, "error": str(err)})


register()

if __name__ == "__main__":
    main()
