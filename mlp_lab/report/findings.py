"""What a study found, in words, from its runs' records and its config's `study:` section."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from mlp_lab.config import CLAIM
from mlp_lab.loggers import flatten, is_logistics
from mlp_lab.report.studies import (
    EQUAL,
    MEASURE,
    MEASURE_NAME,
    MIN_SEEDS,
    NOISE,
    Comparison,
    Study,
    Variant,
    compare,
    compare_values,
    label_value,
    seed_of,
    sign_word,
    variants,
)

# The settings a reader of the lab looks for first; the rest held fixed are counted, not listed.
KEY_SETTINGS = (
    *("data.name", "data.train_size", "data.batch_size", "model.hidden", "model.activation"),
    *("model.dropout", "model.batch_norm", "loss.name", "optimizer.name", "optimizer.lr"),
    *("optimizer.momentum", "optimizer.schedule", "trainer.max_epochs", "trainer.precision"),
)


def shown(value: Any) -> str:
    """A config value as the command line writes it: true, null, [256, 256], fashion_mnist."""
    return value if isinstance(value, str) else json.dumps(value)


def settings(study: Study) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The settings every run shares, and those that differ with their values."""
    flats = [flatten(run.record.get("config", {})) for run in study.runs]
    keys = sorted({k for flat in flats for k in flat})
    fixed, varied = {}, {}
    for key in keys:
        if is_logistics(key) or key == "seed":
            continue
        values = [shown(flat.get(key)) for flat in flats]
        if len(set(values)) == 1:
            fixed[key] = flats[0].get(key)
        else:
            varied[key] = sorted(set(values), key=values.index)
    return fixed, varied


def settings_lines(study: Study) -> list[str]:
    """Held fixed and varied, as two sentences of the report."""
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
    return max(groups, key=lambda v: v.mean_std(MEASURE)[0])


def _key(side: str) -> frozenset:
    return frozenset(_side(side).items())


def _namer(study: Study) -> Callable[[str], str]:
    """A variant's label → the words the study's config gives it (`study.names`), else the label."""
    names = {_key(side): words for side, words in (study.words.get("names") or {}).items()}
    return lambda label: names.get(_key(label)) or f"`{label}`"


def difference(a: str, b: str, c: Comparison | None) -> str:
    """A − B in words, with its direction and size: above, below, or not told apart."""
    if c is None or c.direction == "too few seeds":
        return f"{a} against {b}: too few seeds"
    found = {
        "better": f"{a} is above {b} by {c.interval()}",
        "worse": f"{a} is below {b} by {c.interval()}",
    }.get(c.direction, f"{a} and {b} are not told apart ({c.interval()})")
    return found + (" (borderline)" if c.fragile(sign_word) else "")


def answer(study: Study) -> tuple[str, str] | None:
    """The study's answer: its first sentence and what follows; None for one variant."""
    groups = variants(study)
    if len(groups) < 2:
        return None
    asked = asked_comparisons(study, groups)
    return yes_no(asked, _paired([(None, c) for *_, c in asked])) if asked else which(study, groups)


def asked_comparisons(study: Study, groups: list[Variant]) -> list[tuple[str, str, Comparison]]:
    """The comparisons the question asks about (`study.asks`) that the runs hold."""
    name, asked = _namer(study), []
    for claim in study.words.get("asks") or []:
        a, _, b = CLAIM.fullmatch(claim).groups()
        sides = _resolve(a, groups), _resolve(b, groups)
        if None not in sides:
            (va, _), (vb, _) = sides
            asked.append((name(va.label), name(vb.label), compare(va, vb)))
    return asked


def yes_no(asked: list[tuple[str, str, Comparison | None]], paired: str) -> tuple[str, str]:
    """Yes, No, Partly or Cannot tell from the asked comparisons, borderline where one is."""
    cs = [c for *_, c in asked]
    directions = [c.direction if c else "too few seeds" for c in cs]
    found = "; ".join(difference(a, b, c) for a, b, c in asked)
    borderline = " (borderline)" if any(c.fragile(sign_word) for c in cs if c) else ""
    if "too few seeds" in directions:  # no verdict, so nothing to call borderline
        seeds = max((c.paired_seeds for c in cs if c), default=1)
        return f"Cannot tell with {seeds} seed{'s' * (seeds != 1)}: {found}.", _more_seeds(cs)
    if set(directions) == {"no clear difference"}:
        seeds = max((c.paired_seeds for c in cs if c), default=1)
        first = f"Cannot tell with {seeds} seed{'s' * (seeds != 1)}{borderline}: {found}."
        return first, " ".join(filter(None, [_more_seeds(cs), *map(_settle, cs)]))
    if set(directions) == {"better"}:
        word = "Yes"
    elif "better" not in directions:
        word = "No"
    else:
        word = "Partly"
    first = f"{word}{borderline}: {found} ({MEASURE_NAME}{paired})."
    return first, " ".join(filter(None, map(_settle, cs)))


