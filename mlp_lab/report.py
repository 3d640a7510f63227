"""The report that compares runs: one table and one figure per study.

    python -m mlp_lab.report outputs/studies/batch_norm/2026-11-28_17-06-41 [more dirs] [--out DIR]

A directory is a run (it holds `.hydra/`), a sweep (numbered runs beside `multirun.yaml`), or any
folder above them. Runs are grouped by sweep, variants by the overrides that differ between runs,
and seeds are averaged; each variant is compared with the best variant, seed by seed.
"""

from __future__ import annotations

import argparse
import logging
import re
import statistics
import sys
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import yaml
from matplotlib.figure import Figure
from scipy import stats

from mlp_lab import runs
from mlp_lab.cluster import machine
from mlp_lab.figures import save
from mlp_lab.loggers import LOGISTICS

log = logging.getLogger(__name__)

COLUMNS = (
    "variant",
    "seeds",
    "params",
    "best val acc",
    "best epoch",
    "test acc",
    "s/epoch",
    "total s",
)
# Overrides that change how a run is carried out or shown, not what it computes.
COSMETIC = ("experiment", "hparams_search", "hydra.", *LOGISTICS)


@dataclass
class Run:
    path: Path
    record: dict
    overrides: dict[str, str]


@dataclass
class Study:
    name: str
    path: Path
    runs: list[Run] = field(default_factory=list)
    skipped: dict[Path, str] = field(default_factory=dict)  # run directory: why


def find_studies(dirs: list[Path]) -> list[Study]:
    """Every run below the given directories, grouped by the sweep (or single run) it belongs to."""
    studies: dict[Path, Study] = {}
    for directory in dirs:
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory} is not a directory")
        for run_dir in runs.find_runs(directory):
            is_job = (run_dir.parent / "multirun.yaml").is_file()
            home = run_dir.parent if is_job else run_dir
            overrides = runs.overrides(run_dir)
            name = overrides.get("experiment") or home.name
            study = studies.setdefault(home, Study(name, home))
            try:
                record = runs.read_record(run_dir)
            except runs.RunError as err:
                study.skipped[run_dir] = str(err)
                continue
            if runs.status(record) is runs.Status.COMPLETED:
                study.runs.append(Run(run_dir, record, overrides))
            else:
                study.skipped[run_dir] = runs.describe(run_dir, record)
    if not studies:
        raise FileNotFoundError(
            f"no runs (directories with .hydra/) in {', '.join(map(str, dirs))}: "
            "give run or sweep directories, e.g. outputs/studies/<study>/<time>"
        )
    return sorted(studies.values(), key=lambda s: str(s.path))


def swept_keys(runs: list[Run]) -> list[str]:
    """Override keys whose value differs between runs, seeds and cosmetic settings excepted."""
    keys = {k for run in runs for k in run.overrides if k != "seed" and not k.startswith(COSMETIC)}
    keys = sorted(keys)
    return [k for k in keys if len({run.overrides.get(k) for run in runs}) > 1]


@dataclass
class Variant:
    label: str
    runs: list[Run]

    def values(self, key: str) -> list[float]:
        return [run.record[key] for run in self.runs]

    def mean_std(self, key: str) -> tuple[float, float]:
        values = self.values(key)
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    def by_seed(self, key: str) -> dict[str, float]:
        """Seed → value, averaged over the runs of that seed."""
        values: dict[str, list[float]] = defaultdict(list)
        for run in self.runs:
            values[seed_of(run)].append(run.record[key])
        return {s: statistics.fmean(v) for s, v in values.items()}

    def curve(self, key: str) -> list[float]:
        """Per-epoch mean over seeds, as long as the shortest run."""
        histories = [run.record["history"] for run in self.runs]
        length = min(len(h) for h in histories)
        return [statistics.fmean(h[i][key] for h in histories) for i in range(length)]


def seed_of(run: Run) -> str:
    """The run's seed: from its config, else its override; "default" for the config's default."""
    config = run.record.get("config")
    if isinstance(config, dict) and "seed" in config:
        return str(config["seed"])
    return run.overrides.get("seed", "default")


