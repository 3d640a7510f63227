"""The variants that benchmarks/epoch_speed.py times, each in a fresh process of its own.

python -m benchmarks.variants c '{"dataset": "mnist", "batch_sizes": [256], "epochs": 2,
                                  "quick": true}' --out c.json    # as the benchmark runs (c)
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from torchvision import transforms

from mlp_lab import fit
from mlp_lab.config import TrainConfig
from mlp_lab.data import MNISTDataModule, split_indices
from mlp_lab.fit import build, train
from mlp_lab.model import MLP
from mlp_lab.module import MLPClassifier
from mlp_lab.train import load_config

log = logging.getLogger(__name__)

VARIANTS = {
    "a": "mlp_lab, a normal run",
    "b": "Lightning barebones",
    "c": "plain torch loop",
    "d": "lab: ToTensor + DataLoader",
    "e": "(a), Lightning's automatic step",
    "f": "(a) in bf16-mixed (trainer=bf16)",
}
LAB_WORKERS = 4  # the lab's d2l loaders ran 4 worker processes
QUICK_IMAGES = 2048  # --quick trains on this many images per epoch


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    """Wait for queued GPU work, so that a clock read after it times the work."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_mlp_lab(cfg: TrainConfig, run_dir: Path) -> tuple[list[float], float]:
    """(a) `mlp_lab.fit.train`, as a normal run: logger, checkpoints, test pass and figures."""
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


def run_barebones(cfg: TrainConfig) -> tuple[list[float], float]:
    """(b) The same module and data module under `Trainer(barebones=True)`."""
    dm, module = build(cfg)
    # The very module that build made, seeded weights included; only its `log` changes.
    module.__class__ = Unlogged
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


def build_plain(
    cfg: TrainConfig, dev: torch.device
) -> tuple[MNISTDataModule, MLP, torch.optim.Optimizer]:
    """(c) and (d)'s data module and network, from `build` as (a)'s, and plain SGD at its lr."""
    dm, module = build(cfg)
    model = module.model.to(dev)
    return dm, model, torch.optim.SGD(model.parameters(), lr=cfg.optimizer.lr)


def accuracy(model: MLP, batches, dev: torch.device) -> float:
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


def run_plain_loop(cfg: TrainConfig) -> tuple[list[float], float]:
    """(c) A bare loop over in-memory tensors: randperm + index_select batches, eval in 5,000s."""
    dev, n_train = device(), train_images(cfg)
    dm, model, optimizer = build_plain(cfg, dev)
    dm.setup()  # the same seeded split as (a)
    x, y = (t[:n_train].to(dev) for t in dm.splits["train"])
    x_val, y_val = (t.to(dev).split(cfg.data.eval_batch_size) for t in dm.splits["val"])
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


def run_lab_pipeline(cfg: TrainConfig) -> tuple[list[float], float]:
    """(d) The lab's: torchvision dataset with ToTensor, DataLoader with 4 workers, d2l's loop."""
    dev, n_train = device(), train_images(cfg)
    dm, model, optimizer = build_plain(cfg, dev)
    full = dm.info.torchvision_class(str(dm.root), train=True, transform=transforms.ToTensor())
    # The data module's split of the same files, so that every variant sees the same images.
    train_idx, val_idx = split_indices(len(full), cfg.data.val_size, cfg.seed)

    def loader(indices, shuffle):
        subset = Subset(full, indices.tolist())
        return DataLoader(subset, cfg.data.batch_size, shuffle=shuffle, num_workers=LAB_WORKERS)

    train_iter, val_iter = loader(train_idx[:n_train], True), loader(val_idx, False)
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


class AutomaticStep(MLPClassifier):
    """mlp_lab's module under Lightning's automatic optimisation: Lightning's closure and hooks
    around each step instead of the module's own written-out step."""

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")


def run_automatic(cfg: TrainConfig, run_dir: Path) -> tuple[list[float], float]:
    """(e) (a), the whole run, with `AutomaticStep` in place of the module that `build` makes."""

    def automatic(cfg: TrainConfig):
        dm, module = build(cfg)
        module.__class__ = AutomaticStep  # the very module, seeded weights included
        module.automatic_optimization = True
        return dm, module

    fit.build = automatic  # in this variant's process alone
    return run_mlp_lab(cfg, run_dir)


RUNNERS = {"b": run_barebones, "c": run_plain_loop, "d": run_lab_pipeline}


def train_images(cfg: TrainConfig) -> int:
    """Images trained on per epoch: the whole training split, or `limit_train_batches` batches."""
    n = 60_000 - cfg.data.val_size  # both datasets have 60,000 training images
    limit = cfg.trainer.limit_train_batches
    return n if limit is None else min(n, limit * cfg.data.batch_size)


def max_rss_mb(who: int) -> float:
    """Peak resident memory in MB (ru_maxrss is in KiB on Linux)."""
    return round(resource.getrusage(who).ru_maxrss / 1024, 1)


def run_variant(variant: str, settings: dict, work_dir: Path) -> dict:
    """Time one variant at each batch size; its peak RSS and that of its worker processes."""
    # Every variant's process holds the same libraries (CUDA-enabled torch, torchvision, Lightning):
    # the RSS they take before any data is loaded is reported apart.
    import_rss = max_rss_mb(resource.RUSAGE_SELF)
    results = {}
    for bs in settings["batch_sizes"]:
        overrides = [f"data={settings['dataset']}", f"data.batch_size={bs}"]
        overrides += [f"trainer.max_epochs={settings['epochs']}"]
        overrides.append("trainer.enable_progress_bar=false")
        if settings["quick"]:
            overrides.append(f"trainer.limit_train_batches={max(1, QUICK_IMAGES // bs)}")
        if variant == "f":
            overrides.append("trainer=bf16")
        cfg = load_config(*overrides)
        if variant in "aef":
            # Beside --out, in the benchmark's temporary folder: the run's TensorBoard writer
            # still flushes when this process exits.
            run = run_automatic if variant == "e" else run_mlp_lab
            seconds, acc = run(cfg, work_dir / f"run_{bs}")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=list(VARIANTS))
    parser.add_argument(
        "settings", type=json.loads, help="JSON: dataset, batch_sizes, epochs and quick"
    )
    parser.add_argument("--out", type=Path, required=True, help="the variant's figures, as JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.write_text(json.dumps(run_variant(args.variant, args.settings, args.out.parent)))


if __name__ == "__main__":
    main()
