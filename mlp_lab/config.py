"""Typed schemas of `conf/`: Hydra checks types while composing, `__post_init__` checks values.

Composing needs no torch: `--help`, a misspelt key and `--cfg` answer in a second. The names a
value may take (activations, losses, datasets, ...) come from the modules that implement them,
imported when a config is checked, after composing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from omegaconf import MISSING, OmegaConf

from hydra_plugins.mlp_lab_launcher import LocalLauncher, SlurmLauncher
from hydra_plugins.mlp_lab_sweeper import OptunaSweeper
from mlp_lab.cli import CONF_DIR


class ConfigError(ValueError):
    """A config value outside its allowed range; the message names the key and what is allowed."""


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def _one_of(key: str, value: str, names) -> None:
    _require(value in names, key, value, f"use one of {', '.join(names)}")


@dataclass
class DataConfig:
    name: str = MISSING
    root: str | None = None  # None: $MLP_LAB_DATA, else data/ in the project
    batch_size: int = 256
    eval_batch_size: int = 5000  # evaluation batches are large: no gradients to keep
    val_size: int = 5000  # images held out of the official training set
    download: bool = True  # try torchvision's download before the offline packages
    train_size: int | None = None  # keep this many of the training images (seeded); None: all
    # This fraction of the training labels replaced by another class, drawn from the seed and
    # the same every epoch (noisy labels: the double-descent curve); validation and test untouched.
    label_noise: float = 0.0
    # Training augmentation on the in-memory tensors: each image warped by a smooth random
    # displacement field (Simard et al. 2003: `elastic` is its alpha in pixels, 34 there, blurred
    # over `elastic_sigma` pixels, 4 there; 0: off), moved by up to `shift` pixels in x and y
    # (zeros fill in), and mirrored left-right with probability 1/2 when `flip`.
    elastic: float = 0.0
    elastic_sigma: float = 4.0
    shift: int = 0
    flip: bool = False

    def __post_init__(self):
        from mlp_lab.data import DATASETS

        _one_of("data.name", self.name, DATASETS)
        _require(0 <= self.shift < 14, "data.shift", self.shift, "0 <= shift < 14 pixels")
        _require(self.elastic >= 0, "data.elastic", self.elastic, ">= 0 (0: off)")
        _require(
            0 <= self.label_noise < 1, "data.label_noise", self.label_noise, "0 <= fraction < 1"
        )
        if self.train_size is not None:
            _require(
                self.train_size > 0,
                "data.train_size",
                self.train_size,
                "a positive integer or null",
            )
        _require(self.elastic_sigma > 0, "data.elastic_sigma", self.elastic_sigma, "> 0 pixels")
        for key in ("batch_size", "eval_batch_size", "val_size"):
            value = getattr(self, key)
            _require(value > 0, f"data.{key}", value, "a positive integer")


@dataclass
class ModelConfig:
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    activation: str = "relu"
    init_std: float | None = 0.01  # None: torch's default initialisation
    normalize: bool = True  # standardise inputs with the dataset's mean and std
    dropout: float = 0.0  # drop probability after each hidden activation
    batch_norm: bool = False  # after each hidden linear layer, before its activation
    impl: str = "torch"  # torch modules, or the lab's hand-written operations ("scratch")
    # Max-norm (Srivastava et al. 2014): after each step, every unit's incoming weight vector
    # is scaled back to this L2 norm when longer. None: off.
    max_norm: float | None = None
    # torch.compile the module: fuses the elementwise work between the matmuls, at the price of
    # a compilation at the start (see the README's performance section for when it pays).
    compile: bool = False

    def __post_init__(self):
        from mlp_lab.model import ACTIVATIONS, IMPLS

        ok = len(self.hidden) > 0 and all(w > 0 for w in self.hidden)
        _require(ok, "model.hidden", list(self.hidden), "a non-empty list of positive widths")
        _one_of("model.activation", self.activation, ACTIVATIONS)
        _one_of("model.impl", self.impl, IMPLS)
        _require(0 <= self.dropout < 1, "model.dropout", self.dropout, "0 <= dropout < 1")
        if self.init_std is not None:
            _require(self.init_std > 0, "model.init_std", self.init_std, "a positive float or null")
        if self.max_norm is not None:
            _require(self.max_norm > 0, "model.max_norm", self.max_norm, "a positive float or null")


@dataclass
class LossConfig:
    """Every loss's options; a loss is given only those its constructor takes."""

    name: str = "ce"
    on: str = "logits"  # mse/mae/huber: compare the one-hot target with logits or probs
    delta: float = 1.0  # huber: where the square turns linear
    alpha: float = 0.25  # focal: class weight
    gamma: float = 2.0  # focal: focusing exponent; 0 gives alpha * cross-entropy
    lam: float = 0.01  # ce_l2: weight of the squared L2 norm
    covers: str = "all"  # ce_l2: "all" parameters (the lab) or only the weight matrices
    label_smoothing: float = 0.0  # ce, ce_l2: weight ε of the uniform part of the target

    def __post_init__(self):
        from mlp_lab.losses import L2_COVERS, LOSSES, TARGETS

        _one_of("loss.name", self.name, LOSSES)
        _one_of("loss.on", self.on, TARGETS)
        _one_of("loss.covers", self.covers, L2_COVERS)
        _require(self.delta > 0, "loss.delta", self.delta, "a positive float")
        _require(self.alpha > 0, "loss.alpha", self.alpha, "a positive float")
        _require(self.gamma >= 0, "loss.gamma", self.gamma, ">= 0")
        _require(self.lam >= 0, "loss.lam", self.lam, ">= 0")
        eps = self.label_smoothing
        _require(0 <= eps < 1, "loss.label_smoothing", eps, "0 <= label_smoothing < 1")

    def params(self) -> dict:
        from mlp_lab.losses import loss_options

        accepted = loss_options(self.name)
        return {k: v for k, v in vars(self).items() if k in accepted}


