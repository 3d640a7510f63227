"""hydra/launcher=plan: a sweep's jobs written out, not run: each job's directory and Hydra config,
as a job killed before its first epoch leaves them, for `python -m mlp_lab.lab` to queue."""

from __future__ import annotations

from collections.abc import Sequence

from hydra.core.utils import JobReturn, run_job
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, OmegaConf, open_dict

from mlp_lab.config import ConfigError


class PlanLauncher(Launcher):
    def __init__(self, **params) -> None:
        pass

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.hydra_context, self.config = hydra_context, config

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
        planned: list[JobReturn] = []
        for idx, overrides in enumerate(job_overrides, initial_job_idx):
            loader = self.hydra_context.config_loader
            config = loader.load_sweep_config(self.config, list(overrides))
            with open_dict(config):
                config.hydra.job.id = config.hydra.job.num = idx
            # Hydra's run_job writes <sweep>/<n>/.hydra/ (config, overrides) before the task runs.
            planned.append(
                run_job(
                    hydra_context=self.hydra_context,
                    task_function=_checked,
                    config=config,
                    job_dir_key="hydra.sweep.dir",
                    job_subdir_key="hydra.sweep.subdir",
                )
            )
        return planned


def _checked(cfg: DictConfig) -> None:
    """The job's values checked (the schemas' __post_init__), as `python -m mlp_lab.train` does."""
    try:
        OmegaConf.to_object(cfg)
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None
