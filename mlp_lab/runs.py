"""A run's life: its record (metrics.json) and its status, which moves only here: `start`,
`add_epoch`, then `finish`, `fail`, `interrupt` or `kill`; `status` judges what a run is now.
"""

from __future__ import annotations

import collections
import enum
import json
import os
import socket
import time
from pathlib import Path

from mlp_lab.cluster import slurm_job

RECORD = "metrics.json"
FORMAT = 2  # of the record: 0.2.0 wrote format 1 (no "format" key), read through `translated`
CHECKPOINTS = "checkpoints"
SEARCH_RECORD = "search.yaml"  # in a search's sweep directory: which study its trials belong to
MONITOR = "val/acc"
# A run on another host is taken for dead when its heartbeat (written after every epoch) is older
# than this, or than three of its longest epochs; on this host its process is looked up instead.
STALE_AFTER_S = 600
# Set by the local launcher in a job's process: when it started, the start of the run's attempt.
JOB_STARTED = "MLP_LAB_JOB_STARTED"


class Status(enum.StrEnum):
    """Where a run is in its life; its record keeps the value. In the order summaries count them."""

    COMPLETED = "completed"
    PRUNED = "pruned"  # stopped early by its search's pruner
    FAILED = "failed"
    KILLED = "killed"  # its process died (SIGKILL, out of memory, a lost node)
    INTERRUPTED = "interrupted"  # stopped by a signal after saving its epochs
    NOT_STARTED = "not started"  # a sweep's job its launcher never started: no record
    RUNNING = "running"

    @property
    def ended(self) -> bool:
        """Nothing left to do: completed, or pruned by its search."""
        return self in (Status.COMPLETED, Status.PRUNED)


class RunError(RuntimeError):
    """A run directory or checkpoint that cannot be used; the message says why and what to do."""


def write_record(run_dir: Path, record: dict) -> None:
    """metrics.json, replaced whole, so a reader never sees half a file."""
    path = Path(run_dir) / RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{RECORD}.{os.getpid()}.part")
    temporary.write_text(json.dumps(record, indent=2) + "\n")
    temporary.replace(path)


def read_record(run_dir: Path) -> dict:
    """A run's record in this version's format; RunError when it has none or it cannot be parsed."""
    path = Path(run_dir) / RECORD
    try:
        return translated(json.loads(path.read_text()))
    except FileNotFoundError:
        raise RunError(f"no {RECORD}: crashed or still running") from None
    except (OSError, ValueError) as err:
        raise RunError(f"corrupt {RECORD} ({err})") from None


def translated(record: dict) -> dict:
    """A record of any format this version reads, as this version writes it."""
    if record.get("format", 1) == 1:  # 0.2.0's: a run's attempts were its "parts"
        record = {"format": FORMAT, **record, "attempts": record.get("parts", [])}
        record.pop("parts", None)
    return record


def earlier_record(run_dir: Path) -> dict:
    """A run's record, or an empty one when it has none that can be read."""
    try:
        return read_record(run_dir)
    except RunError:
        return {}


