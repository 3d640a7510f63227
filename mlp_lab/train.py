"""Train one MLP and leave a complete record of the run; the config is checked before torch loads.

python -m mlp_lab.train                         # the lab's baseline on Fashion-MNIST
python -m mlp_lab.train -m model.hidden=[256],[256,256]   # a sweep
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import NoReturn

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.mlp_lab_launcher import LocalLauncher, PlanLauncher, SlurmLauncher
from hydra_plugins.mlp_lab_sweeper import OptunaSweeper
from mlp_lab import checkpoints, cluster, directories, loggers, messages, runs
from mlp_lab.cli import CONF_DIR, one_line_errors, override_key
from mlp_lab.config import ConfigError, SweeperConfig, TrainConfig, TrainerConfig, checker

log = logging.getLogger(__name__)


class JobFailed(CompactHydraException):
    """One job of a sweep failed; Hydra prints only this message once the other jobs are done."""


class SweepError(ConfigError):
    """A setting that no job of a sweep could run with: the whole sweep stops."""


def register() -> None:
    """The schemas and mlp_lab's sweeper and launchers, before Hydra composes anything."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    # Not "optuna": hydra-optuna-sweeper, which an older environment may still hold, has that name.
    ConfigStore.instance().store(group="hydra/sweeper", name="mlp_lab", node=SweeperConfig)
    # Hydra finds plugins by listing hydra_plugins' folders, which pip's default editable install
    # hides: named here, they are found however mlp_lab is installed.
    for plugin in (OptunaSweeper, LocalLauncher, SlurmLauncher, PlanLauncher):
        Plugins.instance().register(plugin)


def load_config(*overrides: str) -> TrainConfig:
    """The checked config `python -m mlp_lab.train <overrides>` runs with."""
    with hydra.initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        config = OmegaConf.to_object(hydra.compose(config_name="train", overrides=list(overrides)))
    fits_machine(config.trainer)
    return config


def check_sweep(strategy: str, launcher: str) -> None:
    """Refuse DDP inside a sweep unless SLURM starts its processes."""
    # Lightning's DDP starts each extra process by running this command line again, which inside
    # a sweep would start the whole sweep again; under SLURM every task is already a process of
    # its own and nothing is re-run.
    if not strategy.startswith("ddp") or "Slurm" in launcher:
        return
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect():
        raise SweepError(
            f"trainer.strategy={strategy} cannot run inside a sweep (-m): Lightning would start "
            "the whole sweep again in each extra process. Run each setting as its own "
            "`python -m mlp_lab.train trainer=ddp ...`, or sweep on a SLURM cluster with "
            "hydra/launcher=slurm (tasks_per_node = devices)"
        )


def leading_keys() -> list[str]:
    """The keys the loggers' tables show first: those a sweep varies or the command line set."""
    if not HydraConfig.initialized():
        return []
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return [override_key(o) for o in hydra_cfg.overrides.task]
    saved = Path(hydra_cfg.sweep.dir) / "multirun.yaml"
    given = list(OmegaConf.load(saved).hydra.overrides.task) if saved.is_file() else []
    swept = OverridesParser.create().parse_overrides(given)
    keys = [o.key_or_group for o in swept if o.is_sweep_override()]
    study = list(hydra_cfg.sweeper.get("params") or {})  # what the study varies, then the seeds
    return study + [key for key in keys if key not in study]


