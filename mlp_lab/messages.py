"""Other libraries' messages recognised by their words (each tested in test_messages.py)."""

from __future__ import annotations

import logging
import re
import warnings

log = logging.getLogger(__name__)


def out_of_memory(err: BaseException) -> str | None:
    """The one-line error for a failed allocation, else None."""
    text = str(err)
    # torch's CPU allocator: "DefaultCPUAllocator: can't allocate memory: you tried to allocate
    # 12544000000 bytes"; CUDA's raises torch.OutOfMemoryError.
    allocation = "can't allocate memory" in text or type(err).__name__ == "OutOfMemoryError"
    if not (isinstance(err, MemoryError) or allocation):
        return None
    tried = re.search(r"tried to allocate (\d+) bytes", text)
    size = f" ({int(tried[1]) / 2**30:,.1f} GiB in one piece)" if tried else ""
    return (
        f"out of memory{size}: use a smaller model.hidden or data.batch_size, or fewer jobs at once"
    )


def first_line(err: BaseException) -> str:
    """The first line of an error's message (another library's can run to pages), else its type."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def not_a_list(message: str) -> bool:
    """Whether OmegaConf refused a single value where its schema wants a list."""
    return "is not a ListConfig" in message


def autograd_found_nan(err: BaseException) -> bool:
    """Whether `err` is anomaly detection naming the backward operation that returned a NaN."""
    return "returned nan values" in str(err)


def squeue_forgot(stderr: str) -> bool:
    """Whether squeue says it knows no such job: one that left the queue long ago."""
    return "Invalid job id" in stderr


def lightning_tip(record: logging.LogRecord) -> bool:
    """Whether a log record is Lightning's advertisement of its cloud services."""
    return "Tip:" in record.getMessage()


# Warnings no mlp_lab user can act on: a deprecation inside Lightning's own code, and its hint to
# start a run with srun wherever SLURM is installed (hydra/launcher=slurm starts its jobs itself).
LIGHTNING_WARNINGS = (r".*isinstance\(treespec, LeafSpec\)", "The `srun` command is available")


def quiet_lightning() -> None:
    """Leave Lightning's advertisement and warnings out of a command's output (and train.log)."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    logger.addFilter(lambda record: not lightning_tip(record))
    for message in LIGHTNING_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


# Lightning's warning at the start of every resumed run: its checkpoints/ holds the run's own.
RESUMED_CHECKPOINTS = r"Checkpoint directory .* exists and is not empty"


def quiet_resume() -> None:
    """Leave out the warning Lightning gives a resumed run about its own checkpoints."""
    warnings.filterwarnings("ignore", message=RESUMED_CHECKPOINTS)


class AccountingMissing(logging.Filter):
    """submitit's warning on every failed `sacct` poll, warned once in one line."""

    warned = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "Bypassing sacct error" not in record.getMessage():
            return True
        if not AccountingMissing.warned:
            AccountingMissing.warned = True
            log.warning(
                "sacct fails here (a SLURM cluster without job accounting): submitit follows its "
                "jobs by the result files they write instead"
            )
        return False
