"""Typed schemas of `conf/`: types checked by Hydra, values by `__post_init__`, without torch."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

# The one list of the names each value may take, with what implements each as a dotted path: the
# checks read the names without torch; datasets, model, losses, module and fit get_class the paths.
DATASETS = {
    "mnist": "torchvision.datasets.MNIST",
    "fashion_mnist": "torchvision.datasets.FashionMNIST",
}
ACTIVATIONS = {
    "relu": "torch.nn.ReLU",
    "sigmoid": "torch.nn.Sigmoid",
    "tanh": "torch.nn.Tanh",
    "gelu": "torch.nn.GELU",
    "leaky_relu": "torch.nn.LeakyReLU",
    "elu": "torch.nn.ELU",
    "silu": "torch.nn.SiLU",
}
LOSSES = {
    "ce": "mlp_lab.losses.CrossEntropyLoss",
    "mse": "mlp_lab.losses.MSELoss",
    "mae": "mlp_lab.losses.MAELoss",
    "huber": "mlp_lab.losses.HuberLoss",
    "focal": "mlp_lab.losses.FocalLoss",
    "ce_l2": "mlp_lab.losses.CrossEntropyL2Loss",
}
OPTIMIZERS = {"sgd": "torch.optim.SGD", "adam": "torch.optim.Adam", "adamw": "torch.optim.AdamW"}
PROFILERS = {
    "simple": "lightning.pytorch.profilers.SimpleProfiler",
    "advanced": "lightning.pytorch.profilers.AdvancedProfiler",
    "pytorch": "lightning.pytorch.profilers.PyTorchProfiler",
}
IMPLS = ("torch", "scratch")  # torch's modules, or the lab's hand-written operations
LOSS_TARGETS = ("logits", "probs")
L2_COVERS = ("all", "weights")
SCHEDULES = ("none", "cosine", "onecycle")


class ConfigError(ValueError):
    """A config value outside its allowed range; the message names the key and what is allowed."""


def checker(section: str, settings: Any) -> Callable[[str, bool, str], None]:
    """check(key, ok, allowed): a ConfigError naming `section.key` when not `ok`."""

    def check(key: str, ok: bool, allowed: str) -> None:
        if not ok:
            value = getattr(settings, key)
            raise ConfigError(f"{section}{key}={value!r} is not allowed: {allowed}")

    return check


def _one_of(names: Iterable[str]) -> str:
    return f"use one of {', '.join(names)}"


def _positive_or_none(value: float | None) -> bool:
    return value is None or value > 0


@dataclass
class DataConfig:
    name: str = MISSING
    root: str | None = None  # None: $MLP_LAB_DATA, else data/ (datasets.default_root)
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
        check = checker("data.", self)
        check("name", self.name in DATASETS, _one_of(DATASETS))
        check("shift", 0 <= self.shift < 14, "0 <= shift < 14 pixels")
        check("elastic", self.elastic >= 0, ">= 0 (0: off)")
        check("label_noise", 0 <= self.label_noise < 1, "0 <= fraction < 1")
        check("train_size", _positive_or_none(self.train_size), "a positive integer or null")
        check("elastic_sigma", self.elastic_sigma > 0, "> 0 pixels")
        for key in ("batch_size", "eval_batch_size", "val_size"):
            check(key, getattr(self, key) > 0, "a positive integer")


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
        check = checker("model.", self)
        widths = len(self.hidden) > 0 and all(w > 0 for w in self.hidden)
        check("hidden", widths, "a non-empty list of positive widths")
        check("activation", self.activation in ACTIVATIONS, _one_of(ACTIVATIONS))
        check("impl", self.impl in IMPLS, _one_of(IMPLS))
        check("dropout", 0 <= self.dropout < 1, "0 <= dropout < 1")
        check("init_std", _positive_or_none(self.init_std), "a positive float or null")
        check("max_norm", _positive_or_none(self.max_norm), "a positive float or null")


@dataclass
class LossConfig:
    """Every loss's options; a loss is given only those its constructor takes."""

    name: str = "ce"
    on: str = "logits"  # mse/mae/huber: compare the one-hot target with logits or probs
    delta: float = 1.0  # huber: where the square turns linear
    # focal: one weight for every class; RetinaNet's 0.25 weighs the rare class of a binary
    # problem, and over 10 classes only quarters each step (docs/configuration.md measures it).
    alpha: float = 1.0
    gamma: float = 2.0  # focal: focusing exponent; 0 gives alpha * cross-entropy
    lam: float = 0.01  # ce_l2: weight of the squared L2 norm
    covers: str = "all"  # ce_l2: "all" parameters (the lab) or only the weight matrices
    label_smoothing: float = 0.0  # ce, ce_l2: weight ε of the uniform part of the target

    def __post_init__(self):
        check = checker("loss.", self)
        check("name", self.name in LOSSES, _one_of(LOSSES))
        check("on", self.on in LOSS_TARGETS, _one_of(LOSS_TARGETS))
        check("covers", self.covers in L2_COVERS, _one_of(L2_COVERS))
        check("delta", self.delta > 0, "a positive float")
        check("alpha", self.alpha > 0, "a positive float")
        check("gamma", self.gamma >= 0, ">= 0")
        check("lam", self.lam >= 0, ">= 0")
        check("label_smoothing", 0 <= self.label_smoothing < 1, "0 <= label_smoothing < 1")


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
        check = checker("optimizer.", self)
        check("name", self.name in OPTIMIZERS, _one_of(OPTIMIZERS))
        check("schedule", self.schedule in SCHEDULES, _one_of(SCHEDULES))
        check("warmup", 0 < self.warmup < 1, "0 < warmup < 1")
        nesterov = not self.nesterov or (self.name == "sgd" and self.momentum > 0)
        check("nesterov", nesterov, "only with optimizer=sgd and optimizer.momentum > 0")
        check("lr", self.lr > 0, "a positive float")
        check("momentum", 0 <= self.momentum < 1, "0 <= momentum < 1")
        check("weight_decay", self.weight_decay >= 0, ">= 0")