def which(study: Study, groups: list[Variant]) -> tuple[str, str]:
    """Without `asks`: the best variant, and how each other one stands against it."""
    name, best = _namer(study), best_variant(groups)
    others = [(v, compare(v, best)) for v in groups if v is not best]
    mean = best.mean_std(MEASURE)[0]
    found = [f"{name(best.label)} has the highest {MEASURE_NAME} ({mean:.4f})"]
    for word, heading in (("worse", "below it"), ("no clear difference", "not told apart")):
        named = [
            f"{name(v.label)} ({c.interval()}{', borderline' * c.fragile(sign_word)})"
            for v, c in others
            if c and c.direction == word
        ]
        if named:
            found.append(f"{heading}{_paired(others)}: {', '.join(named)}")
    unsure = [v for v, c in others if not c or c.direction == "too few seeds"]
    if unsure:
        found.append(f"too few seeds against {', '.join(name(v.label) for v in unsure)}")
    cs = [c for _, c in others]
    return "; ".join(found) + ".", _more_seeds(cs) if unsure else ""


def _settle(c: Comparison | None, word_of: Callable = sign_word, line: str = "0") -> str:
    """Why a borderline word is so, and the seeds that would settle it."""
    if c is None or c.direction == "too few seeds" or not c.fragile(word_of):
        return ""
    return (
        f"Borderline ({c.interval()}): an end lies within {c.tolerance():.4f} of {line}, "
        f"closer than one seed's spread or than a change of {NOISE} in each run could move it; "
        f"{_settled(c, word_of)}."
    )


def _settled(c: Comparison, word_of: Callable) -> str:
    at = c.settled_at(word_of)
    if at:
        return f"about {at} seeds would settle it"
    return "no number of seeds would settle it: the difference itself lies that close"


def _paired(compared: Iterable[tuple[Variant | None, Comparison | None]]) -> str:
    seeds = {c.paired_seeds for _, c in compared if c}
    if seeds == {0}:
        return ", unpaired (Welch)"
    return f", paired over {max(seeds)} seeds" if seeds else ""


def _more_seeds(cs: list[Comparison | None]) -> str:
    """The seeds a verdict needs, from the spread seen so far."""
    needs = [c.seeds_needed() for c in cs if c]
    seeds = max((c.paired_seeds for c in cs if c), default=1)
    if seeds < MIN_SEEDS or None in cs:
        known = [n for n in needs if n]
        estimate = f" (the spread seen here says about {max(known)})" if known else ""
        return (
            f"{seeds} seed{'s' * (seeds != 1)} cannot carry a verdict: run at least "
            f"{MIN_SEEDS}{estimate}, e.g. seed=0,1,2,3,4."
        )
    if not needs or None in needs:
        return "The differences are too small for any number of seeds to tell."
    return f"Differences this size would take about {max(needs)} seeds to tell."


@dataclass
class Check:
    """One claim of the lab weighed against our runs."""

    claim: str
    word: str  # agrees, differs, cannot tell, not run here
    why: str
    borderline: bool = False
    found: str = ""  # the difference's direction and size, in a clause


def _side(side: str) -> dict[str, str]:
    """'model.dropout=0.0, trainer.max_epochs=10' → {key: value as a label shows it}."""
    pairs = re.split(r", (?=[\w.]+=)", side)
    return dict((k, label_value(v)) for k, v in (p.split("=", 1) for p in pairs))


def _resolve(side: str, groups: list[Variant]) -> tuple[Variant, str] | None:
    """The variant and record key a claim's side names."""
    if "=" not in side:
        return (groups[0], f"last_{side}") if len(groups) == 1 else None
    wanted = _side(side)
    for v in groups:
        if v.label != "all runs" and _side(v.label) == wanted:
            return v, MEASURE
    return None


def claim_word(op: str) -> Callable[[float, float], str]:
    """The word an interval of A − B gives a claim "A > B" or "A = B"."""
    if op == ">":
        return lambda low, high: "agrees" if low > 0 else "differs" if high < 0 else "cannot tell"

    def equal(low: float, high: float) -> str:
        if low >= -EQUAL and high <= EQUAL:
            return "agrees"
        return "differs" if low > 0 or high < 0 else "cannot tell"

    return equal


