"""Predict classes of image files (framed as MNIST framed its digits) with a trained checkpoint.

python -m mlp_lab.predict ckpt=outputs/runs/<run> images=[shoe.png,digit.jpg]
python -m mlp_lab.predict ckpt=path/to/model.ckpt     # first n test images → predictions.png
"""

from __future__ import annotations

import logging
import sys
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
import numpy as np
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue
from PIL import Image, UnidentifiedImageError

from mlp_lab.checkpoints import load_model
from mlp_lab.cli import CONF_DIR, one_line_errors
from mlp_lab.runs import RunError

if TYPE_CHECKING:  # torch, imported once an image is to be classified
    import torch

    from mlp_lab.module import MLPClassifier


class PredictError(RuntimeError):
    """One input could not be used; the message names it."""


@dataclass
class PredictConfig:
    ckpt: str = MISSING  # a .ckpt file or a run directory
    images: list[str] = field(default_factory=list)
    n: int = 12  # without images: how many test images to predict and draw
    out: str | None = None  # without images: where the grid goes; null: beside the checkpoint
    top: int = 3


# How each dataset framed its items, and so a user's image: MNIST fits the ink's box into 20×20
# keeping its aspect ratio and puts its centre of mass at the centre of the 28×28 field (LeCun et
# al.); Fashion-MNIST fits the product's box into 28×28, its middle at the centre (Xiao et al.
# 2017). The side of the fitted box, and whether its centre of mass goes to CENTRE or it is centred.
FRAMES = {"mnist": (20, "mass"), "fashion_mnist": (28, "middle")}
CENTRE = 14.0  # the field's centre as row and column index


def prepare_image(path: Path | str, dataset: str = "mnist") -> torch.Tensor:
    """A 1×784 tensor in [0, 1] from an image file, framed as `dataset`'s images were."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice it; both are one line here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                gray = np.asarray(image.convert("L"), dtype=np.float32) / 255
    except FileNotFoundError:
        raise PredictError(f"{path}: no such file") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise PredictError(
            f"{path}: larger than the {Image.MAX_IMAGE_PIXELS:,} pixels this reads safely; "
            "scale it down to a few hundred pixels a side first"
        ) from None
    except (UnidentifiedImageError, OSError) as err:
        raise PredictError(f"{path}: not a readable image ({err})") from None
    import torch

    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if border.mean() > 0.5:  # a light background: photos and scans of dark ink on paper
        gray, border = 1 - gray, 1 - border
    return torch.from_numpy(frame(gray, float(np.median(border)), *FRAMES[dataset])).reshape(1, 784)


def _resized(x: np.ndarray, height: int, width: int) -> np.ndarray:
    image = Image.fromarray(x.astype(np.float32), mode="F")
    return np.asarray(image.resize((width, height), Image.Resampling.LANCZOS)).clip(0, 1)


def frame(x: np.ndarray, background: float, side: int, anchor: str) -> np.ndarray:
    """Crop to the ink's box, scale it to `side` and centre its mass in a 28×28 field."""
    x = ((x - background) / max(1 - background, 1e-6)).clip(0, 1)
    if x.max() < 0.1:  # nothing drawn: the whole image, as it is
        return _resized(x, 28, 28)
    ink = x > x.max() / 4
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    box = x[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    scale = side / max(box.shape)
    height, width = (max(1, round(n * scale)) for n in box.shape)
    box = _resized(box, height, width)
    if anchor == "mass":
        weights = box / box.sum()
        middle = (weights.sum(1) @ np.arange(height), weights.sum(0) @ np.arange(width))
        top, left = (
            min(max(round(CENTRE - m), 0), 28 - n) for m, n in zip(middle, box.shape, strict=True)
        )
    else:  # as many empty rows (columns) above as below, give or take one
        top, left = (28 - height) // 2, (28 - width) // 2
    field = np.zeros((28, 28), np.float32)
    field[top : top + height, left : left + width] = box
    return field


def top_classes(model: MLPClassifier, x: torch.Tensor, k: int = 3) -> list[tuple[str, float]]:
    import torch

    with torch.no_grad():
        probs = model(x).softmax(dim=1)[0]
    values, indices = probs.topk(min(k, len(probs)))
    names = model.hparams.data["class_names"]
    return [(names[i], v) for i, v in zip(indices.tolist(), values.tolist(), strict=True)]


def predict_images(model: MLPClassifier, images: list[str], top: int = 3) -> int:
    """Print one line per image; a bad image gets an error line and the others go on."""
    failures = 0
    for image in images:
        try:
            x = prepare_image(image, model.hparams.data["name"])
            ranked = top_classes(model, x, top)
        except PredictError as err:
            print(f"error: {err}", file=sys.stderr)
            failures += 1
            continue
        (name, prob), others = ranked[0], ", ".join(f"{n} {p:.3f}" for n, p in ranked)
        print(f"{image}: {name} ({prob:.3f})  top {len(ranked)}: {others}")
    return failures


def predict_test_images(model: MLPClassifier, n: int, out: Path) -> Path:
    """The first n test images of the checkpoint's dataset, drawn as a "true / pred" grid."""
    # Lightning and matplotlib, which the dataset and the figure bring, only for this grid.
    from mlp_lab.datasets import default_root, fetch, load_split
    from mlp_lab.figures import plot_predictions

    dataset = model.hparams.data["name"]
    root = default_root()
    fetch(dataset, root)
    x, y = load_split(dataset, root, "test")
    preds = model.classes(x[:n])
    plot_predictions(x[:n], y[:n], preds, model.hparams.data["class_names"], out, n=n)
    right = int((preds == y[:n]).sum())
    print(f"{right}/{n} of the first {dataset} test images right; grid in {out}")
    return out


def grid_path(ckpt: str) -> Path:
    """predict-<time>.png beside the checkpoint, never the run's own predictions.png."""
    path = Path(ckpt)
    home = path if path.is_dir() else path.parent
    if home.name == "checkpoints":
        home = home.parent
    return home / f"predict-{datetime.now():%Y-%m-%d_%H-%M-%S}.png"


ConfigStore.instance().store(name="predict_schema", node=PredictConfig)


@one_line_errors("mlp_lab.predict", PredictConfig)
@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="predict")
def main(cfg: DictConfig) -> None:
    try:
        config: PredictConfig = OmegaConf.to_object(cfg)
    except MissingMandatoryValue:
        raise SystemExit("error: give the checkpoint: ckpt=<run dir or .ckpt file>") from None
    # An image that is not there is said at once, before torch is imported to load the model.
    images = [image for image in config.images if Path(image).is_file()]
    for missing in (image for image in config.images if image not in images):
        print(f"error: {missing}: no such file", file=sys.stderr)
    if config.images and not images:
        raise SystemExit(1)
    # Lightning's lines (devices, tips), logged once it is imported: noise in a one-line command.
    logging.disable(logging.INFO)
    from mlp_lab.datasets import DataError

    try:
        model = load_model(config.ckpt)
        if not config.images:
            predict_test_images(model, config.n, Path(config.out or grid_path(config.ckpt)))
            return
    except (RunError, DataError) as err:
        raise SystemExit(f"error: {err}") from None
    if predict_images(model, images, config.top) or len(images) < len(config.images):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
