"""What a study found, in words: what it held fixed and varied, its answer from the paired verdicts,
where its best variant goes wrong, and whether the original lab's findings hold here.

The words come from the runs' records and the study's config (`study:` in conf/experiment/), so a
student's report says nothing its runs do not show.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scipy import stats

from mlp_lab.config import CLAIM
from mlp_lab.loggers import LOGISTICS, flatten
from mlp_lab.studies import (
    MIN_SEEDS,
    Comparison,
    Study,
    Variant,
    compare,
    compare_values,
    label_value,
    seed_of,
    variants,
)

# The settings a reader of the lab looks for first; the rest held fixed are counted, not listed.
KEY_SETTINGS = (
    *("data.name", "data.train_size", "data.batch_size", "model.hidden", "model.activation"),
    *("model.dropout", "model.batch_norm", "loss.name", "optimizer.name", "optimizer.lr"),
    *("optimizer.momentum", "optimizer.schedule", "trainer.max_epochs", "trainer.precision"),
)
# A claim "A = B" holds where the whole interval of A − B lies within ±EQUAL: one point of accuracy.
EQUAL = 0.01


def shown(value: Any) -> str:
    """A config value as the command line writes it: true, null, [256, 256], fashion_mnist."""
    return value if isinstance(value, str) else json.dumps(value)


def settings(study: Study) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The settings (dotted keys) every run shares, and those that differ with their values;
    seeds, logistics and the study's words left out."""
    flats = [flatten(run.record.get("config", {})) for run in study.runs]
    keys = sorted({k for flat in flats for k in flat})
    left_out = ("seed", "study")
    fixed, varied = {}, {}
    for key in keys:
        if key in LOGISTICS or key.split(".")[0] in (*LOGISTICS, *left_out):
            continue
        values = [shown(flat.get(key)) for flat in flats]
        if len(set(values)) == 1:
            fixed[key] = flats[0].get(key)
        else:
            varied[key] = sorted(set(values), key=values.index)
    return fixed, varied


def settings_lines(study: Study) -> list[str]:
    """Held fixed and varied, as two sentences of the report."""
    if not any("config" in run.record for run in study.runs):
        return []  # records of an older mlp_lab, without their config
    fixed, varied = settings(study)
    named = [f"`{k}={shown(fixed[k])}`" for k in KEY_SETTINGS if k in fixed]
    rest = len(fixed) - len(named)
    seeds = sorted({seed_of(run) for run in study.runs}, key=lambda s: (len(s), s))
    lines = [
        f"**Held fixed:** {', '.join(named)}"
        + (f" and {rest} more settings, the same in every run." if rest else ".")
    ]
    changes = "; ".join(f"`{k}`: {', '.join(v)}" for k, v in varied.items()) or "nothing"
    lines.append(f"**Varied:** {changes}; over seed{'s' * (len(seeds) > 1)} {', '.join(seeds)}.")
    return lines


def best_variant(groups: list[Variant]) -> Variant:
    return max(groups, key=lambda v: v.mean_std("best_val_acc")[0])


def answer(study: Study) -> str | None:
    """The study's answer in words, from each variant's paired comparison with the best on best
    validation accuracy; None for a study of one variant."""
    groups = variants(study)
    if len(groups) < 2:
        return None
    best = best_variant(groups)
    others = [(v, compare(v, best)) for v in groups if v is not best]
    if len(others) == 1:
        return _against_one(best, *others[0])
    below = [f"`{v.label}` ({c.interval(-1)})" for v, c in others if c and c.direction == "worse"]
    level = [(v, c) for v, c in others if c and c.direction == "no clear difference"]
    unsure = [v for v, c in others if not c or c.direction == "too few seeds"]
    mean = best.mean_std("best_val_acc")[0]
    words = [f"`{best.label}` has the highest validation accuracy ({mean:.4f})."]
    if below:
        words.append(f"Clearly below it{_paired(others)}: {', '.join(below)}.")
    if level:
        told = ", ".join(f"`{v.label}` ({c.interval(-1)})" for v, c in level)
        words.append(f"Not told apart from it{_paired(others)}: {told}{_needed(level)}.")
    if unsure:
        words.append(f"{_too_few(others)} for {', '.join(f'`{v.label}`' for v in unsure)}.")
    return " ".join(words)


def _against_one(best: Variant, other: Variant, c: Comparison | None) -> str:
    if c is None or c.direction == "too few seeds":
        return f"{_too_few([(other, c)])}: `{best.label}` against `{other.label}`."
    difference = f"{c.interval(-1)} validation accuracy{_paired([(other, c)])}"
    if c.direction == "worse":
        return f"`{best.label}` is better than `{other.label}`: {difference}."
    return (
        f"`{best.label}` and `{other.label}` are not told apart: {difference}"
        f"{_needed([(other, c)])}."
    )


