"""Where a process runs: the machine, its accelerators, its SLURM job and DDP rank."""

from __future__ import annotations

import os
import platform
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# submitit asks SLURM for this signal `signal_delay_s` seconds before a job's time limit.
TIME_LIMIT_SIGNAL = signal.SIGUSR2


CPUINFO = Path("/proc/cpuinfo")
# The CPU instructions that multiply bfloat16 matrices natively: Intel's AMX and AVX-512 BF16, Arm's
# BF16. Without them torch emulates bf16 and its autocast runs slower than float32 (pytorch #86550).
BF16_INSTRUCTIONS = ("amx_bf16", "avx512_bf16", "bf16")


def _cpuinfo(key: str) -> list[str]:
    """The values of `key` ("model name", "flags") in /proc/cpuinfo, one per core."""
    lines = CPUINFO.read_text().splitlines() if CPUINFO.is_file() else []
    return [line.split(":", 1)[1].strip() for line in lines if line.split(":")[0].strip() == key]


def cpu_name() -> str:
    names = _cpuinfo("model name")
    return names[0] if names else platform.processor() or "unknown CPU"


def machine() -> str:
    """This machine in a few words: its architecture, CPU model and cores."""
    return f"{platform.machine()}, {cpu_name()}, {os.cpu_count()} cores"


def cpu_bf16() -> list[str]:
    """The bf16 instructions this CPU has (x86's "flags", Arm's "Features")."""
    flags = set(" ".join(_cpuinfo("flags") + _cpuinfo("Features")).split())
    return [name for name in BF16_INSTRUCTIONS if name in flags]


def bf16_slower(accelerator: str) -> str | None:
    """Why bf16 autocast would run slower than float32 here, or None."""
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not cuda_gpus() and not apple_gpu())
    if not on_cpu or cpu_bf16():
        return None
    return (
        f"this CPU ({cpu_name()}) has no bf16 instructions ({', '.join(BF16_INSTRUCTIONS[:2])}), "
        "so torch emulates bf16 and runs slower than in float32"
    )


def cuda_gpus() -> int:
    """The CUDA GPUs this process may use; 0 without NVIDIA's driver, asked without torch."""
    if not Path("/proc/driver/nvidia/gpus").is_dir() and not list(
        Path("/dev").glob("nvidia[0-9]*")
    ):
        return 0
    import torch

    return torch.cuda.device_count()


def device_name(device) -> str:
    """What a run trains on, in words: the GPU's name, or the CPU with its torch threads."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return f"cpu ({torch.get_num_threads()} threads)"


def accelerator_missing(accelerator: str, devices: Any) -> str | None:
    """Why `accelerator` cannot run on this machine, or None when it can."""
    if accelerator in ("gpu", "cuda"):
        gpus = cuda_gpus()
        wanted = devices if isinstance(devices, int) else len(str(devices).split(","))
        if not gpus:
            return "no CUDA GPU on this machine"
        if wanted > gpus:
            return f"{wanted} GPUs asked for, {gpus} on this machine"
    if accelerator == "mps" and not apple_gpu():
        return "no Apple MPS device on this machine"
    return None


def apple_gpu() -> bool:
    """Whether this is an Apple silicon Mac whose torch has MPS (torch asked on a Mac only)."""
    if (platform.system(), platform.machine()) != ("Darwin", "arm64"):
        return False
    import torch

    return torch.backends.mps.is_available()


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
    """SLURM's time-limit warning stops training at the batch's end, as SIGTERM does."""
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
