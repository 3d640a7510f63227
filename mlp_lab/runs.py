"""The run directory: its record, its checkpoints, and finding runs under a folder.

outputs/runs/<time>/        a run (a sweep's: outputs/multirun/<time>/<n>/)
    metrics.json            the record: status, config, per-epoch history, results
    checkpoints/            the best val/acc checkpoint, and last.ckpt to resume from
    .hydra/                 the composed config and the overrides (a resume's: .hydra/resumed_*)
    tensorboard/, *.png     the logs (conf/logger/: csv/ too) and figures (mlp_lab.figures)
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import shutil
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mlp_lab.cluster import process_rank, slurm_job
from mlp_lab.config import ConfigError, TrainConfig

if TYPE_CHECKING:
    from mlp_lab.module import MLPClassifier

RECORD = "metrics.json"
CHECKPOINTS = "checkpoints"
MONITOR = "val/acc"
# A run on another host is taken for dead when its heartbeat (written after every epoch) is older
# than this, or than three of its longest epochs; on this host its process is looked up instead.
STALE_AFTER_S = 600


class RunError(RuntimeError):
    """A run directory or checkpoint that cannot be used; the message says why and what to do."""


def write_record(run_dir: Path, record: dict) -> None:
    """metrics.json, replaced whole, so a reader never sees half a file."""
    path = Path(run_dir) / RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{RECORD}.{os.getpid()}.part")
    part.write_text(json.dumps(record, indent=2) + "\n")
    part.replace(path)


def read_record(run_dir: Path) -> dict:
    """A run's record; RunError when it has none or it cannot be parsed."""
    path = Path(run_dir) / RECORD
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"no {RECORD}: crashed or still running") from None
    except (OSError, ValueError) as err:
        raise RunError(f"corrupt {RECORD} ({err})") from None


def is_run_dir(path: str | Path | None) -> bool:
    return bool(path) and (Path(path) / ".hydra" / "config.yaml").is_file()


def find_runs(directory: Path) -> list[Path]:
    """The run directories at or below `directory`, a sweep's jobs in launch order (2 before 10)."""

    def launch_order(path: Path) -> tuple:
        return (str(path.parent), int(path.name) if path.name.isdigit() else -1, path.name)

    return sorted((p.parent for p in Path(directory).rglob(".hydra")), key=launch_order)


def overrides(run_dir: Path) -> dict[str, str]:
    """The command-line overrides a run was started with, as key: value."""
    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    items = (yaml.safe_load(path.read_text()) or []) if path.is_file() else []
    pairs = (item.split("=", 1) for item in items if "=" in item)
    return {k.lstrip("+~"): v for k, v in pairs}


_claimed: dict[str, str] = {}


def new_dir(parent: str) -> str:
    """A directory of this command's own under `parent`, named by the time it started.

    Claimed with an atomic mkdir: when the name is taken (runs started in the same second, here or
    on another machine sharing the filesystem) the next of `<time>_2`, `<time>_3`, ... is.
    """
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
                path.mkdir()
                break
            except FileExistsError:
                continue
    _claimed[parent] = str(path)
    return _claimed[parent]


def release_unused(used: Path) -> None:
    """Remove the directories this command claimed but does not use, while still empty.

    OmegaConf resolves a directory setting whenever another config overrides it (a study's or
    debug's sweep and run directories), and each resolution claims one.
    """
    for path in _claimed.values():
        if Path(path).resolve() != used.resolve():
            with contextlib.suppress(OSError):
                os.rmdir(path)


def _run_dir(resume: str | None, parent: str) -> str:
    # A wrong resume= gets a new directory, where mlp_lab.train records the error, rather than
    # Hydra creating the mistyped path.
    return resume if is_run_dir(resume) else new_dir(parent)


def _output_subdir(resume: str | None, now: str) -> str:
    # A resumed run keeps the Hydra record of its first start and files its own beside it.
    return f".hydra/resumed_{now}" if is_run_dir(resume) else ".hydra"


def register_resolvers() -> None:
    """The resolvers conf/ uses to give each run and sweep a directory of its own."""
    # Cached: one directory per command, however often Hydra reads the setting; the cache travels
    # with the config to a sweep's job processes.
    OmegaConf.register_new_resolver("new_dir", new_dir, replace=True, use_cache=True)
    OmegaConf.register_new_resolver("run_dir", _run_dir, replace=True, use_cache=True)
    OmegaConf.register_new_resolver("output_subdir", _output_subdir, replace=True)


