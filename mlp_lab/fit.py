"""One run, step by step: data, model, record, fit, test, figures, loggers."""

from __future__ import annotations

import logging
import os
import pickle
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
from hydra.utils import get_class
from matplotlib.figure import Figure
from torchmetrics.functional.classification import multiclass_confusion_matrix

from mlp_lab import callbacks, checkpoints, cluster, loggers, messages, runs
from mlp_lab.callbacks import TrialReport
from mlp_lab.config import PROFILERS, ConfigError, TrainConfig
from mlp_lab.data import MNISTDataModule
from mlp_lab.datasets import DataError
from mlp_lab.figures import plot_confusion, plot_curves, plot_predictions
from mlp_lab.messages import autograd_found_nan, first_line, out_of_memory
from mlp_lab.module import MLPClassifier, TrainingDiverged

log = logging.getLogger(__name__)


class RunInterrupted(RuntimeError):
    """Ctrl-C or SIGTERM stopped the run; its completed epochs are saved."""


class OutOfMemory(RuntimeError):
    """The run asked for more memory than there is."""


# What ends a run with one line of its own, its record marked failed or interrupted.
STOPS = (DataError, TrainingDiverged, RunInterrupted, OutOfMemory)


def train(cfg: TrainConfig, run_dir: Path, leading: Sequence[str] = (), label: str = "") -> dict:
    """Fit, test the best-val checkpoint and return the run's record ({} on DDP's other ranks)."""
    try:
        return _train(cfg, run_dir, leading, label)
    except (MemoryError, RuntimeError) as err:
        if (why := out_of_memory(err)) is None:
            raise
        raise OutOfMemory(why) from None


def _train(cfg: TrainConfig, run_dir: Path, leading: Sequence[str], label: str) -> dict:
    started = float(os.environ.pop(runs.JOB_STARTED, 0)) or time.time()
    use_threads(cfg.num_threads)
    dm, module = build(cfg)
    if cfg.trainer.fast_dev_run:
        return dev_run(cfg, dm, module, run_dir)
    start_from = load_start(cfg, module)
    if cfg.resume:
        messages.quiet_resume()
    record = None  # under DDP, rank 0 alone keeps the run's record
    if cluster.process_rank() == 0:
        params, resumed = module.num_parameters, bool(cfg.resume)
        record = runs.start(run_dir, asdict(cfg), params, started, resumed)
    logger = loggers.build(cfg.logger, run_dir, label)  # a list, possibly empty
    trainer = L.Trainer(
        **trainer_arguments(cfg, run_dir),
        logger=logger,
        callbacks=callbacks.for_run(cfg, run_dir, record),
    )
    if record is not None:
        note_global_batch(trainer.world_size, cfg.data.batch_size)
        runs.start_fit(run_dir, record, cluster.device_name(trainer.strategy.root_device))
    fit_time = fit(trainer, module, dm, start_from, run_dir)
    best = trainer.checkpoint_callback.best_model_path
    (test,) = trainer.test(module, datamodule=dm, ckpt_path=best, verbose=False)
    if record is None:
        return {}
    times = {"fit_time_s": fit_time, "wall_time_s": time.time() - started}
    outcome = results(trainer, test, run_dir, len(record["history"]))
    outcome |= loggers.mlflow_run(logger, cfg.logger)
    if start_from is not None:
        outcome["started_from"] = str(start_from)
    preds, matrix = confusion(module, dm)
    outcome["test_confusion"] = {"classes": dm.class_names, "counts": matrix.tolist()}
    outcome["images"] = {split: len(labels) for split, (_, labels) in dm.splits.items()}
    record = runs.finish(run_dir, record, pruned(trainer), times, **outcome)
    figures = draw(dm, preds, matrix, record["history"], run_dir)
    finals = {f"final/{k}": record[k] for k in ("best_val_acc", "test_acc", "test_loss")}
    settings = loggers.run_settings(cfg, leading)
    loggers.send_results(logger, settings, finals, figures, record["epochs"])
    return record


def use_threads(num_threads: int | None) -> None:
    """torch's threads: `num_threads`, else under SLURM the task's CPUs, else torch's default."""
    threads = num_threads or cluster.cpus_per_task()
    if threads:
        torch.set_num_threads(threads)


def build(cfg: TrainConfig) -> tuple[MNISTDataModule, MLPClassifier]:
    """The data module and the model a run of `cfg` trains, seeded: train, benchmarks and tests."""
    L.seed_everything(cfg.seed, workers=True)
    dm = MNISTDataModule(cfg.data, cfg.seed)
    dm.prepare_data()  # a missing or corrupt dataset stops the run here, before anything is built
    module = MLPClassifier.from_config(cfg, dm.dataset_hparams)
    widths = "-".join(map(str, [dm.in_features, *cfg.model.hidden, dm.num_classes]))
    log.info(
        "MLP %s %s: %s parameters; %d torch threads",
        widths,
        cfg.model.activation,
        f"{module.num_parameters:,}",
        torch.get_num_threads(),
    )
    return dm, module


