"""The four variants that benchmarks/epoch_speed.py times, each in a fresh process of its own.

python -m benchmarks.epoch_speed --variant c --batch-sizes 256 --out c.json  # as the benchmark does
"""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Subset
from torchvision import transforms

from benchmarks.epoch_speed import LAB_WORKERS, PROJECT_DIR, QUICK_IMAGES, device, sync
from mlp_lab.data import MNISTDataModule
from mlp_lab.model import MLP
from mlp_lab.module import MLPClassifier
from mlp_lab.train import train

log = logging.getLogger(__name__)


def load_config(dataset: str, *overrides: str):
    """The config `python -m mlp_lab.train data=<dataset> <overrides>` runs with."""
    with initialize_config_dir(config_dir=str(PROJECT_DIR / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"data={dataset}", *overrides])
    return OmegaConf.to_object(cfg)


def data_module(cfg) -> MNISTDataModule:
    dm = MNISTDataModule(**asdict(cfg.data), seed=cfg.seed)
    dm.prepare_data()
    return dm


def model_args(cfg, dm) -> dict:
    """The model's settings as train.py passes them: the lab's 784-256-256-10 ReLU, N(0, 0.01²)."""
    return {
        "in_features": dm.in_features,
        "num_classes": dm.num_classes,
        "hidden": cfg.model.hidden,
        "activation": cfg.model.activation,
        "init_std": cfg.model.init_std,
        "mean": dm.info.mean,
        "std": dm.info.std,
    }


def run_mlp_lab(cfg, run_dir: Path) -> tuple[list[float], float]:
    """(a) `mlp_lab.train.train`, as a normal run: logger, checkpoints, test pass and figures."""
    history = train(cfg, run_dir)["history"]
    return [e["epoch_time_s"] for e in history], history[-1]["val_acc"]


class Unlogged(MLPClassifier):
    """mlp_lab's module, but barebones mode forbids `self.log`: the values are kept here."""

    def log(self, name, value, *args, **kwargs):
        self.logged[name] = float(value)


class EpochTimer(L.Callback):
    """Seconds from each training epoch's start to its end, validation included (as in (a))."""

    def __init__(self):
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        sync()
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        sync()
        self.seconds.append(time.perf_counter() - self._start)


def run_barebones(cfg) -> tuple[list[float], float]:
    """(b) The same module and data module under `Trainer(barebones=True)`."""
    L.seed_everything(cfg.seed, workers=True)
    dm = data_module(cfg)
    module = Unlogged(**model_args(cfg, dm), lr=cfg.optimizer.lr)
    module.logged = {}
    timer = EpochTimer()
    trainer = L.Trainer(
        barebones=True,
        accelerator=cfg.trainer.accelerator,
        devices=1,
        max_epochs=cfg.trainer.max_epochs,
        limit_train_batches=cfg.trainer.limit_train_batches,
        callbacks=[timer],
    )
    trainer.fit(module, datamodule=dm)
    return timer.seconds, module.logged["val/acc"]


def accuracy(model, batches, dev) -> float:
    """Accuracy of `model` over (images, labels) batches, counted on the device."""
    model.eval()
    correct, total = 0, 0
    with torch.no_grad():
        for x, y in batches:
            x, y = x.to(dev), y.to(dev)
            correct += (model(x).argmax(1) == y).sum()
            total += len(y)
    model.train()
    return float(correct) / total


def run_plain_loop(cfg) -> tuple[list[float], float]:
    """(c) A bare loop over in-memory tensors: randperm + index_select batches, eval in 5,000s."""
    dev, n_train = device(), train_images(cfg)
    torch.manual_seed(cfg.seed)
    dm = data_module(cfg)
    dm.setup()  # the same seeded split as (a)
    x, y = (t[:n_train].to(dev) for t in dm.splits["train"])
    x_val, y_val = (t.to(dev).split(cfg.data.eval_batch_size) for t in dm.splits["val"])
    model = MLP(**model_args(cfg, dm)).to(dev)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optimizer.lr)
    generator = torch.Generator().manual_seed(cfg.seed)
    seconds, acc = [], 0.0
    for _ in range(cfg.trainer.max_epochs):
        sync()
        start = time.perf_counter()
        for idx in torch.randperm(len(x), generator=generator).to(dev).split(cfg.data.batch_size):
            loss = F.cross_entropy(model(x.index_select(0, idx)), y.index_select(0, idx))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        # accuracy ends in a host read, which waits for the GPU
        acc = accuracy(model, zip(x_val, y_val, strict=True), dev)
        seconds.append(time.perf_counter() - start)
    return seconds, acc


