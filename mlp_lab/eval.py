"""Test a checkpoint on a test set; eval-<time>.json and its confusion figure go beside it.

python -m mlp_lab.eval ckpt=outputs/runs/<run>      # on the dataset it trained on
python -m mlp_lab.eval ckpt=path/to/model.ckpt data=mnist
"""

from __future__ import annotations

import itertools
import json
import logging
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from mlp_lab import checkpoints, messages, runs
from mlp_lab.cli import CONF_DIR, one_line_errors
from mlp_lab.config import ConfigError, DataConfig
from mlp_lab.runs import RunError

if TYPE_CHECKING:
    from mlp_lab.data import MNISTDataModule
    from mlp_lab.module import MLPClassifier


class EvalError(RuntimeError):
    """A checkpoint that cannot be tested on the dataset asked for."""


@dataclass
class EvalConfig:
    ckpt: str = MISSING  # a .ckpt file or a run directory (its best checkpoint)
    # The data group of mlp_lab.train (data=mnist, data.root=...); data.name left out (???) is
    # the checkpoint's own dataset. Only name, root, eval_batch_size and download matter here.
    data: DataConfig = MISSING


def output_dir(ckpt: Path) -> Path:
    """Where a checkpoint's evaluations go: its run's directory, else beside the file."""
    run = ckpt.parent.parent
    if ckpt.parent.name == runs.CHECKPOINTS and (run / runs.RECORD).is_file():
        return run
    return ckpt.parent


def check_fits(model: MLPClassifier, dm: MNISTDataModule, ckpt: Path) -> None:
    """Refuse a model whose input size or class count are not the dataset's."""
    inputs, classes = model.hparams.data["in_features"], model.hparams.data["num_classes"]
    if (inputs, classes) != (dm.in_features, dm.num_classes):
        raise EvalError(
            f"{ckpt} was trained on {inputs} inputs and {classes} "
            f"classes; {dm.name} has {dm.in_features} inputs and {dm.num_classes} classes: "
            "give a checkpoint of a model trained on mnist or fashion_mnist"
        )


def evaluate(ckpt: Path, model: MLPClassifier, data: DataConfig) -> dict:
    """Test `model`, loaded from `ckpt`, on the test set of `data`; the evaluation's record."""
    import lightning as L
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    from mlp_lab.data import MNISTDataModule

    started, wall_start = datetime.now(), time.perf_counter()
    dm = MNISTDataModule(data)
    check_fits(model, dm, ckpt)
    dm.prepare_data()
    trainer = L.Trainer(
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    (metrics,) = trainer.test(model, datamodule=dm, verbose=False)
    x, y = dm.splits["test"]
    names = dm.class_names
    preds = model.classes(x, data.eval_batch_size)
    confusion = multiclass_confusion_matrix(preds, y.cpu(), len(names))
    per_class = (confusion.diag() / confusion.sum(1).clamp(min=1)).tolist()
    return {
        "checkpoint": str(ckpt.resolve()),
        "trained_on": model.hparams.data["name"],
        "dataset": dm.name,
        "data_root": str(dm.root),
        "test_acc": metrics["test/acc"],
        "test_loss": metrics["test/loss"],
        "n_images": len(y),
        "per_class_acc": {name: round(a, 6) for name, a in zip(names, per_class, strict=True)},
        "confusion": confusion.tolist(),
        "time": started.isoformat(timespec="seconds"),
        "wall_time_s": round(time.perf_counter() - wall_start, 3),
    }


def save(record: dict, directory: Path) -> Path:
    """eval-<time>.json and its confusion figure in `directory`, never replacing a file."""
    from mlp_lab.figures import plot_confusion

    stamp = datetime.fromisoformat(record["time"]).strftime("%Y-%m-%d_%H-%M-%S")
    for n in itertools.count(1):
        path = directory / f"eval-{stamp if n == 1 else f'{stamp}_{n}'}.json"
        figure = path.with_name(f"{path.stem}-confusion.png")
        try:
            with path.open("x") as file:  # created only if absent: claimed atomically
                json.dump({**record, "confusion_figure": figure.name}, file, indent=2)
                file.write("\n")
            break
        except FileExistsError:
            continue
    plot_confusion(record["confusion"], list(record["per_class_acc"]), figure)
    return path


def run(cfg: DictConfig) -> tuple[dict, Path]:
    """Test cfg.ckpt (on its own dataset unless cfg.data names one) and save the result."""
    ckpt = checkpoints.checkpoint_file(cfg.ckpt)
    model = checkpoints.load_model(ckpt)
    if OmegaConf.is_missing(cfg.data, "name"):
        cfg.data.name = model.hparams.data["name"]
    config: EvalConfig = OmegaConf.to_object(cfg)
    record = evaluate(ckpt, model, config.data)
    return record, save(record, output_dir(ckpt.resolve()))


ConfigStore.instance().store(name="eval_schema", node=EvalConfig)


@one_line_errors("mlp_lab.eval", EvalConfig)
@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "ckpt"):
        raise SystemExit("error: give the checkpoint: ckpt=<run dir or .ckpt file>")
    messages.quiet_lightning()
    # Lightning's lines (devices, tips), logged once it is imported: noise in a one-line command.
    logging.disable(logging.INFO)
    from mlp_lab.datasets import DataError

    try:
        record, path = run(cfg)
    except (RunError, ConfigError, DataError, EvalError) as err:
        raise SystemExit(f"error: {err}") from None
    print(
        f"test_acc={record['test_acc']:.4f} test_loss={record['test_loss']:.4f} "
        f"dataset={record['dataset']} images={record['n_images']:,} "
        f"ckpt={record['checkpoint']} -> {path}"
    )
    if record["trained_on"] != record["dataset"]:
        print(
            f"note: the checkpoint learnt {record['trained_on']}, whose classes are other things "
            f"than {record['dataset']}'s: test_acc counts class numbers that happen to match",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
