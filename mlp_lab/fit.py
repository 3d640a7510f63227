"""One run's training: fit an MLP, test its best checkpoint, and keep its record and figures.

`python -m mlp_lab.train` composes the config and calls `train`; benchmarks and tests call it too.
"""

from __future__ import annotations

import logging
import pickle
import re
import statistics
import time
from collections.abc import Sequence
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
from lightning.pytorch.profilers import AdvancedProfiler, PyTorchProfiler, SimpleProfiler
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only

from mlp_lab import cluster, loggers, runs
from mlp_lab.config import ConfigError, TrainConfig, run_settings
from mlp_lab.data import DataError, MNISTDataModule
from mlp_lab.figures import save_run_figures
from mlp_lab.module import STEP_SETTINGS, MLPClassifier, TrainingDiverged

log = logging.getLogger(__name__)


PROFILERS = {"simple": SimpleProfiler, "advanced": AdvancedProfiler, "pytorch": PyTorchProfiler}
SKIPPED_IN_DEV_RUN = ("progress_bar_refresh_rate", "profiler", *STEP_SETTINGS)


class RunInterrupted(RuntimeError):
    """Ctrl-C or SIGTERM stopped the run; its completed epochs are saved."""


class OutOfMemory(RuntimeError):
    """The run asked for more memory than there is."""

    @classmethod
    def of(cls, err: BaseException) -> OutOfMemory | None:
        """The one-line error for `err` when it is a failed allocation (torch's or Python's)."""
        text = str(err)
        if not (isinstance(err, MemoryError | torch.OutOfMemoryError) or "allocate" in text):
            return None
        tried = re.search(r"tried to allocate (\d+) bytes", text)
        size = f" ({int(tried[1]) / 2**30:,.1f} GiB in one piece)" if tried else ""
        return cls(
            f"out of memory{size}: use a smaller model.hidden or data.batch_size, or fewer jobs "
            "at once"
        )


# What ends a run with one line of its own, its record marked failed or interrupted.
STOPS = (DataError, TrainingDiverged, RunInterrupted, OutOfMemory)


class EarlyStop(EarlyStopping):
    """Lightning's EarlyStopping; a run resumed after it stopped stays stopped."""

    def on_train_start(self, trainer, pl_module):
        if self.wait_count >= self.patience:
            trainer.should_stop = True


class EpochCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, its file names counting epochs from 1 as the record does."""

    def format_checkpoint_name(self, metrics, filename=None, ver=None, prefix=None) -> str:
        if "epoch" in metrics:
            metrics = {**metrics, "epoch": metrics["epoch"] + 1}
        return super().format_checkpoint_name(metrics, filename, ver, prefix)


def checkpoint_callbacks(run_dir: Path) -> tuple[ModelCheckpoint, ModelCheckpoint]:
    """The best-val checkpoint and last.ckpt, both saved at the epoch's very end.

    Saved once the epoch's training metrics are logged, a checkpoint holds whole epochs only, and
    resuming starts the next one.
    """
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
    return best, last


def load_start(cfg: TrainConfig, module: MLPClassifier) -> Path | None:
    """The checkpoint that training continues from (resume's last.ckpt, ckpt_path, or none),
    checked by loading its weights into `module`."""
    if cfg.resume:
        path = runs.last_checkpoint(cfg.resume)
        if not path.is_file() and (Path(cfg.resume) / runs.RECORD).is_file():
            log.info("%s was stopped before its first epoch ended: starting it again", cfg.resume)
            return None
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


class RunRecord(L.Callback):
    """Keeps the per-epoch history and writes the run's record after every epoch.

    Every checkpoint carries the history and the random state, so a resumed run continues both.
    """

    def __init__(self, run_dir: Path, record: dict, verbose: bool = False):
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
            logger.log_metrics({"time/epoch_s": seconds}, step=trainer.global_step)
        entry = {
            "epoch": epoch,
            "train_loss": metrics["train/loss"],
            "train_acc": metrics["train/acc"],
            "val_loss": metrics.get("val/loss"),
            "val_acc": metrics.get("val/acc"),
            "epoch_time_s": round(seconds, 4),
        }
        self.epochs.append(entry)
        if not trainer.is_global_zero:  # under DDP, rank 0 alone writes the run's record
            return
        self.record["parts"][-1]["heartbeat"] = time.time()
        if self.verbose:
            log.info(
                "epoch %d/%d: train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.2f s",
                epoch,
                trainer.max_epochs,
                *(entry[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc")),
                seconds,
            )
        runs.write_record(
            self.run_dir, {**self.record, "epochs": len(self.epochs), "history": self.epochs}
        )


def build(cfg: TrainConfig) -> tuple[MNISTDataModule, MLPClassifier]:
    """The data module and the model a run of `cfg` trains, seeded: train, benchmarks and tests."""
    L.seed_everything(cfg.seed, workers=True)
    dm = MNISTDataModule(**asdict(cfg.data), seed=cfg.seed)
    dm.prepare_data()  # a missing or corrupt dataset stops the run here, before anything is built
    return dm, MLPClassifier.from_config(cfg, dm.facts)


def trainer_arguments(cfg: TrainConfig, run_dir: Path) -> dict:
    """The `lightning.Trainer` keyword arguments of the config's trainer section."""
    args = asdict(cfg.trainer)
    for key in ("progress_bar_refresh_rate", *STEP_SETTINGS):  # not the Trainer's own
        args.pop(key)
    if cfg.trainer.profiler:  # its report in the run directory: fit-profile.txt, test-profile.txt
        profiler = PROFILERS[cfg.trainer.profiler]
        args["profiler"] = profiler(dirpath=run_dir, filename="profile")
    return {**args, "default_root_dir": run_dir}


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


def display(cfg: TrainConfig) -> list[L.Callback]:
    """The progress bar and the model summary: tqdm's and Lightning's, or Rich's."""
    trainer, rich = cfg.trainer, cfg.callbacks.rich
    shown = []
    if trainer.enable_progress_bar:
        refresh = trainer.progress_bar_refresh_rate
        shown.append(RichEpochBar(refresh) if rich else EpochBar(refresh))
    if trainer.enable_model_summary and rich:
        shown.append(RichModelSummary())
    return shown


def dev_run(cfg: TrainConfig, dm: MNISTDataModule, module: MLPClassifier) -> dict:
    """fast_dev_run: one batch of each split through fit and test, nothing written."""
    trainer = L.Trainer(
        **{k: v for k, v in asdict(cfg.trainer).items() if k not in SKIPPED_IN_DEV_RUN},
        logger=False,
        callbacks=display(cfg),
    )
    trainer.fit(module, datamodule=dm)
    (test,) = trainer.test(module, datamodule=dm, verbose=False)
    return {"status": "fast_dev_run", "test_acc": test["test/acc"], "test_loss": test["test/loss"]}


def train(cfg: TrainConfig, run_dir: Path, lead: Sequence[str] = ()) -> dict:
    """Fit, pick the checkpoint with the best val accuracy, test it; return the run's record.

    `lead`: the keys that the loggers' tables of settings show first (those a sweep varies)."""
    wall_start, started = time.perf_counter(), time.time()
    # Under SLURM a task's share of the node's cores, unless num_threads says otherwise.
    threads = cfg.num_threads or cluster.cpus_per_task()
    if threads:
        torch.set_num_threads(threads)
    dm, module = build(cfg)
    widths = "-".join(map(str, [dm.in_features, *cfg.model.hidden, dm.num_classes]))
    log.info(
        "MLP %s %s: %s parameters; %d torch threads",
        widths,
        cfg.model.activation,
        f"{module.num_parameters:,}",
        torch.get_num_threads(),
    )
    if cfg.trainer.fast_dev_run:
        return dev_run(cfg, dm, module)
    start_from = load_start(cfg, module)

    # A resumed run keeps its history and adds a part: its times add up over the parts.
    earlier = runs.earlier_record(run_dir) if cfg.resume else {}
    record = {"status": "running", "config": asdict(cfg), "params": module.num_parameters}
    record["history"] = earlier.get("history", [])
    record["parts"] = [*earlier.get("parts", []), runs.new_part(started)]
    if rank_zero_only.rank == 0:  # the run's owner is known before its first epoch ends
        runs.write_record(run_dir, record)
    # Without a progress bar, a line per epoch.
    history = RunRecord(run_dir, record, verbose=not cfg.trainer.enable_progress_bar)
    best_ckpt, last_ckpt = checkpoint_callbacks(run_dir)
    logger = loggers.build(cfg.logger, run_dir)  # a list, possibly empty
    callbacks = [best_ckpt, last_ckpt, history, *loggers.callbacks(logger)]
    # A trial of a search reports every epoch's val/acc to its study, whose pruner may stop it.
    report = None
    if cfg.trial.number is not None:
        from mlp_lab.search import TrialReport  # Optuna, imported for a search's trials alone

        report = TrialReport(cfg.trial)
    if report is not None:
        callbacks.append(report)
    patience = cfg.callbacks.early_stopping
    early_stop = EarlyStop(runs.MONITOR, mode="max", **asdict(patience)) if patience else None
    if early_stop is not None:
        callbacks.append(early_stop)
    trainer = L.Trainer(
        **trainer_arguments(cfg, run_dir), logger=logger, callbacks=[*callbacks, *display(cfg)]
    )

    # Lightning unwraps a compiled module for checkpoints, so they load into a plain one.
    fitted = torch.compile(module) if cfg.model.compile else module
    fit_start = time.perf_counter()
    record["parts"][-1]["fit_started"] = time.time()
    try:
        trainer.fit(fitted, datamodule=dm, ckpt_path=start_from)
    except SystemExit:  # Lightning's answer to SIGTERM and Ctrl-C, after its own clean-up
        if not trainer.interrupted:
            raise
        done = len(history.epochs)
        reason = cluster.stop_reason()
        raise RunInterrupted(
            f"{reason + ': ' if reason else ''}"
            f"interrupted in epoch {done + 1}: {done} completed epochs are saved in "
            f"{runs.last_checkpoint(run_dir)}; continue with "
            f"`python -m mlp_lab.train resume={run_dir}`"
        ) from None
    fit_time = time.perf_counter() - fit_start
    best_path = best_ckpt.best_model_path
    (test,) = trainer.test(fitted, datamodule=dm, ckpt_path=best_path, verbose=False)
    if not trainer.is_global_zero:  # under DDP, rank 0 alone writes the run's record
        return record

    best = max(history.epochs, key=lambda e: e["val_acc"])
    if early_stop is not None and early_stop.wait_count >= early_stop.patience:
        record["stopped_early"] = {"epoch": len(history.epochs), "patience": early_stop.patience}
    record["parts"][-1].update(fit_time_s=fit_time, wall_time_s=time.perf_counter() - wall_start)
    record.update(
        status="pruned" if report is not None and report.pruned else "completed",
        epochs=len(history.epochs),
        history=history.epochs,
        best_val_acc=best["val_acc"],
        best_epoch=best["epoch"],
        test_acc=test["test/acc"],
        test_loss=test["test/loss"],
        mean_epoch_time_s=statistics.fmean(e["epoch_time_s"] for e in history.epochs),
        **runs.total_times(record["parts"]),
        checkpoint=str(Path(best_path).relative_to(run_dir)),
    )
    if start_from is not None:
        record["started_from"] = str(start_from)
    runs.write_record(run_dir, record)
    finals = {f"final/{k}": record[k] for k in ("best_val_acc", "test_acc", "test_loss")}
    figures = save_run_figures(module, dm, history.epochs, run_dir)
    settings = run_settings(cfg, lead)
    loggers.send_results(logger, settings, finals, figures, trainer.global_step)
    return record
