"""`python -m mlp_lab.lab`: every study's runs in one queue, each distinct run trained once."""

import json

from commands import run_module
from conftest import fast_overrides

from mlp_lab import directories, runs
from mlp_lab.report.studies import find_studies, variants

# Two studies that share a run: batch_norm's `model.batch_norm=false` is width's `model=two_hidden`,
# the lab's baseline (each with its own seed).
STUDIES = "batch_norm,width"


def lab(synthetic_root, out, *args):
    tiny = fast_overrides(synthetic_root, "trainer.max_epochs=3", "trainer.limit_train_batches=6")
    return run_module(
        "mlp_lab.lab", "--studies", STUDIES, "--seeds", "0,1,2", "--xor-seeds", "2",
        "--out", str(out), "--jobs", "2", *args, *tiny,
    )  # fmt: skip


def busy(records: list[dict], slots: int) -> float:
    """The share of `slots` × (first start to last end) that the runs' attempts kept busy."""
    spans = [(a["started"], runs.attempt_end(a)) for r in records for a in r["attempts"]]
    first, last = min(s for s, _ in spans), max(e for _, e in spans)
    return sum(e - s for s, e in spans) / (slots * (last - first))


def test_a_lab_trains_each_distinct_run_once_with_both_slots_busy(synthetic_root, tmp_path):
    out = tmp_path / "lab"
    result = lab(synthetic_root, out)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    # 3 seeds × (2 + 3) runs, the baseline shared: 12 trained, 3 the same as another.
    trained = f"lab: 15 runs under {out}: 12 to train (0 as the first epochs of a longer one), 3"
    assert f"{trained} the same as another" in result.stdout
    assert lines[-1].startswith(f"the report: {out / 'report.html'}")
    assert sum(line.startswith("[") for line in lines) == 12  # a progress line per trained run
    records = {d: runs.read_record(d) for d in directories.find_runs(out)}
    copies = {d: r for d, r in records.items() if "same_as" in r}
    assert len(copies) == 3 and all(d.parent.name == "width" for d in copies)
    for copy, record in copies.items():
        original = (copy / record["same_as"]).resolve()
        assert original.parent.name == "batch_norm" and (original / "checkpoints").is_dir()
        assert not (copy / "checkpoints").exists()  # trained once: one directory holds it
        assert record["history"] == records[original]["history"]
        assert record["config"]["seed"] == records[original]["config"]["seed"]
        assert record["config"]["study"]["question"].startswith("Do wider")
    trained = [r for r in records.values() if "same_as" not in r]
    assert busy(trained, slots=2) >= 0.95
    # Both studies count the shared run: 3 seeds in every variant of each.
    studies = {s.name: s for s in find_studies([out / "batch_norm", out / "width"])}
    for study in studies.values():
        assert {len(v.runs) for v in variants(study)} == {3}
    assert len(json.loads((out / "xor" / "xor.json").read_text())["seeds"]) == 2
    # The report's header weighs the work of the 12 runs trained against the machine's floor.
    measured = json.loads((out / "lab.json").read_text())
    dtype = "bfloat16" if measured.get("bfloat16_matmul_gflops") else "float32"
    peak = measured[f"{dtype}_matmul_gflops"]
    header = (out / "report.md").read_text().splitlines()[2]
    assert header.startswith("15 runs in 2 studies") and "precision " in header
    assert f"12 runs trained (the others read from them); at this machine's {dtype}" in header
    assert f"matmul peak ({peak:.0f} GFLOP/s, measured by the lab)" in header


def test_a_lab_goes_on_where_it_stopped_and_trains_only_what_is_new(synthetic_root, tmp_path):
    out = tmp_path / "lab"
    first = run_module(
        "mlp_lab.lab", "--studies", "batch_norm", "--seeds", "0", "--xor-seeds", "2",
        "--out", str(out), *fast_overrides(synthetic_root, "trainer.limit_train_batches=2"),
    )  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    again = lab(synthetic_root, out)
    assert again.returncode == 2 and "holds a lab: --resume finishes it" in again.stderr
    more = run_module(
        "mlp_lab.lab", "--studies", STUDIES, "--seeds", "0", "--xor-seeds", "2", "--resume",
        "--out", str(out), *fast_overrides(synthetic_root, "trainer.limit_train_batches=2"),
    )  # fmt: skip
    assert more.returncode == 0, more.stderr[-3000:]
    # batch_norm's two runs are done; width's baseline is batch_norm's: 2 of its 3 are new.
    new = f"lab: 5 runs under {out}: 2 to train (0 as the first epochs of a longer one), 1 the"
    assert new in more.stdout


def test_the_same_settings_and_seed_train_the_same_run(synthetic_root, tmp_path):
    """Why the lab may train a run once for two studies: trained twice, it is the same run."""
    tiny = fast_overrides(synthetic_root, "trainer.max_epochs=3", "num_threads=1", "seed=7")
    histories = []
    for name in ("first", "second"):
        result = run_module("mlp_lab.train", *tiny, f"hydra.run.dir={tmp_path / name}")
        assert result.returncode == 0, result.stderr[-3000:]
        history = runs.read_record(tmp_path / name)["history"]
        histories.append([{k: v for k, v in e.items() if k != "epoch_time_s"} for e in history])
    assert histories[0] == histories[1] and len(histories[0]) == 3


def test_a_run_that_is_the_first_epochs_of_another_is_read_from_it_as_if_trained_alone(
    synthetic_root, tmp_path
):
    # dropout's 10-epoch runs are the first 10 epochs of its 20-epoch ones, each with its dropout.
    out, tiny = tmp_path / "lab", fast_overrides(synthetic_root, "trainer.limit_train_batches=3")
    result = run_module(
        "mlp_lab.lab", "--studies", "dropout", "--seeds", "0", "--xor-seeds", "2",
        "--out", str(out), *tiny,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"lab: 4 runs under {out}: 4 to train (2 as the first epochs of a longer one)" in (
        result.stdout
    )
    records = {d: runs.read_record(d) for d in directories.find_runs(out)}
    prefixes = {d: r for d, r in records.items() if "prefix_of" in r}
    assert len(prefixes) == 2
    for prefix, record in prefixes.items():
        longer = records[(prefix / record["prefix_of"]).resolve()]
        assert record["epochs"] == 10 and longer["epochs"] == 20
        assert record["history"] == longer["history"][:10]
        assert record["config"]["trainer"]["max_epochs"] == 10
        assert (prefix / record["checkpoint"]).is_file()
    # Trained alone, the same run: its history and test accuracy, to the last digit.
    prefix, record = next(iter(prefixes.items()))
    alone = tmp_path / "alone"
    dropout = record["config"]["model"]["dropout"]
    solo = run_module(
        "mlp_lab.train", *tiny, "seed=0", "num_threads=1", f"model.dropout={dropout}",
        f"trainer.precision={record['config']['trainer']['precision']}",
        f"hydra.run.dir={alone}",
    )  # fmt: skip
    assert solo.returncode == 0, solo.stderr[-3000:]
    trained = runs.read_record(alone)

    def kept(history):
        return [{k: v for k, v in e.items() if k != "epoch_time_s"} for e in history]

    assert kept(trained["history"]) == kept(record["history"])
    assert trained["test_acc"] == record["test_acc"]
