"""`hydra/launcher=local` and `slurm` (mlp_lab/launcher.py). Hydra instantiates launchers from
hydra_plugins only, and imports every module there whenever it looks for plugins (each command):
mlp_lab's are imported when used."""

from hydra.plugins.launcher import Launcher


class _Launcher(Launcher):
    kind = ""

    def __init__(self, **params):
        from mlp_lab import launcher

        self.launcher = getattr(launcher, self.kind)(**params)

    def setup(self, **context) -> None:
        self.launcher.setup(**context)

    def launch(self, job_overrides, initial_job_idx):
        return self.launcher.launch(job_overrides, initial_job_idx)


class LocalLauncher(_Launcher):
    kind = "LocalLauncher"


class SlurmLauncher(_Launcher):
    kind = "SlurmLauncher"
