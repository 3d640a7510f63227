"""Two labs of the same studies and seeds (float32 and bf16, say), compared run by run.

python -m mlp_lab.lab --seeds 0,1,2 --precision 32 --out outputs/lab-32
python -m mlp_lab.lab --seeds 0,1,2 --precision bf16 --out outputs/lab-bf16
python -m benchmarks.precision_pairs outputs/lab-32 outputs/lab-bf16

Prints the paired difference in test accuracy (second − first) with its 95 % t-interval, the largest
one, the median ratio of epoch times, and each lab's wall time; docs/performance.md quotes them.
"""

import math
import statistics
import sys
from pathlib import Path

from scipy import stats

from mlp_lab import directories, runs


def wall(lab: Path) -> float:
    attempts = [a for d in directories.find_runs(lab) for a in runs.read_record(d)["attempts"]]
    return max(map(runs.attempt_end, attempts)) - min(a["started"] for a in attempts)


def median_epoch(record: dict) -> float:
    return statistics.median(e["epoch_time_s"] for e in record["history"])


def main() -> None:
    first, second = map(Path, sys.argv[1:3])
    pairs = []
    for run in directories.find_runs(first):
        a, b = runs.read_record(run), runs.read_record(second / run.relative_to(first))
        if "same_as" not in a:  # a shared run counts once
            pairs.append((a, b))
    diffs = [b["test_acc"] - a["test_acc"] for a, b in pairs]
    n, mean = len(diffs), statistics.fmean(diffs)
    half = stats.t.ppf(0.975, n - 1) * statistics.stdev(diffs) / math.sqrt(n)
    speed = statistics.median(median_epoch(a) / median_epoch(b) for a, b in pairs)
    print(
        f"{n} runs paired: test accuracy {second.name} − {first.name} {mean:+.4f} "
        f"[{mean - half:+.4f}, {mean + half:+.4f}], largest |difference| {max(map(abs, diffs)):.4f}"
    )
    print(f"median epoch time {first.name} / {second.name}: {speed:.2f}×")
    print(f"wall time: {first.name} {wall(first):.0f} s, {second.name} {wall(second):.0f} s")


if __name__ == "__main__":
    main()
