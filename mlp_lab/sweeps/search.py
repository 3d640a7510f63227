"""A Hydra sweeper over Optuna whose trials are ordinary runs, pruned by the study's pruner.

python -m mlp_lab.train hparams_search=optuna hydra.sweeper.n_trials=24 hydra.sweeper.n_jobs=2
"""

from __future__ import annotations

import functools
import logging
import math
import multiprocessing
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import yaml
from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Transformer
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from mlp_lab import directories, runs
from mlp_lab.cluster import submitit_launcher
from mlp_lab.config import ConfigError, PrunerConfig, SweeperConfig
from mlp_lab.runs import Status
from mlp_lab.trial import build_pruner, open_storage

log = logging.getLogger(__name__)


def _fail(message: str) -> SystemExit:
    return SystemExit(f"error: {message}")


SAMPLERS = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
DIRECTIONS = ("maximize", "minimize")


def search_space(params: dict[str, str], arguments: list[str]) -> tuple[dict, list[str]]:
    """Optuna distributions of the swept keys, and the fixed overrides, from Hydra's syntax."""
    space, fixed = {}, []
    # A key given on the command line is fixed there, and leaves the search space.
    overrides = OverridesParser.create().parse_overrides(list(arguments))
    given = {o.get_key_element() for o in overrides if not o.is_sweep_override()}
    params = [f"{k}={v}" for k, v in params.items() if k not in given]
    for override in OverridesParser.create().parse_overrides(params) + overrides:
        key = override.get_key_element()
        if not override.is_sweep_override():
            fixed.append(f"{key}={override.get_value_element_as_str()}")
            continue
        value = override.value()
        try:
            if override.is_choice_sweep():
                assert isinstance(value, ChoiceSweep)
                choices = list(override.sweep_iterator(transformer=Transformer.encode))
                space[key] = CategoricalDistribution(choices)
            elif override.is_interval_sweep():
                assert isinstance(value, IntervalSweep)
                log_scale = "log" in value.tags
                if isinstance(value.start, int) and isinstance(value.end, int):
                    space[key] = IntDistribution(value.start, value.end, log=log_scale)
                else:
                    space[key] = FloatDistribution(value.start, value.end, log=log_scale)
            else:
                raise ValueError("use choice(...) or interval(low, high), tag(log, ...) for log")
        except ValueError as err:
            raise _fail(f"search range {key}: {err}") from None
    return space, fixed


