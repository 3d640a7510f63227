import copy
import math
import types

import pytest
import torch

from mlp_lab.module import MLPClassifier


def test_checkpoint_alone_rebuilds_the_model(tmp_path):
    import lightning as L

    torch.manual_seed(0)
    module = MLPClassifier(
        hidden=[32], mean=0.2, std=0.3, dataset="fashion_mnist", class_names=list("abcdefghij")
    )
    trainer = L.Trainer(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=0
    )
    trainer.strategy.connect(module)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)

    loaded = MLPClassifier.load_from_checkpoint(path)
    images = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(loaded(images), module(images))
    assert loaded.hparams.dataset == "fashion_mnist"
    assert list(loaded.hparams.class_names) == list("abcdefghij")
    assert loaded.model.std.item() == torch.tensor(0.3).item()


def test_one_training_step_is_one_sgd_step_and_feeds_the_epoch_metrics(synthetic_root):
    import lightning as L

    from mlp_lab.data import MNISTDataModule

    torch.manual_seed(0)
    module = MLPClassifier(hidden=[16], lr=0.1, init_std=None)
    reference = copy.deepcopy(module.model)
    dm = MNISTDataModule("mnist", synthetic_root, batch_size=32, val_size=200)
    trainer = L.Trainer(
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=dm)

    x, y = next(iter(dm.train_dataloader()))  # epoch 0's first batch, as the step saw it
    logits = reference(x)
    loss = torch.nn.functional.cross_entropy(logits, y)
    loss.backward()
    with torch.no_grad():
        for p in reference.parameters():
            p -= 0.1 * p.grad
    assert trainer.global_step == 1
    for ours, expected in zip(module.model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours, expected)
    metrics = trainer.callback_metrics
    torch.testing.assert_close(metrics["train/loss"], loss.detach())
    torch.testing.assert_close(metrics["train/acc"], (logits.argmax(1) == y).float().mean())


def _lrs(schedule, steps=100, **kwargs):
    module = MLPClassifier(
        hidden=[8], optimizer="sgd", lr=0.4, momentum=0.9, schedule=schedule, **kwargs
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
    lrs = _lrs("onecycle", warmup=0.3)
    assert lrs[0] == pytest.approx(0.4 / 25)  # torch's default starting divisor
    assert max(lrs) == pytest.approx(0.4) and lrs.index(max(lrs)) == 29
    assert lrs[-1] < 1e-4 and all(a >= b for a, b in zip(lrs[29:-1], lrs[30:], strict=True))


def test_constant_learning_rate_is_the_default():
    module = MLPClassifier(hidden=[8], lr=0.1)
    assert isinstance(module.configure_optimizers(), torch.optim.SGD)


def test_max_norm_is_applied_after_every_step(synthetic_root, tmp_path):
    import lightning as L

    from mlp_lab.data import MNISTDataModule

    module = MLPClassifier(hidden=[32], lr=5.0, init_std=None, max_norm=0.5)
    dm = MNISTDataModule("mnist", synthetic_root, batch_size=64, val_size=200)
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=dm)
    for layer in module.model.linear_layers():
        assert (layer.weight.norm(dim=1) <= 0.5 + 1e-5).all()
