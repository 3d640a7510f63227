"""mlp_lab's commands in real processes, forked from one interpreter that imported torch, Lightning
and mlp_lab once (multiprocessing's fork server), as the local launcher starts its jobs.

Each command is a process of its own, with a pid to signal or kill and its own exit status, that
starts in milliseconds instead of paying 5-9 s of imports as a fresh `python -m` would.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
import threading
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

CONTEXT = multiprocessing.get_context("forkserver")
# Everything a command imports, and this module, whose _run the forked processes call.
CONTEXT.set_forkserver_preload(
    [
        "mlp_lab.train",
        "mlp_lab.fit",
        "mlp_lab.eval",
        "mlp_lab.predict",
        "mlp_lab.xor",
        "mlp_lab.report.write",
        "mlp_lab.resume",
        "mlp_lab.lab",
        "mlp_lab.sweeps.local",
        "mlp_lab.sweeps.slurm",
        "mlp_lab.sweeps.search",
        "benchmarks.epoch_speed",
        "mlflow",
        "commands",
    ]
)


def _run(target: str | Callable, args: tuple, cwd: str, env: dict, files: tuple, setup) -> None:
    """In the forked process: `python -m target *args` (or `target(*args)`), its standard input,
    output and error the three `files`, ending as the interpreter would."""
    if setup is not None:
        setup()
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in enumerate(files):
        opened = os.open(path, os.O_RDONLY if fd == 0 else os.O_WRONLY | os.O_APPEND)
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115  (the process's own, as Python's is)
    code = 0
    try:
        if callable(target):
            target(*args)
        else:
            sys.argv = [target, *args]
            with warnings.catch_warnings():
                # runpy: the module was imported already, by the fork server's preloading.
                warnings.filterwarnings("ignore", "'mlp_lab.*found in sys.modules", RuntimeWarning)
                runpy.run_module(target, run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        code = stop.code
    except BaseException:  # noqa: BLE001  (reported as the interpreter reports it)
        traceback.print_exc()
        code = 1
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    # What the interpreter does at its end: join the threads that are not daemons (whose
    # libraries, as joblib's loky, shut down their workers then), then run the atexit functions.
    threading._shutdown()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


class Command:
    """`python -m module *args` (or a function) in a forked process; what subprocess.Popen offers
    that the tests use: pid, poll, wait, communicate, send_signal, returncode."""

    def __init__(
        self,
        target: str | Callable,
        *args: str,
        cwd: Path | str | None = None,
        env: dict | None = None,
        stdin: str = "",
        setup: Callable[[], None] | None = None,
    ):
        self.args = [target, *args]
        self._folder = Path(tempfile.mkdtemp(prefix="mlp-lab-command-"))
        files = tuple(self._folder / name for name in ("stdin", "stdout", "stderr"))
        files[0].write_text(stdin)
        for path in files[1:]:
            path.touch()
        env = dict(os.environ if env is None else env)
        run_args = (target, args, str(cwd or Path.cwd()), env, tuple(map(str, files)), setup)
        self.process = CONTEXT.Process(target=_run, args=run_args)
        self.process.start()
        self.pid = self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode

    def poll(self) -> int | None:
        return self.process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.process.exitcode

    def send_signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def communicate(self, timeout: float | None = 600) -> tuple[str, str]:
        """Wait for the end; its standard output and error."""
        self.wait(timeout)
        out, err = ((self._folder / name).read_text() for name in ("stdout", "stderr"))
        shutil.rmtree(self._folder, ignore_errors=True)
        return out, err


def run_module(target: str | Callable, *args: str, **options) -> subprocess.CompletedProcess:
    """`python -m target args...` to its end, output captured (in this directory, or `cwd`)."""
    command = Command(target, *args, **options)
    out, err = command.communicate()
    return subprocess.CompletedProcess(command.args, command.returncode, out, err)
