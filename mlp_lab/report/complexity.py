"""The lab's question 1: error against model size, per depth."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import yaml
from matplotlib.figure import Figure

from mlp_lab.figures import save
from mlp_lab.report.studies import Study, swept_keys, variants

# Training error at or below this counts as fitting the training labels (noisy ones included).
INTERPOLATED = 0.01
ERRORS = {  # what the complexity figure plots: a run's record → an error
    "final training error": lambda r: 1 - r["history"][-1]["train_acc"],
    # At the last epoch, without the early stopping that the best-val checkpoint amounts to:
    # where noisy labels show the double-descent peak.
    "final validation error": lambda r: 1 - r["history"][-1]["val_acc"],
    "best validation error": lambda r: 1 - r["best_val_acc"],
    "test error": lambda r: 1 - r["test_acc"],  # of the best-val checkpoint
}


@dataclass
class Size:
    params: int
    errors: dict[str, tuple[float, float]]  # ERRORS key: (mean, std) over seeds


def complexity(study: Study) -> dict[int, list[Size]] | None:
    """Per depth, errors by parameter count, for a study whose runs differ only in model.hidden."""
    if swept_keys(study.runs) != ["model.hidden"]:
        return None
    depths: dict[int, list[Size]] = defaultdict(list)
    for v in variants(study):
        depth = len(yaml.safe_load(v.runs[0].overrides["model.hidden"]))
        errors = {}
        for name, error in ERRORS.items():
            values = [error(run.record) for run in v.runs]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            errors[name] = (statistics.fmean(values), std)
        depths[depth].append(Size(v.runs[0].record["params"], errors))
    return {d: sorted(sizes, key=lambda s: s.params) for d, sizes in sorted(depths.items())}


def interpolation_point(sizes: list[Size]) -> int | None:
    """The fewest parameters whose mean final training error is INTERPOLATED or less."""
    fits = [s.params for s in sizes if s.errors["final training error"][0] <= INTERPOLATED]
    return min(fits, default=None)


def interpolation_line(depths: dict[int, list[Size]]) -> str:
    """Where each depth first fits its training labels, in one sentence."""
    points = []
    for depth, sizes in depths.items():
        point = interpolation_point(sizes)
        where = f"{point:,} parameters" if point else "not within these sizes"
        points.append(f"{depth} hidden layer{'s' * (depth > 1)}: {where}")
    return f"Training error first at or below {INTERPOLATED:g} (the interpolation point): " + (
        "; ".join(points) + "."
    )


def plot_complexity(name: str, depths: dict[int, list[Size]], path: Path | None = None):
    """Training, validation and test error against parameters, a line per depth."""
    fig = Figure(figsize=(16, 4), layout="constrained")
    axes = fig.subplots(1, len(ERRORS))
    for depth, sizes in depths.items():
        params = [s.params for s in sizes]
        point = interpolation_point(sizes)
        for ax, key in zip(axes, ERRORS, strict=True):
            mean = [s.errors[key][0] for s in sizes]
            std = [s.errors[key][1] for s in sizes]
            label = f"{depth} hidden layer{'s' * (depth > 1)}"
            (line,) = ax.plot(params, mean, "o-", ms=3, label=label)
            low = [m - d for m, d in zip(mean, std, strict=True)]
            high = [m + d for m, d in zip(mean, std, strict=True)]
            ax.fill_between(params, low, high, color=line.get_color(), alpha=0.2)
            if point is not None:
                ax.axvline(point, color=line.get_color(), ls="--", lw=1)
    for ax, key in zip(axes, ERRORS, strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("error (mean ± std over seeds)")
    axes[0].legend(title=f"dashed: training error ≤ {INTERPOLATED:g}", fontsize=8)
    fig.suptitle(f"{name}: error against model size")
    return save(fig, path)