def _paired(compared: Iterable[tuple[Variant, Comparison | None]]) -> str:
    seeds = {c.paired_seeds for _, c in compared if c}
    if seeds == {0}:
        return ", unpaired (Welch)"
    return f", paired over {max(seeds)} seeds" if seeds else ""


def _needed(compared: Iterable[tuple[Variant, Comparison | None]]) -> str:
    needs = [c.seeds_needed() for _, c in compared if c]
    if not needs or None in needs:
        return "; the differences are too small for any number of seeds to tell"
    return f"; differences this size would take about {max(needs)} seeds to tell"


def _too_few(compared: list[tuple[Variant, Comparison | None]]) -> str:
    """Why there is no verdict, and the seeds the spread seen so far says a verdict needs."""
    seeds = max((c.paired_seeds for _, c in compared if c), default=1)
    needs = [c.seeds_needed() for _, c in compared if c and c.seeds_needed()]
    estimate = f" (the spread seen here says about {max(needs)})" if needs else ""
    return (
        f"{seeds} seed{'s' * (seeds != 1)} cannot carry a verdict: run at least {MIN_SEEDS}"
        f"{estimate}, e.g. seed=0,1,2,3,4,"
    )


def short_answer(study: Study) -> str:
    """The answer in a few words, for the summary table."""
    groups = variants(study)
    if len(groups) < 2:
        return overfitting_short(groups[0]) if groups else "-"
    best = best_variant(groups)
    others = [(v, compare(v, best)) for v in groups if v is not best]
    by_word: dict[str, list[str]] = {}
    for v, c in others:
        by_word.setdefault(c.direction if c else "too few seeds", []).append(f"`{v.label}`")
    parts = [f"`{best.label}` best"]
    for word, named in by_word.items():
        parts.append(f"{word}: {', '.join(named)}")
    return "; ".join(parts)


@dataclass
class Check:
    """One claim of the lab weighed against our runs."""

    claim: str
    word: str  # agrees, differs, cannot tell, not run here
    why: str


def _side(side: str) -> dict[str, str]:
    """'model.dropout=0.0, trainer.max_epochs=10' → {key: value as a label shows it}."""
    pairs = re.split(r", (?=[\w.]+=)", side)
    return dict((k, label_value(v)) for k, v in (p.split("=", 1) for p in pairs))


def _resolve(side: str, groups: list[Variant]) -> tuple[Variant, str] | None:
    """The variant and record key a claim's side names: a variant's test accuracy, or in a
    one-variant study a metric of the last epoch."""
    if "=" not in side:
        return (groups[0], f"last_{side}") if len(groups) == 1 else None
    wanted = _side(side)
    for v in groups:
        if v.label != "all runs" and _side(v.label) == wanted:
            return v, "test_acc"
    return None


def lab_checks(study: Study) -> list[Check]:
    """Each of the lab's claims (`study.lab_claims`) against our runs, on test accuracy."""
    groups, checks = variants(study), []
    for claim in study.words.get("lab_claims") or []:
        a, op, b = CLAIM.fullmatch(claim).groups()
        sides = _resolve(a, groups), _resolve(b, groups)
        if None in sides:
            checks.append(Check(claim, "not run here", "a side of it is not among these runs"))
            continue
        (va, ka), (vb, kb) = sides
        c = compare_values(va.by_seed(ka), vb.by_seed(kb), va.values(ka), vb.values(kb))
        what = "test accuracy" if ka == "test_acc" else f"({a} − {b}, last epoch)"
        checks.append(_weigh(claim, op, c, what))
    return checks


def _weigh(claim: str, op: str, c: Comparison | None, what: str) -> Check:
    if c is None or c.direction == "too few seeds":
        return Check(claim, "cannot tell", "too few seeds to compare")
    why = f"{c.interval()} {what}, {_paired([(None, c)]).removeprefix(', ')}"
    if op == ">":
        word = {"better": "agrees", "worse": "differs"}.get(c.direction, "cannot tell")
    elif c.direction != "no clear difference":
        word = "differs"
    else:
        word = "agrees" if c.low >= -EQUAL and c.high <= EQUAL else "cannot tell"
    if word == "cannot tell" and c.seeds_needed():
        why += f"; about {c.seeds_needed()} seeds would tell"
    return Check(claim, word, why)


def agreement(checks: list[Check]) -> str:
    """One word for a study: agrees, differs, agrees in part, cannot tell; "-" with no claim."""
    words = {c.word for c in checks} - {"not run here"}
    if not words:
        return "-"
    if "differs" in words:
        return "differs"
    if words == {"agrees"}:
        return "agrees"
    return "agrees in part" if "agrees" in words else "cannot tell"


