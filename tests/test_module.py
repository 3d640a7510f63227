import copy
import math
import types
from pathlib import Path

import pytest
import torch
from conftest import FACTS, classifier, datamodule, quiet_trainer

from mlp_lab.fit import trainer_arguments
from mlp_lab.module import MLPClassifier
from mlp_lab.train import load_config


def test_checkpoint_alone_rebuilds_the_model(tmp_path):
    torch.manual_seed(0)
    module = classifier("model.hidden=[32]")
    trainer = quiet_trainer(max_epochs=0)
    trainer.strategy.connect(module)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)

    loaded = MLPClassifier.load_from_checkpoint(path)
    images = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(loaded(images), module(images))
    assert loaded.hparams.data["name"] == "fashion_mnist"
    assert list(loaded.hparams.data["class_names"]) == list("abcdefghij")
    assert loaded.model.std.item() == torch.tensor(0.3).item()
    assert loaded.hparams.model["hidden"] == [32] and loaded.hparams.optimizer["lr"] == 0.1


def test_the_config_sections_reach_the_network_whole():
    module = classifier(
        "model.hidden=[16,8]",
        "model.activation=tanh",
        "model.dropout=0.3",
        "model.batch_norm=true",
        "model.impl=scratch",
        "model.normalize=false",
        "model.max_norm=2.0",
        "loss=focal",
        "loss.gamma=3.0",
    )
    names = [type(m).__name__ for m in module.model.layers]
    assert names == [
        *["ScratchLinear", "ScratchBatchNorm", "Tanh", "ScratchDropout"],
        *["ScratchLinear", "ScratchBatchNorm", "Tanh", "ScratchDropout"],
        "ScratchLinear",
    ]
    assert module.model.layers[3].p == 0.3 and module.model.max_norm == 2.0
    assert (module.model.mean.item(), module.model.std.item()) == (0.0, 1.0)  # normalize=false
    assert type(module.criterion).__name__ == "FocalLoss" and module.criterion.gamma == 3.0


def _assert_took_one_sgd_step(module, reference, trainer, lr=0.1):
    """`module` took one step, plain SGD's over the gradients `reference` holds."""
    with torch.no_grad():
        for p in reference.parameters():
            p -= lr * p.grad
    assert trainer.global_step == 1
    for ours, expected in zip(module.model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours, expected)


def test_one_training_step_is_one_sgd_step_and_feeds_the_epoch_metrics(synthetic_root):
    torch.manual_seed(0)
    module = classifier("model.hidden=[16]", "optimizer.lr=0.1", "model.init_std=null")
    reference = copy.deepcopy(module.model)
    dm = datamodule("mnist", synthetic_root, batch_size=32, val_size=200)
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)

    x, y = next(iter(dm.train_dataloader()))  # epoch 0's first batch, as the step saw it
    logits = reference(x)
    loss = torch.nn.functional.cross_entropy(logits, y)
    loss.backward()
    _assert_took_one_sgd_step(module, reference, trainer)
    metrics = trainer.callback_metrics
    torch.testing.assert_close(metrics["train/loss"], loss.detach())
    torch.testing.assert_close(metrics["train/acc"], (logits.argmax(1) == y).float().mean())


def _lrs(schedule, steps=100, *overrides):
    module = classifier(
        "model.hidden=[8]",
        "optimizer.lr=0.4",
        "optimizer.momentum=0.9",
        f"optimizer.schedule={schedule}",
        *overrides,
    )
    module._trainer = types.SimpleNamespace(estimated_stepping_batches=steps)
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_cosine_schedule_decays_from_lr_to_zero_over_the_run():
    lrs = _lrs("cosine")
    expected = [0.2 * (1 + math.cos(math.pi * t / 100)) for t in range(100)]
    assert lrs == pytest.approx(expected, abs=1e-9)


def test_one_cycle_schedule_peaks_at_lr_after_the_warmup_fraction():
    lrs = _lrs("onecycle", 100, "optimizer.warmup=0.3")
    assert lrs[0] == pytest.approx(0.4 / 25)  # torch's default starting divisor
    assert max(lrs) == pytest.approx(0.4) and lrs.index(max(lrs)) == 29
    assert lrs[-1] < 1e-4 and all(a >= b for a, b in zip(lrs[29:-1], lrs[30:], strict=True))


def test_constant_learning_rate_is_the_default():
    module = classifier("model.hidden=[8]", "optimizer.lr=0.1")
    assert isinstance(module.configure_optimizers(), torch.optim.SGD)


def test_max_norm_is_applied_after_every_step(synthetic_root, tmp_path):
    module = classifier(
        "model.hidden=[32]", "optimizer.lr=5.0", "model.init_std=null", "model.max_norm=0.5"
    )
    dm = datamodule("mnist", synthetic_root, batch_size=64, val_size=200)
    trainer = quiet_trainer(max_epochs=1, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    for layer in module.model.linear_layers():
        assert (layer.weight.norm(dim=1) <= 0.5 + 1e-5).all()


def test_accumulated_and_clipped_step_is_torchs_clipped_step_on_both_batches(synthetic_root):
    torch.manual_seed(0)
    cfg = load_config(
        "model.hidden=[16]",
        "model.init_std=null",
        "trainer.accumulate_grad_batches=2",
        "trainer.gradient_clip_val=0.05",
    )
    module = MLPClassifier.from_config(cfg, FACTS)
    reference = copy.deepcopy(module.model)
    dm = datamodule("mnist", synthetic_root, batch_size=32, val_size=200)
    # The trainer section's clipping and accumulation, as a run hands them to the Trainer.
    step = {k: getattr(cfg.trainer, k) for k in ("accumulate_grad_batches", "gradient_clip_val")}
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0, **step)
    trainer.fit(module, datamodule=dm)

    # Two batches of 32 make one step: the gradient of their mean loss, clipped to norm 0.05.
    batches = iter(dm.train_dataloader())
    (x1, y1), (x2, y2) = next(batches), next(batches)
    loss = torch.nn.functional.cross_entropy(reference(torch.cat([x1, x2])), torch.cat([y1, y2]))
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.05)
    assert norm > 0.05  # the clipping did something
    _assert_took_one_sgd_step(module, reference, trainer)
    assert {k: v for k, v in trainer_arguments(cfg, Path()).items() if k in step} == step


def test_one_cycle_over_accumulated_steps_ends_on_the_last_step(synthetic_root):
    module = classifier("model.hidden=[8]", "optimizer.schedule=onecycle")
    # 3 epochs of 10 batches (300 images in batches of 30): ceil(10 / 4) = 3 steps an epoch, the
    # last one on 2 batches; one-cycle refuses a step past its last.
    dm = datamodule("mnist", synthetic_root, batch_size=30, val_size=900)
    trainer = quiet_trainer(max_epochs=3, accumulate_grad_batches=4, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert trainer.global_step == scheduler.total_steps == scheduler.last_epoch == 9
