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


def test_training_step_returns_cross_entropy_and_updates_accuracy():
    torch.manual_seed(0)
    module = MLPClassifier(hidden=[16])
    x, y = torch.rand(8, 784), torch.arange(8) % 10
    loss = module.training_step((x, y), 0)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(module(x), y))
    expected_acc = (module(x).argmax(1) == y).float().mean()
    torch.testing.assert_close(module.train_acc.compute(), expected_acc)
    torch.testing.assert_close(module.train_loss.compute(), loss.detach())
