import base64
import json
import math
import re
import shutil
import statistics
import subprocess
from pathlib import Path

import numpy as np
import pytest
from commands import run_module
from conftest import fake_run, quiet
from matplotlib.image import imread
from omegaconf import OmegaConf
from scipy import stats

from mlp_lab.datasets import PROJECT_DIR
from mlp_lab.report.complexity import complexity, interpolation_line, plot_complexity
from mlp_lab.report.plots import plot_study
from mlp_lab.report.studies import Run, compare, find_studies, seed_of, variants
from mlp_lab.report.write import link_events, study_table, write_report
from mlp_lab.train import load_config


@pytest.fixture
def sweep(tmp_path):
    """A 2-variant × 2-seed sweep of batch norm, plus a crashed job and a diverged one."""
    root = tmp_path / "batch_norm/2026-01-01_00-00-00"
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("{}")
    values = {
        ("false", 0): (0.86, 0.85),
        ("false", 1): (0.87, 0.86),
        ("true", 0): (0.89, 0.88),
        ("true", 1): (0.90, 0.89),
    }
    for n, ((bn, seed), (val, test)) in enumerate(values.items()):
        overrides = ["experiment=batch_norm", f"model.batch_norm={bn}", f"seed={seed}"]
        fake_run(root / str(n), overrides, val, test)
    fake_run(
        root / "4",
        ["experiment=batch_norm", "model.batch_norm=true", "seed=2"],
        0,
        0,
        finished=False,
    )
    diverged = root / "5"
    fake_run(diverged, ["experiment=batch_norm", "optimizer.lr=100", "seed=0"], 0, 0, False)
    failure = {"status": "failed", "error": "training loss is nan at epoch 1", "history": []}
    (diverged / "metrics.json").write_text(json.dumps(failure))
    fake_run(root / "6", ["experiment=batch_norm", "seed=3"], 0, 0, finished=False)
    (root / "6/metrics.json").write_text('{"status": "comp')  # cut off by a full disk, say
    return root


def test_runs_group_by_sweep_and_variants_average_seeds(sweep):
    (study,) = find_studies([sweep.parent])
    assert study.name == "batch_norm" and len(study.runs) == 4
    assert study.skipped == {
        sweep / "4": "no metrics.json: crashed or still running",
        sweep / "5": "failed: training loss is nan at epoch 1",
        sweep / "6": study.skipped[sweep / "6"],
    }
    assert study.skipped[sweep / "6"].startswith("corrupt metrics.json (")
    rows = study_table(study).splitlines()[2:]
    assert len(rows) == 2
    # Seeds 0 and 1: mean 0.865, sample std 0.00707; test 0.855 ± 0.00707.
    # Parameters, epochs and FLOPs per epoch (none: these records keep no config), nothing
    # timed: a wall time says more of the machine's load than of the variant.
    assert rows[0].startswith(
        "| model.batch_norm=false | 2 | 1,000 | 3 | - | 0.8650 ± 0.0071 | 3/3 | 0.8550 ± 0.0071 |"
    )
    assert rows[1].startswith(
        "| model.batch_norm=true | 2 | 1,000 | 3 | - | 0.8950 ± 0.0071 | 3/3 | 0.8850 ± 0.0071 |"
    )
    # Without batch norm, 0.03 lower on both seeds: a zero-width interval.
    # Two seeds cannot carry a verdict, least of all a zero-width interval.
    assert rows[0].endswith("| -0.0300 [-0.0300, -0.0300] | too few seeds (paired, 2 seeds) |")
    assert rows[1].endswith("| - | best |")


def two_widths(tmp_path, best, other, *more):
    """A sweep of model.hidden=[2] (`best`), [1] (`other`), [3], ...: each a dict seed → val acc."""
    root = tmp_path / "sweep"
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("{}")
    by_width = [(2, best), (1, other)] + [(3 + i, accs) for i, accs in enumerate(more)]
    runs = [(width, seed, val) for width, accs in by_width for seed, val in accs.items()]
    for n, (width, seed, val) in enumerate(runs):
        fake_run(root / f"{n:02d}", [f"model.hidden=[{width}]", f"seed={seed}"], val, val)
    (study,) = find_studies([root])
    return study, {v.label: v for v in variants(study)}


