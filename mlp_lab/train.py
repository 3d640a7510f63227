"""Train one MLP and leave a complete record of the run.

python -m mlp_lab.train                         # the lab's baseline on Fashion-MNIST
python -m mlp_lab.train data=mnist optimizer.lr=0.05
python -m mlp_lab.train -m model.hidden=[256],[256,256]   # a sweep

This is the command line: Hydra composes the config and this file checks it, before torch and
Lightning are imported (mlp_lab.fit trains), so `--help` and a mistake answer at once.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mlp_lab import cluster, runs
from mlp_lab.cli import CONF_DIR, one_line_errors
from mlp_lab.config import ConfigError, SweepError, TrainConfig, check_sweep, register

log = logging.getLogger(__name__)


class JobFailed(CompactHydraException):
    """One job of a sweep failed; Hydra prints only this message once the other jobs are done."""


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


def stop(
    err: Exception, run_dir: Path, multirun: bool, rank: int, interrupted: bool = False
) -> NoReturn:
    """End the run with `err` as one line: a config refused before any work leaves no directory;
    a run that started keeps its record, marked failed or interrupted."""
    message = f"{'stopped' if interrupted else 'error'}: {err}"
    refused = isinstance(err, ConfigError) and not multirun
    if refused and rank == 0 and runs.discard_unused(run_dir):
        raise SystemExit(message) from None
    if rank == 0:
        runs.record_error(run_dir, "interrupted" if interrupted else "failed", str(err))
    # The sweep's other jobs go on; Ctrl-C or SIGTERM stops a sweep too, unless it stopped one
    # job of a cluster's (scancel, its time limit).
    on_cluster = cluster.submitit_launcher(str(HydraConfig.get().launcher.get("_target_")))
    if multirun and (on_cluster or not interrupted):
        log.error(message)
        raise JobFailed(message) from None
    raise SystemExit(message) from None


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
    except SweepError as err:  # no job of this sweep could run: stop it here
        raise SystemExit(f"error: {err}") from None
    except ConfigError as err:
        stop(err, run_dir, multirun, cluster.process_rank())

    # Imported once the config is accepted: a refused one answers without torch and Lightning.
    from lightning.pytorch.utilities import rank_zero_only

    from mlp_lab import fit

    # Lightning, imported after Hydra set up logging, keeps a console handler of its own beside
    # the root's (which also writes train.log): each of its lines would be printed twice.
    logging.getLogger("lightning").handlers.clear()
    try:
        with cluster.stop_before_time_limit():
            try:
                record = fit.train(config, run_dir, leading_keys())
            except (MemoryError, RuntimeError) as err:
                if fit.OutOfMemory.of(err) is None:
                    raise
                raise fit.OutOfMemory.of(err) from None
    except (ConfigError, *fit.STOPS) as err:
        interrupted = isinstance(err, fit.RunInterrupted)
        stop(err, run_dir, multirun, rank_zero_only.rank, interrupted)
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
