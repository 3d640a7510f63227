"""The runs below some folders as studies of variants, and the variants compared seed by seed.

A directory is a run (it holds `.hydra/`), a sweep (numbered runs beside `multirun.yaml`), or any
folder above them. Runs are grouped by sweep, variants by the overrides that differ between runs.
"""

from __future__ import annotations

import statistics
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from scipy import stats

from mlp_lab import runs
from mlp_lab.loggers import LOGISTICS

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
    # The study's question and the lab's finding (the config's `study`), from any of its records.
    words: dict = field(default_factory=dict)


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
            study.words = study.words or record.get("config", {}).get("study") or {}
            if runs.status(record) is runs.Status.COMPLETED:
                study.runs.append(Run(run_dir, record, overrides))
            else:
                study.skipped[run_dir] = runs.describe(run_dir, record)
    if not studies:
        raise FileNotFoundError(
            f"no runs (directories with .hydra/) in {', '.join(map(str, dirs))}: "
            "give run or sweep directories, e.g. outputs/studies/<study>/<time>"
        )
    # The lab's order where the study's config gives it, then the others by folder.
    return sorted(studies.values(), key=lambda s: (s.words.get("order") or 99, str(s.path)))


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
        return [value_of(run, key) for run in self.runs]

    def mean_std(self, key: str) -> tuple[float, float]:
        values = self.values(key)
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    def by_seed(self, key: str) -> dict[str, float]:
        """Seed → value, averaged over the runs of that seed."""
        values: dict[str, list[float]] = defaultdict(list)
        for run in self.runs:
            values[seed_of(run)].append(value_of(run, key))
        return {s: statistics.fmean(v) for s, v in values.items()}

    def curves(self, key: str) -> list[list[float]]:
        """Each run's per-epoch `key` (val_loss, ...), all as long as the shortest."""
        histories = [run.record["history"] for run in self.runs]
        length = min(len(h) for h in histories)
        return [[epoch[key] for epoch in h[:length]] for h in histories]

    def curve(self, key: str) -> list[float]:
        """Per-epoch mean over seeds, as long as the shortest run."""
        return [statistics.fmean(values) for values in zip(*self.curves(key), strict=True)]


def value_of(run: Run, key: str) -> float:
    """A number of the run's record (test_acc), or of its last epoch (last_train_acc)."""
    if key.startswith("last_"):
        return run.record["history"][-1][key.removeprefix("last_")]
    return run.record[key]


def seed_of(run: Run) -> str:
    """The run's seed: from its config, else its override; "default" for the config's default."""
    config = run.record.get("config")
    if isinstance(config, dict) and "seed" in config:
        return str(config["seed"])
    return run.overrides.get("seed", "default")


# Two seeds estimate the spread of the differences from one degree of freedom: t(1) makes the
# interval 12.7 spreads wide, or zero wide when the two differences happen to agree.
MIN_SEEDS = 3


@dataclass
class Comparison:
    """A variant's value minus another's: the mean difference, its 95 % t-interval, and the spread
    (sample std) of the per-seed differences where paired."""

    mean: float
    low: float
    high: float
    paired_seeds: int  # 0: unpaired (Welch)
    spread: float | None = None

    @property
    def direction(self) -> str:
        if self.paired_seeds and self.paired_seeds < MIN_SEEDS:
            return "too few seeds"
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "no clear difference"

    def verdict(self) -> str:
        how = f"paired, {self.paired_seeds} seeds" if self.paired_seeds else "unpaired, Welch"
        return f"{self.direction} ({how})"

    def interval(self, sign: int = 1) -> str:
        """ "mean [low, high]"; sign -1: the other way round (best − variant)."""
        ends = sorted((sign * self.low, sign * self.high))
        return f"{sign * self.mean:+.4f} [{ends[0]:+.4f}, {ends[1]:+.4f}]"

    def seeds_needed(self, power: float = 0.8) -> int | None:
        """The seeds at which a paired t-test (two-sided, 5 %) finds a true difference the size
        of this one in `power` of studies; None where the spread is unknown, the difference 0,
        or more than 1,000 seeds would be needed."""
        if not self.mean or self.spread is None:
            return None
        if not self.spread:
            return MIN_SEEDS
        effect = abs(self.mean) / self.spread
        for n in range(2, 1001):
            critical, shift = stats.t.ppf(0.975, n - 1), effect * n**0.5
            found = stats.nct.sf(critical, n - 1, shift) + stats.nct.cdf(-critical, n - 1, shift)
            if found >= power:
                return max(n, MIN_SEEDS)
        return None


def compare(variant: Variant, best: Variant, key: str = "best_val_acc") -> Comparison | None:
    """`variant` − `best` on `key`."""
    mine, theirs = variant.by_seed(key), best.by_seed(key)
    return compare_values(mine, theirs, variant.values(key), best.values(key))


def compare_values(
    mine: dict[str, float], theirs: dict[str, float], all_mine: list, all_theirs: list
) -> Comparison | None:
    """`mine` − `theirs` (seed → value), paired by seed where they share two or more seeds, else
    Welch's unpaired interval over all their runs' values; None with one run on either side,
    whose noise cannot be told."""
    shared = sorted(mine.keys() & theirs.keys())
    spread = None
    with warnings.catch_warnings():
        # Equal differences on every seed give a zero-width interval, as they should; SciPy
        # warns of precision loss there.
        warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
        # A seed fixes the split, the initial weights and the batch order, so runs of one seed
        # differ only by the variant: their differences cancel the seed-to-seed spread.
        if len(shared) >= 2:
            a, b = [mine[s] for s in shared], [theirs[s] for s in shared]
            result, paired_seeds = stats.ttest_rel(a, b), len(shared)
            spread = statistics.stdev(x - y for x, y in zip(a, b, strict=True))
        elif len(all_mine) >= 2 and len(all_theirs) >= 2:
            a, b = all_mine, all_theirs
            result, paired_seeds = stats.ttest_ind(a, b, equal_var=False), 0
        else:
            return None
    low, high = result.confidence_interval(0.95)
    mean = statistics.fmean(a) - statistics.fmean(b)
    return Comparison(mean, float(low), float(high), paired_seeds, spread)


def label_value(value: str) -> str:
    """An override's value as a label shows it: a number short (0.0123, not 0.012345678901), a
    bool as the command line writes it (true: a sweep's overrides say True), else as it is."""
    if value in ("True", "False"):
        return value.lower()
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:.4g}" if any(c in value for c in ".eE") else value


def variants(study: Study) -> list[Variant]:
    keys = swept_keys(study.runs)
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in study.runs:
        label = (
            ", ".join(f"{k}={label_value(run.overrides.get(k, '-'))}" for k in keys) or "all runs"
        )
        groups[label].append(run)
    return [Variant(label, runs) for label, runs in groups.items()]