@dataclass
class Comparison:
    """A variant's value minus the best's: the mean difference and its 95 % t-interval."""

    mean: float
    low: float
    high: float
    paired_seeds: int  # 0: unpaired (Welch)

    def verdict(self) -> str:
        if self.low > 0:
            word = "better"
        elif self.high < 0:
            word = "worse"
        else:
            word = "no clear difference"
        how = f"paired, {self.paired_seeds} seeds" if self.paired_seeds else "unpaired, Welch"
        return f"{word} ({how})"

    def interval(self) -> str:
        return f"{self.mean:.4f} [{self.low:.4f}, {self.high:.4f}]"


def compare(variant: Variant, best: Variant, key: str = "best_val_acc") -> Comparison | None:
    """`variant` − `best` on `key`, paired by seed where they share two or more seeds, else
    Welch's unpaired interval; None with one run on either side, whose noise cannot be told."""
    mine, theirs = variant.by_seed(key), best.by_seed(key)
    shared = sorted(mine.keys() & theirs.keys())
    with warnings.catch_warnings():
        # Equal differences on every seed give a zero-width interval, as they should; SciPy
        # warns of precision loss there.
        warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
        # A seed fixes the split, the initial weights and the batch order, so runs of one seed
        # differ only by the variant: their differences cancel the seed-to-seed spread.
        if len(shared) >= 2:
            a, b = [mine[s] for s in shared], [theirs[s] for s in shared]
            result, paired_seeds = stats.ttest_rel(a, b), len(shared)
        elif len(variant.runs) >= 2 and len(best.runs) >= 2:
            a, b = variant.values(key), best.values(key)
            result, paired_seeds = stats.ttest_ind(a, b, equal_var=False), 0
        else:
            return None
    low, high = result.confidence_interval(0.95)
    mean = statistics.fmean(a) - statistics.fmean(b)
    return Comparison(mean, float(low), float(high), paired_seeds)


def _short(value: str) -> str:
    """A number as a legend shows it (0.0123, not 0.012345678901); anything else as it is."""
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:.4g}" if any(c in value for c in ".eE") else value


def variants(study: Study) -> list[Variant]:
    keys = swept_keys(study.runs)
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in study.runs:
        label = ", ".join(f"{k}={_short(run.overrides.get(k, '-'))}" for k in keys) or "all runs"
        groups[label].append(run)
    return [Variant(label, runs) for label, runs in groups.items()]


def _fmt(variant: Variant, key: str, digits: int = 4) -> str:
    mean, std = variant.mean_std(key)
    return (
        f"{mean:.{digits}f} ± {std:.{digits}f}" if len(variant.runs) > 1 else f"{mean:.{digits}f}"
    )


def study_table(study: Study) -> str:
    groups = variants(study)
    best = max(groups, key=lambda v: v.mean_std("best_val_acc")[0])
    header = (*COLUMNS, "Δ val acc vs best [95 % CI]", "vs best")
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for v in groups:
        comparison = compare(v, best) if v is not best else None
        difference = comparison.interval() if comparison else "-"
        if len(groups) == 1:
            verdict = "-"
        elif v is best:
            verdict = "best"
        elif comparison is None:
            verdict = "one seed: noise unknown"
        else:
            verdict = comparison.verdict()
        epochs = "/".join(str(e) for e in v.values("best_epoch"))
        lines.append(
            f"| {v.label} | {len(v.runs)} | {v.runs[0].record['params']:,} | "
            f"{_fmt(v, 'best_val_acc')} | {epochs} | {_fmt(v, 'test_acc')} | "
            f"{_fmt(v, 'mean_epoch_time_s', 2)} | {_fmt(v, 'wall_time_s', 1)} | "
            f"{difference} | {verdict} |"
        )
    return "\n".join(lines)


