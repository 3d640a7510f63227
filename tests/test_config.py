import pytest
from conftest import make_config
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf.errors import ValidationError

from mlp_lab.config import ConfigError


def test_default_config_is_the_lab_baseline():
    cfg = make_config()
    assert cfg.data.name == "fashion_mnist" and cfg.data.batch_size == 256
    assert cfg.data.val_size == 5000
    assert cfg.model.hidden == [256, 256] and cfg.model.activation == "relu"
    assert cfg.model.init_std == 0.01
    assert (cfg.optimizer.name, cfg.optimizer.lr) == ("sgd", 0.1)
    assert cfg.loss.name == "ce" and cfg.trainer.max_epochs == 10
    assert cfg.trainer.accelerator == "auto"


def test_mnist_option_switches_dataset_only():
    cfg = make_config("data=mnist")
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
        make_config(*override.split())


@pytest.mark.parametrize(
    "loss, params",
    [
        ("ce", {}),
        ("mse", {"on": "logits"}),
        ("huber", {"delta": 1.0, "on": "logits"}),
        ("focal", {"alpha": 0.25, "gamma": 2.0}),
        ("ce_l2", {"lam": 0.01, "covers": "all"}),
    ],
)
def test_each_loss_gets_only_its_own_options(loss, params):
    assert make_config(f"loss={loss}").loss.params() == params


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
    cfg = make_config(f"model={model}")
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


def test_misspelt_group_option_lists_the_options():
    with pytest.raises(MissingConfigException) as err:
        make_config("data=fashoin")
    assert "fashion_mnist" in str(err.value.options) and "mnist" in err.value.options


def test_wrong_type_and_unknown_key_fail_at_composition():
    with pytest.raises(ConfigCompositionException) as err:
        make_config("data.batch_size=many")
    assert isinstance(err.value.__cause__, ValidationError)
    with pytest.raises(ConfigCompositionException, match="model.hiden"):
        make_config("model.hiden=[3]")
