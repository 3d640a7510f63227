"""Hydra instantiates sweepers from hydra_plugins only, and imports every module there whenever it
looks for plugins (each command): mlp_lab's sweeper, in mlp_lab.search, is imported when used."""

from hydra.plugins.sweeper import Sweeper


class OptunaSweeper(Sweeper):
    """`hydra/sweeper=mlp_lab` (hparams_search=optuna): the Optuna search of mlp_lab/search.py."""

    def __init__(self, **cfg):
        from mlp_lab import search

        self.search = search.OptunaSweeper(**cfg)

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        self.search.sweep(arguments)
