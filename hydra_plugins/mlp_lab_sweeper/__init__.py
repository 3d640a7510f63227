"""`hydra/sweeper=mlp_lab`: mlp_lab/sweeps/search.py, imported when used."""

from hydra.plugins.sweeper import Sweeper


class OptunaSweeper(Sweeper):
    def __init__(self, **cfg):
        from mlp_lab.sweeps import search

        self.search = search.OptunaSweeper(**cfg)

    def setup(self, **context) -> None:
        self.search.setup(**context)

    def sweep(self, arguments: list[str]) -> None:
        self.search.sweep(arguments)