def plot_study(study: Study, path: Path | None = None):
    """Validation accuracy and training loss per epoch of each variant (mean over seeds)."""
    groups = variants(study)
    # One legend below both plots, one line per variant: a search's labels are long.
    fig = Figure(figsize=(11, 4 + 0.2 * len(groups)), layout="constrained")
    ax_acc, ax_loss = fig.subplots(1, 2)
    for v in groups:
        for ax, key in ((ax_acc, "val_acc"), (ax_loss, "train_loss")):
            curve = v.curve(key)
            ax.plot(range(1, len(curve) + 1), curve, "o-", ms=2, label=v.label)
    ax_acc.set_ylabel("validation accuracy")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_yscale("log")
    for ax in (ax_acc, ax_loss):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.legend(*ax_acc.get_legend_handles_labels(), loc="outside lower center", fontsize=7)
    # A sweep's folder is named by its time: say what it varied instead.
    unnamed = re.fullmatch(r"\d{4}-\d{2}-\d{2}_[\d_-]+", study.name)
    keys = ", ".join(swept_keys(study.runs)) or "one setting"
    fig.suptitle(f"sweep over {keys} ({study.name})" if unnamed else study.name)
    return save(fig, path)


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


def write_report(dirs: list[Path], out: Path) -> Path:
    """Write report.md and one figure per study into `out`; return the report's path."""
    studies = find_studies(dirs)
    out.mkdir(parents=True, exist_ok=True)
    n_runs = sum(len(s.runs) for s in studies)
    lines = [
        "# mlp_lab report",
        "",
        f"{n_runs} run{'s' * (n_runs != 1)} in {len(studies)} "
        f"stud{'ies' if len(studies) != 1 else 'y'}, {date.today()}, on {machine()}. "
        "Test accuracy is the checkpoint with the best validation accuracy; with several seeds, "
        "mean ± std. Each variant is compared with the best on best val accuracy, seed by seed "
        "where both have the seed: the mean difference and its 95 % t-interval, *better* or "
        "*worse* when the interval excludes 0, else *no clear difference*; unpaired (Welch) "
        "where they share fewer than two seeds.",
    ]
    for study in studies:
        lines += ["", f"## {study.name}", "", f"`{study.path}`", ""]
        if study.runs:
            figure = f"{study.name}.png"
            plot_study(study, out / figure)
            lines += [study_table(study), "", f"![{study.name}]({figure})"]
            depths = complexity(study)
            if depths:
                figure = f"{study.name}_error_vs_size.png"
                plot_complexity(study.name, depths, out / figure)
                lines += ["", interpolation_line(depths), "", f"![error against size]({figure})"]
        figures = search_figures(study.path, out)
        if figures:
            lines += ["", "The search (Optuna): history, importances, val/acc per epoch", ""]
            lines += [f"![{name}]({name})" for name in figures]
        if study.skipped:
            lines += ["", "Not in the table (failed, interrupted or unfinished):"]
            lines += [f"- `{path}`: {why}" for path, why in study.skipped.items()]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def search_figures(sweep_dir: Path, out: Path) -> list[str]:
    """The search's optimisation history, parameter importances and per-epoch values as PNGs in
    `out`; none when `sweep_dir` is no search's."""
    if not (sweep_dir / runs.SEARCH_RECORD).is_file():
        return []
    # Optuna, and pyplot which its figures use, only for a report on a search.
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as plots

    from mlp_lab.search import open_storage

    record = yaml.safe_load((sweep_dir / runs.SEARCH_RECORD).read_text())
    study = optuna.load_study(
        study_name=record["study_name"], storage=open_storage(record["storage"])
    )
    names = []
    # Optuna's plots ask for a font Debian's matplotlib lacks, and matplotlib says so each time.
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, plot in (
            ("history", plots.plot_optimization_history),
            ("importances", plots.plot_param_importances),
            ("epochs", plots.plot_intermediate_values),
        ):
            try:
                axes = plot(study)
            except (ValueError, RuntimeError) as err:  # too few finished trials for this one
                log.info("no %s figure for %s: %s", name, sweep_dir, err)
                continue
            path = out / f"{sweep_dir.name}_{name}.png"
            axes.figure.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(axes.figure)
            names.append(path.name)
    return names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("dirs", nargs="+", type=Path, help="run, sweep or parent directories")
    parser.add_argument(
        "--out", type=Path, help="where report.md goes (default: the first directory)"
    )
    args = parser.parse_args(argv)
    try:
        report = write_report(args.dirs, args.out or args.dirs[0])
    except FileNotFoundError as err:
        sys.exit(f"error: {err}")
    print(report)


if __name__ == "__main__":
    main()