def verdicts(study):
    """Each row's label → its last two cells: the difference [interval] and the verdict."""
    rows = [row.strip("|").split("|") for row in study_table(study).splitlines()[2:]]
    return {cells[0].strip(): (cells[-2].strip(), cells[-1].strip()) for cells in rows}


def test_seeds_that_disagree_give_no_clear_difference(tmp_path):
    # Differences [1] − [2]: -0.04 at seed 0, +0.02 at seed 1; a 2-seed t-interval is wide.
    study, _ = two_widths(tmp_path, {0: 0.84, 1: 0.88}, {0: 0.80, 1: 0.90})
    assert verdicts(study)["model.hidden=[1]"][1] == "too few seeds (paired, 2 seeds)"
    assert verdicts(study)["model.hidden=[2]"] == ("-", "best")


def test_paired_difference_and_interval_match_a_hand_computation(tmp_path):
    best, other = {0: 0.90, 1: 0.91, 2: 0.93}, {0: 0.88, 1: 0.90, 2: 0.90}
    study, groups = two_widths(tmp_path, best, other)
    comparison = compare(groups["model.hidden=[1]"], groups["model.hidden=[2]"])
    # Differences -0.02, -0.01, -0.03: mean -0.02, sample std 0.01, se 0.01/√3 = 0.0057735027;
    # t(0.975, 2 df) = 4.302652729911275, half width 4.3026527299 × 0.0057735027 = 0.0248413771.
    assert comparison.mean == pytest.approx(-0.02)
    assert comparison.low == pytest.approx(-0.0448413771, abs=1e-9)
    assert comparison.high == pytest.approx(0.0048413771, abs=1e-9)
    assert comparison.paired_seeds == 3
    # Its high end lies 0.0048 from 0, within what moving each run by 0.001 can shift it
    # (2 × 0.001 × (1 + 4.3027/√2) = 0.0081): borderline.
    assert verdicts(study)["model.hidden=[1]"] == (
        "-0.0200 [-0.0448, +0.0048]",
        "no clear difference (paired, 3 seeds, borderline)",
    )


def test_pairing_uses_only_the_seeds_both_variants_have(tmp_path):
    # As in the hand computation above, plus a seed 4 only the best has and a seed 3 only the
    # other has, both far from the rest: used, they would move the mean difference.
    best, other = {0: 0.90, 1: 0.91, 2: 0.93, 4: 0.95}, {0: 0.88, 1: 0.90, 2: 0.90, 3: 0.70}
    study, groups = two_widths(tmp_path, best, other)
    comparison = compare(groups["model.hidden=[1]"], groups["model.hidden=[2]"])
    assert comparison.mean == pytest.approx(-0.02)
    assert comparison.low == pytest.approx(-0.0448413771, abs=1e-9)
    assert comparison.high == pytest.approx(0.0048413771, abs=1e-9)
    assert verdicts(study)["model.hidden=[1]"][1] == (
        "no clear difference (paired, 3 seeds, borderline)"
    )


def test_variants_without_shared_seeds_compare_unpaired_by_welch(tmp_path):
    # One seed (2) in common is too few to pair; [3] has a single run.
    best, other = {0: 0.90, 1: 0.92, 2: 0.94}, {2: 0.86, 3: 0.89}
    study, groups = two_widths(tmp_path, best, other, {5: 0.5})
    comparison = compare(groups["model.hidden=[1]"], groups["model.hidden=[2]"])
    # Means 0.875 and 0.92; variances 0.00045 (2 runs) and 0.0004 (3 runs), so squared standard
    # errors 0.000225 and 0.00013333: se = √0.00035833 = 0.0189297; Welch–Satterthwaite
    # df = 0.00035833² / (0.000225²/1 + 0.00013333²/2) = 2.15753, t(0.975, df) = 4.01520:
    # -0.045 ± 0.0760064.
    assert comparison.mean == pytest.approx(-0.045)
    assert comparison.low == pytest.approx(-0.1210064, abs=1e-6)
    assert comparison.high == pytest.approx(0.0310064, abs=1e-6)
    assert comparison.paired_seeds == 0
    # The same from the formula, with SciPy only for the t quantile.
    a, b = list(other.values()), list(best.values())
    var_a, var_b = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    df = (var_a + var_b) ** 2 / (var_a**2 / (len(a) - 1) + var_b**2 / (len(b) - 1))
    half = stats.t.ppf(0.975, df) * math.sqrt(var_a + var_b)
    assert (comparison.low, comparison.high) == pytest.approx((-0.045 - half, -0.045 + half))
    rows = verdicts(study)
    assert rows["model.hidden=[1]"] == (
        "-0.0450 [-0.1210, +0.0310]",
        "no clear difference (unpaired, Welch)",
    )
    assert rows["model.hidden=[3]"] == ("-", "one seed: noise unknown")