@dataclass
class OptimizerConfig:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.0  # SGD only
    weight_decay: float = 0.0
    nesterov: bool = False  # SGD with momentum only
    # The learning rate over the run, stepped every batch: constant ("none", the lab's), cosine
    # decay to 0, or one-cycle (warm up to lr for warmup of the steps, then anneal to ~0).
    schedule: str = "none"
    warmup: float = 0.3  # onecycle: the fraction of steps spent warming up

    def __post_init__(self):
        from mlp_lab.module import OPTIMIZERS, SCHEDULES

        _one_of("optimizer.name", self.name, OPTIMIZERS)
        _one_of("optimizer.schedule", self.schedule, SCHEDULES)
        _require(0 < self.warmup < 1, "optimizer.warmup", self.warmup, "0 < warmup < 1")
        _require(
            not self.nesterov or (self.name == "sgd" and self.momentum > 0),
            "optimizer.nesterov",
            self.nesterov,
            "only with optimizer=sgd and optimizer.momentum > 0",
        )
        _require(self.lr > 0, "optimizer.lr", self.lr, "a positive float")
        _require(0 <= self.momentum < 1, "optimizer.momentum", self.momentum, "0 <= momentum < 1")
        _require(self.weight_decay >= 0, "optimizer.weight_decay", self.weight_decay, ">= 0")


PROFILERS = ("simple", "advanced", "pytorch")
CLIP_ALGORITHMS = ("norm", "value")


def accelerator_missing(accelerator: str, devices: Any) -> str | None:
    """Why `accelerator` cannot run on this machine, or None when it can."""
    if accelerator not in ("gpu", "cuda", "mps"):
        return None
    import torch

    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            return "no CUDA GPU on this machine"
        wanted = devices if isinstance(devices, int) else len(str(devices).split(","))
        if wanted > torch.cuda.device_count():
            return f"{wanted} GPUs asked for, {torch.cuda.device_count()} on this machine"
    if accelerator == "mps" and not torch.backends.mps.is_available():
        return "no Apple MPS device on this machine"
    return None


@dataclass
class TrainerConfig:
    """Passed to `lightning.Trainer` as keyword arguments."""

    max_epochs: int = 10
    accelerator: str = "auto"  # auto, cpu, gpu (cuda) or mps; trainer=gpu, mps, cpu set it
    devices: Any = 1
    precision: Any = "32-true"  # trainer=gpu: bf16-mixed
    deterministic: Any = False
    strategy: Any = "auto"  # "ddp": one process per device (conf/trainer/ddp.yaml)
    num_nodes: int = 1
    enable_progress_bar: bool = True
    # Not a Trainer argument: fit.py gives it to the progress bar. Redrawing the bar every step
    # costs about 5 % of an epoch for this small network.
    progress_bar_refresh_rate: int = 20
    enable_model_summary: bool = True
    num_sanity_val_steps: int = 2
    log_every_n_steps: int = 50
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    # Debugging (conf/debug/): one batch of each split and nothing recorded (fast_dev_run), the
    # same few batches every epoch (overfit_batches), a profile of the run's steps in the run
    # directory, and autograd's anomaly detection, which names the operation that made a NaN.
    fast_dev_run: bool = False
    overfit_batches: float = 0.0  # an int count of batches, or a fraction of them
    profiler: str | None = None  # simple, advanced or pytorch
    detect_anomaly: bool = False
    # Carried out by the module's own optimisation step (MLPClassifier.training_step), since
    # Lightning does neither under manual optimisation: clip the gradients' norm (or each value)
    # to gradient_clip_val before every step; add up the gradients of accumulate_grad_batches
    # batches for each step.
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: str = "norm"
    accumulate_grad_batches: int = 1

    def __post_init__(self):
        _require(self.max_epochs > 0, "trainer.max_epochs", self.max_epochs, "a positive integer")
        missing = accelerator_missing(str(self.accelerator), self.devices)
        accelerator = self.accelerator
        _require(not missing, "trainer.accelerator", accelerator, f"{missing}; use trainer=cpu")
        _require(self.overfit_batches >= 0, "trainer.overfit_batches", self.overfit_batches, ">= 0")
        if self.profiler is not None:
            _one_of("trainer.profiler", self.profiler, PROFILERS)
        if self.gradient_clip_val is not None:
            _require(
                self.gradient_clip_val > 0,
                "trainer.gradient_clip_val",
                self.gradient_clip_val,
                "a positive float or null",
            )
        _one_of("trainer.gradient_clip_algorithm", self.gradient_clip_algorithm, CLIP_ALGORITHMS)
        _require(
            self.accumulate_grad_batches >= 1,
            "trainer.accumulate_grad_batches",
            self.accumulate_grad_batches,
            "a positive integer",
        )


