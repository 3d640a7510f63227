"""Train one MLP and leave a complete record of the run.

python -m mlp_lab.train                         # the lab's baseline on Fashion-MNIST
python -m mlp_lab.train data=mnist optimizer.lr=0.05
python -m mlp_lab.train -m model.hidden=[256],[256,256]   # a sweep
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf
from torchmetrics.functional.classification import multiclass_confusion_matrix

from mlp_lab.config import ConfigError, TrainConfig, register
from mlp_lab.data import DataError, MNISTDataModule
from mlp_lab.module import MLPClassifier
from mlp_lab.report import plot_confusion, plot_curves, plot_predictions

log = logging.getLogger(__name__)
MONITOR = "val/acc"


class TrainingDiverged(RuntimeError):
    """The training loss stopped being a finite number."""


class EpochHistory(L.Callback):
    """Per-epoch train/val loss and accuracy, and each epoch's wall time (train + validation)."""

    def __init__(self):
        self.epochs: list[dict] = []
        self._pending: tuple[int, float] | None = None

    def on_train_epoch_start(self, trainer, pl_module):
        self._record(trainer)
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        # Callbacks run before the module logs its training metrics, so they are read later.
        self._pending = (trainer.current_epoch + 1, time.perf_counter() - self._start)

    def on_train_end(self, trainer, pl_module):
        self._record(trainer)

    def _record(self, trainer) -> None:
        if self._pending is None:
            return
        (epoch, seconds), self._pending = self._pending, None
        metrics = {k: round(float(v), 6) for k, v in trainer.callback_metrics.items()}
        if not math.isfinite(metrics["train/loss"]):
            raise TrainingDiverged(
                f"training loss is {metrics['train/loss']} at epoch {epoch}: lower optimizer.lr "
                "or change the loss; the checkpoints of earlier epochs are kept"
            )
        if trainer.logger is not None:
            trainer.logger.log_metrics({"time/epoch_s": seconds}, step=trainer.global_step)
        self.epochs.append(
            {
                "epoch": epoch,
                "train_loss": metrics["train/loss"],
                "train_acc": metrics["train/acc"],
                "val_loss": metrics.get("val/loss"),
                "val_acc": metrics.get("val/acc"),
                "epoch_time_s": round(seconds, 4),
            }
        )


