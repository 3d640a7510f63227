"""The Lightning callbacks of a run, picked from its config by `for_run`."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    EarlyStopping,
    ModelCheckpoint,
    RichModelSummary,
    RichProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf
from lightning.pytorch.trainer.states import TrainerFn

from mlp_lab import runs
from mlp_lab.config import TrainConfig, TrialConfig

log = logging.getLogger(__name__)


class EpochCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, its file names counting epochs from 1 as the record does."""

    def format_checkpoint_name(self, metrics, filename=None, ver=None, prefix=None) -> str:
        if "epoch" in metrics:
            metrics = {**metrics, "epoch": metrics["epoch"] + 1}
        return super().format_checkpoint_name(metrics, filename, ver, prefix)


def checkpoints(run_dir: Path) -> list[ModelCheckpoint]:
    """The best-val checkpoint and last.ckpt, saved at the very end of each epoch."""
    best = EpochCheckpoint(
        dirpath=run_dir / runs.CHECKPOINTS,
        filename="epoch{epoch:02d}-val_acc{val/acc:.4f}",
        auto_insert_metric_name=False,
        # A run killed after saving an epoch's checkpoint saves the very same one again on resuming.
        enable_version_counter=False,
        monitor=runs.MONITOR,
        mode="max",
        save_on_train_epoch_end=True,
    )
    # A second callback rather than save_last: Lightning 2.6 refreshes "last" only in epochs that
    # improve the monitored metric when it saves at the epoch's end.
    last = ModelCheckpoint(
        dirpath=run_dir / runs.CHECKPOINTS,
        filename="last",
        enable_version_counter=False,
        save_on_train_epoch_end=True,
    )
    return [best, last]