@dataclass
class EarlyStoppingConfig:
    """Stop a run once val/acc has not risen for `patience` epochs (Lightning's EarlyStopping)."""

    patience: int = 5  # epochs without a better val/acc
    min_delta: float = 0.0  # the least rise of val/acc that counts as better

    def __post_init__(self):
        _require(
            self.patience >= 1,
            "callbacks.early_stopping.patience",
            self.patience,
            "a positive number of epochs",
        )
        _require(self.min_delta >= 0, "callbacks.early_stopping.min_delta", self.min_delta, ">= 0")


@dataclass
class CallbacksConfig:
    """Optional Lightning callbacks (conf/callbacks/); the lab's studies run without them."""

    early_stopping: EarlyStoppingConfig | None = None
    rich: bool = False  # Rich's progress bar and model summary in place of tqdm's


PRUNERS = ("none", "median", "halving", "hyperband")


@dataclass
class PrunerConfig:
    """How a search stops trials that fall behind, from the val/acc they report every epoch."""

    name: str = "none"  # none, median, halving (successive halving) or hyperband
    # median: epochs every trial runs before it may be pruned; halving, hyperband: the fewest
    # epochs a trial gets.
    warmup_epochs: int = 2
    startup_trials: int = 5  # median: trials run to the end before any is pruned

    def __post_init__(self):
        _one_of("pruner.name", self.name, PRUNERS)
        _require(self.warmup_epochs >= 0, "pruner.warmup_epochs", self.warmup_epochs, ">= 0")
        _require(self.startup_trials >= 0, "pruner.startup_trials", self.startup_trials, ">= 0")


@dataclass
class TrialConfig:
    """Set by the search (mlp_lab.search) for each trial it runs: where it reports its epochs."""

    storage: str | None = None
    study_name: str | None = None
    number: int | None = None  # null: not a trial of a search
    pruner: PrunerConfig = field(default_factory=PrunerConfig)


@dataclass
class TensorBoardConfig:
    """run_dir/tensorboard/: the scalars, the figures and the HPARAMS tab; no options."""


@dataclass
class CSVConfig:
    """run_dir/csv/version_<part>/: Lightning's metrics.csv and hparams.yaml; no options."""


@dataclass
class MLflowConfig:
    # A local store under outputs/, its artifacts beside it in outputs/mlartifacts (`mlflow ui
    # --backend-store-uri sqlite:///outputs/mlflow.db`), or a tracking server's http://host:port.
    tracking_uri: str = "sqlite:///outputs/mlflow.db"
    experiment_name: str = "mlp_lab"

    def __post_init__(self):
        _require(bool(self.tracking_uri), "logger.mlflow.tracking_uri", self.tracking_uri, "a URI")
        name = self.experiment_name
        _require(bool(name), "logger.mlflow.experiment_name", name, "a non-empty name")


@dataclass
class LoggerConfig:
    """Where a run's metrics, settings and figures go besides its metrics.json; null: not there.

    Each option of conf/logger/ sets its own section, so that `logger=[csv,mlflow]` adds them up.
    """

    tensorboard: TensorBoardConfig | None = None
    csv: CSVConfig | None = None
    mlflow: MLflowConfig | None = None


