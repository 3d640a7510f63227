"""What pruning and parallel workers buy a search: the same search four ways, side by side.

python -m benchmarks.search_speed               # 24 trials of up to 10 epochs on Fashion-MNIST
python -m benchmarks.search_speed --quick       # a smoke run: 4 trials, 2 epochs of 20 batches

(1) no pruning, 1 worker of 2 threads; (2) the default pruning (successive halving), 1 worker of 2
threads; (3) the same pruning, 2 workers of 1 thread. Each search is its own study with the same
seeded sampler; the table gives wall time, epochs trained, the best val accuracy, and each worker's
busy fraction.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

# fit, imported once here, brings torch and Lightning to every forked search.
from mlp_lab import directories, fit, runs, train  # noqa: F401
from mlp_lab.datasets import PROJECT_DIR

SEARCHES = {
    "1": ("no pruning, 1 worker x 2 threads", ["hydra.sweeper.pruner.name=none", "num_threads=2"]),
    "2": ("halving, 1 worker x 2 threads", ["num_threads=2"]),
    "3": ("halving, 2 workers x 1 thread", ["hydra.sweeper.n_jobs=2"]),
}


def search(argv: list[str], output: Path) -> None:
    """In a forked process: `python -m mlp_lab.train argv`, its output into the file `output`."""
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.argv = ["mlp_lab.train", *argv]
    train.main()


def run_search(key: str, args, work: Path) -> dict:
    """One search in a process of its own, forked from this one, which has imported torch and
    Lightning already: the wall time is the search's. Its figures from the trials' records."""
    sweep = work / f"search{key}"
    command = ["hparams_search=optuna"]
    command += [f"hydra.sweeper.storage=sqlite:///{work}/search{key}.db"]
    command += [f"hydra.sweep.dir={sweep}", f"hydra.sweeper.n_trials={args.trials}"]
    command += ["hydra.sweeper.sampler.seed=0", f"trainer.max_epochs={args.epochs}"]
    command += ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
    command += [f"data={args.dataset}", *SEARCHES[key][1]]
    if args.quick:
        command += ["trainer.limit_train_batches=20"]
    output = work / f"search{key}.log"
    process = multiprocessing.get_context("fork").Process(target=search, args=(command, output))
    start = time.time()
    process.start()
    process.join()
    end = time.time()
    wall = end - start
    if process.exitcode != 0:
        raise SystemExit(f"search ({key}) failed:\n{output.read_text()[-4000:]}")
    records = [runs.read_record(run) for run in directories.find_runs(sweep)]
    failed = [r for r in records if not runs.status(r).ended]
    if failed:
        raise SystemExit(f"search ({key}): a trial {failed[0]['status']}: {failed[0].get('error')}")
    # A worker is busy while one of its trials runs; after its last one it has nothing to claim.
    busy, last_end = defaultdict(float), defaultdict(float)
    for record in records:
        part = record["attempts"][-1]
        seconds = runs.attempt_times(part)[0]
        busy[part["pid"]] += seconds
        last_end[part["pid"]] = max(last_end[part["pid"]], part["started"] + seconds)
    return {
        "label": SEARCHES[key][0],
        "wall_s": round(wall, 1),
        "trials": len(records),
        "pruned": sum(runs.status(r) is runs.Status.PRUNED for r in records),
        "epochs": sum(len(r["history"]) for r in records),
        "best_val_acc": max(r["best_val_acc"] for r in records),
        "busy": [round(seconds / wall, 3) for seconds in busy.values()],
        "done_before_end_s": [round(end - last_end[pid], 1) for pid in busy],
    }


def table(results: dict) -> str:
    columns = ["search", "wall s", "trials (pruned)", "epochs", "best val acc", "busy per worker"]
    columns.append("worker done before the end, s")
    rows = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for key, r in results.items():
        busy = ", ".join(f"{b:.0%}" for b in r["busy"])
        early = ", ".join(f"{s:.1f}" for s in r["done_before_end_s"])
        rows.append(
            f"| ({key}) {r['label']} | {r['wall_s']:.1f} | {r['trials']} ({r['pruned']}) | "
            f"{r['epochs']} | {r['best_val_acc']:.4f} | {busy} | {early} |"
        )
    a, b, c = (results[k] for k in "123")
    lines = [
        f"pruning: {b['epochs'] / a['epochs']:.0%} of the epochs, {b['wall_s'] / a['wall_s']:.0%} "
        f"of the wall time, best val acc {b['best_val_acc'] - a['best_val_acc']:+.4f}",
        f"2 workers x 1 thread against 1 x 2: {b['wall_s'] / c['wall_s']:.2f}x as fast",
    ]
    return "\n".join(rows + [""] + lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "mnist"])
    parser.add_argument("--out", type=Path, default=PROJECT_DIR / "benchmarks/search.json")
    parser.add_argument("--quick", action="store_true", help="4 trials of 2 epochs, 20 batches")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.epochs = 4, 2
    with tempfile.TemporaryDirectory() as tmp:
        results = {key: run_search(key, args, Path(tmp)) for key in SEARCHES}
    text = table(results)
    summary = {"trials": args.trials, "epochs": args.epochs, "searches": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(
        f"`python -m benchmarks.search_speed {' '.join(sys.argv[1:])}`\n\n{text}"
    )
    print(text, end="")


if __name__ == "__main__":
    main()
