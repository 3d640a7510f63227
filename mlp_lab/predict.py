"""Predict classes of images with a trained checkpoint.

    python -m mlp_lab.predict ckpt=outputs/runs/<run> images=[shoe.png,digit.jpg]
    python -m mlp_lab.predict ckpt=path/to/model.ckpt     # first n test images → predictions.png

`ckpt` is a .ckpt file or a run directory (its best checkpoint, from metrics.json). Images are
prepared as the training data was: grayscale, 28×28, light backgrounds inverted, in [0, 1].
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue
from PIL import Image, UnidentifiedImageError

from mlp_lab.cli import CONF_DIR, one_line_errors
from mlp_lab.data import DataError, default_root, fetch, load_split
from mlp_lab.figures import plot_predictions
from mlp_lab.module import MLPClassifier
from mlp_lab.runs import RunError, load_model


class PredictError(RuntimeError):
    """One input could not be used; the message names it."""


@dataclass
class PredictConfig:
    ckpt: str = MISSING  # a .ckpt file or a run directory
    images: list[str] = field(default_factory=list)
    n: int = 12  # without images: how many test images to predict and draw
    out: str = "predictions.png"  # without images: where the grid goes
    top: int = 3


def prepare_image(path: Path | str) -> torch.Tensor:
    """A 1×784 tensor in [0, 1], dark background like MNIST's, from any image file."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice it; both are one line here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                gray = image.convert("L").resize((28, 28), Image.Resampling.LANCZOS)
    except FileNotFoundError:
        raise PredictError(f"{path}: no such file") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise PredictError(
            f"{path}: larger than the {Image.MAX_IMAGE_PIXELS:,} pixels this reads safely; "
            "scale it down to a few hundred pixels a side first"
        ) from None
    except (UnidentifiedImageError, OSError) as err:
        raise PredictError(f"{path}: not a readable image ({err})") from None
    x = torch.frombuffer(bytearray(gray.tobytes()), dtype=torch.uint8).float().div(255)
    x = x.reshape(28, 28)
    border = torch.cat([x[0], x[-1], x[:, 0], x[:, -1]])
    if border.mean() > 0.5:  # a light background: photos and scans of dark ink on paper
        x = 1 - x
    return x.reshape(1, 784)


def top_classes(model: MLPClassifier, x: torch.Tensor, k: int = 3) -> list[tuple[str, float]]:
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
            ranked = top_classes(model, prepare_image(image), top)
        except PredictError as err:
            print(f"error: {err}", file=sys.stderr)
            failures += 1
            continue
        (name, prob), others = ranked[0], ", ".join(f"{n} {p:.3f}" for n, p in ranked)
        print(f"{image}: {name} ({prob:.3f})  top {len(ranked)}: {others}")
    return failures


def predict_test_images(model: MLPClassifier, n: int, out: Path) -> Path:
    """The first n test images of the checkpoint's dataset, drawn as a "true / pred" grid."""
    dataset = model.hparams.data["name"]
    root = default_root()
    fetch(dataset, root)
    x, y = load_split(dataset, root, "test")
    with torch.no_grad():
        preds = model(x[:n]).argmax(dim=1)
    plot_predictions(x[:n], y[:n], preds, model.hparams.data["class_names"], out, n=n)
    right = int((preds == y[:n]).sum())
    print(f"{right}/{n} of the first {dataset} test images right; grid in {out}")
    return out


ConfigStore.instance().store(name="predict_schema", node=PredictConfig)


@one_line_errors("mlp_lab.predict", PredictConfig)
@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="predict")
def main(cfg: DictConfig) -> None:
    try:
        config: PredictConfig = OmegaConf.to_object(cfg)
    except MissingMandatoryValue:
        raise SystemExit("error: give the checkpoint: ckpt=<run dir or .ckpt file>") from None
    try:
        model = load_model(config.ckpt)
        if not config.images:
            predict_test_images(model, config.n, Path(config.out))
            return
    except (RunError, DataError) as err:
        raise SystemExit(f"error: {err}") from None
    if predict_images(model, config.images, config.top):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
