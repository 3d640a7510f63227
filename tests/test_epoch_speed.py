import json

import pytest
from conftest import run_module

from benchmarks.epoch_speed import VARIANTS, epoch_flops


def test_epoch_flops_match_a_hand_count():
    # 784-256-256-10: 2·(784·256 + 256·256 + 256·10) = 537,600 FLOPs per image forward;
    # 55,000 training images at 3× that, 5,000 evaluated at 1×.
    assert epoch_flops([784, 256, 256, 10], 55_000, 5_000) == 88_704_000_000 + 2_688_000_000
    assert epoch_flops([2, 3, 1], n_train=1, n_eval=2) == 3 * 18 + 2 * 18


@pytest.mark.real_data
def test_quick_run_times_every_variant_and_writes_json(real_data_root, tmp_path):
    out = tmp_path / "results.json"
    args = ("--quick", "--batch-sizes", "256", "--out", str(out))
    done = run_module("benchmarks.epoch_speed", *args)
    assert done.returncode == 0, done.stderr
    summary = json.loads(out.read_text())
    assert summary.keys() >= {"commit", "torch", "threads", "cpu", "date", "matmul_peak_gflops"}
    assert list(summary["variants"]) == list(VARIANTS)
    for variant in summary["variants"].values():
        figures = variant["batch_sizes"]["256"]
        assert len(figures["epoch_s"]) == 2 and figures["s_per_epoch"] > 0
        assert figures["peak_fraction"] > 0 and 0 <= figures["val_acc"] <= 1
        assert variant["rss_mb"] > 0
    assert summary["variants"]["d"]["worker_rss_mb"] > 0  # the lab's pipeline runs workers
    assert set(summary["ratios"]["256"]) == {"a_over_c", "d_over_a"}
    assert "| (d) lab: ToTensor + DataLoader | 256 |" in done.stdout
