"""Seconds per epoch of mlp_lab beside a bare PyTorch loop and the lab's own DataLoader pipeline.

python -m benchmarks.epoch_speed            # or `make bench`: batch 256 and 1024, 4 epochs each
python -m benchmarks.epoch_speed --quick    # a smoke run: 2 epochs of 2,048 images

The table goes to the terminal and to benchmarks/results.md, the figures to benchmarks/results.json;
each variant runs in a process of its own (benchmarks/variants.py).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import itertools
import json
import logging
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from benchmarks.variants import LAB_WORKERS, QUICK_IMAGES, VARIANTS, device, sync
from mlp_lab import cluster
from mlp_lab.datasets import PROJECT_DIR

log = logging.getLogger(__name__)

SQUARE = {"cpu": 2048, "cuda": 8192}  # side of the big square matmul in the peak measurement


def epoch_flops(widths: list[int], n_train: int, n_eval: int) -> int:
    """FLOPs of one epoch: train on `n_train` images (forward + backward), evaluate `n_eval`."""
    # A Linear layer in→out costs 2·in·out FLOPs per image forward (a multiply and an add per
    # weight; bias, ReLU and loss are negligible); backward counts as twice the forward (input and
    # weight gradients), as in the "97 GFLOP per 60,000 images". The first layer needs no
    # input gradient, so the arithmetic training really does is a quarter lower than counted.
    forward = sum(2 * a * b for a, b in itertools.pairwise(widths))
    return 3 * forward * n_train + forward * n_eval


def bf16_fast(dev: torch.device) -> bool:
    """Whether bf16 runs faster than float32 here: a GPU, or a CPU with bf16 instructions."""
    return dev.type == "cuda" or bool(cluster.cpu_bf16())


def matmul_peak(
    dev: torch.device, dtype: torch.dtype = torch.float32, reps: int = 3, inner: int = 5
) -> dict[str, float]:
    """Best `torch.mm` GFLOP/s in `dtype` for this MLP's shapes at batch 1024 and a big square."""
    n = SQUARE[dev.type]
    shapes = {
        "1024x784 @ 784x256": (1024, 784, 256),  # first layer, forward
        "784x1024 @ 1024x256": (784, 1024, 256),  # first layer, weight gradient
        "1024x256 @ 256x256": (1024, 256, 256),  # second layer
        f"{n}x{n} @ {n}x{n}": (n, n, n),
    }
    peak = {}
    for name, (m, k, p) in shapes.items():
        a, b = (torch.randn(*shape, device=dev, dtype=dtype) for shape in ((m, k), (k, p)))
        torch.mm(a, b)  # warm-up: thread pool, cuBLAS handle
        best = math.inf
        for _ in range(reps):
            sync()
            start = time.perf_counter()
            for _ in range(inner):
                torch.mm(a, b)
            sync()
            best = min(best, (time.perf_counter() - start) / inner)
        peak[name] = round(2 * m * k * p / best / 1e9, 1)
    return peak


