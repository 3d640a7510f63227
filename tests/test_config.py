import functools
import re
from pathlib import Path

import pytest
import torch
from commands import run_module
from conftest import fast_overrides
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf.errors import ValidationError

from mlp_lab.config import ConfigError
from mlp_lab.train import SweepError, check_sweep, load_config


def test_default_config_is_the_lab_baseline():
    cfg = load_config()
    assert cfg.data.name == "fashion_mnist" and cfg.data.batch_size == 256
    assert cfg.data.val_size == 5000
    assert cfg.model.hidden == [256, 256] and cfg.model.activation == "relu"
    assert cfg.model.init_std == 0.01
    assert (cfg.optimizer.name, cfg.optimizer.lr) == ("sgd", 0.1)
    assert cfg.loss.name == "ce" and cfg.trainer.max_epochs == 10
    assert cfg.trainer.accelerator == "auto"


def test_mnist_option_switches_dataset_only():
    cfg = load_config("data=mnist")
    assert cfg.data.name == "mnist" and cfg.data.batch_size == 256


@pytest.mark.parametrize(
    "override, message",
    [
        ("optimizer.lr=-1", r"optimizer\.lr=-1\.0 is not allowed: a positive float"),
        ("optimizer.lr=0", r"optimizer\.lr=0\.0 is not allowed"),
        (
            "model.hidden=[]",
            r"model\.hidden=\[\] is not allowed: a non-empty list of positive widths",
        ),
        ("model.hidden=[256,-3]", r"model\.hidden=\[256, -3\] is not allowed"),
        ("data.batch_size=0", r"data\.batch_size=0 is not allowed: a positive integer"),
        ("data.name=cifar", r"data\.name='cifar' is not allowed: use one of mnist, fashion_mnist"),
        ("model.activation=swish", r"use one of relu, sigmoid, tanh"),
        ("optimizer.name=lbfgs", r"use one of sgd, adam, adamw"),
        ("loss.name=hinge", r"loss\.name='hinge' is not allowed"),
        ("trainer.max_epochs=0", r"trainer\.max_epochs=0 is not allowed"),
        ("model.dropout=1.0", r"model\.dropout=1\.0 is not allowed: 0 <= dropout < 1"),
        ("model.dropout=-0.1", r"model\.dropout=-0\.1 is not allowed"),
        ("model.impl=numpy", r"model\.impl='numpy' is not allowed: use one of torch, scratch"),
        ("loss=huber loss.delta=0", r"loss\.delta=0\.0 is not allowed: a positive float"),
        ("loss=ce_l2 loss.lam=-0.01", r"loss\.lam=-0\.01 is not allowed"),
        ("loss=focal loss.gamma=-1", r"loss\.gamma=-1\.0 is not allowed"),
        (
            "loss=mse loss.on=softmax",
            r"loss\.on='softmax' is not allowed: use one of logits, probs",
        ),
        ("loss=ce_l2 loss.covers=biases", r"use one of all, weights"),
    ],
)
def test_bad_values_fail_naming_key_and_allowed_values(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(*override.split())


@pytest.mark.parametrize(
    "loss, params",
    [
        ("ce", {"label_smoothing": 0.0}),
        ("mse", {"on": "logits"}),
        ("huber", {"delta": 1.0, "on": "logits"}),
        ("focal", {"alpha": 1.0, "gamma": 2.0}),
        ("ce_l2", {"lam": 0.01, "covers": "all", "label_smoothing": 0.0}),
    ],
)
def test_each_loss_gets_only_its_own_options(loss, params):
    from mlp_lab.losses import own_options

    assert own_options(load_config(f"loss={loss}").loss) == params


@pytest.mark.parametrize(
    "model, hidden",
    [
        ("two_hidden", [256, 256]),
        ("three_hidden", [256] * 3),
        ("wide", [512, 256]),
        ("narrow", [256, 128]),
    ],
)
def test_model_options(model, hidden):
    cfg = load_config(f"model={model}")
    assert cfg.model.hidden == hidden and cfg.model.init_std == 0.01 and cfg.model.impl == "torch"


STUDIES = {
    "epochs": {"trainer.max_epochs": "10,20"},
    "datasets": {"data": "mnist,fashion_mnist"},
    "depth": {"model": "two_hidden,three_hidden"},
    "width": {"model": "two_hidden,wide,narrow"},
    "activation": {"model.activation": "relu,tanh,sigmoid"},
    "loss": {"loss": "ce,mse,mae,huber,focal,ce_l2"},
    "dropout": {"model.dropout": "0.0,0.5", "trainer.max_epochs": "10,20"},
    "batch_norm": {"model.batch_norm": "false,true"},
    "overfit": {"trainer.max_epochs": "100"},
}


@pytest.mark.parametrize("study", STUDIES)
def test_every_study_composes_with_its_sweep(study):
    from conftest import CONF_DIR
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            config_name="train", overrides=[f"experiment={study}"], return_hydra_config=True
        )
    assert dict(cfg.hydra.sweeper.params) == STUDIES[study]
    assert cfg.hydra.sweep.dir.startswith(f"outputs/studies/{study}/")
    assert cfg.data.name == "fashion_mnist"  # every study runs on the lab's default dataset


