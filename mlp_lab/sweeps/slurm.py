"""hydra/launcher=slurm: a sweep as a SLURM job array (submitit's), jobs killed outright seen.

python -m mlp_lab.train -m seed=0,1,2,3 hydra/launcher=slurm
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from hydra.core.singleton import Singleton
from hydra.core.utils import filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf, open_dict

from mlp_lab import runs
from mlp_lab.messages import first_line, squeue_forgot
from mlp_lab.runs import Status
from mlp_lab.sweeps.local import Ending, end_of_sweep, record_ending, returned

log = logging.getLogger(__name__)


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    """submitit's SLURM launcher that also sees a job die on a cluster without accounting."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
        # hydra-submitit-launcher 1.2.0's BaseSubmititLauncher.launch up to `executor.map_array`;
        # its last line, `return [j.results()[0] for j in jobs]`, waits forever for a job killed
        # outright where SLURM keeps no accounting (submitit asks sacct whether a job ended): here
        # `_wait_for` sees it leave the queue without a result, and its record says killed.
        import submitit

        params = dict(self.params)
        folder, timeouts = params.pop("submitit_folder"), params.pop("max_num_timeout")
        executor = submitit.AutoExecutor(
            cluster="slurm", folder=folder, slurm_max_num_timeout=timeouts
        )
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{k if k in base else f"slurm_{k}": v for k, v in params.items()}
        )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info("Submitting %d jobs to SLURM; sweep directory %s", len(job_overrides), sweep_dir)
        arguments = []
        for idx, overrides in enumerate(job_overrides, initial_job_idx):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            state = Singleton.get_state()
            arguments.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", state))
        jobs = executor.map_array(self, *zip(*arguments, strict=True))
        returns, endings = [], []
        for idx, (job, overrides) in enumerate(
            zip(jobs, job_overrides, strict=True), initial_job_idx
        ):
            config = self.hydra_context.config_loader.load_sweep_config(
                self.config, list(overrides)
            )
            with open_dict(config):
                config.hydra.job.num = idx
            run_dir = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
            ending = _wait_for(job, run_dir)
            endings.append(record_ending(run_dir, ending))
            returns.append(returned(ending, overrides, config, endings[-1]))
        return end_of_sweep(self.config, endings, sweep_dir, returns)


# A job that left the queue writes its result within seconds; a dead one never does.
RESULT_GRACE_S = 30
POLL_S = 5


def _wait_for(job, run_dir: Path) -> Ending:
    """How a SLURM job ended: its result, or how it died when it left the queue without one."""
    from submitit.core.utils import UncompletedJobError

    left_queue = None
    while not job.done():
        queued = subprocess.run(
            ["squeue", "--noheader", "--jobs", job.job_id, "--format", "%i"],
            capture_output=True,
            text=True,
        )
        # squeue answers nothing for a job that has left the queue, or no longer knows its id.
        gone = (queued.returncode == 0 and not queued.stdout.strip()) or squeue_forgot(
            queued.stderr
        )
        left_queue = (left_queue or time.monotonic()) if gone else None
        if left_queue is not None and _died(run_dir, time.monotonic() - left_queue):
            return Ending(
                died_of=f"SLURM job {job.job_id} ended without a result (SIGKILL, out of memory "
                "or a lost node)"
            )
        time.sleep(POLL_S)
    try:
        return Ending(result=job.results()[0])
    except UncompletedJobError as err:
        return Ending(died_of=f"SLURM job {job.job_id}: {first_line(err)}")


def _died(run_dir: Path, out_of_queue_s: float) -> bool:
    """Whether a job out of the queue this long died: its record stopped beating."""
    record = runs.earlier_record(run_dir)
    if record and runs.status(record) is Status.KILLED:
        return True
    beating = bool(record) and runs.status(record, RESULT_GRACE_S) is Status.RUNNING
    return out_of_queue_s > RESULT_GRACE_S and not beating