def test_pairing_finds_a_consistent_effect_that_overlap_misses(tmp_path):
    # The seeds spread by 0.05 and the variant is 0.01 (±0.002) lower on each: differences
    # -0.010, -0.012, -0.008, mean -0.01, std 0.002, so -0.01 ± 4.3027 × 0.002/√3 = ± 0.004968.
    best, other = {0: 0.80, 1: 0.85, 2: 0.90}, {0: 0.79, 1: 0.838, 2: 0.892}
    study, groups = two_widths(tmp_path, best, other)
    assert verdicts(study)["model.hidden=[1]"] == (
        "-0.0100 [-0.0150, -0.0050]",
        "worse (paired, 3 seeds, borderline)",
    )

    def old_interval(accs):  # the rule this replaces: mean ± 2·std/√n
        half = 2 * statistics.stdev(accs) / math.sqrt(len(accs))
        return statistics.fmean(accs) - half, statistics.fmean(accs) + half

    (best_low, _), (_, other_high) = old_interval(best.values()), old_interval(other.values())
    assert other_high > best_low  # 0.84 + 0.0586 > 0.85 - 0.0577: they overlap

    # Consistently higher on the seeds both have: better, though the best's extra seed 3
    # makes its mean the highest.
    study, _ = two_widths(tmp_path / "b", {**best, 3: 0.99}, {0: 0.81, 1: 0.862, 2: 0.908})
    assert verdicts(study)["model.hidden=[1]"] == (
        "+0.0100 [+0.0050, +0.0150]",
        "better (paired, 3 seeds, borderline)",
    )


def test_a_true_null_is_no_clear_difference(tmp_path):
    # Differences +0.01, -0.01, +0.005, -0.007: they straddle 0.
    best, other = {0: 0.80, 1: 0.85, 2: 0.90, 3: 0.88}, {0: 0.81, 1: 0.84, 2: 0.905, 3: 0.873}
    study, _ = two_widths(tmp_path, best, other)
    assert verdicts(study)["model.hidden=[1]"][1] == "no clear difference (paired, 4 seeds)"


def test_a_runs_seed_comes_from_its_config_else_its_override(tmp_path):
    assert seed_of(Run(tmp_path, {"config": {"seed": 7}}, {"seed": "0"})) == "7"
    assert seed_of(Run(tmp_path, {}, {"seed": "3"})) == "3"
    assert seed_of(Run(tmp_path, {}, {})) == "default"