def test_complexity_study_sweeps_widths_on_a_log_scale_at_three_depths():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = _with_hydra("experiment=complexity")
    (override,) = OverridesParser.create().parse_overrides(
        [f"model.hidden={cfg.hydra.sweeper.params['model.hidden']}"]
    )
    widths = [4, 8, 16, 32, 64, 128, 256, 512, 1024]
    expected = [[w] * depth for depth in (1, 2, 3) for w in widths]
    assert [list(v) for v in override.sweep_iterator()] == expected
    assert cfg.data.train_size == 4000 and cfg.data.label_noise == 0.0
    assert cfg.optimizer.name == "adam" and cfg.trainer.max_epochs == 100
    assert cfg.model.dropout == 0.0 and not cfg.model.batch_norm and cfg.data.shift == 0


def test_misspelt_group_option_lists_the_options():
    with pytest.raises(MissingConfigException) as err:
        load_config("data=fashoin")
    assert "fashion_mnist" in str(err.value.options) and "mnist" in err.value.options


def test_wrong_type_and_unknown_key_fail_at_composition():
    with pytest.raises(ConfigCompositionException) as err:
        load_config("data.batch_size=many")
    assert isinstance(err.value.__cause__, ValidationError)
    with pytest.raises(ConfigCompositionException, match="model.hiden"):
        load_config("model.hiden=[3]")


def _with_hydra(*overrides):
    from conftest import CONF_DIR
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=True)


def test_optuna_search_maximises_val_acc_in_a_sqlite_study():
    cfg = _with_hydra("hparams_search=optuna")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and cfg.hydra.mode.name == "MULTIRUN"
    assert sweeper.direction == "maximize" and sweeper.n_trials == 20
    assert (
        sweeper.storage == "sqlite:///outputs/optuna.db" and sweeper.study_name == "fashion_mnist"
    )
    assert sweeper.sampler.name == "tpe" and sweeper.pruner.name == "halving"
    assert set(sweeper.params) == {
        "optimizer.lr",
        "optimizer.weight_decay",
        "model.dropout",
        "model.hidden",
        "model.batch_norm",
    }
    assert sweeper.params["optimizer.lr"].startswith("tag(log")
    assert _with_hydra().hydra.sweeper._target_.endswith("BasicSweeper")  # off by default


def test_slurm_launcher_config_names_the_cluster_settings():
    launcher = _with_hydra("hydra/launcher=slurm", "hydra.launcher.partition=gpu").hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert (launcher.gpus_per_node, launcher.cpus_per_task, launcher.timeout_min) == (1, 4, 60)


def test_ddp_trainer_runs_two_processes():
    cfg = load_config("trainer=ddp")
    assert (cfg.trainer.strategy, cfg.trainer.devices, cfg.trainer.num_nodes) == ("ddp", 2, 1)