def lab_checks(study: Study) -> list[Check]:
    """Each of the lab's claims (`study.lab_claims`) against our runs, on MEASURE."""
    groups, checks, name = variants(study), [], _namer(study)
    for claim in study.words.get("lab_claims") or []:
        a, op, b = CLAIM.fullmatch(claim).groups()
        sides = _resolve(a, groups), _resolve(b, groups)
        if None in sides:
            checks.append(Check(claim, "not run here", "a side of it is not among these runs"))
            continue
        (va, ka), (vb, kb) = sides
        c = compare_values(va.by_seed(ka), vb.by_seed(kb), va.values(ka), vb.values(kb))
        metric = ka != MEASURE
        names = (f"`{a}`", f"`{b}`") if metric else (name(va.label), name(vb.label))
        what = f"({a} − {b}, last epoch)" if metric else MEASURE_NAME
        checks.append(_weigh(claim, op, c, names, what))
    return checks


def _weigh(claim: str, op: str, c: Comparison | None, names: tuple, what: str) -> Check:
    if c is None or c.direction == "too few seeds":
        return Check(claim, "cannot tell", "too few seeds to compare", True, "too few seeds")
    word_of = claim_word(op)
    word, (a, b) = word_of(c.low, c.high), names
    paired = _paired([(None, c)]).removeprefix(", ")
    measured = f"{c.interval()} {what}, {paired}"
    if op == "=" and word == "agrees":
        why = found = f"{a} and {b} are equal within ±{EQUAL}: {measured}"
    elif word == "cannot tell":
        crosses = f", crossing the margin ±{EQUAL}" if op == "=" else ""
        found = f"{a} and {b} are not told apart ({c.interval()}){crosses}"
        why = f"not told apart: {measured}{crosses}"
        if c.seeds_needed():
            why += f"; about {c.seeds_needed()} seeds would tell"
    else:
        found = f"{a} is {'above' if c.mean > 0 else 'below'} {b} by {c.interval()}"
        unequal = f", not equal to it (margin ±{EQUAL})" if op == "=" else ""
        why = f"{a} is {'above' if c.mean > 0 else 'below'} {b} by {measured}{unequal}"
        found += unequal
    borderline = c.fragile(word_of)
    if borderline:
        why += f"; {_settled(c, word_of)}"
    return Check(claim, word, why, borderline, found)


def agreement_cell(checks: list[Check]) -> str:
    """The study's agreement, then what each claim that does not agree found instead."""
    apart = [c for c in checks if c.word in ("differs", "cannot tell")]
    if len(checks) == 1 and apart:
        return f"{agreement(checks)}: {apart[0].found}"
    return "; ".join([agreement(checks), *(f"{c.word}: {c.found}" for c in apart)])


def agreement(checks: list[Check]) -> str:
    """One word for a study's claims: agrees, agrees in part, differs, cannot tell, or -."""
    weighed = [c for c in checks if c.word != "not run here"]
    words = {c.word for c in weighed}
    if not words:
        return "-"
    if words == {"agrees"}:
        word = "agrees"
    elif "agrees" in words:
        word = "agrees in part"
    else:
        word = "differs" if "differs" in words else "cannot tell"
    return word + (" (borderline)" if any(c.borderline for c in weighed) else "")


def weak_classes(variant: Variant, count: int = 3) -> str | None:
    """The classes the variant gets wrong most often, and what it takes them for."""
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
    found = []
    for i in worst:
        j = max((j for j in range(len(names)) if j != i), key=counts[i].__getitem__)
        taken = counts[i][j] / max(sum(counts[i]), 1)
        found.append(f"{names[i]} {right[i]:.3f} right ({taken:.3f} taken for {names[j]})")
    runs = len(variant.runs)
    return (
        f"Where `{variant.label}` goes wrong (test images, {runs} run{'s' * (runs > 1)} "
        f"together): {'; '.join(found)}."
    )


def overfitting(variant: Variant) -> str | None:
    """Where validation loss turns while training loss falls, and the accuracy gap."""
    val, train = variant.curve("val_loss"), variant.curve("train_loss")
    if len(val) < 3:
        return None
    gap = [t - v for t, v in zip(variant.curve("train_acc"), variant.curve("val_acc"), strict=True)]
    turn, last = val.index(min(val)), len(val) - 1
    if overfitting_turn(variant) is None:
        return f"No: validation loss still falls at the last epoch ({last + 1})."
    return (
        f"Yes: validation loss is lowest at epoch {turn + 1} ({val[turn]:.4f}) and rises to "
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
        return "No: validation loss still falls at the last epoch"
    return f"Yes: from epoch {turn} (validation loss lowest there)"