def run_lab_pipeline(cfg) -> tuple[list[float], float]:
    """(d) The lab's: torchvision dataset with ToTensor, DataLoader with 4 workers, d2l's loop."""
    dev, n_train = device(), train_images(cfg)
    torch.manual_seed(cfg.seed)
    dm = data_module(cfg)
    full = dm.info.torchvision_class(str(dm.root), train=True, transform=transforms.ToTensor())
    # The data module's split of the same files, so that every variant sees the same images.
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(cfg.seed))
    val_idx, train_idx = order[: cfg.data.val_size], order[cfg.data.val_size :][:n_train]

    def loader(indices, shuffle):
        subset = Subset(full, indices.tolist())
        return DataLoader(subset, cfg.data.batch_size, shuffle=shuffle, num_workers=LAB_WORKERS)

    train_iter, val_iter = loader(train_idx, True), loader(val_idx, False)
    model = MLP(**model_args(cfg, dm)).to(dev)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optimizer.lr)
    seconds, acc = [], 0.0
    for _ in range(cfg.trainer.max_epochs):
        sync()
        start = time.perf_counter()
        # d2l's train_epoch_ch3 reads the loss and the hits back to the host every step.
        loss_sum, hits = 0.0, 0.0
        for x, y in train_iter:
            x, y = x.to(dev), y.to(dev)
            logits = model(x)
            loss = F.cross_entropy(logits, y, reduction="none")
            optimizer.zero_grad()
            loss.mean().backward()
            optimizer.step()
            loss_sum += float(loss.sum())
            hits += float((logits.argmax(1) == y).sum())
        acc = accuracy(model, val_iter, dev)
        seconds.append(time.perf_counter() - start)
        log.info("(d) train loss %.4f, train acc %.4f", loss_sum / n_train, hits / n_train)
    return seconds, acc


RUNNERS = {"b": run_barebones, "c": run_plain_loop, "d": run_lab_pipeline}


def train_images(cfg) -> int:
    """Images trained on per epoch: the whole training split, or `limit_train_batches` batches."""
    n = 60_000 - cfg.data.val_size  # both datasets have 60,000 training images
    limit = cfg.trainer.limit_train_batches
    return n if limit is None else min(n, limit * cfg.data.batch_size)


def max_rss_mb(who: int) -> float:
    """Peak resident memory in MB (ru_maxrss is in KiB on Linux)."""
    return round(resource.getrusage(who).ru_maxrss / 1024, 1)


def run_variant(variant: str, args) -> dict:
    """Time one variant at each batch size; its peak RSS and that of its worker processes."""
    # Every variant's process holds the same libraries (CUDA-enabled torch, torchvision, Lightning):
    # the RSS they take before any data is loaded is reported apart.
    import_rss = max_rss_mb(resource.RUSAGE_SELF)
    results = {}
    for bs in args.batch_sizes:
        overrides = [f"data.batch_size={bs}", f"trainer.max_epochs={args.epochs}"]
        overrides.append("trainer.enable_progress_bar=false")
        if args.quick:
            overrides.append(f"trainer.limit_train_batches={max(1, QUICK_IMAGES // bs)}")
        cfg = load_config(args.dataset, *overrides)
        if variant == "a":
            # Beside --out, in the benchmark's temporary folder: the run's TensorBoard writer
            # still flushes when this process exits.
            seconds, acc = run_mlp_lab(cfg, args.out.parent / f"run_{bs}")
        else:
            seconds, acc = RUNNERS[variant](cfg)
        results[str(bs)] = {
            "epoch_s": [round(s, 4) for s in seconds],
            "val_acc": round(acc, 4),
            "train_images": train_images(cfg),
            "val_images": cfg.data.val_size,
        }
    result = {
        "widths": [28 * 28, *cfg.model.hidden, 10],
        "threads": torch.get_num_threads(),
        "import_rss_mb": import_rss,
        "rss_mb": max_rss_mb(resource.RUSAGE_SELF),
        "batch_sizes": results,
    }
    if variant == "d":
        # The largest worker's, not their sum. A forked worker's RSS counts the pages it shares
        # with the main process, so main + 4 × this overstates the pipeline's memory.
        result["worker_rss_mb"] = max_rss_mb(resource.RUSAGE_CHILDREN)
    return result
