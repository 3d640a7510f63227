"""`MLPClassifier`: the LightningModule that trains an `MLP` and logs loss and accuracy."""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict

import lightning as L
import torch
from hydra.utils import get_class
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from mlp_lab.config import OPTIMIZERS
from mlp_lab.losses import build_loss
from mlp_lab.model import MLP

STAGES = ("train", "val", "test")
SECTIONS = ("model", "loss", "optimizer")  # the config sections a model is made of


class TrainingDiverged(RuntimeError):
    """The training loss stopped being a finite number."""


class MLPClassifier(L.LightningModule):
    """Trains an `MLP`; its hparams are the config's sections, so a checkpoint rebuilds it."""

    def __init__(self, model: dict, loss: dict, optimizer: dict, data: dict):
        """`model`, `loss`, `optimizer`: config sections; `data`: MNISTDataModule.dataset_hparams"""
        super().__init__()
        # In the checkpoint; the logger gets the run's settings, with its results, at the end.
        self.save_hyperparameters(logger=False)
        network = {k: v for k, v in model.items() if k in inspect.signature(MLP).parameters}
        self.model = MLP(
            in_features=data["in_features"],
            num_classes=data["num_classes"],
            mean=data["mean"],
            std=data["std"],
            **network,
        )
        # What the model summary counts FLOPs with.
        self.example_input_array = torch.zeros(1, data["in_features"])
        # A loss that penalises parameters (ce_l2) is handed the model.
        self.criterion = build_loss(**loss, model=self.model)
        # One metric object per stage, so running states never mix; torchmetrics syncs them across
        # processes under DDP.
        for stage in STAGES:
            # A NaN loss is caught once per epoch, in on_train_epoch_end, not per step here.
            setattr(self, f"{stage}_loss", MeanMetric(nan_strategy="disable"))
            acc = MulticlassAccuracy(data["num_classes"], average="micro", validate_args=False)
            setattr(self, f"{stage}_acc", acc)

    @classmethod
    def from_config(cls, cfg, data: dict) -> MLPClassifier:
        """The model of a `TrainConfig`, for a dataset of these `data` hparams."""
        return cls(**{name: asdict(getattr(cfg, name)) for name in SECTIONS}, data=data)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @torch.no_grad()
    def classes(self, x: torch.Tensor, batch_size: int = 5000) -> torch.Tensor:
        """The predicted class of each image, in eval mode, `batch_size` images at a time."""
        self.eval()
        return torch.cat([self(xb.to(self.device)).argmax(1).cpu() for xb in x.split(batch_size)])

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.criterion(logits, y)
        # Metrics are only updated here and logged once per epoch: logging per step slowed an
        # epoch (docs/performance.md, "What each change bought").
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
        if stage == "train":  # the learning rate the epoch ended with
            optimizer = self.trainer.optimizers[0]
            self.log(f"lr-{type(optimizer).__name__}", optimizer.param_groups[0]["lr"])
        # Lightning takes a logged "step" for the loggers' x-axis: the epoch (1, 2, ...), not the
        # optimizer steps; the test is drawn at the last epoch.
        self.log("step", float(self.trainer.current_epoch + (stage != "test")))

    def training_step(self, batch, batch_idx):
        """The batch's loss, for Lightning's step (its clipping and accumulation when set)."""
        return self._step(batch, "train")

    def optimizer_step(self, *args, **kwargs):
        """Lightning's optimisation step, then max-norm when set."""
        super().optimizer_step(*args, **kwargs)
        self.model.apply_max_norm()

    def validation_step(self, batch, batch_idx):
        """Loss and accuracy on the validation split."""
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        """Loss and accuracy on the official test set."""
        self._step(batch, "test")

    def on_train_epoch_end(self):
        """Log the epoch's training loss and accuracy; stop if the loss is no longer finite."""
        loss = float(self.train_loss.compute())
        self._log_epoch("train")
        # Raised before the checkpoint callbacks, which run after this hook: NaN weights are never
        # saved.
        if not math.isfinite(loss):
            epoch = self.current_epoch + 1
            kept = "; the checkpoints of the epochs before it are kept" if epoch > 1 else ""
            raise TrainingDiverged(
                f"training loss is {loss} at epoch {epoch}: lower optimizer.lr or change the "
                f"loss{kept}"
            )

    def on_validation_epoch_end(self):
        """Log the validation loss and accuracy."""
        self._log_epoch("val")

    def on_test_epoch_end(self):
        """Log the test loss and accuracy."""
        self._log_epoch("test")

    def configure_optimizers(self):
        """The optimizer named in the config, over all parameters."""
        hp = self.hparams.optimizer
        kwargs = {"lr": hp["lr"], "weight_decay": hp["weight_decay"]}
        if hp["name"] == "sgd":
            kwargs.update(momentum=hp["momentum"], nesterov=hp["nesterov"])
        optimizer = get_class(OPTIMIZERS[hp["name"]])(self.parameters(), **kwargs)
        if hp["schedule"] == "none":
            return optimizer
        steps = int(self.trainer.estimated_stepping_batches)  # accumulation counted
        if hp["schedule"] == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        else:
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=hp["lr"], total_steps=steps, pct_start=hp["warmup"]
            )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