def _process_start(pid: int) -> str | None:
    """When process `pid` started, in clock ticks after boot: tells it from a later same pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def new_attempt(started: float) -> dict:
    """This process's attempt at a run: who runs it, since when, and its heartbeat."""
    pid = os.getpid()
    attempt = {"host": socket.gethostname(), "pid": pid, "process_start": _process_start(pid)}
    attempt.update(started=started, heartbeat=time.time())
    # The GPUs its launcher gave it (null: none chosen, every GPU visible).
    attempt["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    if slurm_job():
        attempt["slurm_job"] = slurm_job()
    return attempt


def attempt_alive(attempt: dict, stale_after: float = STALE_AFTER_S) -> bool:
    """Whether an attempt's process runs: on this host its pid says, elsewhere its heartbeat."""
    if attempt["host"] != socket.gethostname():
        return time.time() - attempt["heartbeat"] < stale_after
    if attempt["process_start"] is None:  # no /proc: the pid alone
        try:
            os.kill(attempt["pid"], 0)
        except ProcessLookupError:
            return False
        return True
    return _process_start(attempt["pid"]) == attempt["process_start"]


def status(record: dict, stale_after: float | None = None) -> Status:
    """What a run is now: its record's status, killed where running and its process gone."""
    recorded = Status(record.get("status", Status.COMPLETED))
    if recorded is not Status.RUNNING:
        return recorded
    longest = max((e["epoch_time_s"] for e in record.get("history", [])), default=0.0)
    stale_after = stale_after or max(STALE_AFTER_S, 3 * longest)
    alive = bool(record.get("attempts")) and attempt_alive(record["attempts"][-1], stale_after)
    return Status.RUNNING if alive else Status.KILLED


def ending(run_dir: Path) -> Status:
    """What became of the run in `run_dir`, from its record (none: it recorded nothing)."""
    return status(earlier_record(run_dir))


def start(run_dir: Path, config: dict, params: int, started: float, resumed: bool) -> dict:
    """An attempt of the run begins, its first start or a resume: running, in this process."""
    earlier = earlier_record(run_dir) if resumed else {}
    record = {"format": FORMAT, "status": Status.RUNNING, "config": config, "params": params}
    record["history"] = earlier.get("history", [])
    record["attempts"] = [*earlier.get("attempts", []), new_attempt(started)]
    write_record(run_dir, record)
    return record


def start_fit(run_dir: Path, record: dict, device: str) -> None:
    """The attempt's training begins on `device`; a killed attempt's fit time counts from here."""
    record["attempts"][-1].update(fit_started=time.time(), device=device)
    write_record(run_dir, record)


def add_epoch(run_dir: Path, record: dict, history: list[dict]) -> None:
    """An epoch ended: the history so far, and a heartbeat."""
    record["attempts"][-1]["heartbeat"] = time.time()
    record.update(epochs=len(history), history=history)
    write_record(run_dir, record)


def finish(run_dir: Path, record: dict, pruned: bool, times: dict, **results) -> dict:
    """The run was tested after its epochs: completed, or pruned by its search."""
    history = record["history"]
    best = max(history, key=lambda e: e["val_acc"])
    record["attempts"][-1].update(times)
    record.update(
        status=Status.PRUNED if pruned else Status.COMPLETED,
        epochs=len(history),
        best_val_acc=best["val_acc"],
        best_epoch=best["epoch"],
        mean_epoch_time_s=sum(e["epoch_time_s"] for e in history) / len(history),
        **results,
        **total_times(record["attempts"]),
    )
    write_record(run_dir, record)
    return record


def _end(
    run_dir: Path, why: str, to: Status, seen_from_outside: bool, at: float | None = None
) -> None:
    record = earlier_record(run_dir)
    attempts = record.get("attempts", [])
    own = bool(attempts) and (attempts[-1]["host"], attempts[-1]["pid"]) == (
        socket.gethostname(),
        os.getpid(),
    )
    if attempts and not own and not seen_from_outside:
        return  # a resume that never started: the run's own record stays as it was
    if attempts:
        attempts[-1]["ended"] = at or time.time()
    write_record(run_dir, {**record, "status": to, "error": why})


def fail(run_dir: Path, why: str, seen_from_outside: bool = False) -> None:
    """The run stopped on an error; its history stays. `seen_from_outside`: its launcher says so."""
    _end(run_dir, why, Status.FAILED, seen_from_outside)


def interrupt(run_dir: Path, why: str) -> None:
    """A signal stopped the run once its completed epochs were saved."""
    _end(run_dir, why, Status.INTERRUPTED, seen_from_outside=False)


def kill(run_dir: Path, why: str, at: float | None = None) -> None:
    """The run's process died (SIGKILL, out of memory, a lost node), seen by its launcher."""
    _end(run_dir, why, Status.KILLED, seen_from_outside=True, at=at)


def process_ended(run_dir: Path, at: float) -> None:
    """Its launcher saw the attempt's process end at `at`, after the figures and the loggers."""
    record = earlier_record(run_dir)
    if record.get("attempts") and "ended" not in record["attempts"][-1]:
        record["attempts"][-1]["ended"] = at
        write_record(run_dir, record)


def attempt_times(attempt: dict) -> tuple[float, float]:
    """An attempt's wall and fit seconds; a killed attempt's count up to its last heartbeat."""
    end = attempt.get("ended", attempt["heartbeat"])
    fit = attempt.get("fit_time_s", end - attempt.get("fit_started", end))
    return attempt.get("wall_time_s", end - attempt["started"]), fit


def total_times(attempts: list[dict]) -> dict[str, float]:
    """Wall and fit seconds added up over a run's attempts: its first start and every resume."""
    times = [attempt_times(attempt) for attempt in attempts]
    return {"wall_time_s": sum(w for w, _ in times), "fit_time_s": sum(f for _, f in times)}


def is_run_dir(path: str | Path | None) -> bool:
    return bool(path) and (Path(path) / ".hydra" / "config.yaml").is_file()


def resume_command(path: Path | str) -> str:
    """The one command that continues what stopped: a run in place, or every run under a folder."""
    if is_run_dir(path):
        return f"python -m mlp_lab.train resume={path}"
    return f"python -m mlp_lab.resume {path}"


def describe(run_dir: Path, record: dict) -> str:
    """What became of a run, in one line."""
    now, done = status(record), len(record.get("history", []))
    if now is Status.COMPLETED:
        return f"completed, {done} epochs"
    if now is Status.PRUNED:
        return f"pruned after {done} epoch{'s' * (done != 1)} by its search"
    if now is Status.RUNNING:
        attempt = record["attempts"][-1]
        return f"running: {done} epochs so far (pid {attempt['pid']} on {attempt['host']})"
    if now is Status.KILLED:  # its launcher says why; else its process was found gone
        why = record.get("error") if record.get("status") == now else None
        return f"{why or f'killed in epoch {done + 1}'}: resume with `{resume_command(run_dir)}`"
    return f"{now}: {record.get('error') or f'{done} epochs so far'}"


def attempt_end(attempt: dict) -> float:
    """When an attempt ended (or was last seen alive), time.time()'s clock."""
    if "ended" in attempt:
        return attempt["ended"]
    if "wall_time_s" in attempt:
        return attempt["started"] + attempt["wall_time_s"]
    return attempt["heartbeat"]


def spread(run_dirs: list[Path]) -> str:
    """How a sweep's runs shared their GPUs (" on 2 GPUs, 4 at a time on each"), or ""."""
    spans: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    for run_dir in run_dirs:
        for attempt in earlier_record(run_dir).get("attempts", []):
            for device in filter(None, (attempt.get("cuda_visible_devices") or "").split(",")):
                spans[device].append((attempt["started"], attempt_end(attempt)))
    if not spans:
        return ""
    at_once = max(most_at_once(times) for times in spans.values())
    each = "each" if len(spans) > 1 else "it"
    return f" on {len(spans)} GPU{'s' * (len(spans) > 1)}, {at_once} at a time on {each}"


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most of these (start, end) spans that overlap at any moment."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = most = 0
    for _, change in events:  # an end sorts before a start at the same moment
        running += change
        most = max(most, running)
    return most


def summary(endings: list[Status], folder: Path, noun: str = "run", spread: str = "") -> str:
    """One line: how many runs ended how (`spread`: on which GPUs) and the command to go on with."""
    counts = collections.Counter(endings)
    counted = ", ".join(f"{counts[s]} {s}" for s in Status if counts[s])
    n = len(endings)
    stopped = {Status.KILLED, Status.INTERRUPTED, Status.RUNNING} & set(endings)
    if noun == "run" and stopped:  # a search's trials are settled by the search
        then = f"resume with: {resume_command(folder)}"
    else:
        then = f"report: python -m mlp_lab.report {folder}"
    return f"{n} {noun}{'s' if n != 1 else ''}{spread}: {counted} ({then})"
