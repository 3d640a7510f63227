"""The many-runs layer: a sweep's jobs on this machine (local.py: a process each, a GPU pool) or
on SLURM (slurm.py), and the Optuna search (search.py). It builds on the training core (a run's
record, its config); nothing of the core imports it.
"""
