"""The report's figures of a study: each variant's curves, and a search's Optuna figures."""

from __future__ import annotations

import logging
import re
import textwrap
import warnings
from pathlib import Path

import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from mlp_lab import runs
from mlp_lab.figures import save
from mlp_lab.report import findings
from mlp_lab.report.studies import Study, Variant, swept_keys, variants

log = logging.getLogger(__name__)

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
    """Loss and accuracy per epoch of each variant: the mean over seeds and their range."""
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
    """Each variant whose every curve is the start of a longer variant's → that variant."""
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
    """A log y axis in plain numbers, minor ticks labelled within a decade and a half."""
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


def search_figures(sweep_dir: Path, out: Path) -> list[str]:
    """The search's Optuna figures as PNGs in `out`; none for a sweep that is no search."""
    if not (sweep_dir / runs.SEARCH_RECORD).is_file():
        return []
    # Optuna, and pyplot which its figures use, only for a report on a search.
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as plots

    from mlp_lab.trial import open_storage

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