def train(cfg: TrainConfig, run_dir: Path) -> dict:
    """Fit, pick the checkpoint with the best val accuracy, test it; return the run's record."""
    wall_start = time.perf_counter()
    L.seed_everything(cfg.seed, workers=True)
    dm = MNISTDataModule(**asdict(cfg.data), seed=cfg.seed)
    dm.prepare_data()  # a missing or corrupt dataset stops the run here, before anything is built
    norm = {"mean": dm.info.mean, "std": dm.info.std} if cfg.model.normalize else {}
    module = MLPClassifier(
        in_features=dm.in_features,
        num_classes=dm.num_classes,
        hidden=list(cfg.model.hidden),
        activation=cfg.model.activation,
        init_std=cfg.model.init_std,
        **norm,
        dropout=cfg.model.dropout,
        batch_norm=cfg.model.batch_norm,
        impl=cfg.model.impl,
        loss=cfg.loss.name,
        loss_params=cfg.loss.params(),
        optimizer=cfg.optimizer.name,
        lr=cfg.optimizer.lr,
        momentum=cfg.optimizer.momentum,
        weight_decay=cfg.optimizer.weight_decay,
        dataset=dm.name,
        class_names=dm.class_names,
    )
    widths = "-".join(map(str, [dm.in_features, *cfg.model.hidden, dm.num_classes]))
    log.info("MLP %s %s: %s parameters", widths, cfg.model.activation, f"{module.num_parameters:,}")

    history = EpochHistory()
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="epoch{epoch:02d}-val_acc{val/acc:.4f}",
        auto_insert_metric_name=False,
        monitor=MONITOR,
        mode="max",
        save_last=True,
    )
    logger = TensorBoardLogger(run_dir, name="tensorboard", version="", default_hp_metric=False)
    trainer_args = asdict(cfg.trainer)
    refresh_rate = trainer_args.pop("progress_bar_refresh_rate")
    callbacks = [checkpoint, history, LearningRateMonitor(logging_interval="epoch")]
    if cfg.trainer.enable_progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=refresh_rate))
    trainer = L.Trainer(
        **trainer_args, default_root_dir=run_dir, logger=logger, callbacks=callbacks
    )

    fit_start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    fit_time = time.perf_counter() - fit_start
    test = trainer.test(module, datamodule=dm, ckpt_path="best", verbose=False)[0]

    best = max(history.epochs, key=lambda e: e["val_acc"])
    record = {
        "dataset": dm.name,
        "hidden": list(cfg.model.hidden),
        "activation": cfg.model.activation,
        "loss": cfg.loss.name,
        "dropout": cfg.model.dropout,
        "batch_norm": cfg.model.batch_norm,
        "impl": cfg.model.impl,
        "optimizer": cfg.optimizer.name,
        "lr": cfg.optimizer.lr,
        "batch_size": cfg.data.batch_size,
        "params": module.num_parameters,
        "seed": cfg.seed,
        "epochs": len(history.epochs),
        "history": history.epochs,
        "best_val_acc": best["val_acc"],
        "best_epoch": best["epoch"],
        "test_acc": test["test/acc"],
        "test_loss": test["test/loss"],
        "fit_time_s": fit_time,
        "mean_epoch_time_s": sum(e["epoch_time_s"] for e in history.epochs) / len(history.epochs),
        "wall_time_s": time.perf_counter() - wall_start,
        "checkpoint": str(Path(checkpoint.best_model_path).relative_to(run_dir)),
    }
    (run_dir / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    # The HPARAMS tab compares a sweep's runs: the settings with their final metrics, logged once.
    finals = {f"final/{k}": record[k] for k in ("best_val_acc", "test_acc", "test_loss")}
    logger.log_hyperparams(asdict(cfg), metrics=finals)
    save_figures(module, dm, history.epochs, run_dir, logger)
    return record


def save_figures(module, dm, history, run_dir: Path, logger, n: int = 12) -> None:
    """curves.png, predictions.png and confusion.png in the run directory and in TensorBoard."""
    x, y = dm.splits["test"]
    module.eval()
    with torch.no_grad():
        batches = dm.test_dataloader()
        preds = torch.cat([module(xb.to(module.device)).argmax(1).cpu() for xb, _ in batches])
    x, y = x[:n].cpu(), y.cpu()
    names = dm.class_names
    matrix = multiclass_confusion_matrix(preds, y, len(names))
    figures = {
        "curves": plot_curves(history, run_dir / "curves.png"),
        "predictions": plot_predictions(x, y[:n], preds[:n], names, run_dir / "predictions.png", n),
        "confusion": plot_confusion(matrix, names, run_dir / "confusion.png"),
    }
    for name, figure in figures.items():
        logger.experiment.add_figure(name, figure, close=False)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Entry point; returns the best validation accuracy for Hydra's sweepers."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    # Lightning's advertisement and a deprecation inside Lightning itself: noise in every run.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "Tip:" not in record.getMessage()
    )
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    try:
        record = train(OmegaConf.to_object(cfg), run_dir)
    except (ConfigError, DataError, TrainingDiverged) as err:
        raise SystemExit(f"error: {err}") from None
    print(
        f"test_acc={record['test_acc']:.4f} best_val_acc={record['best_val_acc']:.4f} "
        f"(epoch {record['best_epoch']}) params={record['params']:,} "
        f"wall={record['wall_time_s']:.1f}s run={run_dir}"
    )
    return record["best_val_acc"]


register()

if __name__ == "__main__":
    main()
