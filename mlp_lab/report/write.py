"""The lab's report: report.md, a self-contained report.html, the runs' TensorBoard links."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
from datetime import date
from pathlib import Path

from mlp_lab import runs
from mlp_lab.cluster import machine
from mlp_lab.report import findings
from mlp_lab.report.complexity import complexity, interpolation_line, plot_complexity
from mlp_lab.report.plots import plot_study, prefix_lines, search_figures
from mlp_lab.report.studies import (
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
    variants,
)
from mlp_lab.report.xor import XORFinding, xor_findings

COLUMNS = ("variant", "seeds", "params", "epochs", "GFLOP/epoch", "best val acc", "best epoch")


def _fmt(variant: Variant, key: str, digits: int = 4) -> str:
    mean, std = variant.mean_std(key)
    return (
        f"{mean:.{digits}f} ± {std:.{digits}f}" if len(variant.runs) > 1 else f"{mean:.{digits}f}"
    )


def study_table(study: Study) -> str:
    """A row per variant: what it is and costs, its accuracies, its Δ from the best."""
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


def write_report(dirs: list[Path], out: Path) -> Path:
    """Write report.md, report.html and the figures into `out`; return report.md's path."""
    studies = find_studies(dirs)
    out.mkdir(parents=True, exist_ok=True)
    sections = [study_section(study, out) for study in studies]
    sections += [xor_section(xor) for xor in xor_findings(dirs)]
    sections.sort(key=lambda section: section[0])
    lines = ["# The lab's report", "", *header(studies, out / "lab.json"), "", *HOW_TO_READ, ""]
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
    """Link each run's events as `logdir/<study>/<variant>/seed=<n>` for TensorBoard."""
    shutil.rmtree(logdir, ignore_errors=True)  # links only: the runs' own files stay
    for study in studies:
        for v in variants(study):
            for run in v.runs:
                events = sorted({p.parent for p in run.path.glob("tensorboard/**/events.out.*")})
                if not events:
                    continue
                variant = v.label.replace(", ", ",").replace("/", "_")
                link = logdir / study.name / variant / f"seed={seed_of(run)}"
                link_events(link, events[0], run.path.name)


def link_events(link: Path, events: Path, run_name: str) -> None:
    """`link` to a run's events; `<link>,run=<run_name>` where it links another run."""
    target = os.path.relpath(events, link.parent)
    if link.is_symlink() and os.readlink(link) != target:
        link = link.with_name(f"{link.name},run={run_name}")
    link.parent.mkdir(parents=True, exist_ok=True)
    # A report written into the same folder at once may have linked this run already.
    with contextlib.suppress(FileExistsError):
        link.symlink_to(target, target_is_directory=True)


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


def header(studies: list[Study], lab: Path) -> list[str]:
    """What ran, where, at which precision and for how long."""
    done = [run for study in studies for run in study.runs]
    n, k = len(done), len(studies)
    configs = [run.record.get("config", {}) for run in done]
    precisions = sorted({str(c["trainer"]["precision"]) for c in configs if "trainer" in c})
    seeds = sorted({seed_of(run) for run in done}, key=lambda s: (len(s), s))
    attempts = [attempt for run in done for attempt in run.record.get("attempts", [])]
    line = (
        f"{n} run{'s' * (n != 1)} in {k} stud{'ies' if k != 1 else 'y'}, {date.today()}, on "
        f"{machine()}; precision {', '.join(precisions) or 'not recorded'}; "
        f"seed{'s' * (len(seeds) != 1)} {', '.join(seeds)}."
    )
    if attempts:
        span = max(map(runs.attempt_end, attempts)) - min(p["started"] for p in attempts)
        line += f" Wall time: {_duration(span)}, from the first run's start to the last run's end."
        line += floor(done, span, lab)
    if len(seeds) < FIRM_SEEDS:
        line += (
            f" With {len(seeds)} seed{'s' * (len(seeds) != 1)}, many words sit on the edge of "
            f"their line (marked borderline); {FIRM_SEEDS} or more give firmer ones."
        )
    return [line]


def floor(done: list, span: float, lab: Path) -> str:
    """The work of the runs trained (not those read from another) against the machine's floor."""
    read = ("same_as", "prefix_of")
    trained = [run for run in done if not any(key in run.record for key in read)]
    work = sum((epoch_flops(r) or 0) * r.record.get("epochs", 0) for r in trained)
    if not lab.is_file() or not work:
        return ""
    measured = json.loads(lab.read_text())
    dtype = "bfloat16" if measured.get("bfloat16_matmul_gflops") else "float32"
    peak = measured[f"{dtype}_matmul_gflops"]
    least = work / (peak * 1e9)
    return (
        f" Work: {work / 1e12:.1f} TFLOP in the {len(trained)} runs trained (the others read "
        f"from them); at this machine's {dtype} matmul peak ({peak:.0f} GFLOP/s, measured by the "
        f"lab) at least {_duration(least)}: the wall time is {span / least:.1f}× that floor."
    )


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
        ours = first if len(groups) > 1 else findings.overfitting_short(best)
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


def xor_section(xor: XORFinding) -> tuple[tuple, tuple[str, ...], list[str]]:
    words, settings = xor.words, xor.record["xor"]
    found, agree = xor.answer()
    question = words.get("question") or "XOR"
    lines = ["", "## xor", "", f"**Question:** {question}", "", f"Record: `{xor.path}`", ""]
    held = ", ".join(f"`xor.{k}={v}`" for k, v in settings.items())
    lines += [f"**Held fixed:** {held}; MSE loss, full-batch SGD.", "", f"**Our answer:** {found}"]
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
    """report.html beside report.md: the same text, its figures inline."""
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