def trainer_arguments(cfg: TrainConfig, run_dir: Path) -> dict:
    """`lightning.Trainer`'s arguments: the trainer section less the progress bar's rate."""
    args = asdict(cfg.trainer)
    del args["progress_bar_refresh_rate"]
    args["enable_progress_bar"] = callbacks.bar_shown(cfg)
    if cfg.trainer.profiler:
        profiler = get_class(PROFILERS[cfg.trainer.profiler])
        args["profiler"] = profiler(dirpath=run_dir, filename="profile")
    return {**args, "default_root_dir": run_dir}


def note_global_batch(processes: int, batch: int) -> None:
    """Say, under DDP, that each step sees every process's batch."""
    if processes > 1:
        log.warning(
            "%d processes, each with batches of %d: a step sees %d images and an epoch has 1/%d "
            "of the steps; to compare with one process, scale optimizer.lr by %d or "
            "data.batch_size by 1/%d",
            *(processes, batch, processes * batch, processes, processes, processes),
        )


def dev_run(cfg: TrainConfig, dm: MNISTDataModule, module: MLPClassifier, run_dir: Path) -> dict:
    """fast_dev_run: one batch of each split through fit and test, nothing written."""
    arguments = {**trainer_arguments(cfg, run_dir), "profiler": None}
    trainer = L.Trainer(**arguments, logger=False, callbacks=callbacks.display(cfg))
    trainer.fit(module, datamodule=dm)
    (test,) = trainer.test(module, datamodule=dm, verbose=False)
    return {"test_acc": test["test/acc"], "test_loss": test["test/loss"]}


def load_start(cfg: TrainConfig, module: MLPClassifier) -> Path | None:
    """The checkpoint training continues from (resume's or ckpt_path), checked, or None."""
    if cfg.resume:
        path = checkpoints.last_checkpoint(cfg.resume)
        if not path.is_file():  # a run stopped, or planned by the lab, before an epoch ended
            log.info("%s has no finished epoch: starting it from the beginning", cfg.resume)
            return None
    elif cfg.ckpt_path:
        path = Path(cfg.ckpt_path)
    else:
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state)
    except (OSError, KeyError, RuntimeError, pickle.UnpicklingError) as err:
        reason = first_line(err)
        raise ConfigError(f"{path} is not a checkpoint of this model: {reason}") from None
    return path


def fit(trainer, module, dm, start_from: Path | None, run_dir: Path) -> float:
    """Train, from `start_from` when given; the seconds it took."""
    # Lightning unwraps a compiled module for checkpoints, so they load into a plain one.
    fitted = torch.compile(module) if module.hparams.model["compile"] else module
    fit_start = time.perf_counter()
    try:
        trainer.fit(fitted, datamodule=dm, ckpt_path=start_from)
    except SystemExit:  # Lightning's answer to SIGTERM and Ctrl-C, after its own clean-up
        if not trainer.interrupted:
            raise
        done = len(runs.earlier_record(run_dir).get("history", []))
        reason = cluster.stop_reason()
        last = checkpoints.last_checkpoint(run_dir)
        saved = f"{done} completed epochs are saved in {last}; continue"
        if not done:
            saved = "no epoch had ended, so none is saved; start it again"
        raise RunInterrupted(
            f"{reason + ': ' if reason else ''}interrupted in epoch {done + 1}: {saved} with "
            f"`{runs.resume_command(run_dir)}`"
        ) from None
    except RuntimeError as err:  # trainer.detect_anomaly names the operation that made a NaN
        if not autograd_found_nan(err):
            raise
        raise TrainingDiverged(
            f"{err} (anomaly detection, epoch {trainer.current_epoch + 1}): lower optimizer.lr "
            "or change the loss"
        ) from None
    return time.perf_counter() - fit_start


def pruned(trainer: L.Trainer) -> bool:
    """Whether a search's pruner stopped the run."""
    return any(isinstance(c, TrialReport) and c.pruned for c in trainer.callbacks)


def results(trainer: L.Trainer, test: dict, run_dir: Path, epochs: int) -> dict:
    """What the record keeps of the test and the checkpoints, and where early stopping stopped."""
    best = Path(trainer.checkpoint_callback.best_model_path)
    outcome = {"test_acc": test["test/acc"], "test_loss": test["test/loss"]}
    outcome["checkpoint"] = str(best.relative_to(run_dir))
    early = trainer.early_stopping_callback
    if early is not None and early.stopped:
        outcome["stopped_early"] = {"epoch": epochs, "patience": early.patience}
    return outcome


def confusion(module: MLPClassifier, dm: MNISTDataModule) -> tuple[torch.Tensor, torch.Tensor]:
    """The tested checkpoint's predicted classes and their counts by true class."""
    x, y = dm.splits["test"]
    preds = module.classes(x, dm.eval_batch_size)
    return preds, multiclass_confusion_matrix(preds, y.cpu(), dm.num_classes)


def draw(
    dm: MNISTDataModule, preds: torch.Tensor, matrix: torch.Tensor, history: list[dict], run_dir
) -> dict[str, Figure]:
    """curves.png, predictions.png and confusion.png in the run directory, by name."""
    x, y = dm.splits["test"]
    shown = x[:12].cpu(), y[:12].cpu(), preds[:12], dm.class_names, run_dir / "predictions.png"
    return {
        "curves": plot_curves(history, run_dir / "curves.png"),
        "predictions": plot_predictions(*shown),
        "confusion": plot_confusion(matrix.numpy(), dm.class_names, run_dir / "confusion.png"),
    }