def sweep_label() -> str:
    """The values a sweep's run was given for the swept keys (`model.batch_norm=true/seed=0`)."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return ""
    given = {override_key(o): o.split("=", 1)[1] for o in hydra_cfg.overrides.task if "=" in o}
    shown = {"True": "true", "False": "false"}  # as the configs write them
    return "/".join(f"{k}={shown.get(given[k], given[k])}" for k in leading_keys() if k in given)


def stop(
    err: Exception, run_dir: Path, multirun: bool, refused: bool = True, interrupted: bool = False
) -> NoReturn:
    """End the run in one line; a refused config leaves no directory, a started run its record."""
    message = f"{'stopped' if interrupted else 'error'}: {err}"
    rank_zero = cluster.process_rank() == 0
    if refused and not multirun and rank_zero and directories.discard_unused(run_dir):
        raise SystemExit(message) from None
    if rank_zero:
        (runs.interrupt if interrupted else runs.fail)(run_dir, str(err))
    # The sweep's other jobs go on; Ctrl-C or SIGTERM stops a sweep too, unless it stopped one
    # job of a cluster's (scancel, its time limit).
    on_cluster = cluster.submitit_launcher(str(HydraConfig.get().launcher.get("_target_")))
    if multirun and (on_cluster or not interrupted):
        log.error(message)
        raise JobFailed(message) from None
    raise SystemExit(message) from None


def checked(cfg: DictConfig, hydra_cfg) -> TrainConfig:
    """The composed config as the schema's objects, values checked; a resume's saved config."""
    params = hydra_cfg.sweeper.get("params") or {}
    if hydra_cfg.mode != RunMode.MULTIRUN and params:  # a study's sweep, given no -m
        swept = ", ".join(f"{key}={value}" for key, value in params.items())
        raise ConfigError(
            f"experiment={hydra_cfg.runtime.choices.get('experiment')} is a study, a sweep over "
            f"{swept}: run it with -m: python -m mlp_lab.train -m "
            + " ".join(hydra_cfg.overrides.task)
        )
    config = OmegaConf.to_object(cfg)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        check_sweep(str(config.trainer.strategy), str(hydra_cfg.launcher.get("_target_")))
    if config.resume:
        config = checkpoints.resumed_config(Path(config.resume), list(hydra_cfg.overrides.task))
    fits_machine(config.trainer)
    return config


def fits_machine(trainer: TrainerConfig) -> None:
    """Refuse in one line what this machine cannot run as asked, before torch is imported."""
    check = checker("trainer.", trainer)
    missing = cluster.accelerator_missing(str(trainer.accelerator), trainer.devices)
    check("accelerator", not missing, f"{missing}; use trainer=cpu")
    bf16 = str(trainer.precision).startswith("bf16")
    slower = bf16 and cluster.bf16_slower(str(trainer.accelerator))
    check("precision", not slower, f"{slower}; use trainer=default (32-true) here")


def main() -> float:
    """Entry point; a command refused while its config composes leaves no directory it claimed."""
    try:
        return run()
    except SystemExit:
        directories.release_unused(Path(os.devnull))  # empty ones alone: a run's files stay
        raise


@one_line_errors("mlp_lab.train", TrainConfig)
@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def run(cfg: DictConfig) -> float:
    """The run or sweep; returns the best validation accuracy for Hydra's sweepers."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        config = checked(cfg, hydra_cfg)
    except SweepError as err:  # no job of this sweep could run: stop it here
        raise SystemExit(f"error: {err}") from None
    except ConfigError as err:
        stop(err, run_dir, multirun)

    # Imported once the config is accepted: a refused one answers without torch and Lightning.
    messages.quiet_lightning()
    from mlp_lab import fit

    # Lightning, imported after Hydra set up logging, keeps a console handler of its own beside
    # the root's (which also writes train.log): each of its lines would be printed twice.
    logging.getLogger("lightning").handlers.clear()
    try:
        with cluster.stop_before_time_limit():
            record = fit.train(config, run_dir, leading_keys(), sweep_label())
    except (ConfigError, *fit.STOPS) as err:
        refused = isinstance(err, ConfigError | fit.DataError)
        stop(err, run_dir, multirun, refused, isinstance(err, fit.RunInterrupted))
    if config.trainer.fast_dev_run:
        print(
            f"fast_dev_run passed: one batch of each split; test_acc={record['test_acc']:.4f} "
            f"test_loss={record['test_loss']:.4f} (nothing recorded)"
        )
    elif record:  # under DDP, rank 0 alone reports
        print(last_line(record, run_dir))
    return record.get("best_val_acc", math.nan)


def last_line(record: dict, run_dir: Path) -> str:
    """The command's answer: the run's scores, size, time, how it stopped, and where it is."""
    early = ""
    if record.get("stopped_early"):
        early = f"stopped early at epoch {record['stopped_early']['epoch']} "
    if runs.status(record) is runs.Status.PRUNED:
        early = f"pruned by its search after epoch {record['epochs']} "
    line = (
        f"test_acc={record['test_acc']:.4f} best_val_acc={record['best_val_acc']:.4f} "
        f"(epoch {record['best_epoch']}) params={record['params']:,} "
        f"wall={record['wall_time_s']:.1f}s {early}run={run_dir}"
    )
    return f"{line} mlflow: {loggers.mlflow_view(record['mlflow'])}" if "mlflow" in record else line


register()
directories.register_resolvers()
logging.getLogger("submitit").addFilter(messages.AccountingMissing())

if __name__ == "__main__":
    main()