def test_ddp_is_refused_inside_a_sweep_unless_slurm_starts_the_processes():
    with pytest.raises(SweepError, match="cannot run inside a sweep"):
        check_sweep("ddp", "hydra._internal.core_plugins.basic_launcher.BasicLauncher")
    check_sweep("ddp", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher")
    check_sweep("auto", "hydra._internal.core_plugins.basic_launcher.BasicLauncher")


def test_resume_and_ckpt_path_exclude_each_other():
    with pytest.raises(ConfigError, match="not both"):
        load_config("resume=outputs/runs/a", "ckpt_path=a.ckpt")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optimizer.schedule=step"], "optimizer.schedule='step' is not allowed: use one of none"),
        (["optimizer.nesterov=true"], "optimizer.nesterov=True is not allowed: only with"),
        (["data.shift=20"], "data.shift=20 is not allowed: 0 <= shift < 14"),
        (["data.elastic=-1"], "data.elastic=-1.0 is not allowed: >= 0 (0: off)"),
        (["data.elastic_sigma=0"], "data.elastic_sigma=0.0 is not allowed: > 0 pixels"),
        (["data.label_noise=1"], "data.label_noise=1.0 is not allowed: 0 <= fraction < 1"),
        (["data.train_size=0"], "data.train_size=0 is not allowed: a positive integer or null"),
        (["loss.label_smoothing=1.0"], "loss.label_smoothing=1.0 is not allowed"),
        (["model.max_norm=0"], "model.max_norm=0.0 is not allowed: a positive float or null"),
    ],
)
def test_training_options_reject_bad_values(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(*overrides)


@pytest.mark.parametrize(
    "name, dataset", [("best_mnist", "mnist"), ("best_fashion", "fashion_mnist")]
)
def test_best_experiments_are_mlps_with_the_fields_options(name, dataset):
    cfg = load_config(f"experiment={name}")
    assert cfg.data.name == dataset and cfg.model.batch_norm
    assert cfg.optimizer.schedule == "onecycle" and cfg.loss.label_smoothing > 0
    assert cfg.model.hidden and cfg.trainer.max_epochs <= 60


@pytest.mark.parametrize(
    "name, dataset", [("best_mnist", "mnist"), ("best_fashion", "fashion_mnist")]
)
def test_the_searches_behind_the_best_experiments_compose(name, dataset):
    from mlp_lab.sweeps.search import search_space

    cfg = _with_hydra(f"hparams_search={name}")
    sweeper = cfg.hydra.sweeper
    assert cfg.data.name == dataset and cfg.trainer.max_epochs == 15 and cfg.model.batch_norm
    assert sweeper.study_name == name and sweeper.pruner.warmup_epochs == 3
    space, fixed = search_space(dict(sweeper.params), [])
    assert set(space) == {
        "model.hidden",
        "model.dropout",
        "optimizer.lr",
        "optimizer.weight_decay",
        "loss.label_smoothing",
        "data.shift",
        "data.elastic",
    }
    assert 0.0 in space["data.elastic"].choices and fixed == ["model.batch_norm=True"]


@pytest.mark.parametrize(
    "option, expected",
    [
        ("callbacks=early_stopping", {"callbacks.early_stopping.patience": 5}),
        ("callbacks=rich", {"callbacks.rich": True, "callbacks.early_stopping": None}),
        (
            "callbacks=[early_stopping,rich]",
            {"callbacks.rich": True, "callbacks.early_stopping.min_delta": 0.0},
        ),
        ("debug=fdr", {"trainer.fast_dev_run": True, "trainer.max_epochs": 1}),
        ("debug=overfit", {"trainer.overfit_batches": 3, "trainer.max_epochs": 20}),
        ("debug=limit", {"trainer.limit_train_batches": 10, "trainer.limit_val_batches": 1}),
        ("debug=profiler", {"trainer.profiler": "simple"}),
        ("debug=anomaly", {"trainer.detect_anomaly": True}),
        ("trainer=ddp_sim", {"trainer.strategy": "ddp", "trainer.devices": 2}),
    ],
)
def test_each_new_group_option_composes(option, expected):
    cfg = load_config(option)
    for key, value in expected.items():
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)
        assert node == value, key
    assert load_config().callbacks.early_stopping is None  # the lab's runs keep fixed epochs


def test_debug_runs_go_apart_from_the_users_runs():
    assert _with_hydra("debug=fdr").hydra.run.dir.startswith("outputs/debug/")
    assert _with_hydra("debug=limit").hydra.sweep.dir.startswith("outputs/debug/multirun/")


@pytest.mark.parametrize(
    "preset, accelerator, available",
    [
        ("gpu", "gpu", torch.cuda.is_available()),
        ("mps", "mps", torch.backends.mps.is_available()),
    ],
)
def test_a_device_preset_without_its_device_names_the_cpu_preset(preset, accelerator, available):
    composed = _with_hydra(f"trainer={preset}").trainer
    assert composed.accelerator == accelerator
    if preset == "gpu":
        assert composed.precision == "bf16-mixed"
    if available:
        assert load_config(f"trainer={preset}").trainer.accelerator == accelerator
        return
    with pytest.raises(ConfigError, match=r"on this machine; use trainer=cpu$"):
        load_config(f"trainer={preset}")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            "callbacks=early_stopping callbacks.early_stopping.patience=-1",
            r"callbacks\.early_stopping\.patience=-1 is not allowed: a positive number",
        ),
        (
            "callbacks=early_stopping callbacks.early_stopping.min_delta=-0.1",
            r"callbacks\.early_stopping\.min_delta=-0\.1 is not allowed",
        ),
        ("trainer.profiler=gprof", r"trainer\.profiler='gprof' is not allowed: use one of simple"),
        ("trainer.overfit_batches=-1", r"trainer\.overfit_batches=-1\.0 is not allowed"),
        ("trainer.gradient_clip_val=0", r"trainer\.gradient_clip_val=0\.0 is not allowed"),
        ("trainer.gradient_clip_algorithm=l1", r"use one of norm, value"),
        ("trainer.accumulate_grad_batches=0", r"accumulate_grad_batches=0 is not allowed"),
    ],
)
def test_bad_trainer_and_callback_values_fail_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(*overrides.split())