CLIP_ALGORITHMS = ("norm", "value")


@dataclass
class TrainerConfig:
    """Passed to `lightning.Trainer` as keyword arguments, all but the progress bar's rate."""

    max_epochs: int = 10
    accelerator: str = "auto"  # auto, cpu, gpu (cuda) or mps; trainer=gpu, mps, cpu set it
    devices: Any = 1
    precision: Any = "32-true"  # trainer=gpu: bf16-mixed
    deterministic: Any = False
    strategy: Any = "auto"  # "ddp": one process per device (conf/trainer/ddp.yaml)
    num_nodes: int = 1
    enable_progress_bar: bool = True
    # Not a Trainer argument: the progress bar's, redrawn every this many steps.
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
    # Clip the gradients' norm (or each value) to gradient_clip_val before every step; add up
    # the gradients of accumulate_grad_batches batches for each step.
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: str = "norm"
    accumulate_grad_batches: int = 1

    def __post_init__(self):
        check = checker("trainer.", self)
        check("max_epochs", self.max_epochs > 0, "a positive integer")
        check("overfit_batches", self.overfit_batches >= 0, ">= 0")
        check("profiler", self.profiler in (None, *PROFILERS), _one_of(PROFILERS))
        check(
            "gradient_clip_val",
            _positive_or_none(self.gradient_clip_val),
            "a positive float or null",
        )
        algorithm = self.gradient_clip_algorithm
        check("gradient_clip_algorithm", algorithm in CLIP_ALGORITHMS, _one_of(CLIP_ALGORITHMS))
        check("accumulate_grad_batches", self.accumulate_grad_batches >= 1, "a positive integer")


@dataclass
class EarlyStoppingConfig:
    """Stop a run once val/acc has not risen for `patience` epochs (Lightning's EarlyStopping)."""

    patience: int = 5  # epochs without a better val/acc
    min_delta: float = 0.0  # the least rise of val/acc that counts as better

    def __post_init__(self):
        check = checker("callbacks.early_stopping.", self)
        check("patience", self.patience >= 1, "a positive number of epochs")
        check("min_delta", self.min_delta >= 0, ">= 0")


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
        check = checker("pruner.", self)
        check("name", self.name in PRUNERS, _one_of(PRUNERS))
        check("warmup_epochs", self.warmup_epochs >= 0, ">= 0")
        check("startup_trials", self.startup_trials >= 0, ">= 0")


@dataclass
class TrialConfig:
    """Set by the search (mlp_lab.sweeps.search) for each trial: where it reports its epochs."""

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
        check = checker("logger.mlflow.", self)
        check("tracking_uri", bool(self.tracking_uri), "a URI")
        check("experiment_name", bool(self.experiment_name), "a non-empty name")


@dataclass
class LoggerConfig:
    """A run's loggers besides metrics.json; each option of conf/logger/ sets its section."""

    tensorboard: TensorBoardConfig | None = None
    csv: CSVConfig | None = None
    mlflow: MLflowConfig | None = None


CLAIM = re.compile(r"(.+?) ([>=]) (.+)")


@dataclass
class StudyConfig:
    """What a study asks ("A > B" in `asks`) and what the lab claimed ("A > B", "A = B")."""

    question: str | None = None
    order: int = 0  # its place in the lab's report
    asks: list[str] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)
    lab_found: str | None = None  # the lab's numbers and its conclusion, in words
    lab_claims: list[str] = field(default_factory=list)

    def __post_init__(self):
        check = checker("study.", self)
        claims = all(CLAIM.fullmatch(c) for c in self.lab_claims)
        check("lab_claims", claims, 'claims like "model.batch_norm=true > model.batch_norm=false"')
        asks = all((m := CLAIM.fullmatch(c)) and m[2] == ">" for c in self.asks)
        check("asks", asks, 'comparisons like "model.batch_norm=true > model.batch_norm=false"')


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
    study: StudyConfig = field(default_factory=StudyConfig)

    def __post_init__(self):
        check = checker("", self)
        check("num_threads", _positive_or_none(self.num_threads), "a positive integer")
        both = "give resume=<run dir> or ckpt_path=<file>, not both"
        check("ckpt_path", not (self.resume and self.ckpt_path), both)


@dataclass
class SamplerConfig:
    name: str = "tpe"
    seed: int | None = None  # a seeded sampler proposes its first trials again after a restart


@dataclass
class SweeperConfig:
    """hparams_search's sweeper (hydra/sweeper=mlp_lab, mlp_lab/sweeps/search.py)."""

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