class RunRecord(L.Callback):
    """Writes the record after every epoch; checkpoints carry the history and random state."""

    def __init__(self, run_dir: Path, record: dict | None, verbose: bool = False):
        self.run_dir, self.record, self.verbose = run_dir, record, verbose
        self.epochs: list[dict] = []
        self._pending: tuple[int, float] | None = None

    def on_train_epoch_start(self, trainer, pl_module):
        self._add_epoch(trainer)
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        # Callbacks run before the module logs its training metrics, so they are read later.
        self._pending = (trainer.current_epoch + 1, time.perf_counter() - self._start)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        # Checkpoints are saved at the end of an epoch, after its training metrics are logged.
        self._add_epoch(trainer)
        checkpoint["epoch_history"] = self.epochs
        checkpoint["torch_rng_state"] = torch.get_rng_state()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        if trainer.state.fn != TrainerFn.FITTING:  # testing the best checkpoint changes nothing
            return
        self.epochs = list(checkpoint.get("epoch_history", []))
        if "torch_rng_state" in checkpoint:  # dropout goes on with the masks it would have drawn
            torch.set_rng_state(checkpoint["torch_rng_state"])

    def on_train_end(self, trainer, pl_module):
        self._add_epoch(trainer)

    def _add_epoch(self, trainer) -> None:
        if self._pending is None:
            return
        (epoch, seconds), self._pending = self._pending, None
        metrics = {k: round(float(v), 6) for k, v in trainer.callback_metrics.items()}
        for logger in trainer.loggers:
            logger.log_metrics({"time/epoch_s": seconds}, step=epoch)
        entry = {"epoch": epoch, "train_loss": metrics["train/loss"]}
        entry.update(train_acc=metrics["train/acc"], val_loss=metrics.get("val/loss"))
        entry.update(val_acc=metrics.get("val/acc"), epoch_time_s=round(seconds, 4))
        self.epochs.append(entry)
        if self.record is None:
            return
        if self.verbose:
            log.info(
                "epoch %d/%d: train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.2f s",
                epoch,
                trainer.max_epochs,
                *(entry[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc")),
                seconds,
            )
        runs.add_epoch(self.run_dir, self.record, self.epochs)


def slow_start_causes(cfg: TrainConfig) -> list[str]:
    """What in a run's settings makes it start slowly, each with what to try."""
    model, depth = cfg.model, len(cfg.model.hidden)
    causes = []
    if model.init_std is not None and model.init_std < 0.05 and depth >= 3 and not model.batch_norm:
        causes.append(
            f"N(0, {model.init_std}²) weights over {depth} hidden layers start with signals that "
            "nearly vanish (try model.init_std=null or model.batch_norm=true)"
        )
    if cfg.loss.name == "focal" and cfg.loss.alpha < 1:
        causes.append(f"loss.alpha={cfg.loss.alpha} shrinks every step as much (try loss.alpha=1)")
    if cfg.optimizer.lr < (0.01 if cfg.optimizer.name == "sgd" else 1e-4):
        causes.append(f"optimizer.lr={cfg.optimizer.lr} is small for {cfg.optimizer.name}")
    return causes or ["try a larger optimizer.lr, model.init_std=null or model.batch_norm=true"]


class SlowStart(L.Callback):
    """One warning, naming likely causes, when val/acc is still near chance."""

    EPOCHS = 3

    def __init__(self, cfg: TrainConfig):
        self.causes = slow_start_causes(cfg)

    def on_train_epoch_end(self, trainer, pl_module):
        acc, chance = (
            trainer.callback_metrics.get(runs.MONITOR),
            1 / pl_module.hparams.data["num_classes"],
        )
        if trainer.current_epoch + 1 != self.EPOCHS or acc is None or float(acc) >= 3 * chance:
            return
        if not trainer.is_global_zero:  # said once, not by each DDP process
            return
        log.warning(
            "val/acc is %.3f after %d epochs, near chance (%.3f): %s",
            float(acc),
            self.EPOCHS,
            chance,
            "; ".join(self.causes),
        )


class EarlyStop(EarlyStopping):
    """Lightning's EarlyStopping; a run resumed after it stopped stays stopped."""

    def on_train_start(self, trainer, pl_module):
        if self.wait_count >= self.patience:
            trainer.should_stop = True

    @property
    def stopped(self) -> bool:
        return self.wait_count >= self.patience


class TrialReport(L.Callback):
    """Reports val/acc after every epoch to the trial, and stops the run when the pruner says so."""

    def __init__(self, cfg: TrialConfig):
        from mlp_lab.trial import open_trial  # Optuna, for a search's trials alone

        self.trial = open_trial(cfg)
        self.pruned = False

    def on_train_epoch_end(self, trainer, pl_module):
        # Validation has run: its val/acc is logged. Stopping here still saves the epoch.
        if trainer.sanity_checking or runs.MONITOR not in trainer.callback_metrics:
            return
        epoch = trainer.current_epoch + 1
        self.trial.report(float(trainer.callback_metrics[runs.MONITOR]), epoch)
        # A trial at its last epoch has nothing left to save: it completes.
        if epoch < trainer.max_epochs and self.trial.should_prune():
            self.pruned = True
            trainer.should_stop = True


class EpochBar(TQDMProgressBar):
    """tqdm's progress bar, counting epochs from 1 as the record and the logs do."""

    def on_train_epoch_start(self, trainer, *args) -> None:
        # Lightning's own, less its description "Epoch 0", which tqdm would print first.
        if self._leave:
            self.train_progress_bar = self.init_train_tqdm()
        epoch = f"Epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"
        self.train_progress_bar.set_description(epoch, refresh=False)
        self.train_progress_bar.reset(total=convert_inf(self.total_train_batches))


class RichEpochBar(RichProgressBar):
    """Rich's progress bar, counting epochs from 1 as the record and the logs do."""

    def _get_train_description(self, current_epoch: int) -> str:
        epoch = f"Epoch {current_epoch + 1}/{self.trainer.max_epochs}"
        return f"{epoch:{len(self.validation_description)}}"


def bar_shown(cfg: TrainConfig) -> bool:
    """Whether a progress bar is drawn: when asked to, on a terminal."""
    return cfg.trainer.enable_progress_bar and sys.stderr.isatty()


def display(cfg: TrainConfig) -> list[L.Callback]:
    """The progress bar and the model summary: tqdm's and Lightning's, or Rich's."""
    trainer, rich = cfg.trainer, cfg.callbacks.rich
    shown: list[L.Callback] = []
    if bar_shown(cfg):
        refresh = trainer.progress_bar_refresh_rate
        shown.append(RichEpochBar(refresh) if rich else EpochBar(refresh))
    if trainer.enable_model_summary and rich:
        shown.append(RichModelSummary())
    return shown


def for_run(cfg: TrainConfig, run_dir: Path, record: dict | None) -> list[L.Callback]:
    """A run's callbacks: checkpoints, record, early stopping, trial report, display."""
    chosen = [
        *checkpoints(run_dir),
        RunRecord(run_dir, record, verbose=not bar_shown(cfg)),
        SlowStart(cfg),
    ]
    if cfg.callbacks.early_stopping is not None:
        patience = asdict(cfg.callbacks.early_stopping)
        chosen.append(EarlyStop(runs.MONITOR, mode="max", **patience))
    if cfg.trial.number is not None:
        chosen.append(TrialReport(cfg.trial))
    return [*chosen, *display(cfg)]