def weak_classes(variant: Variant, count: int = 3) -> str | None:
    """The classes the variant gets wrong most often on the test set, with what it takes them
    for, summed over its seeds; None where its records hold no confusion counts."""
    tables = [run.record.get("test_confusion") for run in variant.runs]
    if not all(tables):
        return None
    names = tables[0]["classes"]
    counts = [
        [sum(t["counts"][i][j] for t in tables) for j in range(len(names))]
        for i in range(len(names))
    ]
    right = [counts[i][i] / max(sum(counts[i]), 1) for i in range(len(names))]
    worst = sorted(range(len(names)), key=right.__getitem__)[:count]
    said = []
    for i in worst:
        j = max((j for j in range(len(names)) if j != i), key=counts[i].__getitem__)
        taken = counts[i][j] / max(sum(counts[i]), 1)
        said.append(f"{names[i]} {right[i]:.3f} right ({taken:.3f} taken for {names[j]})")
    runs = len(variant.runs)
    return (
        f"Where `{variant.label}` goes wrong (test images, {runs} run{'s' * (runs > 1)} "
        f"together): {'; '.join(said)}."
    )


def overfitting(variant: Variant) -> str | None:
    """Where validation loss turns while training loss keeps falling, and the train-validation
    accuracy gap there and at the end; None for fewer than 3 epochs."""
    val, train = variant.curve("val_loss"), variant.curve("train_loss")
    if len(val) < 3:
        return None
    gap = [t - v for t, v in zip(variant.curve("train_acc"), variant.curve("val_acc"), strict=True)]
    turn, last = val.index(min(val)), len(val) - 1
    if overfitting_turn(variant) is None:
        return f"Validation loss still falls at the last epoch ({last + 1}): no overfitting yet."
    return (
        f"Validation loss is lowest at epoch {turn + 1} ({val[turn]:.4f}) and rises to "
        f"{val[last]:.4f} by epoch {last + 1}, while training loss falls from {train[turn]:.4f} "
        f"to {train[last]:.4f}; training accuracy leads validation accuracy by {gap[turn]:.4f} at "
        f"epoch {turn + 1} and {gap[last]:.4f} at epoch {last + 1}: from epoch {turn + 1} on, "
        "the network learns its training images at the expense of new ones."
    )


def overfitting_turn(variant: Variant) -> int | None:
    """The epoch of the lowest mean validation loss, where it comes before the last epoch."""
    val = variant.curve("val_loss")
    turn = val.index(min(val)) + 1
    return turn if turn < len(val) else None


def overfitting_short(variant: Variant) -> str:
    if len(variant.curve("val_loss")) < 3:
        return "-"
    turn = overfitting_turn(variant)
    if turn is None:
        return "no overfitting within the run"
    return f"overfits from epoch {turn} (validation loss lowest there)"


@dataclass
class XORFinding:
    """The XOR question from mlp_lab.xor's record: how many seeds solve it."""

    path: Path
    record: dict

    @property
    def words(self) -> dict:
        return self.record.get("study", {})

    def short(self) -> str:
        seeds = self.record["seeds"]
        solved = sum(s["solved"] for s in seeds)
        return f"solved by {solved} of {len(seeds)} seeds ({solved / len(seeds):.0%})"

    def answer(self) -> tuple[str, str]:
        """The answer in words and the agreement with the lab's "it learns XOR"."""
        seeds = self.record["seeds"]
        solved = [s for s in seeds if s["solved"]]
        ci = stats.binomtest(len(solved), len(seeds)).proportion_ci(0.95)
        failed = ", ".join(
            f"{s['seed']} (MSE {s['final_loss']:.3g})" for s in seeds if not s["solved"]
        )
        words = (
            f"Solved by {len(solved)} of {len(seeds)} seeds ({len(solved) / len(seeds):.0%}; "
            f"95 % interval {ci.low:.0%} to {ci.high:.0%}, Clopper-Pearson)"
            + (f"; the others stall with a dead ReLU unit: seeds {failed}." if failed else ".")
        )
        word = "agrees" if ci.low > 0.5 else "differs" if ci.high < 0.5 else "cannot tell"
        return words, word


def xor_findings(dirs: Iterable[Path]) -> list[XORFinding]:
    """The XOR records (xor.json, written by `mlp_lab.xor xor.record=...`) below `dirs`."""
    paths = sorted({p for d in dirs for p in Path(d).rglob("xor.json")})
    return [XORFinding(p, json.loads(p.read_text())) for p in paths]