def _process_start(pid: int) -> str | None:
    """When process `pid` started, in clock ticks after boot: tells it from a later same pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def new_part(started: float) -> dict:
    """This process's part of a run, started at `started` (time.time()): who runs it, and its
    heartbeat."""
    now = time.time()
    pid = os.getpid()
    part = {
        "host": socket.gethostname(),
        "pid": pid,
        "process_start": _process_start(pid),
        "started": started,
        "heartbeat": now,
    }
    job = slurm_job()
    if job:
        part["slurm_job"] = job
    return part


def part_times(part: dict) -> tuple[float, float]:
    """A part's wall and fit seconds; a killed part's count up to its last heartbeat."""
    end = part.get("ended", part["heartbeat"])
    fit = part.get("fit_time_s", end - part.get("fit_started", end))
    return part.get("wall_time_s", end - part["started"]), fit


def total_times(parts: list[dict]) -> dict[str, float]:
    """Wall and fit seconds added up over a run's parts: its first start and every resume."""
    times = [part_times(part) for part in parts]
    return {"wall_time_s": sum(w for w, _ in times), "fit_time_s": sum(f for _, f in times)}


def alive(record: dict) -> bool:
    """Whether a "running" record's process is still going."""
    if record.get("status") != "running" or not record.get("parts"):
        return False
    part = record["parts"][-1]
    if part["host"] == socket.gethostname():
        if part["process_start"] is None:  # no /proc: the pid alone
            try:
                os.kill(part["pid"], 0)
            except ProcessLookupError:
                return False
            return True
        return _process_start(part["pid"]) == part["process_start"]
    longest = max((e["epoch_time_s"] for e in record.get("history", [])), default=0.0)
    return time.time() - part["heartbeat"] < max(STALE_AFTER_S, 3 * longest)


def describe(run_dir: Path, record: dict) -> str:
    """What became of a run, in one line."""
    status, done = record.get("status"), len(record.get("history", []))
    if status == "completed":
        return f"completed, {done} epochs"
    if status == "pruned":
        return f"pruned after {done} epoch{'s' * (done != 1)} by its search"
    if status == "running" and alive(record):
        part = record["parts"][-1]
        return f"running: {done} epochs so far (pid {part['pid']} on {part['host']})"
    if status == "running":
        return f"killed in epoch {done + 1}: resume with `python -m mlp_lab.train resume={run_dir}`"
    if status == "killed":  # marked by its launcher, which saw it die
        return f"{record.get('error')}: resume with `python -m mlp_lab.resume {run_dir}`"
    return f"{status}: {record.get('error') or f'{done} epochs so far'}"


def summary(endings: list[str], folder: Path, noun: str = "run") -> str:
    """One line: how many runs ended how, and the command to go on with."""
    counts = collections.Counter(endings)
    order = ["completed", "pruned", "failed", "killed", "interrupted", "not started"]
    order += sorted(set(counts) - set(order))
    told = ", ".join(f"{counts[e]} {e}" for e in order if counts[e])
    n = len(endings)
    if noun == "run" and {"killed", "interrupted", "running"} & set(endings):  # not a search's
        then = f"resume with: python -m mlp_lab.resume {folder}"
    else:
        then = f"report: python -m mlp_lab.report {folder}"
    return f"{n} {noun}{'s' if n != 1 else ''}: {told} ({then})"


class RunDirGuard(Callback):
    """Checked before Hydra writes anything: one run per directory, no resume of a live run."""

    def on_run_start(self, config, **kwargs):
        if process_rank() != 0:  # DDP's other processes share rank 0's directory
            return
        run_dir = Path(config.hydra.run.dir)
        release_unused(run_dir)
        try:
            record = read_record(run_dir)
        except RunError:
            return
        resume = config.get("resume")
        if resume and Path(resume).resolve() == run_dir.resolve():
            if alive(record):
                part = record["parts"][-1]
                raise SystemExit(
                    f"error: resume={resume}: the run is still going (pid {part['pid']} on "
                    f"{part['host']}, last heartbeat {time.time() - part['heartbeat']:.0f} s "
                    "ago); stop it first, or wait for it"
                )
            return
        raise SystemExit(
            f"error: hydra.run.dir={run_dir} already holds a run ({describe(run_dir, record)}): "
            f"continue it with resume={run_dir}, or leave hydra.run.dir out for a new directory"
        )

    def on_multirun_end(self, config, **kwargs):
        # A search sums its trials up itself; a launcher whose jobs did not all end well, too.
        if "BasicSweeper" not in config.hydra.sweeper._target_:
            return
        sweep = Path(config.hydra.sweep.dir)
        # A job with no record and no error (a fast_dev_run) completed.
        ended = [earlier_record(run).get("status", "completed") for run in find_runs(sweep)]
        print(summary(ended, sweep))

    def on_multirun_start(self, config, **kwargs):
        sweep = Path(config.hydra.sweep.dir)
        release_unused(sweep)
        taken = [run for run in find_runs(sweep) if (run / RECORD).is_file()]
        if taken:
            raise SystemExit(
                f"error: hydra.sweep.dir={sweep} already holds {len(taken)} runs: give a new "
                "directory, or leave hydra.sweep.dir out for a new one"
            )


