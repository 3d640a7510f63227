"""The lab's report: for each study its question, settings, table, figures and answer in words,
with the original lab's finding checked beside ours; report.md and a self-contained report.html.

    python -m mlp_lab.report outputs/lab/*/ [more run or sweep dirs] [--out DIR]

A directory is a run (it holds `.hydra/`), a sweep (numbered runs beside `multirun.yaml`), or any
folder above them; XOR records (xor.json) below them are read too.
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import re
import shutil
import statistics
import sys
import textwrap
import warnings
from collections import defaultdict
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from mlp_lab import findings, runs
from mlp_lab.cluster import machine
from mlp_lab.figures import save
from mlp_lab.studies import (
    EQUAL,
    MEASURE,
    MEASURE_NAME,
    NOISE,
    Study,
    Variant,
    compare,
    epoch_flops,
    find_studies,
    seed_of,
    swept_keys,
    variants,
)

log = logging.getLogger(__name__)

COLUMNS = ("variant", "seeds", "params", "epochs", "GFLOP/epoch", "best val acc", "best epoch")


def _fmt(variant: Variant, key: str, digits: int = 4) -> str:
    mean, std = variant.mean_std(key)
    return (
        f"{mean:.{digits}f} ± {std:.{digits}f}" if len(variant.runs) > 1 else f"{mean:.{digits}f}"
    )


def study_table(study: Study) -> str:
    """A row per variant: what it is and costs (nothing that depends on the machine's load), its
    accuracies, and its difference from the best on MEASURE."""
    groups = variants(study)
    best = findings.best_variant(groups)
    measure = MEASURE_NAME.replace("accuracy", "acc")
    header = (*COLUMNS, measure, f"Δ {measure} vs best [95 % CI]", "vs best")
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
        first = v.runs[0]
        flops = epoch_flops(first)
        cost = f"{first.record['params']:,} | {len(first.record['history'])} | " + (
            f"{flops / 1e9:,.1f}" if flops else "-"
        )
        epochs = "/".join(str(e) for e in v.values("best_epoch"))
        lines.append(
            f"| {v.label} | {len(v.runs)} | {cost} | {_fmt(v, 'best_val_acc')} | {epochs} | "
            f"{_fmt(v, MEASURE)} | {difference} | {verdict} |"
        )
    return "\n".join(lines)


PANELS = {  # the study figure's panels: history key → title
    "train_loss": "training loss",
    "val_loss": "validation loss",
    "train_acc": "training accuracy",
    "val_acc": "validation accuracy",
}


# A line style and a marker per variant, so that curves drawn over each other stay told apart.
STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def plot_study(study: Study, path: Path | None = None):
    """Training and validation loss and accuracy per epoch of each variant: the mean over seeds,
    and a band from the lowest to the highest seed. One variant: training against validation,
    the epoch of the lowest validation loss dashed."""
    groups = variants(study)
    one = len(groups) == 1
    # One legend below the plots, one line per variant: a search's labels are long.
    fig = Figure(figsize=(11, (4 if one else 7) + 0.2 * len(groups)), layout="constrained")
    grid = fig.subplots(1, 2) if one else fig.subplots(2, 2).flat
    names = ("loss", "loss", "accuracy", "accuracy") if one else PANELS.values()
    axes = dict(zip(PANELS, [grid[0], grid[0], grid[1], grid[1]] if one else grid, strict=True))
    # The longest curves first: a shorter one that repeats their start is drawn over them.
    starts = prefixes(groups)
    for i, v in enumerate(groups):
        for key, ax in axes.items():
            label = PANELS[key].split()[0] if one else v.label
            style = "--" if one and key.startswith("val") else STYLES[i % len(STYLES)]
            line = {"ls": style, "marker": MARKERS[i % len(MARKERS)], "color": f"C{i % 10}"}
            if v.label in starts:  # wide and pale, under the longer curve it starts
                line |= {"lw": 5, "alpha": 0.45, "zorder": 1, "ms": 6}
            _band(ax, v, key, label, line)
    turn = findings.overfitting_turn(groups[0]) if one else None
    for (key, ax), name in zip(axes.items(), names, strict=True):
        ax.set_title(name if one else PANELS[key], fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs, never 1.5
        ax.grid(alpha=0.3)
        if key.endswith("loss"):
            _log_scale(ax)
        if turn:
            ax.axvline(turn, color="grey", ls=":", lw=1)
    seeds = max(len(v.runs) for v in groups)
    band = "; band: lowest to highest seed" if seeds > 1 else ""
    handles, labels = axes["val_loss" if one else "val_acc"].get_legend_handles_labels()
    if not one:  # the sweep's order, whatever order the lines were drawn in
        order = [labels.index(v.label) for v in groups]
        handles, labels = [handles[i] for i in order], [labels[i] for i in order]
    fig.legend(handles, labels, loc="outside lower center", fontsize=8)
    # A sweep's folder is named by its time: say what it varied instead.
    unnamed = re.fullmatch(r"\d{4}-\d{2}-\d{2}_[\d_-]+", study.name)
    keys = ", ".join(swept_keys(study.runs)) or "one setting"
    title = f"sweep over {keys} ({study.name})" if unnamed else study.name
    turned = f"; dotted: lowest validation loss (epoch {turn})" if turn else ""
    repeated = "".join(f"\n{textwrap.fill(line, 150)}" for line in prefix_lines(groups))
    fig.suptitle(
        f"{title}: mean over {seeds} seed{'s' * (seeds > 1)}{band}{turned}{repeated}", fontsize=10
    )
    return save(fig, path)


def prefixes(groups: list[Variant]) -> dict[str, str]:
    """Each variant whose every curve is the start of a longer variant's (the same runs until it
    stopped, as with no schedule tied to the run's length) → that longer variant."""
    found = {}
    for short in groups:
        n = len(short.curve("val_acc"))
        for v in groups:
            if len(v.curve("val_acc")) > n and all(
                v.curve(key)[:n] == short.curve(key) for key in PANELS
            ):
                found[short.label] = v.label
                break
    return found


def prefix_lines(groups: list[Variant]) -> list[str]:
    """A sentence for each variant that repeats the start of a longer one."""
    epochs = {v.label: len(v.curve("val_acc")) for v in groups}
    return [
        f"{short}: the first {epochs[short]} epochs of {long}, drawn wide and pale under it"
        for short, long in prefixes(groups).items()
    ]


def _log_scale(ax) -> None:
    """A log y axis (losses of different functions differ in scale) with plain numbers, 0.3 not
    3×10⁻¹, its minor ticks labelled where they do not crowd: within a decade and a half."""
    ax.set_yscale("log")
    plain = FuncFormatter(lambda y, _: f"{y:.2g}")
    low, high = ax.get_ylim()
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain if high / low < 10**1.5 else NullFormatter())


