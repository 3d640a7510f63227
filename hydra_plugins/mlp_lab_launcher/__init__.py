"""Hydra instantiates launchers from hydra_plugins only; mlp_lab's is in mlp_lab.launcher."""

from mlp_lab import launcher


class LocalLauncher(launcher.LocalLauncher):
    """`hydra/launcher=local`: each job of a sweep in a process of its own (mlp_lab/launcher.py)."""


class SlurmLauncher(launcher.SlurmLauncher):
    """`hydra/launcher=slurm`: submitit's, which sees a job die without accounting too."""
