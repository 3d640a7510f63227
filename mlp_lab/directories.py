"""Run and sweep directories: claimed once, guarded, found again, removed when unused."""

from __future__ import annotations

import itertools
import os
import shutil
import time
from datetime import datetime
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from mlp_lab.cli import override_key
from mlp_lab.cluster import process_rank
from mlp_lab.runs import (
    RECORD,
    Status,
    describe,
    earlier_record,
    ending,
    is_run_dir,
    spread,
    status,
    summary,
)


def find_runs(directory: Path) -> list[Path]:
    """The run directories at or below `directory`, a sweep's jobs in launch order (2 before 10)."""

    def launch_order(path: Path) -> tuple:
        return (str(path.parent), int(path.name) if path.name.isdigit() else -1, path.name)

    return sorted((p.parent for p in Path(directory).rglob(".hydra")), key=launch_order)


def overrides(run_dir: Path) -> dict[str, str]:
    """The command-line overrides a run was started with, as key: value."""
    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    items = (yaml.safe_load(path.read_text()) or []) if path.is_file() else []
    return {override_key(o): o.split("=", 1)[1] for o in items if "=" in o}


_claimed: dict[str, str] = {}


def new_dir(parent: str) -> str:
    """A directory of this command's own under `parent`, claimed by an atomic mkdir."""
    if parent in _claimed:  # Hydra may resolve the same directory more than once
        return _claimed[parent]
    if int(os.environ.get("SLURM_STEP_NUM_TASKS", 1)) > 1:
        # The tasks of one srun step (DDP under SLURM) are one run: they share the step's name.
        step = f"slurm-{os.environ['SLURM_JOB_ID']}.{os.environ.get('SLURM_STEP_ID', 0)}"
        path = Path(parent) / step
        path.mkdir(parents=True, exist_ok=True)
    else:
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        Path(parent).mkdir(parents=True, exist_ok=True)
        for n in itertools.count(1):
            path = Path(parent) / (stamp if n == 1 else f"{stamp}_{n}")
            try:
                path.mkdir(parents=True)  # a refused run may have removed its empty parent
                break
            except FileExistsError:
                continue
    _claimed[parent] = str(path)
    return _claimed[parent]


def release_unused(used: Path) -> None:
    """Remove the directories this command claimed but did not use, while still empty."""
    for path in _claimed.values():
        if Path(path).resolve() != used.resolve():
            remove_empty(Path(path))


def remove_empty(path: Path) -> None:
    """Remove `path` and the folders it leaves empty, below the working directory only."""
    here = Path.cwd().resolve()
    for folder in [path.resolve(), *path.resolve().parents]:
        if here not in folder.parents:
            return
        try:
            folder.rmdir()
        except OSError:  # not empty, or gone already
            return


def register_resolvers() -> None:
    """The resolvers conf/ uses to give each run and sweep a directory of its own."""
    # Cached: one directory per command, however often Hydra reads the setting; the cache travels
    # with the config to a sweep's job processes. A wrong resume= gets a new directory, where
    # mlp_lab.train records the error, rather than Hydra creating the mistyped path; a resumed run
    # keeps the Hydra record of its first start and files its own beside it.
    OmegaConf.register_new_resolver("new_dir", new_dir, replace=True, use_cache=True)
    OmegaConf.register_new_resolver(
        "run_dir",
        lambda resume, parent: resume if is_run_dir(resume) else new_dir(parent),
        replace=True,
        use_cache=True,
    )
    OmegaConf.register_new_resolver(
        "output_subdir",
        lambda resume, now: f".hydra/resumed_{now}" if is_run_dir(resume) else ".hydra",
        replace=True,
    )


class RunDirGuard(Callback):
    """Checked before Hydra writes anything: one run per directory, no resume of a live run."""

    def on_run_start(self, config, **kwargs):
        if process_rank() != 0:  # DDP's other processes share rank 0's directory
            return
        run_dir = Path(config.hydra.run.dir)
        release_unused(run_dir)
        record = earlier_record(run_dir)
        if not record:
            return
        resume = config.get("resume")
        if not (resume and Path(resume).resolve() == run_dir.resolve()):
            raise SystemExit(
                f"error: hydra.run.dir={run_dir} already holds a run ({describe(run_dir, record)})"
                f": continue it with resume={run_dir}, or leave hydra.run.dir out for a new "
                "directory"
            )
        if status(record) is Status.RUNNING:
            attempt = record["attempts"][-1]
            raise SystemExit(
                f"error: resume={resume}: the run is still going (pid {attempt['pid']} on "
                f"{attempt['host']}, last heartbeat {time.time() - attempt['heartbeat']:.0f} s "
                "ago); stop it first, or wait for it"
            )

    def on_multirun_start(self, config, **kwargs):
        sweep = Path(config.hydra.sweep.dir)
        release_unused(sweep)
        taken = [run for run in find_runs(sweep) if (run / RECORD).is_file()]
        if taken:
            raise SystemExit(
                f"error: hydra.sweep.dir={sweep} already holds {len(taken)} runs: give a new "
                "directory, or leave hydra.sweep.dir out for a new one"
            )

    def on_multirun_end(self, config, **kwargs):
        # A search sums its trials up itself; a launcher whose jobs did not all end well, too.
        if "BasicSweeper" in config.hydra.sweeper._target_:
            sweep = Path(config.hydra.sweep.dir)
            jobs = find_runs(sweep)
            print(summary([ending(run) for run in jobs], sweep, spread=spread(jobs)))


def discard_unused(run_dir: Path) -> bool:
    """Remove a run directory a refused config left (only .hydra/ and train.log); whether it did."""
    run_dir = Path(run_dir)
    written = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else {"?"}
    if written - {".hydra", "train.log"}:
        return False
    shutil.rmtree(run_dir)
    remove_empty(run_dir.parent)  # outputs/runs/, outputs/, where made for it alone
    return True