def _band(ax, variant: Variant, key: str, label: str, line: dict) -> None:
    """The variant's mean curve of `key` drawn as `line` says, and the band of its seeds."""
    curves = variant.curves(key)
    epochs = range(1, len(curves[0]) + 1)
    (line,) = ax.plot(epochs, variant.curve(key), label=label, **{"ms": 3, "zorder": 2} | line)
    if len(curves) > 1:
        low, high = (list(map(f, zip(*curves, strict=True))) for f in (min, max))
        ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2, lw=0)


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
    """Write report.md, report.html and the figures into `out`; return report.md's path."""
    studies = find_studies(dirs)
    out.mkdir(parents=True, exist_ok=True)
    sections = [study_section(study, out) for study in studies]
    sections += [xor_section(xor) for xor in findings.xor_findings(dirs)]
    sections.sort(key=lambda section: section[0])
    lines = ["# The lab's report", "", *header(studies), "", *HOW_TO_READ, ""]
    lines += [
        f"| question | our answer ({MEASURE_NAME}) | the original lab found | "
        f"agreement ({MEASURE_NAME}) |",
        "|---|---|---|---|",
    ]
    lines += [f"| {' | '.join(row)} |" for _, row, _ in sections]
    lines += unfinished(studies)
    for _, _, text in sections:
        lines += text
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    write_html(report)
    link_dashboard(studies, out / "tensorboard")
    return report


