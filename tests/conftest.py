"""Fixtures: tiny synthetic IDX datasets, the real data root, and the composed Hydra config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import mlp_lab.train  # noqa: F401  (registers the config schema)
from mlp_lab.data import IMAGE_MAGIC, LABEL_MAGIC, PROJECT_DIR, idx_files

CONF_DIR = str(PROJECT_DIR / "conf")


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
    root = Path(os.environ.get("MLP_LAB_DATA") or PROJECT_DIR / "data")
    if not (root / "FashionMNIST" / "raw").is_dir():
        pytest.fail(f"real datasets not found in {root}: set MLP_LAB_DATA or run `make data`")
    return root


def make_config(*overrides: str):
    """The real composed config, as `python -m mlp_lab.train <overrides>` would see it."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    return OmegaConf.to_object(cfg)


def fast_overrides(root: Path, *extra: str) -> list[str]:
    """Shrink a run to seconds on the synthetic data."""
    return [
        f"data.root={root}",
        "data.val_size=200",
        "data.batch_size=64",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "trainer.accelerator=cpu",
        "trainer.log_every_n_steps=1",
        *extra,
    ]


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m module args...` from the project directory, output captured."""
    command = [sys.executable, "-m", module, *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_DIR)