def resumed_config(run_dir: Path, overrides: list[str]) -> TrainConfig:
    """The config a run was started with, and what this command line changes in it."""
    saved = run_dir / ".hydra" / "config.yaml"
    if not saved.is_file():
        raise ConfigError(
            f"resume={run_dir} is not a run directory (no .hydra/config.yaml): give one of "
            "outputs/runs/<time>"
        )
    changes = [o for o in overrides if not o.startswith(("resume=", "hydra."))]
    saved_cfg = OmegaConf.load(saved)
    if "logger" not in saved_cfg:  # saved before conf/logger/, when every run used TensorBoard
        saved_cfg.logger = {"tensorboard": {}}
    try:
        cfg = OmegaConf.merge(
            OmegaConf.structured(TrainConfig),
            saved_cfg,
            OmegaConf.from_dotlist(changes),
        )
    except OmegaConfBaseException as err:
        raise ConfigError(
            f"resume: {' '.join(changes)} cannot change the saved config of {run_dir} "
            f"({str(err).splitlines()[0]}); only key=value overrides such as "
            "trainer.max_epochs=20 can"
        ) from None
    cfg.resume = str(run_dir)
    return OmegaConf.to_object(cfg)


def last_checkpoint(run_dir: Path | str) -> Path:
    """The checkpoint of a run's latest completed epoch, which `resume=` continues from."""
    return Path(run_dir) / CHECKPOINTS / "last.ckpt"


def earlier_record(run_dir: Path) -> dict:
    """A run's record, or an empty one when it has none that can be read."""
    try:
        return read_record(run_dir)
    except RunError:
        return {}


def checkpoint_file(path: Path | str) -> Path:
    """A checkpoint file as given, or a run directory's best checkpoint (named in its record)."""
    path = Path(path)
    if path.is_dir():
        try:
            record = read_record(path)
        except RunError as err:
            raise RunError(f"{path} is not a finished mlp_lab run ({err})") from None
        if "checkpoint" not in record:
            raise RunError(
                f"{path} is not a finished run (status {record.get('status')}): give one of its "
                "checkpoints/*.ckpt, or resume it first"
            )
        path = path / record["checkpoint"]
    if not path.is_file():
        raise RunError(f"checkpoint {path} not found")
    return path


def load_model(path: Path | str) -> MLPClassifier:
    """The model of a checkpoint file, or of a run directory's best checkpoint, in eval mode."""
    # Imported here: every command reads runs before it composes its config, and most never load.
    import torch

    from mlp_lab.module import MLPClassifier

    path = checkpoint_file(path)
    try:
        hparams = torch.load(path, map_location="cpu", weights_only=False).get(
            "hyper_parameters", {}
        )
    except Exception as err:  # pickle, zip and torch errors alike: not a checkpoint we can read
        raise RunError(f"{path} is not a checkpoint: {err}") from None
    if "hidden" in hparams:  # settings kept flat, before they travelled as config sections
        raise RunError(
            f"{path} comes from an older mlp_lab (before 0.2): train it again with this version"
        )
    if not {"model", "loss", "optimizer", "data"} <= hparams.keys():
        raise RunError(f"{path} is not an mlp_lab checkpoint (no model or data settings)")
    return MLPClassifier.load_from_checkpoint(path, map_location="cpu").eval()


def discard_unused(run_dir: Path) -> bool:
    """Remove a run directory that holds only Hydra's record of the command and its log: a config
    refused before any work. Whether it did."""
    run_dir = Path(run_dir)
    written = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else {"?"}
    if written - {".hydra", "train.log"}:
        return False
    shutil.rmtree(run_dir)
    return True


def record_error(run_dir: Path, status: str, error: str, dead: bool = False) -> None:
    """Mark this process's run failed or interrupted in its record, keeping the history it has;
    with `dead`, a run whose process died (its launcher saw it end)."""
    record = earlier_record(run_dir)
    parts = record.get("parts", [])
    owner = (socket.gethostname(), os.getpid())
    if parts and not dead and (parts[-1]["host"], parts[-1]["pid"]) != owner:
        return  # a resume that never started: the run's own record stays as it was
    if parts:
        parts[-1]["ended"] = time.time()
    write_record(run_dir, {**record, "status": status, "error": error})
