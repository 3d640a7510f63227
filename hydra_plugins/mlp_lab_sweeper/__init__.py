"""Hydra instantiates sweepers from hydra_plugins only; mlp_lab's is in mlp_lab.search."""

from mlp_lab import search


class OptunaSweeper(search.OptunaSweeper):
    """`hydra/sweeper=optuna`: mlp_lab's Optuna search (mlp_lab/search.py)."""
