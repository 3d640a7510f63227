"""`MLPClassifier`: the LightningModule that trains an `MLP` and logs loss and accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from mlp_lab.losses import build_loss, loss_options
from mlp_lab.model import MLP

STAGES = ("train", "val", "test")
OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
SCHEDULES = ("none", "cosine", "onecycle")


class MLPClassifier(L.LightningModule):
    """All settings live in hparams: `load_from_checkpoint(path)` alone rebuilds it."""

    def __init__(
        self,
        in_features: int = 784,
        num_classes: int = 10,
        hidden: Sequence[int] = (256, 256),
        activation: str = "relu",
        init_std: float | None = 0.01,
        mean: float = 0.0,
        std: float = 1.0,
        dropout: float = 0.0,
        batch_norm: bool = False,
        impl: str = "torch",
        loss: str = "ce",
        loss_params: dict | None = None,
        optimizer: str = "sgd",
        lr: float = 0.1,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        schedule: str = "none",
        warmup: float = 0.3,
        max_norm: float | None = None,
        dataset: str = "",
        class_names: Sequence[str] = (),
    ):
        super().__init__()
        # In the checkpoint; the logger gets the run's whole config, with its results, at the end.
        self.save_hyperparameters(logger=False)
        # The step is written out in training_step: Lightning's automatic optimisation wraps each
        # one in a closure and several hooks, which cost more than the step itself on the CPU.
        self.automatic_optimization = False
        self.model = MLP(
            in_features,
            hidden,
            num_classes,
            activation=activation,
            init_std=init_std,
            mean=mean,
            std=std,
            dropout=dropout,
            batch_norm=batch_norm,
            impl=impl,
        )
        # A loss that penalises parameters (ce_l2) is handed the model.
        uses_model = {"model": self.model} if "model" in loss_options(loss) else {}
        self.criterion = build_loss(loss, **(loss_params or {}), **uses_model)
        # One metric object per stage, so running states never mix; torchmetrics syncs them across
        # processes under DDP.
        for stage in STAGES:
            # A NaN loss is caught per epoch by the training record, not per step here.
            setattr(self, f"{stage}_loss", MeanMetric(nan_strategy="disable"))
            acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
            setattr(self, f"{stage}_acc", acc)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.criterion(logits, y)
        # Metrics are only updated here and logged once per epoch: a `self.log` call costs about
        # a millisecond in Lightning, as long as this whole step on the CPU.
        getattr(self, f"{stage}_loss").update(loss.detach(), len(y))
        getattr(self, f"{stage}_acc").update(logits.detach(), y)
        return loss

    def _log_epoch(self, stage: str) -> None:
        for name in ("loss", "acc"):
            metric = getattr(self, f"{stage}_{name}")
            # compute() has already gathered every process's counts under DDP, so every rank holds
            # the same value; sync_dist only tells Lightning so (a mean of equal numbers).
            self.log(f"{stage}/{name}", metric.compute(), sync_dist=True)
            metric.reset()

    def training_step(self, batch, batch_idx):
        """One optimisation step, then max-norm when it is set."""
        optimizer = self.optimizers()
        loss = self._step(batch, "train")
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        if self.hparams.max_norm:
            self.model.apply_max_norm(self.hparams.max_norm)
        return loss

    def validation_step(self, batch, batch_idx):
        """Loss and accuracy on the validation split."""
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        """Loss and accuracy on the official test set."""
        self._step(batch, "test")

    def on_train_epoch_end(self):
        """Log the epoch's training loss and accuracy."""
        self._log_epoch("train")

    def on_validation_epoch_end(self):
        """Log the validation loss and accuracy."""
        self._log_epoch("val")

    def on_test_epoch_end(self):
        """Log the test loss and accuracy."""
        self._log_epoch("test")

    def configure_optimizers(self):
        """The optimizer named in the config, over all parameters."""
        hp = self.hparams
        kwargs = {"lr": hp.lr, "weight_decay": hp.weight_decay}
        if hp.optimizer == "sgd":
            kwargs.update(momentum=hp.momentum, nesterov=hp.nesterov)
        optimizer = OPTIMIZERS[hp.optimizer](self.parameters(), **kwargs)
        if hp.schedule == "none":
            return optimizer
        steps = int(self.trainer.estimated_stepping_batches)
        if hp.schedule == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        else:
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=hp.lr, total_steps=steps, pct_start=hp.warmup
            )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