def link_dashboard(studies: list[Study], logdir: Path) -> None:
    """`logdir/<study>/<variant>/seed=<n>`, a link to each run's TensorBoard events, so that
    `tensorboard --logdir logdir` lists and groups the runs as the report does."""
    shutil.rmtree(logdir, ignore_errors=True)  # links only: the runs' own files stay
    for study in studies:
        for v in variants(study):
            for run in v.runs:
                events = sorted({p.parent for p in run.path.glob("tensorboard/**/events.out.*")})
                if not events:
                    continue
                variant = v.label.replace(", ", ",").replace("/", "_")
                link = logdir / study.name / variant / f"seed={seed_of(run)}"
                if link.is_symlink():  # the same variant and seed run twice: both shown
                    link = link.with_name(f"{link.name},run={run.path.name}")
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(os.path.relpath(events[0], link.parent), target_is_directory=True)


HOW_TO_READ = (
    f"**How to read it.** Every answer and every agreement is judged on one measure: the "
    f"{MEASURE_NAME} of each run's best-validation checkpoint, as the original lab measured "
    "(validation only chooses the checkpoint). Variants are compared seed by seed (a seed fixes "
    "the split, the initial weights and the batch order): the mean difference and its 95 % "
    "t-interval; *above* or *below* when the interval excludes 0, else *not told apart*; "
    "unpaired (Welch) where they share fewer than two seeds, and no verdict below "
    f"{findings.MIN_SEEDS} seeds. Each answer begins Yes, No, Partly or Cannot tell. The original "
    "lab's claims (one run each) *agree* where our interval has their sign, *differ* where it has "
    f"the other, and a claim of equality agrees only where the whole interval lies within "
    f"±{EQUAL}. A word is *borderline* where an end of its interval lies within one seed's "
    f"spread of the differences, or within what a change of {NOISE} in each run could move, of "
    "the line that decides it: such a word may turn on a rerun.",
)


def header(studies: list[Study]) -> list[str]:
    """What ran, where, at which precision and for how long."""
    done = [run for study in studies for run in study.runs]
    n, k = len(done), len(studies)
    configs = [run.record.get("config", {}) for run in done]
    precisions = sorted({str(c["trainer"]["precision"]) for c in configs if "trainer" in c})
    seeds = sorted({seed_of(run) for run in done}, key=lambda s: (len(s), s))
    parts = [part for run in done for part in run.record.get("parts", [])]
    line = (
        f"{n} run{'s' * (n != 1)} in {k} stud{'ies' if k != 1 else 'y'}, {date.today()}, on "
        f"{machine()}; precision {', '.join(precisions) or 'not recorded'}; "
        f"seed{'s' * (len(seeds) != 1)} {', '.join(seeds)}."
    )
    if parts:
        span = max(map(runs.part_end, parts)) - min(p["started"] for p in parts)
        line += f" Wall time: {_duration(span)}, from the first run's start to the last run's end."
    if len(seeds) < FIRM_SEEDS:
        line += (
            f" With {len(seeds)} seed{'s' * (len(seeds) != 1)}, many words sit on the edge of "
            f"their line (marked borderline); {FIRM_SEEDS} or more give firmer ones."
        )
    return [line]


# Below this many seeds the intervals are wide enough that many words are borderline.
FIRM_SEEDS = 5


def _duration(seconds: float) -> str:
    """37 min 12 s, 1 h 4 min, 12.5 s."""
    minutes, secs = divmod(round(seconds), 60)
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min {secs} s"


def unfinished(studies: list[Study]) -> list[str]:
    """The runs that did not finish, counted, and the command that finishes each study's."""
    stopped = [study for study in studies if study.skipped]
    if not stopped:
        return []
    n = sum(len(study.skipped) for study in stopped)
    lines = [
        "",
        f"**Not finished:** {n} run{'s' * (n != 1)}, listed in their studies; go on with:",
        "",
    ]
    return lines + [f"- `{runs.resume_command(study.path)}`" for study in stopped]