def spawn(variant: str, settings: dict) -> dict:
    """Run one variant in a fresh interpreter, so that its peak RSS is its own."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, "-m", "benchmarks.variants", variant, json.dumps(settings)]
        command += ["--out", str(out)]
        done = subprocess.run(command, cwd=PROJECT_DIR, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"variant ({variant}) failed:\n{done.stderr[-4000:]}")
        return json.loads(out.read_text())


def machine() -> dict:
    """The commit measured and the machine it ran on."""
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if "model name" in line), None)
    git = ["git", "describe", "--always", "--dirty", "--abbrev=40"]
    commit = subprocess.run(git, cwd=PROJECT_DIR, capture_output=True, text=True).stdout.strip()
    return {
        "commit": commit or None,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "lightning": importlib.metadata.version("lightning"),
        "threads": torch.get_num_threads(),
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "load_average": os.getloadavg()[0],  # at the end; above ~0.5, others shared the cores
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }


def summarise(args, variants: dict, peak: dict, bf16_peak: dict | None) -> dict:
    """Median s/epoch of the epochs after the first, throughput, FLOP rate, the epoch's distance
    from the floor (its arithmetic at the matmul peak of its precision), and the ratios."""
    best = max(peak.values())
    for key, v in variants.items():
        top = max(bf16_peak.values()) if key == "f" else best
        for r in v["batch_sizes"].values():
            s = statistics.median(r["epoch_s"][1:] or r["epoch_s"])
            flops = epoch_flops(v["widths"], r["train_images"], r["val_images"])
            r["s_per_epoch"], r["images_per_s"] = round(s, 4), round(r["train_images"] / s)
            r["gflops"], r["peak_fraction"] = (
                round(flops / s / 1e9, 2),
                round(flops / s / 1e9 / top, 4),
            )
            r["floor_s"] = round(flops / top / 1e9, 4)
    ratios = {}
    for bs in map(str, args.batch_sizes):
        a, c, d, e = (variants[k]["batch_sizes"][bs]["s_per_epoch"] for k in "acde")
        ratios[bs] = {"a_over_c": round(a / c, 3), "d_over_a": round(d / a, 3)}
        ratios[bs]["e_over_a"] = round(e / a, 3)  # Lightning's automatic step against ours
        if "f" in variants:
            ratios[bs]["a_over_f"] = round(a / variants["f"]["batch_sizes"][bs]["s_per_epoch"], 3)
    return {
        **machine(),
        "command": shlex.join(["python", "-m", "benchmarks.epoch_speed", *sys.argv[1:]]),
        "dataset": args.dataset,
        "epochs": args.epochs,
        "quick": args.quick,
        "matmul_peak_gflops": {**peak, "max": best},
        "bf16_matmul_peak_gflops": {**bf16_peak, "max": max(bf16_peak.values())}
        if bf16_peak
        else None,
        "variants": {k: {"label": VARIANTS[k], **v} for k, v in variants.items()},
        "ratios": ratios,
    }


def table(summary: dict) -> str:
    """The command and machine, then the figures as a Markdown table, the peak and the ratios."""
    head = (
        "`{command}` at commit `{commit}`, {date}.\n"
        "Machine: {cpu}, {cpu_cores} cores ({threads} torch threads), device {device}; "
        "torch {torch}, Lightning {lightning}; load average {load_average:.2f} at the end.\n\n"
    ).format(**summary)
    columns = ["variant", "batch", "s/epoch", "images/s", "GFLOP/s", "of peak", "× floor"]
    columns.append("val acc")
    columns.append("max RSS MB (imports)")
    rows = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for key, v in summary["variants"].items():
        rss = f"{v['rss_mb']:.0f} ({v['import_rss_mb']:.0f})"
        if key == "d":
            rss += f" + {LAB_WORKERS} workers of ≤ {v['worker_rss_mb']:.0f} each"
        for bs, r in v["batch_sizes"].items():
            rows.append(
                f"| ({key}) {v['label']} | {bs} | {r['s_per_epoch']:.3f} | {r['images_per_s']:,} "
                f"| {r['gflops']:.1f} | {r['peak_fraction']:.0%} "
                f"| {r['s_per_epoch'] / r['floor_s']:.1f} | {r['val_acc']:.4f} | {rss} |"
            )
    peak = summary["matmul_peak_gflops"]["max"]
    lines = [f"float32 matmul peak: {peak:.0f} GFLOP/s ({summary['device']})"]
    if summary["bf16_matmul_peak_gflops"]:
        lines.append(f"bf16 matmul peak: {summary['bf16_matmul_peak_gflops']['max']:.0f} GFLOP/s")
    else:
        lines.append(f"bf16: not timed, {summary['bf16_skipped']}")
    lines.append("× floor: s/epoch ÷ the epoch's arithmetic at its precision's matmul peak")
    for bs, r in summary["ratios"].items():
        f = f", (a)/(f) = {r['a_over_f']:.2f}" if "a_over_f" in r else ""
        lines.append(
            f"batch {bs}: (a)/(c) = {r['a_over_c']:.2f}, (d)/(a) = {r['d_over_a']:.2f}, "
            f"(e)/(a) = {r['e_over_a']:.2f}{f}"
        )
    return head + "\n".join(rows + [""] + lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--epochs", type=int, default=4, help="per variant; the first is a warm-up")
    parser.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "mnist"])
    parser.add_argument("--out", type=Path, default=PROJECT_DIR / "benchmarks/results.json")
    parser.add_argument("--quick", action="store_true", help=f"2 epochs of {QUICK_IMAGES} images")
    args = parser.parse_args()
    if args.quick:
        args.epochs = min(args.epochs, 2)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = {k: getattr(args, k) for k in ("dataset", "batch_sizes", "epochs", "quick")}

    if (load := os.getloadavg()[0]) > 0.5:
        log.warning("load average %.1f: other processes share the cores, timings will suffer", load)
    dev = device()
    peak = matmul_peak(dev)
    log.info("float32 matmul GFLOP/s: %s", peak)
    bf16_peak = matmul_peak(dev, torch.bfloat16) if bf16_fast(dev) else None
    skipped = None if bf16_peak else f"{cluster.bf16_slower('cpu')} (trainer=bf16 is refused)"
    log.info("bf16 matmul GFLOP/s: %s", bf16_peak or skipped)
    variants = {}
    for key, label in VARIANTS.items():
        if key == "f" and not bf16_peak:
            continue
        log.info("(%s) %s ...", key, label)
        variants[key] = spawn(key, settings)
    summary = summarise(args, variants, peak, bf16_peak) | {"bf16_skipped": skipped}
    report = args.out.with_suffix(".md")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    text = table(summary)
    report.write_text(text)
    print(text, end="")
    print(f"written to {args.out} and {report}")


if __name__ == "__main__":
    main()
