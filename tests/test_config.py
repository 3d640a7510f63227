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
    ],
)
def test_bad_values_fail_naming_key_and_allowed_values(override, message):
    with pytest.raises(ConfigError, match=message):
        make_config(override)


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
