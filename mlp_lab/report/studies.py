"""The runs below some folders as studies of variants, compared seed by seed."""

from __future__ import annotations

import functools
import math
import statistics
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from mlp_lab import directories, runs
from mlp_lab.loggers import is_logistics

# Overrides that choose or carry out a sweep besides its settings' logistics: none changes a run.
COSMETIC = ("experiment", "hparams_search", "hydra")


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
        for run_dir in directories.find_runs(directory):
            is_job = (run_dir.parent / "multirun.yaml").is_file()
            home = run_dir.parent if is_job else run_dir
            overrides = directories.overrides(run_dir)
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
    keys = {
        k
        for run in runs
        for k in run.overrides
        if k != "seed" and k.split(".")[0] not in COSMETIC and not is_logistics(k)
    }
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


# Both datasets: 28×28 images in 60,000 training (the validation split taken from them) and 10
# classes.
PIXELS, CLASSES, OFFICIAL_TRAIN = 784, 10, 60_000


def epoch_flops(run: Run) -> float | None:
    """FLOPs of one epoch: 2 per multiply-add, 3 passes over training, 1 over validation."""
    config = run.record.get("config") or {}
    if not {"model", "data", "trainer"} <= config.keys():
        return None
    data, trainer = config["data"], config["trainer"]
    widths = [PIXELS, *config["model"]["hidden"], CLASSES]
    macs = sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))
    # The images each split held (recorded since 2026-12-07), else the official split's.
    images = run.record.get("images") or {}
    train = images.get("train") or data.get("train_size") or OFFICIAL_TRAIN - data["val_size"]
    train = _limited(train, trainer.get("limit_train_batches"), data["batch_size"])
    val = images.get("val") or data["val_size"]
    val = _limited(val, trainer.get("limit_val_batches"), data["eval_batch_size"])
    return 2 * macs * (3 * train + val)


def _limited(images: int, limit: float | int | None, batch: int) -> float:
    """The images an epoch sees under limit_*_batches (int: batches; float: a fraction)."""
    if limit is None:
        return images
    return images * limit if isinstance(limit, float) else min(images, limit * batch)


def seed_of(run: Run) -> str:
    """The run's seed: from its config, else its override; "default" for the config's default."""
    config = run.record.get("config")
    if isinstance(config, dict) and "seed" in config:
        return str(config["seed"])
    return run.overrides.get("seed", "default")


# Two seeds estimate the spread of the differences from one degree of freedom: t(1) makes the
# interval 12.7 spreads wide, or zero wide when the two differences happen to agree.
MIN_SEEDS = 3
# What every verdict is judged on, as the original lab measured: each run's test accuracy, taken
# once on its best-validation checkpoint (validation only chooses the checkpoint).
MEASURE = "test_acc"
MEASURE_NAME = "test accuracy"
# A change of this much in any one run's accuracy (10 of 10,000 test images) must not change a
# firm word: a word that it could change is borderline.
NOISE = 0.001


