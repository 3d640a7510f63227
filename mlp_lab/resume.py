"""Finish what was killed: resume, in place, every run under a folder that neither ended nor runs.

python -m mlp_lab.resume outputs/lab --jobs 2
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import sys
from pathlib import Path

import yaml

from mlp_lab import directories, runs
from mlp_lab.runs import Status
from mlp_lab.sweeps import local

log = logging.getLogger(__name__)


def unfinished(folder: Path) -> tuple[list[Path], list[str]]:
    """The runs under `folder` to resume, and a line for each one left alone, with why."""
    todo, left = [], []
    for run_dir in directories.find_runs(folder):
        record = runs.earlier_record(run_dir)
        config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text()) or {}
        now = runs.status(record) if record else None  # none: it died before it wrote one
        if (now and now.ended) or config.get("trainer", {}).get("fast_dev_run"):
            continue
        if now is Status.RUNNING:
            left.append(f"{run_dir}: {runs.describe(run_dir, record)}")
        elif (config.get("trial") or {}).get("number") is not None:
            left.append(f"{run_dir}: a search's trial, which the search settles when it runs again")
        else:
            todo.append(run_dir)
    return todo, left


def claim(todo: list[Path], left: list[str]) -> tuple[list[Path], list]:
    """The runs this command resumes, each locked (flock) so no run is resumed twice."""
    claimed, locks = [], []
    for run_dir in todo:
        lock = (run_dir / ".resume.lock").open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            left.append(f"{run_dir}: being resumed by another command")
            continue
        claimed.append(run_dir)
        locks.append(lock)
    return claimed, locks


def sweep_n_jobs(folder: Path) -> int | None:
    """The n_jobs of the local launcher that ran the sweep at `folder`, when it says."""
    saved = folder / "multirun.yaml"
    if not saved.is_file():
        return None
    launched = (yaml.safe_load(saved.read_text()).get("hydra") or {}).get("launcher") or {}
    return launched.get("n_jobs") if isinstance(launched.get("n_jobs"), int) else None


def resume_job(run_dir: Path):
    """`python -m mlp_lab.train resume=<run_dir>`, run in a forked process by the launcher."""

    def job() -> None:
        from mlp_lab import train

        sys.argv = ["mlp_lab.train", f"resume={run_dir}", "trainer.enable_progress_bar=false"]
        train.main()

    return job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mlp_lab.resume", description=__doc__.splitlines()[0]
    )
    parser.add_argument("folder", type=Path, help="a sweep's, a study's or the lab's directory")
    parser.add_argument(
        "--jobs",
        type=int,
        help="runs at once (default: the sweep's hydra.launcher.n_jobs, else cores / threads)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.folder.is_dir():
        parser.exit(2, f"error: {args.folder} is not a directory: give a sweep's directory\n")
    if args.jobs is not None and args.jobs < 1:
        parser.exit(2, "error: --jobs must be at least 1\n")
    todo, left = unfinished(args.folder)
    todo, locks = claim(todo, left)  # held until this command ends
    for line in left:
        print(f"left alone: {line}")
    if not todo:
        print(f"nothing to resume under {args.folder}")
        return 0
    n_jobs, threads = local.job_shares(args.jobs or sweep_n_jobs(args.folder), None)
    log.info(
        "Resuming %d run%s, %d at a time, %d thread%s each",
        len(todo),
        "s" * (len(todo) != 1),
        n_jobs,
        threads,
        "s" * (threads != 1),
    )
    endings = local.run_jobs([resume_job(d) for d in todo], n_jobs, threads)
    statuses = [local.record_ending(d, e) for d, e in zip(todo, endings, strict=True)]
    line = runs.summary(statuses, args.folder)
    print(line)
    return 0 if all(t.ended for t in statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
