"""Files an earlier mlp_lab wrote, read by this one: tests/fixtures/run-0.2.0 is a 1-epoch run
(784-8-10, on the synthetic data of conftest.synthetic_root) trained by main at 9de9485 (0.2.0):
its record, its Hydra config and its two checkpoints."""

import json
import shutil
from pathlib import Path

import pytest
from commands import run_module

from mlp_lab.report.write import write_report

FIXTURE = Path(__file__).parent / "fixtures" / "run-0.2.0"


@pytest.fixture
def old_run(tmp_path) -> Path:
    run = tmp_path / "run-0.2.0"
    shutil.copytree(FIXTURE, run)
    return run


def test_a_0_2_0_run_is_reported(old_run, tmp_path):
    text = write_report([old_run], tmp_path / "out").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| all runs |"))
    # Its record keeps no image counts: FLOPs per epoch are the official split's,
    # 2 × (784 × 8 + 8 × 10) × (3 × 59,800 + 200) = 2.3 G.
    assert row.startswith("| all runs | 1 | 6,370 | 1 | 2.3 | 0.5150 | 1 | 0.4950 |")


def test_a_0_2_0_checkpoint_is_evaluated_to_its_recorded_accuracy(old_run, synthetic_root):
    result = run_module("mlp_lab.eval", f"ckpt={old_run}", f"data.root={synthetic_root}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("test_acc=0.4950 ")  # as its record says: the same weights


def test_a_0_2_0_run_is_resumed_from_its_last_checkpoint(old_run, synthetic_root):
    result = run_module("mlp_lab.resume", str(old_run))
    assert (result.returncode, result.stdout.strip()) == (0, f"nothing to resume under {old_run}")
    before = json.loads((old_run / "metrics.json").read_text())
    more = ["trainer.max_epochs=2", f"data.root={synthetic_root}"]
    result = run_module("mlp_lab.train", f"resume={old_run}", *more)
    assert result.returncode == 0, result.stderr[-2000:]
    after = json.loads((old_run / "metrics.json").read_text())
    assert after["status"] == "completed" and len(after["history"]) == 2
    assert after["history"][0] == before["history"][0]  # its first epoch kept as it was
    # Its 0.2.0 "parts" are this version's attempts: the 0.2.0 start and this one.
    assert after["format"] == 2 and len(after["attempts"]) == 2 and "parts" not in after
