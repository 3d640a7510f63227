"""Hydra instantiates launchers from hydra_plugins only, and imports every module there whenever
it looks for plugins (each command): mlp_lab's, in mlp_lab.launcher, are imported when used."""

from hydra.plugins.launcher import Launcher


class _Launcher(Launcher):
    kind = ""

    def __init__(self, **params):
        from mlp_lab import launcher

        self.launcher = getattr(launcher, self.kind)(**params)

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.launcher.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def launch(self, job_overrides, initial_job_idx):
        return self.launcher.launch(job_overrides, initial_job_idx)


class LocalLauncher(_Launcher):
    """`hydra/launcher=local`: each job of a sweep in a process of its own (mlp_lab/launcher.py)."""

    kind = "LocalLauncher"


class SlurmLauncher(_Launcher):
    """`hydra/launcher=slurm`: submitit's, which sees a job die without accounting too."""

    kind = "SlurmLauncher"