class OptunaSweeper(Sweeper):
    """Workers ask the study for trials, run each as a job, and tell it the run's result."""

    def __init__(self, **cfg: Any):
        self.cfg = SweeperConfig(**cfg)
        c = self.cfg
        if c.direction not in DIRECTIONS:
            allowed = ", ".join(DIRECTIONS)
            raise _fail(f"hydra.sweeper.direction={c.direction}: use one of {allowed}")
        if c.sampler["name"] not in SAMPLERS:
            raise _fail(
                f"hydra.sweeper.sampler.name={c.sampler['name']}: use one of {', '.join(SAMPLERS)}"
            )
        if c.n_trials < 1 or c.n_jobs < 1:
            raise _fail("hydra.sweeper.n_trials and hydra.sweeper.n_jobs must be positive")
        try:
            PrunerConfig(**c.pruner)
        except ConfigError as err:
            raise _fail(f"hydra.sweeper.{err}") from None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )
        self.sweep_dir = Path(config.hydra.sweep.dir)
        self.opened = False

    def _study(self, worker: int = 0) -> optuna.Study:
        c = self.cfg
        # Workers seeded alike would propose the same first trials.
        seed = None if c.sampler["seed"] is None else c.sampler["seed"] + worker
        sampler = SAMPLERS[c.sampler["name"]](seed=seed)
        # Optuna says "Using an existing study" each time it is opened again: once is enough.
        verbosity = optuna.logging.get_verbosity()
        if self.opened:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            return optuna.create_study(
                study_name=c.study_name,
                storage=open_storage(c.storage),
                sampler=sampler,
                pruner=build_pruner(PrunerConfig(**c.pruner)),
                direction=c.direction,
                load_if_exists=True,
            )
        finally:
            optuna.logging.set_verbosity(verbosity)
            self.opened = True

    def sweep(self, arguments: list[str]) -> None:
        space, fixed = search_space(dict(self.cfg.params or {}), arguments)
        study = self._study()
        # The dashboard and Optuna's plots then say what was maximised, not "Objective 0".
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([runs.MONITOR])
        fail_dead_trials(study)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, self.sweep_dir / "multirun.yaml")  # as Hydra's own sweepers
        record = {"storage": self.cfg.storage, "study_name": self.cfg.study_name}
        (self.sweep_dir / runs.SEARCH_RECORD).write_text(yaml.safe_dump(record))
        n = self.cfg.n_jobs
        if submitit_launcher(self.config.hydra.launcher._target_):
            cpus = self.config.hydra.launcher.get("cpus_per_task")
            threads = [f"num_threads={cpus}"] if cpus else []
            array = Plugins.instance().instantiate_launcher(
                config=self.config,
                hydra_context=self.hydra_context,
                task_function=functools.partial(_array_task, self, space, [*threads, *fixed]),
            )
            # A worker's own Hydra job directory; its trials' are <sweep>/<trial number>.
            array.launch([[*fixed, f"hydra.sweep.subdir=.workers/{k}"] for k in range(n)], 0)
        elif n == 1:
            self._work(0, space, fixed, self.launcher)
        else:
            threads = [f"num_threads={max(1, (os.cpu_count() or 1) // n)}"]
            job = (space, [*threads, *fixed], self.launcher)
            context = multiprocessing.get_context("fork")
            workers = [context.Process(target=self._work, args=(k, *job)) for k in range(n)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
        study = self._study()
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if done:
            best = study.best_trial
            log.info("Best parameters: %s", best.params)
            log.info("Best value: %s (trial %d)", best.value, best.number)
            results = {"best_params": best.params, "best_value": best.value}
            (self.sweep_dir / "optimization_results.yaml").write_text(yaml.safe_dump(results))
        trials = [d for d in directories.find_runs(self.sweep_dir) if ".workers" not in d.parts]
        print(runs.summary([runs.ending(d) for d in trials], self.sweep_dir, noun="trial"))

    def _work(self, worker: int, space: dict, fixed: list[str], launcher) -> None:
        """Run trials in Optuna's loop until the command's n_trials are claimed by its workers."""
        # Each trial first claims one of the command's slots by an atomic mkdir, the next one when
        # a trial ends: exactly n_trials run, and a worker whose trials end early takes more.
        slots = (self.sweep_dir / ".slots" / str(k) for k in range(self.cfg.n_trials))
        claims = filter(_claim, slots)
        if next(claims, None) is None:
            return
        # The run's trial section: where it reports its epochs (TrialConfig).
        reference = {"storage": self.cfg.storage, "study_name": self.cfg.study_name}
        reference.update({f"pruner.{k}": v for k, v in self.cfg.pruner.items()})

        def objective(trial: optuna.Trial) -> float:
            trial.set_user_attr("worker", runs.new_attempt(time.time()))
            run_dir = self.sweep_dir / str(trial.number)
            trial.set_user_attr("run_dir", str(run_dir))
            settings = {key: suggest(trial, key, d) for key, d in space.items()}
            overrides = [f"{k}={v}" for k, v in settings.items()] + fixed
            overrides += [f"trial.{k}={'null' if v is None else v}" for k, v in reference.items()]
            overrides.append(f"trial.number={trial.number}")
            launcher.launch([overrides], initial_job_idx=trial.number)
            return outcome(run_dir)

        def claim_next(study: optuna.Study, trial) -> None:
            if next(claims, None) is None:
                study.stop()

        self._study(worker).optimize(objective, callbacks=[claim_next])


def _claim(slot: Path) -> bool:
    try:
        slot.mkdir(parents=True)
    except FileExistsError:
        return False
    return True


def _array_task(sweeper: OptunaSweeper, space: dict, fixed: list[str], cfg) -> None:
    """One task of the workers' job array: runs trials here, in this process, until none is left."""
    launcher = BasicLauncher()
    launcher.setup(
        hydra_context=sweeper.hydra_context,
        task_function=sweeper.task_function,
        config=sweeper.config,
    )
    sweeper._work(HydraConfig.get().job.num, space, fixed, launcher)


def suggest(trial: optuna.Trial, key: str, distribution) -> Any:
    """The trial's value of `key`, drawn from its distribution."""
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(key, distribution.choices)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(key, distribution.low, distribution.high, log=distribution.log)
    return trial.suggest_float(key, distribution.low, distribution.high, log=distribution.log)


def outcome(run_dir: Path) -> float:
    """A trial's value from its run's record: NaN, which Optuna fails in one line, for a run that
    failed or died (a raised error would be logged with its traceback); TrialPruned when pruned."""
    record = runs.earlier_record(run_dir)
    ended = runs.status(record) if record else Status.FAILED
    if ended is Status.PRUNED:
        raise optuna.TrialPruned()
    return record["best_val_acc"] if ended is Status.COMPLETED else math.nan


def tell(study: optuna.Study, number: int, run_dir: Path) -> None:
    """Tell the study what became of a trial whose worker died."""
    try:
        study.tell(number, outcome(run_dir))
    except optuna.TrialPruned:
        study.tell(number, state=optuna.trial.TrialState.PRUNED)


def fail_dead_trials(study: optuna.Study) -> None:
    """Settle the trials a dead worker left running, from their run's record."""
    # Not Optuna's heartbeat (RDBStorage's heartbeat_interval, RetryFailedTrialCallback): Optuna
    # 5.1's JournalStorage keeps none, and a trial whose run finished keeps its value this way.
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        run_dir = Path(trial.user_attrs.get("run_dir", ""))
        record = runs.earlier_record(run_dir) if run_dir.name else {}
        worker = trial.user_attrs.get("worker")
        if record:  # dead, or finished but its worker died before telling the study
            dead = runs.status(record) is not Status.RUNNING
        elif worker and worker["host"] == socket.gethostname():
            dead = not runs.attempt_alive(worker)
        else:
            dead = False  # no record yet, on another host: it may be starting
        if dead:
            log.info("trial %d: its worker is gone; settled from its run's record", trial.number)
            tell(study, trial.number, run_dir)
