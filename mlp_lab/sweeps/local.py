"""hydra/launcher=local: each job a forked process of its own, whose death is its alone.

python -m mlp_lab.train -m seed=0,1,2,3 hydra/launcher=local hydra.launcher.n_jobs=2
"""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job
from hydra.errors import CompactHydraException
from hydra.plugins.launcher import Launcher
from omegaconf import OmegaConf, open_dict

from mlp_lab import cluster, directories, runs
from mlp_lab.messages import first_line
from mlp_lab.runs import Status

log = logging.getLogger(__name__)


class SweepIncomplete(CompactHydraException):
    """Some jobs of a sweep did not complete; Hydra prints this one line and exits with 1."""


def cores() -> int:
    """The cores this process may run on (a cgroup's or taskset's cpuset, not the machine's)."""
    return len(os.sched_getaffinity(0))


def job_shares(n_jobs: int | None, num_threads: int | None) -> tuple[int, int]:
    """Jobs at once and torch threads per job: n_jobs × threads = the cores, unless set."""
    jobs = n_jobs or max(1, cores() // (num_threads or 1))
    return jobs, num_threads or max(1, cores() // jobs)


def pool_devices(devices: Any) -> list[str]:
    """The GPUs a sweep's jobs share: as listed, or for "auto" those visible; [] for none."""
    if devices is None:
        return []
    if devices == "auto":
        count = cluster.cuda_gpus()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = [d for d in visible.split(",") if d] if visible is not None else range(count)
        return [str(d) for d in ids][:count]
    return [str(d) for d in devices]


def gpus_wanted(trainer: Any, explicit: bool) -> int:
    """The GPUs one job takes from the pool: its trainer.devices, none for a CPU job."""
    if not explicit and str(trainer.accelerator) in ("cpu", "mps"):
        return 0
    devices = trainer.devices
    if isinstance(devices, int) and devices > 0:
        return devices
    return len(devices) if OmegaConf.is_list(devices) or isinstance(devices, list) else 1


@dataclass
class DevicePool:
    """The GPUs of a sweep, each shared by at most `per_device` jobs at once."""

    devices: list[str]
    per_device: int
    load: collections.Counter = field(default_factory=collections.Counter)

    def take(self, count: int) -> list[str] | None:
        """`count` of the least busy GPUs with room, now taken; None while too few have room."""
        free = [d for d in self.devices if self.load[d] < self.per_device]
        if len(free) < count:
            return None
        chosen = sorted(free, key=self.load.__getitem__)[:count]
        self.load.update(chosen)
        return chosen

    def give_back(self, chosen: list[str]) -> None:
        self.load.subtract(chosen)


class PoolTooSmall(CompactHydraException):
    """A job asks for more GPUs than the launcher's pool has; Hydra prints this one line."""


def _oom_kills() -> int | None:
    """The kernel's out-of-memory kills in this process's memory cgroup so far (v2, or v1)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            events = Path("/sys/fs/cgroup", path.lstrip("/"), "memory.events")
        elif "memory" in controllers.split(","):
            events = Path("/sys/fs/cgroup/memory", path.lstrip("/"), "memory.oom_control")
        else:
            continue
        try:
            counts = dict(line.split() for line in events.read_text().splitlines())
        except (OSError, ValueError):
            continue
        if "oom_kill" in counts:
            return int(counts["oom_kill"])
    return None


@dataclass
class Ending:
    """How a job's process ended: what it sent back, or the signal or exit code it died of."""

    result: Any = None
    died_of: str | None = None  # "killed by SIGKILL", "out of memory (...)", "exited with code 3"
    started: bool = True
    ended: float | None = None  # when its launcher saw it end (time.time())


def _child(job: Callable[[], Any], threads: int, conn, gpus: list[str] | None) -> None:
    os.environ[runs.JOB_STARTED] = repr(time.time())
    if gpus:  # before anything in this process touches CUDA: the job sees its GPUs alone
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    import torch

    torch.set_num_threads(threads)
    try:
        result = job()
    except SystemExit as stop:  # the job's own end: its message is its error line
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
        result = stop
    except BaseException as err:  # noqa: BLE001  (sent to the launcher, which reports it)
        result = err
    try:
        conn.send(result)
    except Exception as err:  # noqa: BLE001  (an unpicklable result: its text travels instead)
        conn.send(RuntimeError(f"{type(result).__name__}: {err}"))
    conn.close()


def run_jobs(
    jobs: Sequence[Callable[[], Any]],
    n_jobs: int,
    threads: int,
    started=None,
    pool: DevicePool | None = None,
    wanted: Sequence[int] = (),
    ended=None,
) -> list:
    """Run each job in a forked process, `n_jobs` at a time; SIGTERM and Ctrl-C stop them all.
    `started(index, pid, gpus)` and `ended(index, ending)` are called as each starts and ends."""
    context = multiprocessing.get_context("fork")
    endings: list[Ending | None] = [None] * len(jobs)
    waiting = collections.deque(range(len(jobs)))
    running: dict[int, tuple[multiprocessing.Process, Any, list[str] | None]] = {}
    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True
        for process, _, _ in running.values():
            os.kill(process.pid, signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        while waiting or running:
            while waiting and len(running) < n_jobs and not stopping:
                gpus = pool.take(wanted[waiting[0]]) if pool else None
                if pool and gpus is None:
                    break  # its GPUs are busy: wait for a job to end
                index = waiting.popleft()
                running[index] = (*_start(context, jobs[index], threads, gpus), gpus)
                if started:
                    started(index, running[index][0].pid, gpus)
            if not running:
                break
            oom_seen = _oom_kills()  # what the jobs that end in this wait are weighed against
            try:
                ready = multiprocessing.connection.wait(
                    [x for p, r, _ in running.values() for x in (p.sentinel, r)]
                )
            except KeyboardInterrupt:
                stopping = True
                continue
            for index, (process, receive, gpus) in list(running.items()):
                if receive in ready or process.sentinel in ready:
                    endings[index] = _reap(process, receive, oom_seen)
                    if ended:
                        ended(index, endings[index])
                    del running[index]
                    if pool and gpus:  # its death, too, frees its GPUs for the next job
                        pool.give_back(gpus)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return [e or Ending(started=False) for e in endings]


def _start(context, job: Callable[[], Any], threads: int, gpus: list[str] | None) -> tuple:
    """A job's forked process, started, and the end of the pipe its result comes back on."""
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(job, threads, send, gpus))
    process.start()
    send.close()
    return process, receive


def _reap(process, receive, oom_seen: int | None) -> Ending:
    """How a job that ended (or died) ended: its result, or what it died of."""
    ending = None
    with contextlib.suppress(EOFError):  # nothing sent when it died first
        ending = Ending(result=receive.recv())
    process.join()
    receive.close()
    ending = ending or Ending(died_of=_death(process.exitcode, oom_seen))
    ending.ended = time.time()
    return ending


def _death(exitcode: int | None, oom_seen: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        # The kernel counts an out-of-memory kill after it sends the SIGKILL: look a few times.
        for _ in range(10 if oom_seen is not None and exitcode == -signal.SIGKILL else 0):
            if (_oom_kills() or 0) > oom_seen:
                return "out of memory (the kernel's out-of-memory killer)"
            time.sleep(0.05)
        return f"killed by {signal.Signals(-exitcode).name}"
    return f"exited with code {exitcode} without a result"


def record_ending(run_dir: Path, ending: Ending) -> Status:
    """Write into a job's record how it ended, where the job could not, and return its ending."""
    if not ending.started:
        return Status.NOT_STARTED
    record = runs.earlier_record(run_dir)
    if ending.died_of is not None:
        why = f"{ending.died_of} in epoch {len(record.get('history', [])) + 1}"
        runs.kill(run_dir, why, at=ending.ended)
        return Status.KILLED
    result = ending.result
    completed = isinstance(result, JobReturn) and result.status == JobStatus.COMPLETED
    if completed or record.get("status", Status.RUNNING) != Status.RUNNING:
        runs.process_ended(run_dir, ending.ended)
        return runs.ending(run_dir)  # it wrote its own end (a fast_dev_run writes no record)
    error = result
    if isinstance(result, JobReturn):
        try:
            error = result.return_value  # raises the job's exception: the job failed
        except Exception as raised:  # noqa: BLE001  (whatever the job raised is its error)
            error = raised
    reason = first_line(error)
    runs.fail(run_dir, f"{type(error).__name__}: {reason}", seen_from_outside=True)
    return Status.FAILED


def returned(ending: Ending, overrides: Sequence[str], config, status: str) -> JobReturn:
    """What Hydra gets back for a job: its own JobReturn, or a failed one saying how it ended."""
    if isinstance(ending.result, JobReturn):
        return ending.result
    failed = JobReturn(overrides=list(overrides), cfg=config)
    failed.status = JobStatus.FAILED
    failed.return_value = SweepIncomplete(f"{config.hydra.job.num}: {status}")
    return failed


def end_of_sweep(config, statuses: list[Status], sweep_dir: Path, returns: list[JobReturn]):
    """Raise the summary line of a sweep whose jobs did not all end well."""
    whole_sweep = "BasicSweeper" in config.hydra.sweeper._target_
    if whole_sweep and not all(e.ended for e in statuses):
        spread = runs.spread(directories.find_runs(sweep_dir))
        raise SweepIncomplete(runs.summary(statuses, sweep_dir, spread=spread))
    return returns


class LocalLauncher(Launcher):
    """Each job in a forked process, `n_jobs` at a time, `jobs_per_device` on each GPU."""

    def __init__(
        self, n_jobs: int | None = None, devices: Any = "auto", jobs_per_device: int = 4
    ) -> None:
        self.n_jobs, self.devices, self.jobs_per_device = n_jobs, devices, jobs_per_device

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        configs = [
            self._config(overrides, idx)
            for idx, overrides in enumerate(job_overrides, initial_job_idx)
        ]
        pool, wanted = self._pool(configs)
        n_jobs = self.n_jobs or (len(pool.devices) * pool.per_device if pool else None)
        n_jobs, threads = job_shares(n_jobs, self.config.get("num_threads"))
        # A search launches its trials one at a time and sums them up itself.
        if "BasicSweeper" in self.config.hydra.sweeper._target_:
            on = f" on GPUs {','.join(pool.devices)}, {pool.per_device} per GPU," if pool else ""
            log.info(
                "Launching %d jobs, %d at a time,%s %d threads each",
                len(configs),
                n_jobs,
                on or "",
                threads,
            )

        def started(index: int, pid: int, gpus: list[str] | None) -> None:
            overrides = " ".join(filter_overrides(job_overrides[index]))
            on = f" (GPU {','.join(gpus)})" if gpus else ""
            log.info("\t#%d : %s%s", initial_job_idx + index, overrides, on)

        jobs = [self._job(c) for c in configs]
        endings = run_jobs(jobs, n_jobs, threads, started, pool, wanted)
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        returns, statuses = [], []
        for index, (config, ending) in enumerate(zip(configs, endings, strict=True)):
            run_dir = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
            statuses.append(record_ending(run_dir, ending))
            returns.append(returned(ending, job_overrides[index], config, statuses[-1]))
            if ending.died_of is not None:
                log.error("#%d %s: %s", initial_job_idx + index, ending.died_of, run_dir)
        return end_of_sweep(self.config, statuses, sweep_dir, returns)

    def _config(self, overrides: Sequence[str], idx: int):
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = idx
            config.hydra.job.num = idx
        return config

    def _pool(self, configs: list) -> tuple[DevicePool | None, list[int]]:
        """The GPUs the jobs share and how many each takes; no pool without GPUs."""
        devices = pool_devices(self.devices)
        explicit = self.devices not in (None, "auto")
        wanted = [gpus_wanted(c.trainer, explicit) if devices else 0 for c in configs]
        if not devices or not any(wanted):
            return None, wanted
        if max(wanted) > len(devices):
            raise PoolTooSmall(
                f"a job asks for trainer.devices={max(wanted)} GPUs, the sweep has {len(devices)} "
                f"({','.join(devices)}): ask for fewer, or list more in hydra.launcher.devices"
            )
        return DevicePool(devices, self.jobs_per_device), wanted

    def _job(self, config) -> Callable[[], JobReturn]:
        def job() -> JobReturn:
            HydraConfig.instance().set_config(config)
            return run_job(
                hydra_context=self.hydra_context,
                task_function=self.task_function,
                config=config,
                job_dir_key="hydra.sweep.dir",
                job_subdir_key="hydra.sweep.subdir",
            )

        return job
