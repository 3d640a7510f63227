"""`hydra/launcher=local`, `slurm` and `plan`, imported when used (mlp_lab/sweeps/)."""

import importlib

from hydra.plugins.launcher import Launcher


class _Launcher(Launcher):
    module, kind = "", ""

    def __init__(self, **params):
        module = importlib.import_module(f"mlp_lab.sweeps.{self.module}")
        self.launcher = getattr(module, self.kind)(**params)

    def setup(self, **context) -> None:
        self.launcher.setup(**context)

    def launch(self, job_overrides, initial_job_idx):
        return self.launcher.launch(job_overrides, initial_job_idx)


class LocalLauncher(_Launcher):
    module, kind = "local", "LocalLauncher"


class SlurmLauncher(_Launcher):
    module, kind = "slurm", "SlurmLauncher"


class PlanLauncher(_Launcher):
    module, kind = "plan", "PlanLauncher"
