"""Train one MLP and leave a complete record of the run.

python -m mlp_lab.train                         # the lab's baseline on Fashion-MNIST
python -m mlp_lab.train data=mnist optimizer.lr=0.05
python -m mlp_lab.train -m model.hidden=[256],[256,256]   # a sweep
"""

from __future__ import annotations

import logging
import math
import re
import statistics
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from lightning.pytorch.callbacks import (
    EarlyStopping,
    RichModelSummary,
    RichProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf
from lightning.pytorch.profilers import AdvancedProfiler, PyTorchProfiler, SimpleProfiler
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from mlp_lab import cluster, loggers, runs
from mlp_lab.cli import CONF_DIR, one_line_errors
from mlp_lab.config import (
    ConfigError,
    SweepError,
    TrainConfig,
    check_sweep,
    register,
    run_settings,
)
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


class EarlyStop(EarlyStopping):
    """Lightning's EarlyStopping; a run resumed after it stopped stays stopped."""

    def on_train_start(self, trainer, pl_module):
        if self.wait_count >= self.patience:
            trainer.should_stop = True


class JobFailed(CompactHydraException):
    """One job of a sweep failed; Hydra prints only this message once the other jobs are done."""


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


def leading_keys() -> list[str]:
    """The keys the loggers' tables show first: those a sweep varies (its command line's swept
    keys and its study's params), or those a single run's command line set."""
    if not HydraConfig.initialized():
        return []
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return [o.split("=", 1)[0].lstrip("+~") for o in hydra_cfg.overrides.task]
    saved = Path(hydra_cfg.sweep.dir) / "multirun.yaml"
    given = list(OmegaConf.load(saved).hydra.overrides.task) if saved.is_file() else []
    swept = OverridesParser.create().parse_overrides(given)
    keys = [o.key_or_group for o in swept if o.is_sweep_override()]
    return keys + list(hydra_cfg.sweeper.get("params") or {})


def train(cfg: TrainConfig, run_dir: Path) -> dict:
    """Fit, pick the checkpoint with the best val accuracy, test it; return the run's record."""
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
    start_from = runs.load_start(cfg, module)

    # A resumed run keeps its history and adds a part: its times add up over the parts.
    earlier = runs.earlier_record(run_dir) if cfg.resume else {}
    record = {"status": "running", "config": asdict(cfg), "params": module.num_parameters}
    record["history"] = earlier.get("history", [])
    record["parts"] = [*earlier.get("parts", []), runs.new_part(started)]
    if rank_zero_only.rank == 0:  # the run's owner is known before its first epoch ends
        runs.write_record(run_dir, record)
    # Without a progress bar, a line per epoch.
    history = runs.RunRecord(run_dir, record, verbose=not cfg.trainer.enable_progress_bar)
    best_ckpt, last_ckpt = runs.checkpoint_callbacks(run_dir)
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
    settings = run_settings(cfg, leading_keys())
    loggers.send_results(logger, settings, finals, figures, trainer.global_step)
    return record


@one_line_errors("mlp_lab.train", TrainConfig)
@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float:
    """Entry point; returns the best validation accuracy for Hydra's sweepers."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    # Lightning's advertisement, a deprecation inside Lightning itself, and its hint to start a
    # run with srun wherever SLURM is installed (hydra/launcher=slurm does): noise in every run.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "Tip:" not in record.getMessage()
    )
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message="The `srun` command is available")
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        config = OmegaConf.to_object(cfg)
        if multirun:
            check_sweep(str(config.trainer.strategy), str(hydra_cfg.launcher.get("_target_")))
        if config.resume:
            config = runs.resumed_config(Path(config.resume), list(hydra_cfg.overrides.task))
        with cluster.stop_before_time_limit():
            try:
                record = train(config, run_dir)
            except (MemoryError, RuntimeError) as err:
                if OutOfMemory.of(err) is None:
                    raise
                raise OutOfMemory.of(err) from None
    except SweepError as err:  # no job of this sweep could run: stop it here
        raise SystemExit(f"error: {err}") from None
    except (ConfigError, DataError, TrainingDiverged, RunInterrupted, OutOfMemory) as err:
        message = f"{'stopped' if isinstance(err, RunInterrupted) else 'error'}: {err}"
        refused = isinstance(err, ConfigError) and not multirun  # before any work
        if refused and rank_zero_only.rank == 0 and runs.discard_unused(run_dir):
            raise SystemExit(message) from None
        if rank_zero_only.rank == 0:
            status = "interrupted" if isinstance(err, RunInterrupted) else "failed"
            runs.record_error(run_dir, status, str(err))
        # The sweep's other jobs go on; Ctrl-C or SIGTERM stops a sweep too, unless it stopped one
        # job of a cluster's (scancel, its time limit).
        on_cluster = cluster.submitit_launcher(str(hydra_cfg.launcher.get("_target_")))
        if multirun and (on_cluster or not isinstance(err, RunInterrupted)):
            log.error(message)
            raise JobFailed(message) from None
        raise SystemExit(message) from None
    if record["status"] == "fast_dev_run":
        print(
            f"fast_dev_run passed: one batch of each split; test_acc={record['test_acc']:.4f} "
            f"test_loss={record['test_loss']:.4f} (nothing recorded)"
        )
    elif rank_zero_only.rank == 0:
        stopped = record.get("stopped_early")
        early = f"stopped early at epoch {stopped['epoch']} " if stopped else ""
        if record["status"] == "pruned":
            early = f"pruned by its search after epoch {record['epochs']} "
        print(
            f"test_acc={record['test_acc']:.4f} best_val_acc={record['best_val_acc']:.4f} "
            f"(epoch {record['best_epoch']}) params={record['params']:,} "
            f"wall={record['wall_time_s']:.1f}s "
            f"{early}run={run_dir}"
        )
    return record.get("best_val_acc", math.nan)


register()
runs.register_resolvers()
logging.getLogger("submitit").addFilter(cluster.AccountingMissing())

if __name__ == "__main__":
    main()