@dataclass
class TrainConfig:
    data: DataConfig = MISSING
    model: ModelConfig = MISSING
    loss: LossConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    trainer: TrainerConfig = MISSING
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 42
    # Threads of this run's tensor operations; None: torch's default (every core). Parallel sweep
    # jobs should share the cores: joblib's n_jobs × num_threads = the number of cores.
    num_threads: int | None = None
    resume: str | None = None  # a run directory: continue it from its last.ckpt, in place
    ckpt_path: str | None = None  # a checkpoint: continue training from it in a new run
    trial: TrialConfig = field(default_factory=TrialConfig)

    def __post_init__(self):
        if self.num_threads is not None:
            _require(self.num_threads > 0, "num_threads", self.num_threads, "a positive integer")
        _require(
            not (self.resume and self.ckpt_path),
            "ckpt_path",
            self.ckpt_path,
            "give resume=<run dir> or ckpt_path=<file>, not both",
        )


class SweepError(ConfigError):
    """A setting that no job of a sweep could run with: the whole sweep stops."""


@dataclass
class SamplerConfig:
    name: str = "tpe"
    seed: int | None = None  # a seeded sampler proposes its first trials again after a restart


@dataclass
class SweeperConfig:
    """hparams_search's sweeper (hydra/sweeper=mlp_lab, mlp_lab/search.py)."""

    _target_: str = "hydra_plugins.mlp_lab_sweeper.OptunaSweeper"
    direction: str = "maximize"
    study_name: str = "search"
    # sqlite:///path.db (the default, nothing to start), journal:path.log (a file on a shared
    # filesystem), or any SQLAlchemy URL (postgresql://user@host/db); null: in memory.
    storage: str | None = None
    n_trials: int = 20  # trials this command runs, added to those the study has
    # Workers, each running trials one after another: processes on this machine, or the tasks of
    # one job array with a submitit launcher.
    n_jobs: int = 1
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    params: dict[str, str] = field(default_factory=dict)  # the search space, Hydra's sweep syntax


def check_sweep(strategy: str, launcher: str) -> None:
    """Refuse DDP inside a sweep unless SLURM starts its processes."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    # Lightning's DDP starts each extra process by running this command line again, which inside
    # a sweep would start the whole sweep again; under SLURM every task is already a process of
    # its own and nothing is re-run.
    if strategy.startswith("ddp") and not ("Slurm" in launcher or SLURMEnvironment.detect()):
        raise SweepError(
            f"trainer.strategy={strategy} cannot run inside a sweep (-m): Lightning would start "
            "the whole sweep again in each extra process. Run each setting as its own "
            "`python -m mlp_lab.train trainer=ddp ...`, or sweep on a SLURM cluster with "
            "hydra/launcher=slurm (tasks_per_node = devices)"
        )


# Where files are and how a run is carried out or watched, not what it computes: left out of the
# settings that TensorBoard's HPARAMS tab compares and of the report's variant labels.
LOGISTICS = (
    "data.root",
    "data.download",
    "data.eval_batch_size",
    "model.compile",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.strategy",
    "trainer.num_nodes",
    "trainer.enable_progress_bar",
    "trainer.progress_bar_refresh_rate",
    "trainer.enable_model_summary",
    "trainer.num_sanity_val_steps",
    "trainer.log_every_n_steps",
    "trainer.fast_dev_run",
    "trainer.profiler",
    "trainer.detect_anomaly",
    "callbacks.rich",
    "num_threads",
    "resume",
    "ckpt_path",
    "trial",
    "logger",
)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys: {"model": {"hidden": ...}} → {"model.hidden": ...}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run_settings(cfg: TrainConfig, first: Sequence[str] = ()) -> dict[str, Any]:
    """The settings that define a run, flat ("model/hidden"): the config less its logistics and
    the options that its loss does not take; those under the keys `first` (a sweep's) lead."""
    unused = {f"loss.{k}" for k in set(vars(cfg.loss)) - {"name", *cfg.loss.params()}}
    settings = {
        name: value
        for name, value in flatten(asdict(cfg)).items()
        if name not in LOGISTICS and name.split(".")[0] not in LOGISTICS and name not in unused
    }
    lead = [n for n in settings if any(n == k or n.startswith(f"{k}.") for k in first)]
    return {name.replace(".", "/"): settings[name] for name in [*lead, *settings]}


def load_config(*overrides: str) -> TrainConfig:
    """The config that `python -m mlp_lab.train <overrides>` runs with."""
    register()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return OmegaConf.to_object(compose(config_name="train", overrides=list(overrides)))


def register() -> None:
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    # Not "optuna": hydra-optuna-sweeper, which an older environment may still hold, has that name.
    ConfigStore.instance().store(group="hydra/sweeper", name="mlp_lab", node=SweeperConfig)
    # Hydra finds plugins by listing hydra_plugins' folders, which pip's default editable install
    # hides: named here, they are found however mlp_lab is installed.
    for plugin in (OptunaSweeper, LocalLauncher, SlurmLauncher):
        Plugins.instance().register(plugin)
