"""Hydra instantiates sweepers from hydra_plugins only; mlp_lab's is in mlp_lab.search."""

from mlp_lab import search


class OptunaSweeper(search.OptunaSweeper):
    """`hydra/sweeper=mlp_lab` (hparams_search=optuna): the Optuna search of mlp_lab/search.py."""
