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
    assert f"lab: 15 runs under {out}: 12 to train, 3 the same as another" in result.stdout
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
    assert f"lab: 5 runs under {out}: 2 to train, 1 the same as another" in more.stdout


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
