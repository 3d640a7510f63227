import json
import math
import re
import statistics
from pathlib import Path

import numpy as np
import pytest
from commands import run_module
from conftest import fake_run, fast_overrides
from scipy import stats

from mlp_lab.report import findings
from mlp_lab.report.plots import plot_study, prefix_lines
from mlp_lab.report.studies import Comparison, Run, Study, find_studies, variants
from mlp_lab.report.write import write_report
from mlp_lab.report.xor import xor_findings

BATCH_NORM = {
    "question": "Does batch normalisation raise accuracy?",
    "order": 8,
    "asks": ["model.batch_norm=true > model.batch_norm=false"],
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
    # Each record keeps the images its splits held: an epoch is 2 × 268,800 multiply-adds ×
    # (3 × 1,000 training + 200 validation images) = 1.7 GFLOP.
    rows = [line for line in text.splitlines() if line.startswith("| model.batch_norm=")]
    assert len(rows) == 2 and all(row.split(" | ")[3:5] == ["3", "1.7"] for row in rows)
    (study,) = find_studies([sweep])
    on, off = (
        {run.record["config"]["seed"]: run.record for run in study.runs
         if run.record["config"]["model"]["batch_norm"] is flag}
        for flag in (True, False)
    )  # fmt: skip
    # The answer and the lab's claim, both on test accuracy, paired by seed.
    test = stats.ttest_rel(
        [on[s]["test_acc"] for s in (0, 1, 2)], [off[s]["test_acc"] for s in (0, 1, 2)]
    )
    t_low, t_high = test.confidence_interval(0.95)
    mean = statistics.fmean(on[s]["test_acc"] - off[s]["test_acc"] for s in (0, 1, 2))
    said = f"{mean:+.4f} [{t_low:+.4f}, {t_high:+.4f}]"
    answer = next(line for line in text.splitlines() if line.startswith("**Our answer:**"))
    if t_low > 0:
        assert answer.startswith(
            f"**Our answer:** Yes: batch normalisation is above no batch normalisation by {said}"
        )
    elif t_high < 0:
        assert answer.startswith(
            f"**Our answer:** No: batch normalisation is below no batch normalisation by {said}"
        )
    else:
        assert answer.startswith(
            "**Our answer:** Cannot tell with 3 seeds: batch normalisation and no batch "
            f"normalisation are not told apart ({said})"
        )
    word = "agrees" if t_low > 0 else "differs" if t_high < 0 else "cannot tell"
    assert "**The original lab found:** 0.8439 without batch normalisation" in text
    claim = next(
        line for line in text.splitlines() if line.startswith("- `model.batch_norm=true >")
    )
    assert claim.startswith(f"- `model.batch_norm=true > model.batch_norm=false`: **{word}**")
    assert f"{said} test accuracy, paired over 3 seeds" in claim
    # The summary row shows the answer's first sentence, and the agreement, on that measure.
    row = next(line for line in text.splitlines() if line.startswith("| Does batch norm"))
    assert answer.removeprefix("**Our answer:** ").startswith(row.split(" | ")[1])
    best = "true" if mean > 0 else "false"
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
        "Cannot tell with 2 seeds: `model.batch_norm=true` against `model.batch_norm=false`: "
        "too few seeds.",
        "2 seeds cannot carry a verdict: run at least 3 (the spread seen here says about 10), "
        "e.g. seed=0,1,2,3,4.",
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
    # t(0.975, 2) × 0.005/√3 = 4.302653 × 0.0028868 = 0.0124207. Its low end, 0.0076, lies
    # within 2 × 0.001 × (1 + 4.302653/√2) = 0.0081 of 0: borderline.
    assert checks[0].why == (
        "`model.hidden=[2]` is above `model.hidden=[1]` by +0.0200 [+0.0076, +0.0324] test "
        "accuracy, paired over 3 seeds; about 4 seeds would settle it"
    )
    assert checks[0].borderline
    assert findings.agreement(checks) == "agrees in part (borderline)"
    assert findings.agreement(checks[2:3]) == "agrees (borderline)"  # its ends 0.0057 from ±0.01
    assert findings.agreement(checks[1:2] + checks[3:4]) == "differs (borderline)"
    assert findings.agreement(checks[4:5]) == "cannot tell (borderline)"
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
        "`train_acc` is above `val_acc` by +0.0200 [+0.0200, +0.0200] (train_acc − val_acc, last "
        "epoch), paired over 3 seeds",
    )
    (variant,) = variants(sweep)
    assert findings.overfitting_turn(variant) == 3
    assert findings.overfitting(variant) == (
        "Yes: validation loss is lowest at epoch 3 (0.3500) and rises to 0.5000 by epoch 5, while "
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
    (xor,) = xor_findings([tmp_path])
    words, word = xor.answer()
    # Clopper-Pearson for 18 of 20: the 2.5 % and 97.5 % beta quantiles, 68.3 % to 98.8 %.
    low, high = stats.beta.ppf(0.025, 18, 3), stats.beta.ppf(0.975, 19, 2)
    assert (f"{low:.0%}", f"{high:.0%}") == ("68%", "99%")
    assert words == (
        "Yes: solved by 18 of 20 seeds (90%; 95 % interval 68% to 99%, Clopper-Pearson); the "
        "others stall with a dead ReLU unit: seeds 0 (MSE 0.125), 7 (MSE 0.125)."
    )
    assert word == "agrees"
    assert xor.short() == "Yes: solved by 18 of 20 seeds (90%)"


def test_a_study_none_of_whose_runs_finished_still_asks_its_question(tmp_path):
    sweep = tmp_path / "overfit"
    killed = {"status": "killed", "error": "killed by SIGKILL in epoch 3", "history": []}
    fake_run(sweep / "0", ["seed=0"], 0.9, 0.9, config={"study": BATCH_NORM}, **killed)
    (sweep / "multirun.yaml").write_text("{}")
    text = write_report([sweep], tmp_path / "out").read_text()
    assert f"| {BATCH_NORM['question']} | - | {BATCH_NORM['lab_found']} | - |" in text
    assert f"- `python -m mlp_lab.resume {sweep}`" in text  # the command that finishes it


def in_memory_study(name, tests, study, key="model.batch_norm", vals=None, history=None):
    """A Study of hand-made runs, without files: {(value, seed): test acc} (val acc the same
    unless `vals` gives it)."""
    runs = []
    for (value, seed), test in tests.items():
        val = (vals or tests)[(value, seed)]
        record = {"params": 1000, "best_val_acc": val, "test_acc": test, "best_epoch": 3,
                  "history": history or [{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5,
                                          "val_loss": 1.0, "val_acc": val}],
                  "config": {"seed": seed, "study": study}}  # fmt: skip
        runs.append(Run(Path(name) / f"{value}-{seed}", record, {key: value, "seed": str(seed)}))
    return Study(name, Path(name), runs, words=study)


def test_validation_and_test_disagree_one_verdict_on_test_accuracy_everywhere(tmp_path):
    # On validation, batch norm is 0.02 above on every seed; on test, it is not told apart
    # (differences +0.02, -0.02, +0.005).
    values = {}
    for seed, (off_test, on_test) in enumerate([(0.85, 0.87), (0.86, 0.84), (0.87, 0.875)]):
        values[("false", seed)] = (0.86 + seed / 100, off_test)
        values[("true", seed)] = (0.88 + seed / 100, on_test)
    a_sweep(tmp_path / "sweep", values)
    text = write_report([tmp_path / "sweep"], tmp_path / "out").read_text()
    test = stats.ttest_rel([0.87, 0.84, 0.875], [0.85, 0.86, 0.87]).confidence_interval(0.95)
    said = f"+0.0017 [{test.low:+.4f}, {test.high:+.4f}]"
    row = next(line for line in text.splitlines() if line.startswith("| Does batch norm"))
    assert row == (
        "| Does batch normalisation raise accuracy? | Cannot tell with 3 seeds: "
        f"`model.batch_norm=true` and `model.batch_norm=false` are not told apart ({said}). | "
        "0.8439 without, 0.8817 with | cannot tell: `model.batch_norm=true` and "
        f"`model.batch_norm=false` are not told apart ({said}) |"
    )
    assert (
        "| question | our answer (test accuracy) | the original lab found | agreement (test "
        in text
    )
    assert "**Our answer:** Cannot tell with 3 seeds: `model.batch_norm=true` and" in text
    assert f"not told apart: {said} test accuracy, paired over 3 seeds" in text
    # The table's comparison is on test accuracy too; validation's +0.0200 is a verdict nowhere.
    assert "Δ test acc vs best [95 % CI]" in text and "+0.0200 [" not in text
    assert "**Our answer:** Yes" not in text and "better" not in text


def equal_claim_study(mean, spread, seeds=5):
    """[2] − [1] on test accuracy: `mean` + spread × z over `seeds` seeds (z of mean 0, sd 1)."""
    z = [-1.264911, -0.632456, 0.0, 0.632456, 1.264911][:seeds]
    tests = {("[1]", s): 0.85 + s / 100 for s in range(seeds)}
    tests |= {("[2]", s): 0.85 + s / 100 + mean + spread * z[s] for s in range(seeds)}
    claims = ["model.hidden=[2] = model.hidden=[1]", "model.hidden=[2] > model.hidden=[1]"]
    words = {"lab_claims": claims, "names": {"model.hidden=[2]": "[2]", "model.hidden=[1]": "[1]"}}
    return in_memory_study("width", tests, words, key="model.hidden")


def test_an_equality_claim_just_outside_the_margin_differs_with_its_direction_and_size():
    # Differences 0.0098 + 0.000725·z: a 95 % interval of 0.0098 ± 2.7764·0.000725/√5 = ±0.0009.
    equal, above = findings.lab_checks(equal_claim_study(0.0098, 0.000725))
    assert equal.word == "differs"
    assert equal.why.startswith(
        "[2] is above [1] by +0.0098 [+0.0089, +0.0107] test accuracy, paired over 5 seeds, "
        "not equal to it (margin ±0.01)"
    )
    # 0.0107 lies 0.0007 beyond the margin: a change of 0.001 in each run could bring it in.
    assert equal.borderline
    assert above.word == "agrees" and not above.borderline
    # One claim agrees, one differs: the study agrees in part.
    assert findings.agreement([above, equal]) == "agrees in part (borderline)"
    # The summary's cell names what the differing claim found instead: its direction and size.
    assert findings.agreement_cell([above, equal]) == (
        "agrees in part (borderline); differs: [2] is above [1] by +0.0098 [+0.0089, +0.0107], "
        "not equal to it (margin ±0.01)"
    )
    # Well inside the margin, and well outside it: firm words.
    (inside, _) = findings.lab_checks(equal_claim_study(0.001, 0.0005))
    assert (inside.word, inside.borderline) == ("agrees", False)
    assert inside.why.startswith("[2] and [1] are equal within ±0.01: +0.0010 [")
    (outside, _) = findings.lab_checks(equal_claim_study(0.03, 0.0005))
    assert (outside.word, outside.borderline) == ("differs", False)


def test_one_agreeing_and_one_differing_claim_agree_in_part():
    tests = {("[1]", s): 0.85 + s / 100 for s in range(5)}
    tests |= {("[2]", s): 0.88 + s / 100 + (-1) ** s * 0.001 for s in range(5)}
    claims = ["model.hidden=[2] > model.hidden=[1]", "model.hidden=[1] > model.hidden=[2]"]
    checks = findings.lab_checks(
        in_memory_study("w", tests, {"lab_claims": claims}, "model.hidden")
    )
    assert [(c.word, c.borderline) for c in checks] == [("agrees", False), ("differs", False)]
    assert findings.agreement(checks) == "agrees in part"


def summary_words(study):
    """What the summary says in words: the answer's first word and each comparison's direction,
    each claim's word and the study's agreement, with whether each is borderline."""
    first, _ = findings.answer(study)
    lead = re.match(r"(Yes|No|Partly|Cannot tell)(?: with \d+ seeds?)?( \(borderline\))?", first)
    said = {"answer": (lead[1], bool(lead[2]))}
    for n, part in enumerate(first.split("; ")):
        direction = re.search(r"is above|is below|are not told apart", part)[0]
        said[f"comparison {n}"] = (direction, "(borderline)" in part)
    checks = findings.lab_checks(study)
    said |= {c.claim: (c.word, c.borderline) for c in checks}
    agreement = findings.agreement(checks)
    said["agreement"] = (agreement.removesuffix(" (borderline)"), "borderline" in agreement)
    return said


@pytest.mark.parametrize("shift", ["random", "against"])
def test_records_a_whisper_apart_keep_their_firm_words(shift):
    """200 three-seed studies whose effects lie near every line a word is drawn at, and the same
    records moved by less than 0.001 each: a firm word never changes, and a word that changes is
    borderline in both."""
    rng = np.random.default_rng(0)
    words = {
        "asks": ["model.hidden=[2] > model.hidden=[1]"],
        "lab_claims": [
            "model.hidden=[2] > model.hidden=[1]",
            "model.hidden=[2] = model.hidden=[1]",
        ],
    }
    changed = firm = 0
    for n in range(200):
        effect = rng.choice([0.0, 0.01, -0.01]) + rng.normal(0, 0.006)
        seed_effect, noise = rng.normal(0, 0.005, 3), rng.normal(0, 0.003, (2, 3))
        tests = {(w, s): 0.85 + seed_effect[s] + (w == "[2]") * effect + noise[int(w == "[2]"), s]
                 for w in ("[1]", "[2]") for s in range(3)}  # fmt: skip
        if shift == "random":
            moved = {k: v + rng.uniform(-0.00099, 0.00099) for k, v in tests.items()}
        else:  # the most a whisper can move the difference, towards 0
            toward = -0.00099 if effect > 0 else 0.00099
            moved = {(w, s): v + (toward if w == "[2]" else -toward) for (w, s), v in tests.items()}
        one, two = (
            summary_words(in_memory_study(f"s{n}", t, words, key="model.hidden"))
            for t in (tests, moved)
        )
        assert one.keys() == two.keys()
        for item, (word, borderline) in one.items():
            other, other_borderline = two[item]
            if not (borderline or other_borderline):
                firm += 1
                assert word == other, (n, item, one, two)
            if word != other:
                changed += 1
                assert borderline and other_borderline, (n, item, one, two)
    assert changed > 0 and firm > 150  # the whispers turned some words; others stayed firm


def test_variants_with_identical_histories_are_drawn_apart_and_said_to_repeat(tmp_path):
    # A 2-epoch variant that is the start of a 4-epoch one, and a second 4-epoch one equal to it.
    history = [{"epoch": e, "train_loss": 1 / e, "train_acc": 0.5 + e / 10, "val_loss": 2 / e,
                "val_acc": 0.4 + e / 10} for e in range(1, 5)]  # fmt: skip
    runs = []
    for n, (value, epochs) in enumerate([("a", 4), ("b", 4), ("c", 2)]):
        for seed in (0, 1):
            record = {"params": 10, "best_val_acc": 0.8, "test_acc": 0.8, "best_epoch": epochs,
                      "history": history[:epochs]}  # fmt: skip
            runs.append(Run(tmp_path / f"{n}{seed}", record, {"loss": value, "seed": str(seed)}))
    study = Study("repeats", tmp_path, runs)
    fig = plot_study(study)
    for ax in fig.axes[:4]:
        styles = [(line.get_linestyle(), line.get_marker()) for line in ax.get_lines()]
        assert len(styles) == 3 and len(set(styles)) == 3
        widths = {line.get_label(): line.get_linewidth() for line in ax.get_lines()}
        assert widths["loss=c"] > 2 * widths["loss=a"]  # wide and pale, under the one it starts
    legend = [(h.get_linestyle(), h.get_marker()) for h in fig.legends[0].legend_handles]
    assert len(set(legend)) == 3
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["loss=a", "loss=b", "loss=c"]
    said = "loss=c: the first 2 epochs of loss=a, drawn wide and pale under it"
    assert said in fig._suptitle.get_text()
    assert prefix_lines(variants(study)) == [said]
