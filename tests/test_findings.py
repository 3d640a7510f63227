import json
import math
import re
import statistics

import pytest
from commands import run_module
from conftest import fake_run, fast_overrides
from scipy import stats

from mlp_lab import findings
from mlp_lab.report import plot_study, write_report
from mlp_lab.studies import Comparison, find_studies, variants

BATCH_NORM = {
    "question": "Does batch normalisation raise accuracy?",
    "order": 8,
    "lab_found": "0.8439 without, 0.8817 with",
    "lab_claims": ["model.batch_norm=true > model.batch_norm=false"],
}


def a_sweep(root, values, study=BATCH_NORM, key="model.batch_norm", **record):
    """Hand-made runs of `key`: {(value, seed): (val acc, test acc)}, each with a config."""
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("{}")
    for n, ((value, seed), (val, test)) in enumerate(values.items()):
        config = {"seed": seed, "study": study, "optimizer": {"lr": 0.1}, key: value}
        overrides = [f"{key}={value}", f"seed={seed}"]
        fake_run(root / str(n), overrides, val, test, config=config, **record)
    (study,) = find_studies([root])
    return study


def test_report_answers_the_studys_question_from_real_runs(synthetic_root, tmp_path):
    """2 variants × 3 seeds × 3 epochs, trained: the report's words come from their records."""
    sweep = tmp_path / "sweep"
    overrides = fast_overrides(synthetic_root, "trainer.max_epochs=3", "logger=none")
    result = run_module(
        "mlp_lab.train", "-m", "experiment=batch_norm", "seed=0,1,2", *overrides,
        f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    text = write_report([sweep], tmp_path / "out").read_text()
    assert "**Question:** Does batch normalisation after each hidden layer raise accuracy?" in text
    # The settings come from the records: the overrides above, not the study's defaults.
    held = next(line for line in text.splitlines() if line.startswith("**Held fixed:**"))
    for setting in ("data.name=fashion_mnist", "data.batch_size=64", "trainer.max_epochs=3"):
        assert f"`{setting}`" in held
    assert "**Varied:** `model.batch_norm`: false, true; over seeds 0, 1, 2." in text
    (study,) = find_studies([sweep])
    on, off = (
        {run.record["config"]["seed"]: run.record for run in study.runs
         if run.record["config"]["model"]["batch_norm"] is flag}
        for flag in (True, False)
    )  # fmt: skip
    # The answer: the best on best val accuracy against the other, paired by seed.
    val = {s: on[s]["best_val_acc"] - off[s]["best_val_acc"] for s in (0, 1, 2)}
    best, other = ("true", "false") if statistics.fmean(val.values()) > 0 else ("false", "true")
    sign = 1 if best == "true" else -1
    low, high = sorted(
        sign * x for x in stats.ttest_rel(*([r["best_val_acc"] for r in (on, off)[i].values()]
                                           for i in (0, 1))).confidence_interval(0.95)
    )  # fmt: skip
    said = f"{sign * statistics.fmean(val.values()):+.4f} [{low:+.4f}, {high:+.4f}]"
    answer = next(line for line in text.splitlines() if line.startswith("**Our answer:**"))
    assert f"`model.batch_norm={best}`" in answer and f"`model.batch_norm={other}`" in answer
    assert f"{said} validation accuracy, paired over 3 seeds" in answer
    assert re.search(r"is better than|are not told apart", answer)
    # The lab's finding, and its claim weighed on test accuracy, paired.
    test = stats.ttest_rel(
        [on[s]["test_acc"] for s in (0, 1, 2)], [off[s]["test_acc"] for s in (0, 1, 2)]
    )
    t_low, t_high = test.confidence_interval(0.95)
    word = "agrees" if t_low > 0 else "differs" if t_high < 0 else "cannot tell"
    assert "**The original lab found:** 0.8439 without batch normalisation" in text
    claim = next(
        line for line in text.splitlines() if line.startswith("- `model.batch_norm=true >")
    )
    assert claim.startswith(f"- `model.batch_norm=true > model.batch_norm=false`: **{word}** (")
    assert f"[{t_low:+.4f}, {t_high:+.4f}] test accuracy, paired over 3 seeds" in claim
    assert f"Where `model.batch_norm={best}` goes wrong (test images, 3 runs together): " in text
    # The figure: validation loss per variant with the seeds' band, whole-epoch ticks.
    fig = plot_study(study)
    panel = next(ax for ax in fig.axes if ax.get_title() == "validation loss")
    assert len(panel.get_lines()) == 2 and len(panel.collections) == 2
    epoch_2 = [record["history"][1]["val_loss"] for record in off.values()]
    band = panel.collections[0].get_paths()[0].vertices  # the first variant's: false
    at_2 = sorted({y for x, y in band if x == 2})
    assert at_2 == pytest.approx([min(epoch_2), max(epoch_2)])
    assert all(tick == int(tick) for tick in panel.get_xticks())


def test_two_seeds_say_a_verdict_needs_more_seeds(tmp_path):
    # Differences of -0.04 and -x with (0.04 + x) / 2 = (0.04 - x) / √2 · 1: an effect of one
    # spread (Cohen's dz = 1), for which G*Power's paired t-test needs 10 pairs for 80 % power.
    x = 0.04 * (math.sqrt(2) - 1) / (math.sqrt(2) + 1)
    values = {
        ("true", 0): (0.90, 0.89), ("true", 1): (0.90, 0.89),
        ("false", 0): (0.86, 0.85), ("false", 1): (0.90 - x, 0.89 - x),
    }  # fmt: skip
    study = a_sweep(tmp_path / "sweep", values)
    assert findings.answer(study) == (
        "2 seeds cannot carry a verdict: run at least 3 (the spread seen here says about 10), "
        "e.g. seed=0,1,2,3,4,: `model.batch_norm=true` against `model.batch_norm=false`."
    )
    (check,) = findings.lab_checks(study)
    assert (check.word, check.why) == ("cannot tell", "too few seeds to compare")
    text = write_report([tmp_path / "sweep"], tmp_path / "out").read_text()
    assert "| too few seeds (paired, 2 seeds) |" in text


@pytest.mark.parametrize(
    ("spread", "needed"), [(2.0, 34), (1.25, 15), (1.0, 10), (0.5, 5), (0.0, 3)]
)
def test_seeds_needed_match_g_power(spread, needed):
    # G*Power 3.1, "means: difference from constant (one sample case)", two-tailed, α = 0.05,
    # power 0.8: dz = 0.5 → 34, 0.8 → 15, 1.0 → 10, 2.0 → 5; never fewer than MIN_SEEDS.
    assert Comparison(-1.0, -2.0, -0.5, 5, spread).seeds_needed() == needed


def test_lab_claims_are_weighed_on_test_accuracy(tmp_path):
    # Test accuracy of the three widths on seeds 0-2: [2] above [1] by 0.02 ± 0.005 on every
    # seed; [3] as [2] but for noise of ±0.002 (an "=" claim within ±0.01).
    tests = {
        ("[1]", 0): 0.80, ("[1]", 1): 0.85, ("[1]", 2): 0.825,
        ("[2]", 0): 0.82, ("[2]", 1): 0.875, ("[2]", 2): 0.84,
        ("[3]", 0): 0.821, ("[3]", 1): 0.873, ("[3]", 2): 0.841,
    }  # fmt: skip
    claims = {
        "model.hidden=[2] > model.hidden=[1]": "agrees",
        "model.hidden=[1] > model.hidden=[2]": "differs",
        "model.hidden=[3] = model.hidden=[2]": "agrees",
        "model.hidden=[2] = model.hidden=[1]": "differs",
        "model.hidden=[3] > model.hidden=[2]": "cannot tell",
        "model.hidden=[9] > model.hidden=[2]": "not run here",
    }
    study = {"lab_found": "wider is better", "lab_claims": list(claims)}
    values = {k: (v, v) for k, v in tests.items()}
    checks = findings.lab_checks(a_sweep(tmp_path / "s", values, study, "model.hidden"))
    assert {c.claim: c.word for c in checks} == claims
    # [2] − [1]: differences 0.02, 0.025, 0.015: mean 0.02, sd 0.005, half width
    # t(0.975, 2) × 0.005/√3 = 4.302653 × 0.0028868 = 0.0124207.
    assert checks[0].why == "+0.0200 [+0.0076, +0.0324] test accuracy, paired over 3 seeds"
    assert findings.agreement(checks) == "differs"
    assert findings.agreement(checks[:1] + checks[2:3]) == "agrees"
    assert findings.agreement(checks[:1] + checks[4:]) == "agrees in part"
    assert findings.agreement(checks[4:5]) == "cannot tell"
    assert findings.agreement(checks[5:]) == "-"


def test_a_one_variant_study_weighs_metrics_of_its_last_epoch(tmp_path):
    study = {"lab_found": "overfits", "lab_claims": ["train_acc > val_acc"]}
    values = {("100", s): (0.88, 0.87) for s in (0, 1, 2)}
    history = [
        {"epoch": e, "train_loss": 1 / e, "train_acc": 0.82 + e / 100, "val_loss": loss,
         "val_acc": 0.85}
        for e, loss in enumerate((0.6, 0.4, 0.35, 0.45, 0.5), start=1)
    ]  # fmt: skip
    sweep = a_sweep(tmp_path / "s", values, study, "trainer.max_epochs", history=history)
    (check,) = findings.lab_checks(sweep)
    # 0.87 − 0.85 at epoch 5 on every seed: a zero-width interval above 0.
    assert (check.word, check.why) == (
        "agrees",
        "+0.0200 [+0.0200, +0.0200] (train_acc − val_acc, last epoch), paired over 3 seeds",
    )
    (variant,) = variants(sweep)
    assert findings.overfitting_turn(variant) == 3
    assert findings.overfitting(variant) == (
        "Validation loss is lowest at epoch 3 (0.3500) and rises to 0.5000 by epoch 5, while "
        "training loss falls from 0.3333 to 0.2000; training accuracy leads validation accuracy "
        "by 0.0000 at epoch 3 and 0.0200 at epoch 5: from epoch 3 on, the network learns its "
        "training images at the expense of new ones."
    )


def test_settings_held_fixed_and_varied_come_from_the_records(tmp_path):
    values = {("true", s): (0.9, 0.9) for s in (0, 1)} | {("false", s): (0.8, 0.8) for s in (0, 1)}
    study = a_sweep(tmp_path / "s", values)
    fixed, varied = findings.settings(study)
    assert fixed == {"optimizer.lr": 0.1}  # seed and study are not settings
    assert varied == {"model.batch_norm": ["true", "false"]}
    assert findings.settings_lines(study) == [
        "**Held fixed:** `optimizer.lr=0.1`.",
        "**Varied:** `model.batch_norm`: true, false; over seeds 0, 1.",
    ]


def test_weak_classes_sum_the_seeds_confusion_counts(tmp_path):
    names = ["cat", "dog", "owl"]
    # Rows: true class. Summed over the two runs: cat 18/20 right, dog 12/20 (7 taken for cat),
    # owl 19/20.
    one = [[9, 1, 0], [3, 6, 1], [0, 1, 9]]
    two = [[9, 0, 1], [4, 6, 0], [0, 0, 10]]
    values = {("true", s): (0.9, 0.9) for s in (0, 1)}
    study = a_sweep(tmp_path / "s", values)
    for run, counts in zip(study.runs, (one, two), strict=True):
        run.record["test_confusion"] = {"classes": names, "counts": counts}
    (variant,) = variants(study)
    assert findings.weak_classes(variant, count=2) == (
        "Where `all runs` goes wrong (test images, 2 runs together): dog 0.600 right (0.350 "
        "taken for cat); cat 0.900 right (0.050 taken for dog)."
    )


def test_xor_answer_counts_the_seeds_that_solve_it(tmp_path):
    seeds = [{"seed": s, "final_loss": 0.125 if s in (0, 7) else 1e-12, "solved": s not in (0, 7)}
             for s in range(20)]  # fmt: skip
    record = {"xor": {"hidden": 5, "lr": 0.1, "epochs": 10000}, "seeds": seeds,
              "study": {"question": "XOR?", "order": 11, "lab_found": "it learns XOR"}}  # fmt: skip
    (tmp_path / "xor").mkdir()
    (tmp_path / "xor/xor.json").write_text(json.dumps(record))
    (xor,) = findings.xor_findings([tmp_path])
    words, word = xor.answer()
    # Clopper-Pearson for 18 of 20: the 2.5 % and 97.5 % beta quantiles, 68.3 % to 98.8 %.
    low, high = stats.beta.ppf(0.025, 18, 3), stats.beta.ppf(0.975, 19, 2)
    assert (f"{low:.0%}", f"{high:.0%}") == ("68%", "99%")
    assert words == (
        "Solved by 18 of 20 seeds (90%; 95 % interval 68% to 99%, Clopper-Pearson); the others "
        "stall with a dead ReLU unit: seeds 0 (MSE 0.125), 7 (MSE 0.125)."
    )
    assert word == "agrees"
    assert xor.short() == "solved by 18 of 20 seeds (90%)"


def test_a_study_none_of_whose_runs_finished_still_asks_its_question(tmp_path):
    sweep = tmp_path / "overfit"
    killed = {"status": "killed", "error": "killed by SIGKILL in epoch 3", "history": []}
    fake_run(sweep / "0", ["seed=0"], 0.9, 0.9, config={"study": BATCH_NORM}, **killed)
    (sweep / "multirun.yaml").write_text("{}")
    text = write_report([sweep], tmp_path / "out").read_text()
    assert f"| {BATCH_NORM['question']} | - | {BATCH_NORM['lab_found']} | - |" in text
    assert f"- `python -m mlp_lab.resume {sweep}`" in text  # the command that finishes it
