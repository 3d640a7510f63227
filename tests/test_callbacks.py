"""The run's callbacks that say something: the warning of a run that starts near chance."""

import logging

from conftest import fast_overrides

from mlp_lab.callbacks import slow_start_causes
from mlp_lab.fit import train
from mlp_lab.train import load_config


def test_a_run_near_chance_after_three_epochs_says_why_once(synthetic_root, tmp_path, caplog):
    # A learning rate a million times too small keeps val/acc at chance on data learnt otherwise
    # in one epoch.
    cfg = load_config(*fast_overrides(synthetic_root, "trainer.max_epochs=4", "optimizer.lr=1e-7"))
    with caplog.at_level(logging.WARNING, logger="mlp_lab.callbacks"):
        train(cfg, tmp_path / "run")
    (said,) = [r.getMessage() for r in caplog.records if "near chance" in r.getMessage()]
    assert said.startswith("val/acc is 0.") and "after 3 epochs, near chance (0.100)" in said
    assert said.endswith("optimizer.lr=1e-07 is small for sgd")


def test_a_run_that_learns_says_nothing_of_the_sort(synthetic_root, tmp_path, caplog):
    cfg = load_config(*fast_overrides(synthetic_root, "trainer.max_epochs=3"))
    with caplog.at_level(logging.WARNING, logger="mlp_lab.callbacks"):
        train(cfg, tmp_path / "run")
    assert not [r for r in caplog.records if "near chance" in r.getMessage()]


def test_the_causes_named_are_those_of_the_settings():
    lab_focal = load_config("model=three_hidden", "loss=focal", "loss.alpha=0.25")
    causes = slow_start_causes(lab_focal)
    assert causes == [
        "N(0, 0.01²) weights over 3 hidden layers start with signals that nearly vanish (try "
        "model.init_std=null or model.batch_norm=true)",
        "loss.alpha=0.25 shrinks every step as much (try loss.alpha=1)",
    ]
    assert slow_start_causes(load_config("model=three_hidden", "model.batch_norm=true")) == [
        "try a larger optimizer.lr, model.init_std=null or model.batch_norm=true"
    ]
