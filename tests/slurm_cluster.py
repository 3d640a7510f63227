"""A one-node SLURM cluster of this machine for the tests: munge, slurmctld and slurmd started
in the foreground from a folder of their own, and stopped by process id."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = "slurmctld slurmd slurm-client munge"
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")


def unavailable() -> str | None:
    """Why such a cluster cannot start here, or None."""
    if os.geteuid() != 0:
        return "SLURM's daemons need root to start jobs as other users; run the tests as root"
    missing = [p for p in PROGRAMS if shutil.which(p) is None]
    if missing:
        return f"{', '.join(missing)} not installed: apt-get install {PACKAGES} (CI does)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    """slurm.conf, munge's key and socket, state and logs, all under `root`."""

    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"
        self.node = socket.gethostname().split(".")[0]
        self.processes: list[subprocess.Popen] = []

    @property
    def env(self) -> dict[str, str]:
        """The environment a client (sbatch, submitit) needs to reach this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self) -> None:
        for folder in ("state", "spool", "log", "munge"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        socket_path = self.root / "munge" / "munge.socket"
        munged = ["munged", "--foreground", "--force", f"--key-file={key}"]
        munged += [f"--socket={socket_path}", f"--pid-file={self.root}/munge/munged.pid"]
        munged += [f"--log-file={self.root}/log/munged.log", f"--seed-file={self.root}/munge/seed"]
        self._spawn(munged)
        self._wait_for(socket_path.exists, "munged's socket")
        cpus = os.cpu_count() or 1
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=mlplab",
                    f"SlurmctldHost={self.node}",
                    "SlurmUser=root",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    "AuthType=auth/munge",
                    f"AuthInfo=socket={socket_path}",
                    f"StateSaveLocation={self.root}/state",
                    f"SlurmdSpoolDir={self.root}/spool",
                    f"SlurmctldPidFile={self.root}/slurmctld.pid",
                    f"SlurmdPidFile={self.root}/slurmd.pid",
                    f"SlurmctldLogFile={self.root}/log/slurmctld.log",
                    f"SlurmdLogFile={self.root}/log/slurmd.log",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_CPU",
                    "AccountingStorageType=accounting_storage/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "JobCompType=jobcomp/none",
                    "MpiDefault=none",
                    "ReturnToService=2",
                    # A cancelled or timed-out job's processes get SIGTERM, then SIGKILL this later.
                    "KillWait=30",
                    f"NodeName={self.node} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
                    "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        self._spawn(["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._spawn(["slurmd", "-D", "-f", str(self.conf), "-N", self.node])
        self._wait_for(lambda: self.node_state() == "idle", "an idle node in sinfo")

    def node_state(self) -> str:
        done = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%T"], env=self.env, capture_output=True, text=True
        )
        return done.stdout.strip()

    def stop(self) -> None:
        """Cancels what is left in the queue and stops the daemons this cluster started, newest
        first, then the job-step daemons of its jobs (they outlive slurmd)."""
        subprocess.run(["scancel", "--full", "--user=root"], env=self.env, capture_output=True)
        # A finished job's step daemons report to slurmd as the job leaves the queue.
        self._wait_for(lambda: not self._queue(), "empty queue", timeout=60, strict=False)
        for process in reversed(self.processes):
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
        for pid in self._step_daemons():
            os.kill(pid, signal.SIGKILL)

    def _queue(self) -> str:
        done = subprocess.run(["squeue", "-h"], env=self.env, capture_output=True, text=True)
        return done.stdout.strip()

    def _step_daemons(self) -> list[int]:
        """slurmstepd processes of this cluster: they hold its slurmd log open."""
        pids = []
        for proc in Path("/proc").iterdir():
            try:
                if not proc.name.isdigit() or b"slurmstepd" not in (proc / "cmdline").read_bytes():
                    continue
                if any(str(self.root) in os.readlink(fd) for fd in (proc / "fd").iterdir()):
                    pids.append(int(proc.name))
            except OSError:  # gone meanwhile
                continue
        return pids

    def _spawn(self, command: list[str]) -> None:
        log = (self.root / "log" / f"{command[0]}.out").open("w")
        self.processes.append(
            subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        )

    def _wait_for(self, ready, what: str, timeout: float = 60, strict: bool = True) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for process in self.processes:
                if process.poll() is not None:
                    logs = "\n".join(
                        p.read_text()[-1500:] for p in sorted((self.root / "log").iterdir())
                    )
                    raise RuntimeError(f"{process.args[0]} exited ({process.returncode}):\n{logs}")
            if time.monotonic() > deadline:
                if strict:
                    raise RuntimeError(f"no {what} after {timeout:.0f} s")
                return
            time.sleep(0.2)