def test_the_names_a_check_allows_are_the_names_implemented():
    """Each name a setting may take is written once, in config.py, with what implements it: the
    schema checks against those names and the builders build from the same table."""
    from hydra.utils import get_class
    from lightning.pytorch.profilers import Profiler
    from torchvision.datasets import VisionDataset

    from mlp_lab import config, datasets, model

    kinds = {
        "DATASETS": VisionDataset,
        "ACTIVATIONS": torch.nn.Module,
        "LOSSES": torch.nn.Module,
        "OPTIMIZERS": torch.optim.Optimizer,
        "PROFILERS": Profiler,
    }
    for table, kind in kinds.items():
        for name, path in getattr(config, table).items():
            assert issubclass(get_class(path), kind), (table, name)
    assert list(datasets.DATASETS) == list(config.DATASETS)
    assert [type(model.build_activation(n)) for n in config.ACTIVATIONS] == [
        get_class(p) for p in config.ACTIVATIONS.values()
    ]
    # A name outside the table is refused by the schema, naming the table's.
    with pytest.raises(ConfigError, match="use one of simple, advanced, pytorch"):
        load_config("trainer.profiler=fancy")
    with pytest.raises(ConfigError, match="use one of sgd, adam, adamw"):
        load_config("optimizer.name=lion")


def fake_cpu(path, flags: str):
    """A /proc/cpuinfo of one core with these flags."""
    path.write_text(f"processor\t: 0\nmodel name\t: Fake CPU\nflags\t\t: fpu sse2 {flags}\n")
    return path


def test_a_schema_means_the_same_on_every_machine(tmp_path, monkeypatch):
    """The schema checks values only; the command asks what the machine has."""
    from mlp_lab import cluster
    from mlp_lab.config import TrainerConfig
    from mlp_lab.train import fits_machine

    monkeypatch.setattr(cluster, "CPUINFO", fake_cpu(tmp_path / "cpuinfo", "avx2"))
    monkeypatch.setattr(cluster, "cuda_gpus", lambda: 0)
    for trainer in (TrainerConfig(accelerator="gpu"), TrainerConfig(precision="bf16-mixed")):
        with pytest.raises(ConfigError, match=r"^trainer\.(accelerator|precision)="):
            fits_machine(trainer)  # built without a word, refused by the command
    fits_machine(TrainerConfig())
    source = (Path(cluster.__file__).parent / "config.py").read_text()
    assert "cluster" not in source.split('"""', 2)[2] and "cpuinfo" not in source


def read_cpuinfo_from(path):
    from mlp_lab import cluster

    cluster.CPUINFO = path


def test_bf16_is_refused_in_one_line_on_a_cpu_without_bf16_instructions(tmp_path, monkeypatch):
    from mlp_lab import cluster

    monkeypatch.setattr(cluster, "CPUINFO", fake_cpu(tmp_path / "cpuinfo", "avx2 avx512f"))
    monkeypatch.setattr(cluster, "cuda_gpus", lambda: 0)
    message = (
        "trainer.precision='bf16-mixed' is not allowed: this CPU (Fake CPU) has no bf16 "
        "instructions (amx_bf16, avx512_bf16), so torch emulates bf16 and runs slower than in "
        "float32; use trainer=default (32-true) here"
    )
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config("trainer=bf16")
    setup = functools.partial(read_cpuinfo_from, tmp_path / "cpuinfo")
    result = run_module("mlp_lab.train", "trainer=bf16", setup=setup)
    assert (result.returncode, result.stderr) == (1, f"error: {message}\n")
    # Where a GPU takes the run, whatever the CPU.
    monkeypatch.setattr(cluster, "cuda_gpus", lambda: 1)
    assert load_config("trainer=bf16").trainer.precision == "bf16-mixed"


def test_bf16_trains_on_a_cpu_with_amx(synthetic_root, tmp_path, monkeypatch):
    from mlp_lab import cluster
    from mlp_lab.fit import train

    monkeypatch.setattr(cluster, "CPUINFO", fake_cpu(tmp_path / "cpuinfo", "amx_bf16 amx_tile"))
    assert cluster.cpu_bf16() == ["amx_bf16"]
    overrides = fast_overrides(
        synthetic_root, "trainer=bf16", "trainer.max_epochs=1", "logger=none"
    )
    record = train(load_config(*overrides), tmp_path / "run")
    assert record["status"] == "completed"
    assert record["config"]["trainer"]["precision"] == "bf16-mixed"
    assert record["attempts"][-1]["device"].startswith("cpu (")
