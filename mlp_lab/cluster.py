"""Where a process runs: its SLURM job (hydra/launcher=slurm), its rank in a DDP run, and why
SLURM stopped it."""

from __future__ import annotations

import logging
import os
import signal
from contextlib import contextmanager

log = logging.getLogger(__name__)

# submitit asks SLURM for this signal `signal_delay_s` seconds before a job's time limit.
TIME_LIMIT_SIGNAL = signal.SIGUSR2


def slurm_job() -> str | None:
    """The SLURM job this process runs in (`<array job>_<task>` for a job array's task), or None."""
    env = os.environ
    if "SLURM_ARRAY_JOB_ID" in env:
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def process_rank() -> int:
    """This process's rank among a DDP run's processes, 0 when it runs alone."""
    # The variables Lightning reads for its rank_zero_only.rank, in its order: read here, before
    # a command has imported Lightning (a refused config never does).
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def submitit_launcher(target: str) -> bool:
    """Whether a Hydra launcher (its `_target_`) is one of submitit's: SLURM's or its local one."""
    # Hydra loads plugins as fresh module objects, so the class is known by its name.
    return target.startswith(
        ("hydra_plugins.hydra_submitit_launcher.", "hydra_plugins.mlp_lab_launcher.Slurm")
    )


def cpus_per_task() -> int | None:
    """The CPUs SLURM gave this task, when it runs in a job that asked for them."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    return int(cpus) if cpus else None


class _TimeLimit:
    reached = False


@contextmanager
def stop_before_time_limit():
    """SLURM's warning of the time limit stops training at the end of the batch, as SIGTERM does,
    so that the run's record and checkpoints are whole when the job ends; before training starts,
    it only marks the run, which SLURM's SIGTERM at the limit then stops."""
    if slurm_job() is None:
        yield
        return

    def warned(signum, frame):
        _TimeLimit.reached = True
        # Lightning's own clean stop while it trains; submitit ignores SIGTERM outside it.
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(TIME_LIMIT_SIGNAL, warned)
    try:
        yield
    finally:
        signal.signal(TIME_LIMIT_SIGNAL, previous)


def stop_reason() -> str:
    """Why a run under SLURM was stopped by a signal, or "" when it is not under SLURM."""
    job = slurm_job()
    if job is None:
        return ""
    if _TimeLimit.reached:
        return f"SLURM job {job} reached its time limit"
    return f"SLURM stopped job {job} (scancel, preemption or its time limit)"


class AccountingMissing(logging.Filter):
    """submitit asks `sacct` for its jobs' states every few seconds and warns each time it fails,
    as it does on every poll of a cluster without accounting: said once, in one line, instead."""

    said = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "Bypassing sacct error" not in record.getMessage():
            return True
        if not AccountingMissing.said:
            AccountingMissing.said = True
            log.warning(
                "sacct fails here (a SLURM cluster without job accounting): submitit follows its "
                "jobs by the result files they write instead"
            )
        return False