def test_report_writes_markdown_and_overlay_figure(sweep, tmp_path):
    out = tmp_path / "out"
    report = write_report([sweep], out)
    text = report.read_text()
    assert (
        "## batch_norm" in text
        and "0.8950 ± 0.0071" in text
        and "![batch_norm](batch_norm.png)" in text
    )
    # Runs that did not finish are listed with the reason, not fatal.
    assert f"- `{sweep / '4'}`: no metrics.json" in text
    assert f"- `{sweep / '5'}`: failed: training loss is nan at epoch 1" in text
    assert (out / "batch_norm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# A complexity sweep with known errors: (hidden, seed) -> (params, final train acc, val, test).
SIZES = {
    ("[4]", 0): (3_190, 0.80, 0.78, 0.77),
    ("[4]", 1): (3_190, 0.82, 0.80, 0.79),
    ("[64]", 0): (50_890, 0.995, 0.90, 0.89),
    ("[64]", 1): (50_890, 0.987, 0.92, 0.91),
    ("[256]", 0): (203_530, 1.0, 0.95, 0.94),
    ("[256]", 1): (203_530, 1.0, 0.97, 0.96),
    ("[4,4]", 0): (3_210, 0.70, 0.69, 0.68),
    ("[4,4]", 1): (3_210, 0.74, 0.71, 0.70),
    ("[64,64]", 0): (55_050, 0.999, 0.93, 0.92),
    ("[64,64]", 1): (55_050, 0.995, 0.95, 0.94),
}


def test_complexity_figure_plots_the_records_errors_by_depth(tmp_path):
    root = tmp_path / "complexity/2026-01-01_00-00-00"
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("{}")
    for n, ((hidden, seed), (params, train, val, test)) in enumerate(SIZES.items()):
        overrides = ["experiment=complexity", f"model.hidden={hidden}", f"seed={seed}"]
        fake_run(
            root / str(n), overrides, val, test, params=params, train_acc=train, final_drop=0.05
        )
    (study,) = find_studies([root])
    depths = complexity(study)
    assert list(depths) == [1, 2]
    fig = plot_complexity("complexity", depths)
    panels = {ax.get_title(): ax for ax in fig.axes}
    # Means over the two seeds: train error (0.19, 0.009, 0.0) for one layer, (0.28, 0.003) for two.
    expected = {
        "final training error": ([0.19, 0.009, 0.0], [0.28, 0.003]),
        # Each run's last epoch is 0.05 below its best.
        "final validation error": ([0.26, 0.14, 0.09], [0.35, 0.11]),
        "best validation error": ([0.21, 0.09, 0.04], [0.30, 0.06]),
        "test error": ([0.22, 0.10, 0.05], [0.31, 0.07]),
    }
    for title, (one, two) in expected.items():
        lines = [line for line in panels[title].get_lines() if line.get_marker() == "o"]
        assert list(lines[0].get_xdata()) == [3_190, 50_890, 203_530]
        assert list(lines[1].get_xdata()) == [3_210, 55_050]
        assert lines[0].get_ydata() == pytest.approx(one)
        assert lines[1].get_ydata() == pytest.approx(two)
        # The interpolation points (mean train error <= 0.01): 50,890 and 55,050 parameters.
        dashed = [
            line.get_xdata()[0] for line in panels[title].get_lines() if line.get_ls() == "--"
        ]
        assert dashed == [50_890, 55_050]
    # The bands are mean ± the seeds' sample std: one layer's test error spans 0.22 ± 0.01414
    # at 4 units down to 0.05 ± 0.01414 at 256.
    band = panels["test error"].collections[0].get_paths()[0].vertices[:, 1]
    assert band.max() == pytest.approx(0.22 + 0.014142, abs=1e-5)
    assert band.min() == pytest.approx(0.05 - 0.014142, abs=1e-5)
    assert interpolation_line(depths) == (
        "Training error first at or below 0.01 (the interpolation point): "
        "1 hidden layer: 50,890 parameters; 2 hidden layers: 55,050 parameters."
    )
    text = write_report([root], tmp_path / "out").read_text()
    assert "![error against size](complexity_error_vs_size.png)" in text
    assert "| model.hidden=[64] | 2 | 50,890 | 3 | - | 0.9100 ± 0.0141 |" in text
    # A study that sweeps anything besides model.hidden gets no complexity figure.
    fake_run(root / "99", ["experiment=complexity", "model.hidden=[4]", "optimizer.lr=1"], 0.5, 0.5)
    assert complexity(find_studies([root])[0]) is None


def test_report_cli_errors_on_a_directory_without_runs(tmp_path):
    result = run_module("mlp_lab.report", str(tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: no runs (directories with .hydra/) in {tmp_path}")


@pytest.mark.real_data
def test_report_on_a_real_two_seed_batch_norm_sweep(real_data_root, tmp_path):
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "experiment=batch_norm",
        "seed=0,1",
        f"data.root={real_data_root}",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=40",
        "trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={sweep}",
    ]
    train = run_module("mlp_lab.train", *args)
    assert train.returncode == 0, train.stderr[-2000:]
    result = run_module("mlp_lab.report", str(sweep))
    assert result.returncode == 0, result.stderr[-2000:]
    text = (sweep / "report.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| model.batch_norm=")]
    assert len(rows) == 2 and all(row.count(" ± ") == 2 and "| 2 |" in row for row in rows)
    # 40 batches of 256 a training epoch, all 5,000 validation images, through 784-256-256-10
    # (268,800 multiply-adds an image; batch norm's few left out): 2 × 268,800 × (3 × 10,240 +
    # 5,000) = 19.2 GFLOP.
    assert all("| 2 | 19.2 |" in row for row in rows)
    assert (sweep / "batch_norm.png").is_file()


@pytest.mark.real_data
def test_notebook_shows_the_reports_comparison(real_data_root, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    from mlp_lab.fit import train

    cfg = load_config(
        *quiet(real_data_root, "trainer.max_epochs=1", "trainer.limit_train_batches=30")
    )
    train(cfg, tmp_path / "runs/one")
    (tmp_path / "runs/one/.hydra").mkdir()
    (tmp_path / "runs/one/.hydra/overrides.yaml").write_text("[]")
    # Beside it a hand-made sweep whose [1] is 0.01 below [2] on each of three seeds.
    sweep, _ = two_widths(
        tmp_path / "runs", {0: 0.80, 1: 0.85, 2: 0.90}, {0: 0.79, 1: 0.838, 2: 0.892}
    )
    nb = nbformat.read(PROJECT_DIR / "notebooks/analysis.ipynb", as_version=4)
    monkeypatch.setenv("MLP_LAB_RUNS", str(tmp_path / "runs"))
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    outputs = [o for cell in nb.cells for o in cell.get("outputs", [])]
    printed = "".join(o.get("text", "") for o in outputs)
    assert "7 runs in 2 studies" in printed
    shown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert study_table(sweep) in shown  # the report's comparison, paired by seed
    assert "| -0.0100 [-0.0150, -0.0050] | worse (paired, 3 seeds, borderline) |" in shown
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2


def test_a_time_named_sweep_is_titled_by_what_it_varied_with_short_numbers(tmp_path):
    root = tmp_path / "2026-01-01_12-00-00"
    for n, lr in enumerate(("0.012345678901", "0.1")):
        fake_run(root / str(n), [f"optimizer.lr={lr}", "seed=0"], 0.8 + n / 100, 0.8)
    (root / "multirun.yaml").write_text("{}")
    (study,) = find_studies([root])
    fig = plot_study(study)
    title = "sweep over optimizer.lr (2026-01-01_12-00-00): mean over 1 seed"
    assert fig._suptitle.get_text() == title
    labels = fig.legends[0].get_texts()
    assert sorted(t.get_text() for t in labels) == ["optimizer.lr=0.01235", "optimizer.lr=0.1"]


def test_report_counts_one_run_in_one_study_in_the_singular(tmp_path):
    fake_run(tmp_path / "depth" / "0", ["model.hidden=[256]", "seed=0"], 0.8, 0.8)
    text = write_report([tmp_path / "depth"], tmp_path / "report.md").read_text()
    assert "1 run in 1 study," in text


def chromium_or_skip() -> str:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("no Chromium to render report.html: `make browser` installs Debian's")
    return chromium


def render(html, tmp_path, output: str) -> None:
    """Open `html` in headless Chromium with `output` (--screenshot=..., --print-to-pdf=...)."""
    browse = [chromium_or_skip(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
    browse += ["--disable-background-networking", f"--user-data-dir={tmp_path / 'profile'}"]
    page = [*browse, "--no-pdf-header-footer", "--window-size=1200,2400", output, html.as_uri()]
    done = subprocess.run(page, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_report_html_is_self_contained_and_renders_in_chromium(sweep, tmp_path):
    chromium_or_skip()
    out = tmp_path / "out"
    write_report([sweep], out)
    html = (out / "report.html").read_text()
    # Every figure inline, nothing fetched from elsewhere.
    sources = re.findall(r'<img [^>]*src="([^"]+)"', html)
    figures = sorted(out.glob("*.png"))
    assert len(sources) == len(figures) == 1
    data = sources[0].removeprefix("data:image/png;base64,")
    assert base64.b64decode(data) == figures[0].read_bytes()
    shot = tmp_path / "shot.png"
    render(out / "report.html", tmp_path, f"--screenshot={shot}")
    image = imread(shot)[..., :3]
    assert image.shape == (2400, 1200, 3)
    assert (image < 0.9).any(axis=-1).mean() > 0.02  # text, tables and the figure: not blank
    # The figure is drawn, not a broken-image icon: its first line's colour (matplotlib's C0).
    blue = np.abs(image - np.array([31, 119, 180]) / 255).max(axis=-1) < 0.03
    assert blue.sum() > 500


def test_the_printed_report_has_no_nearly_empty_page(tmp_path):
    """Five studies shaped like the lab's (2 to 4 variants × 3 seeds, their claims, the classes
    each gets wrong), printed by Chromium: no page but the last holds under a tenth of the
    fullest page's text (a figure pushed off its table's page, an orphaned line)."""
    from pypdf import PdfReader

    chromium_or_skip()
    config = OmegaConf.to_container(OmegaConf.structured(load_config()))
    names = list("abcdefghij")
    confusion = {"classes": names, "counts": [[90 + (i == j) * 800 for j in range(10)]
                                              for i in range(10)]}  # fmt: skip
    shapes = [("model.hidden", 2), ("model.dropout", 4), ("loss.name", 4), ("optimizer.lr", 3),
              ("model.batch_norm", 2)]  # fmt: skip
    for n, (key, count) in enumerate(shapes):
        values = list("abcd")[:count]
        claims = [f"{key}=a > {key}={v}" for v in values[1:]]
        words = {"question": f"Does {key} raise accuracy, and by how much?", "order": n,
                 "asks": claims, "lab_found": "a, by a little", "lab_claims": claims}  # fmt: skip
        root = tmp_path / "lab" / key
        root.mkdir(parents=True)
        (root / "multirun.yaml").write_text("{}")
        for i, (value, seed) in enumerate((v, s) for v in values for s in range(3)):
            record = config | {"seed": seed, "study": words}
            val = 0.85 + 0.01 * (value == "a") + seed / 1000
            overrides = [f"{key}={value}", f"seed={seed}"]
            fake_run(root / str(i), overrides, val, val - 0.01, epochs=10, config=record,
                     test_confusion=confusion)  # fmt: skip
    write_report(sorted((tmp_path / "lab").iterdir()), tmp_path / "out")
    pdf = tmp_path / "report.pdf"
    render(tmp_path / "out/report.html", tmp_path, f"--print-to-pdf={pdf}")
    text = [len(page.extract_text()) for page in PdfReader(pdf).pages]
    assert len(text) >= 3
    assert min(text[:-1]) >= 0.1 * max(text), text


def test_tensorboard_lists_a_labs_runs_by_study_variant_and_seed(tmp_path):
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
    from torch.utils.tensorboard import SummaryWriter

    for study, key in (("depth", "model.hidden"), ("dropout", "model.dropout")):
        root = tmp_path / "lab" / study
        runs = [("[1]", 0), ("[1]", 10), ("[2]", 0), ("[2]", 10)]
        for n, (value, seed) in enumerate(runs + [("[1]", 0)] * (study == "depth")):
            run = root / str(n)
            fake_run(run, [f"experiment={study}", f"{key}={value}", f"seed={seed}"], 0.8, 0.8)
            label = run / "tensorboard" / f"{key}={value}" / f"seed={seed}"
            with SummaryWriter(label) as writer:
                writer.add_scalar("val/acc", 0.5 + n / 10, 1)
        (root / "multirun.yaml").write_text("{}")
    write_report([tmp_path / "lab/depth", tmp_path / "lab/dropout"], tmp_path / "lab")
    board = EventMultiplexer().AddRunsFromDirectory(str(tmp_path / "lab/tensorboard"))
    board.Reload()
    assert sorted(board.Runs()) == sorted(
        [
            f"{study}/{key}={value}/seed={seed}"
            for study, key in (("depth", "model.hidden"), ("dropout", "model.dropout"))
            for value in ("[1]", "[2]")
            for seed in (0, 10)
        ]
        + ["depth/model.hidden=[1]/seed=0,run=4"]  # the same variant and seed twice: both
    )
    # Each is the run's own events, linked: its scalar is there, and the run keeps its files.
    run = "dropout/model.dropout=[2]/seed=10"
    events = board.Tensors(run, "val/acc")
    assert [float(e.tensor_proto.float_val[0]) for e in events] == pytest.approx([0.8])
    label = tmp_path / "lab/dropout/3/tensorboard/model.dropout=[2]/seed=10"
    assert Path(board.RunPaths()[run]).resolve() == label.resolve() and label.is_dir()
    # Linked again (a second report written into the folder at once): the same link, not two.
    events = tmp_path / "lab/dropout/3/tensorboard/model.dropout=[2]/seed=10"
    link = tmp_path / "lab/tensorboard" / run
    link_events(link, events, "3")
    assert sorted(p.name for p in link.parent.iterdir()) == ["seed=0", "seed=10"]
    assert link.resolve() == events.resolve()