def study_section(study: Study, out: Path) -> tuple[tuple, tuple[str, ...], list[str]]:
    """(its place, its summary row, its lines) for one study."""
    words = study.words
    question = words.get("question")
    lines = ["", f"## {study.name}", ""]
    if question:
        lines += [f"**Question:** {question}", ""]
    lines += [f"Runs: `{study.path}`"]
    ours, agree, agree_cell = "-", "-", "-"
    if study.runs:
        figure = f"{study.name}.png"
        plot_study(study, out / figure)
        lines += ["", *paragraphs(findings.settings_lines(study))]
        lines += ["", study_table(study), "", f"![{study.name}]({figure})"]
        groups = variants(study)
        best = findings.best_variant(groups)
        first, rest = findings.answer(study) or (findings.overfitting(best), "")
        repeated = prefix_lines(groups)
        lines += paragraphs(
            [
                f"*{'; '.join(repeated)}.*" if repeated else "",
                f"**Our answer:** {first} {rest}".rstrip() if first else "",
                findings.weak_classes(best),
            ]
        )
        ours = findings.short_answer(study)
        checks = findings.lab_checks(study)
        agree, agree_cell = findings.agreement(checks), findings.agreement_cell(checks)
        lines += lab_lines(words, checks, agree)
        lines += complexity_lines(study, out)
    figures = search_figures(study.path, out)
    if figures:
        lines += ["", "The search (Optuna): history, importances, val/acc per epoch", ""]
        lines += [f"![{name}]({name})" for name in figures]
    if study.skipped:
        lines += ["", "Not in the table (failed, interrupted or unfinished):", ""]
        lines += [f"- `{path}`: {why}" for path, why in study.skipped.items()]
    row = (question or study.name, ours, words.get("lab_found") or "-", agree_cell)
    return (words.get("order") or 99, str(study.path)), row, lines


def paragraphs(texts: list[str | None]) -> list[str]:
    return [line for text in texts if text for line in ("", text)]


def lab_lines(words: dict, checks: list[findings.Check], agree: str) -> list[str]:
    """The lab's finding, our agreement in a word, and each claim weighed."""
    if not words.get("lab_found"):
        return []
    ours = {"-": "Nothing here to weigh it against."}.get(agree, f"**Ours {agree}:**")
    lines = ["", f"**The original lab found:** {words['lab_found']}. {ours}"]
    if checks:
        lines += [""] + [
            f"- `{c.claim}`: **{c.word}**{' (borderline)' * c.borderline}: {c.why}." for c in checks
        ]
    return lines


def complexity_lines(study: Study, out: Path) -> list[str]:
    depths = complexity(study)
    if not depths:
        return []
    figure = f"{study.name}_error_vs_size.png"
    plot_complexity(study.name, depths, out / figure)
    return ["", interpolation_line(depths), "", f"![error against size]({figure})"]


def xor_section(xor: findings.XORFinding) -> tuple[tuple, tuple[str, ...], list[str]]:
    words, settings = xor.words, xor.record["xor"]
    said, agree = xor.answer()
    question = words.get("question") or "XOR"
    lines = ["", "## xor", "", f"**Question:** {question}", "", f"Record: `{xor.path}`", ""]
    held = ", ".join(f"`xor.{k}={v}`" for k, v in settings.items())
    lines += [f"**Held fixed:** {held}; MSE loss, full-batch SGD.", "", f"**Our answer:** {said}"]
    if words.get("lab_found"):
        lines += ["", f"**The original lab found:** {words['lab_found']}. **Ours {agree}.**"]
    row = (question, xor.short(), words.get("lab_found") or "-", agree)
    return (words.get("order") or 99, str(xor.path)), row, lines


STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; }
table { border-collapse: collapse; font-size: 12px; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; }
img { max-width: 100%; }
code { font-size: 12px; }
@page { size: A4; margin: 1.2cm; }
@media print {
  body { margin: 0; max-width: none; font-size: 11px; }
  h2, h3 { break-after: avoid; }
  p, li { orphans: 3; widows: 3; }
  ul, tr, p:has(img) { break-inside: avoid; }
  /* A study's figure stays with its table, and the words after it with the figure; the long
     summary table may run on to the next page, row by row. */
  table:has(+ p > img) { break-inside: avoid; break-after: avoid; }
  p:has(img) { break-before: avoid; break-after: avoid; }
  img { max-height: 42vh; }
}
"""


def write_html(report: Path) -> Path:
    """report.html beside report.md: the same text, its figures inline, a study's figure kept with
    its table on paper."""
    import markdown  # only here: the rest of the report needs no Markdown renderer

    body = markdown.markdown(report.read_text(), extensions=["tables"])

    def inline(match: re.Match) -> str:
        data = base64.b64encode((report.parent / match[1]).read_bytes()).decode()
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="([^":/]+\.png)"', inline, body)
    html = report.with_suffix(".html")
    html.write_text(
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>The lab's report</title><style>{STYLE}</style></head>\n<body>\n{body}\n"
        "</body></html>\n"
    )
    return html


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
