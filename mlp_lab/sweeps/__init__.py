"""Many runs: a sweep's jobs here (local.py) or on SLURM (slurm.py), the search (search.py)."""