@dataclass
class Comparison:
    """A variant's value minus another's: mean, 95 % t-interval and per-seed spread."""

    mean: float
    low: float
    high: float
    paired_seeds: int  # 0: unpaired (Welch)
    spread: float | None = None
    runs: int = 0  # the fewer runs of the two sides (Welch); the pairs where paired

    @property
    def direction(self) -> str:
        if self.paired_seeds and self.paired_seeds < MIN_SEEDS:
            return "too few seeds"
        return sign_word(self.low, self.high)

    def verdict(self) -> str:
        how = f"paired, {self.paired_seeds} seeds" if self.paired_seeds else "unpaired, Welch"
        borderline = ", borderline" if self.fragile(sign_word) else ""
        return f"{self.direction} ({how}{borderline})"

    def interval(self, sign: int = 1) -> str:
        """ "mean [low, high]"; sign -1: the other way round (best − variant)."""
        ends = sorted((sign * self.low, sign * self.high))
        return f"{sign * self.mean:+.4f} [{ends[0]:+.4f}, {ends[1]:+.4f}]"

    def tolerance(self, n: int | None = None) -> float:
        """How far an end may move before its word is trusted (docs/studies.md)."""
        n = n or self.paired_seeds or self.runs
        if n < 2:
            return math.inf
        shift = 2 * NOISE * (1 + t_975(n - 1) / math.sqrt(n - 1))
        return max(self.spread or 0.0, shift)

    def fragile(self, word_of: Callable[[float, float], str], n: int | None = None) -> bool:
        """Whether `word_of(low, high)` changes anywhere within the tolerance of both ends."""
        tol = self.tolerance(n)
        if math.isinf(tol):
            return True
        low, high = self._ends(n)
        return len({word_of(a, b) for a in _near(low, tol) for b in _near(high, tol)}) > 1

    def settled_at(self, word_of: Callable[[float, float], str]) -> int | None:
        """About how many seeds leave the word firm; None where none up to 1,000 does."""
        if self.spread is None:
            return None
        n, counts = max(self.paired_seeds + 1, MIN_SEEDS), []
        while n <= 1000:
            counts.append(n)
            n = n + 1 if n < 30 else math.ceil(n * 1.1)
        return next((n for n in counts if not self.fragile(word_of, n)), None)

    def _ends(self, n: int | None) -> tuple[float, float]:
        if n is None or self.spread is None:
            return self.low, self.high
        half = t_975(n - 1) * self.spread / math.sqrt(n)
        return self.mean - half, self.mean + half

    def seeds_needed(self, power: float = 0.8) -> int | None:
        """Seeds for a paired t-test to find this difference in `power` of studies, or None."""
        if not self.mean or self.spread is None:
            return None
        if not self.spread:
            return MIN_SEEDS
        effect = abs(self.mean) / self.spread

        def found(n: int) -> float:
            critical, shift = t_975(n - 1), effect * n**0.5
            wrong_side = stats.nct.cdf(-critical, n - 1, shift)  # SciPy: nan where it underflows
            return stats.nct.sf(critical, n - 1, shift) + np.nan_to_num(wrong_side)

        if found(1000) < power:
            return None
        low, high = 1, 1000  # power grows with n: found(low) < power <= found(high)
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if found(middle) >= power else (middle, high)
        return max(high, MIN_SEEDS)


@functools.cache
def t_975(df: int) -> float:
    """Student's t quantile of a two-sided 95 % interval."""
    return float(stats.t.ppf(0.975, df))


def sign_word(low: float, high: float) -> str:
    """better, worse, or no clear difference: which side of 0 the interval lies on."""
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "no clear difference"


def _near(end: float, tol: float) -> list[float]:
    """Points for every value within `tol` of `end`: its edges and each side of each line."""
    lines = [x for x in (-EQUAL, 0.0, EQUAL) if abs(x - end) < tol]
    tiny = 1e-12
    return [end - tol, end + tol, *(x + d for x in lines for d in (-tiny, tiny))]


# A claim "A = B" holds where the whole interval of A − B lies within ±EQUAL: one point of accuracy.
EQUAL = 0.01


def compare(variant: Variant, best: Variant, key: str = MEASURE) -> Comparison | None:
    """`variant` − `best` on `key`."""
    mine, theirs = variant.by_seed(key), best.by_seed(key)
    return compare_values(mine, theirs, variant.values(key), best.values(key))


def compare_values(
    mine: dict[str, float], theirs: dict[str, float], all_mine: list, all_theirs: list
) -> Comparison | None:
    """`mine` − `theirs` paired by seed, else Welch's; None with one run on a side."""
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
    return Comparison(mean, float(low), float(high), paired_seeds, spread, min(len(a), len(b)))


def label_value(value: str) -> str:
    """An override's value as a label shows it (0.0123; true, not True)."""
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
