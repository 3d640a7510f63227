import json

import pytest
import torch
from commands import run_module
from torch import nn

from benchmarks.epoch_speed import epoch_flops
from benchmarks.variants import VARIANTS, build_plain
from mlp_lab import cluster
from mlp_lab.fit import build
from mlp_lab.train import load_config


def test_epoch_flops_match_a_hand_count():
    # 784-256-256-10: 2·(784·256 + 256·256 + 256·10) = 537,600 FLOPs per image forward;
    # 55,000 training images at 3× that, 5,000 evaluated at 1×.
    assert epoch_flops([784, 256, 256, 10], 55_000, 5_000) == 88_704_000_000 + 2_688_000_000
    assert epoch_flops([2, 3, 1], n_train=1, n_eval=2) == 3 * 18 + 2 * 18


def test_plain_loops_train_the_network_that_mlp_lab_builds(synthetic_root):
    # Options a hand-written copy of the model's arguments would miss: (c) and (d) must train them.
    cfg = load_config(f"data.root={synthetic_root}", "model.dropout=0.2", "model.batch_norm=true")
    _, module = build(cfg)  # what (a) and (b) train
    _, model, optimizer = build_plain(cfg, torch.device("cpu"))
    assert str(model) == str(module.model)  # the same layers in the same order
    assert sum(p.numel() for p in model.parameters()) == module.num_parameters
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.2, 0.2]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.modules()) == 2
    # Seeded alike: the same initial weights and the same input normalisation buffers.
    ours, theirs = model.state_dict(), module.model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert model.mean.item() > 0  # model.normalize is on: the dataset's mean
    assert optimizer.param_groups[0]["lr"] == cfg.optimizer.lr


@pytest.mark.real_data
def test_quick_run_times_every_variant_and_writes_json_and_markdown(real_data_root, tmp_path):
    out = tmp_path / "results.json"
    args = ("--quick", "--batch-sizes", "256", "--out", str(out))
    done = run_module("benchmarks.epoch_speed", *args)
    assert done.returncode == 0, done.stderr
    summary = json.loads(out.read_text())
    assert summary.keys() >= {"commit", "torch", "threads", "cpu", "date", "matmul_peak_gflops"}
    # bf16 (f) is timed where it is faster than float32: a CPU with bf16 instructions.
    bf16 = bool(cluster.cpu_bf16())
    assert list(summary["variants"]) == [k for k in VARIANTS if k != "f" or bf16]
    for key, variant in summary["variants"].items():
        figures = variant["batch_sizes"]["256"]
        assert len(figures["epoch_s"]) == 2 and figures["s_per_epoch"] > 0
        assert figures["peak_fraction"] > 0 and 0 <= figures["val_acc"] <= 1
        assert variant["rss_mb"] > 0
        # The floor: the epoch's arithmetic at the best matmul rate of its precision.
        peak = summary["bf16_matmul_peak_gflops" if key == "f" else "matmul_peak_gflops"]["max"]
        flops = epoch_flops(variant["widths"], figures["train_images"], figures["val_images"])
        assert figures["floor_s"] == pytest.approx(flops / peak / 1e9, abs=1e-4)
    assert summary["variants"]["d"]["worker_rss_mb"] > 0  # the lab's pipeline runs workers
    ratios = {"a_over_c", "d_over_a", "e_over_a"} | ({"a_over_f"} if bf16 else set())
    assert set(summary["ratios"]["256"]) == ratios
    # The same table in the terminal and in results.md, under the command and the machine.
    report = out.with_suffix(".md").read_text()
    assert report in done.stdout
    assert report.startswith("`python -m benchmarks.epoch_speed --quick --batch-sizes 256 --out ")
    head = "\n".join(report.splitlines()[:2])
    assert all(str(summary[fact]) in head for fact in ("commit", "cpu", "torch", "date"))
    for key in summary["variants"]:
        assert f"| ({key}) {VARIANTS[key]} | 256 |" in report
    if not bf16:
        assert "bf16: not timed, this CPU (" in report
