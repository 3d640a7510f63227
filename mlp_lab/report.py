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
import re
import statistics
import sys
import time
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
from mlp_lab.studies import Study, Variant, compare, find_studies, seed_of, swept_keys, variants

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


PANELS = {  # the study figure's panels: history key → title
    "train_loss": "training loss",
    "val_loss": "validation loss",
    "train_acc": "training accuracy",
    "val_acc": "validation accuracy",
}


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
    for v in groups:
        for key, ax in axes.items():
            label = PANELS[key].split()[0] if one else v.label
            _band(ax, v, key, label, "--" if one and key.startswith("val") else "-")
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
    fig.legend(handles, labels, loc="outside lower center", fontsize=8)
    # A sweep's folder is named by its time: say what it varied instead.
    unnamed = re.fullmatch(r"\d{4}-\d{2}-\d{2}_[\d_-]+", study.name)
    keys = ", ".join(swept_keys(study.runs)) or "one setting"
    title = f"sweep over {keys} ({study.name})" if unnamed else study.name
    turned = f"; dotted: lowest validation loss (epoch {turn})" if turn else ""
    fig.suptitle(f"{title}: mean over {seeds} seed{'s' * (seeds > 1)}{band}{turned}")
    return save(fig, path)


def _log_scale(ax) -> None:
    """A log y axis (losses of different functions differ in scale) with plain numbers, 0.3 not
    3×10⁻¹, its minor ticks labelled where they do not crowd: within a decade and a half."""
    ax.set_yscale("log")
    plain = FuncFormatter(lambda y, _: f"{y:.2g}")
    low, high = ax.get_ylim()
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain if high / low < 10**1.5 else NullFormatter())


def _band(ax, variant: Variant, key: str, label: str, style: str) -> None:
    """The variant's mean curve of `key`, and the band of its seeds around it."""
    curves = variant.curves(key)
    epochs = range(1, len(curves[0]) + 1)
    (line,) = ax.plot(epochs, variant.curve(key), style, marker="o", ms=2, label=label)
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
    lines += ["| question | our answer | the original lab found | agreement |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for _, row, _ in sections]
    lines += unfinished(studies)
    for _, _, text in sections:
        lines += text
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    write_html(report)
    return report


HOW_TO_READ = (
    "Each question's answer comes from its runs: the variant with the highest mean best validation "
    "accuracy is compared with every other seed by seed (a seed fixes the split, the initial "
    "weights and the batch order): the mean difference and its 95 % t-interval, *better* or "
    "*worse* when the interval excludes 0, else *no clear difference*; unpaired (Welch) where they "
    f"share fewer than two seeds, and no verdict below {findings.MIN_SEEDS} seeds. Test accuracy "
    "is the checkpoint with the best validation accuracy (mean ± std over seeds). The original "
    "lab's claims, one run each, are weighed on test accuracy, as it measured: *agrees* where our "
    "interval has the lab's sign, *differs* where it has the other, *cannot tell* where it holds 0 "
    f"(a claim of no difference agrees where the interval lies within ±{findings.EQUAL}).",
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
        f"seed{'s' * (len(seeds) != 1)} "
        f"{', '.join(seeds)}"
    )
    if parts:
        span = max(map(runs.part_end, parts)) - min(p["started"] for p in parts)
        work = sum(runs.part_end(p) - p["started"] for p in parts)
        line += (
            f"; {_duration(span)} from the first run's start to the last run's end "
            f"({_duration(work)} of runs side by side)"
        )
    return [line + "."]


def _duration(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds >= 60 else f"{seconds:.1f} s"


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
    ours, agree = "-", "-"
    if study.runs:
        figure = f"{study.name}.png"
        plot_study(study, out / figure)
        lines += ["", *paragraphs(findings.settings_lines(study))]
        lines += ["", study_table(study), "", f"![{study.name}]({figure})"]
        groups = variants(study)
        best = findings.best_variant(groups)
        said = findings.answer(study) or findings.overfitting(best)
        lines += paragraphs(
            [f"**Our answer:** {said}" if said else "", findings.weak_classes(best)]
        )
        ours = findings.short_answer(study)
        checks = findings.lab_checks(study)
        agree = findings.agreement(checks)
        lines += lab_lines(words, checks, agree)
        lines += complexity_lines(study, out)
    figures = search_figures(study.path, out)
    if figures:
        lines += ["", "The search (Optuna): history, importances, val/acc per epoch", ""]
        lines += [f"![{name}]({name})" for name in figures]
    if study.skipped:
        lines += ["", "Not in the table (failed, interrupted or unfinished):", ""]
        lines += [f"- `{path}`: {why}" for path, why in study.skipped.items()]
    row = (question or study.name, ours, words.get("lab_found") or "-", agree)
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
        lines += [""] + [f"- `{c.claim}`: **{c.word}** ({c.why})" for c in checks]
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
  h2 { break-before: page; }
  img, table { break-inside: avoid; }
  img { max-height: 55vh; }
}
"""


def write_html(report: Path) -> Path:
    """report.html beside report.md: the same text, its figures inline, one study per printed
    page where it fits."""
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
