"""Shared helpers: tiny synthetic IDX datasets, the real data root, config overrides that shrink a
run, a quiet Trainer, a model built from the config; commands.py runs the commands."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml

from mlp_lab.config import DataConfig
from mlp_lab.data import MNISTDataModule
from mlp_lab.datasets import IMAGE_MAGIC, LABEL_MAGIC, PROJECT_DIR, default_root, idx_files
from mlp_lab.module import MLPClassifier
from mlp_lab.train import load_config

CONF_DIR = str(PROJECT_DIR / "conf")
# A dataset's hparams as MNISTDataModule.dataset_hparams gives them, for models built without data.
FACTS = {
    "name": "fashion_mnist",
    "in_features": 784,
    "num_classes": 10,
    "mean": 0.2,
    "std": 0.3,
    "class_names": list("abcdefghij"),
}


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write `array` (uint8) as an IDX file: magic, big-endian dims, then the bytes."""
    magic = IMAGE_MAGIC if array.ndim == 3 else LABEL_MAGIC
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def synthetic_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class k lights rows 2k..2k+2 of a noisy 28×28 image: easy to learn, hard to get by chance."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 60, (n, 28, 28))
    for i, k in enumerate(labels):
        images[i, 2 * k + 4 : 2 * k + 6, 4:24] = 255
    return images.astype(np.uint8), labels.astype(np.uint8)


OUTPUTS = PROJECT_DIR / "outputs"


@pytest.fixture(scope="session", autouse=True)
def _outputs_left_as_found():
    """The suite leaves the project's outputs/, where a user's runs live, as it found it."""
    before = sorted(OUTPUTS.rglob("*"))
    yield
    added = sorted(set(OUTPUTS.rglob("*")) - set(before))
    assert not added, f"the tests wrote into {OUTPUTS}: {[str(p) for p in added[:5]]}"


@pytest.fixture(autouse=True)
def _in_a_folder_of_its_own(tmp_path: Path, monkeypatch):
    """Each test, and each command it starts, runs in its own temporary folder: what it writes
    by a relative path (outputs/, a sweep's directory) stays there."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def synthetic_root(tmp_path: Path) -> Path:
    """A data root holding a small MNIST-like dataset (1,200 train / 200 test) in both folders."""
    root = tmp_path / "data"
    for folder in ("MNIST", "FashionMNIST"):
        raw = root / folder / "raw"
        raw.mkdir(parents=True)
        for split, n, seed in (("train", 1200, 0), ("test", 200, 1)):
            images, labels = synthetic_images(n, seed)
            image_file, label_file = idx_files(split)
            write_idx(raw / image_file, images)
            write_idx(raw / label_file, labels)
    return root


@pytest.fixture
def real_data_root() -> Path:
    """The full datasets: MLP_LAB_DATA (CI sets it to ../shared/data), else data/ in the project."""
    root = default_root()
    if not (root / "FashionMNIST" / "raw").is_dir():
        pytest.fail(f"real datasets not found in {root}: set MLP_LAB_DATA or run `make data`")
    return root


def datamodule(name: str, root: Path | None = None, seed: int = 42, **settings) -> MNISTDataModule:
    """The data module of a data section with these settings (the others its defaults)."""
    return MNISTDataModule(DataConfig(name, str(root) if root else None, **settings), seed)


def quiet(root: Path, *extra: str) -> list[str]:
    """Overrides for a run on the data in `root` that prints only its summary."""
    return [
        f"data.root={root}",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        *extra,
    ]


def fast_overrides(root: Path, *extra: str) -> list[str]:
    """Shrink a run to seconds on the synthetic data."""
    return quiet(
        root,
        "data.val_size=200",
        "data.batch_size=64",
        "trainer.accelerator=cpu",
        "trainer.log_every_n_steps=1",
        *extra,
    )


def quiet_trainer(**kwargs) -> L.Trainer:
    """A Trainer that writes nothing and prints nothing."""
    defaults = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return L.Trainer(**{**defaults, **kwargs})


def classifier(*overrides: str) -> MLPClassifier:
    """The model that `python -m mlp_lab.train <overrides>` would train, for a dataset of FACTS."""
    return MLPClassifier.from_config(load_config(*overrides), FACTS)


def assert_checkpoint_scores(run: Path, record: dict, root: Path) -> None:
    """A Fashion-MNIST run's logged val and test accuracy are its best checkpoint's, evaluated here
    in one process on the whole splits (as DDP's ranks must add up to)."""
    dm = datamodule("fashion_mnist", root)
    dm.setup()
    model = MLPClassifier.load_from_checkpoint(run / record["checkpoint"]).eval()
    for split, logged in (("val", record["best_val_acc"]), ("test", record["test_acc"])):
        x, y = dm.splits[split]
        with torch.no_grad():
            acc = (model(x).argmax(1) == y).float().mean().item()
        assert logged == pytest.approx(acc, abs=1e-6), split


def fake_run(
    path,
    overrides,
    val_acc,
    test_acc,
    epochs=3,
    finished=True,
    params=1000,
    train_acc=0.5,
    final_drop=0.0,
    **record,
):
    """A completed run's directory with a record made by hand: val accuracy rising 0.01 an epoch
    to `val_acc`; `record` adds to it or replaces (config, history, test_confusion, ...)."""
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra/overrides.yaml").write_text(yaml.safe_dump(overrides))
    if not finished:
        return
    history = [
        {
            "epoch": e,
            "train_loss": 1 / e,
            "train_acc": train_acc,
            "val_loss": 1.0,
            "val_acc": val_acc - 0.01 * (epochs - e),
        }
        for e in range(1, epochs + 1)
    ]
    if final_drop:
        history[-1]["val_acc"] -= final_drop  # the last epoch below the best one
    record = {
        "params": params,
        "history": history,
        "best_val_acc": val_acc,
        "best_epoch": epochs,
        "test_acc": test_acc,
        "mean_epoch_time_s": 1.5,
        "wall_time_s": 10.0,
        **record,
    }
    (path / "metrics.json").write_text(json.dumps(record))
