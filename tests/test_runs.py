import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import classifier, quiet_trainer

from mlp_lab import runs
from mlp_lab.runs import RunError, load_model


def test_a_checkpoint_that_is_not_mlp_labs_is_refused(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(RunError, match="not an mlp_lab checkpoint"):
        load_model(path)
    (tmp_path / "text.ckpt").write_text("hello")
    with pytest.raises(RunError, match="is not a checkpoint"):
        load_model(tmp_path / "text.ckpt")


def test_an_unfinished_run_directory_is_refused_with_what_to_do(tmp_path):
    record = {"status": "interrupted", "history": [], "error": "interrupted in epoch 3"}
    (tmp_path / "metrics.json").write_text(json.dumps(record))
    with pytest.raises(RunError, match="not a finished run \\(status interrupted\\)"):
        load_model(tmp_path)


def test_a_checkpoint_of_an_older_version_is_refused_in_one_line(tmp_path):
    path = tmp_path / "old.ckpt"
    hparams = {"hidden": [256, 256], "lr": 0.1, "class_names": list("0123456789")}
    torch.save({"state_dict": {}, "hyper_parameters": hparams}, path)
    with pytest.raises(RunError) as caught:
        load_model(path)
    assert str(caught.value) == (
        f"{path} comes from an older mlp_lab (before 0.2): train it again with this version"
    )


def test_a_saved_model_loads_back_in_eval_mode_with_its_settings(tmp_path):
    torch.manual_seed(0)
    module = classifier("model.hidden=[16]", "model.dropout=0.5")
    trainer = quiet_trainer(max_epochs=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    loaded = load_model(tmp_path / "model.ckpt")
    assert not loaded.training and loaded.hparams.model == module.hparams.model
    x = torch.rand(3, 784)
    torch.testing.assert_close(loaded(x), module.eval()(x))


def test_record_round_trips_and_a_corrupt_one_is_named(tmp_path):
    record = {"status": "running", "history": [{"epoch": 1}]}
    runs.write_record(tmp_path, record)
    assert runs.read_record(tmp_path) == record
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary left behind
    (tmp_path / "metrics.json").write_text('{"status": ')
    with pytest.raises(RunError, match=r"^corrupt metrics.json \("):
        runs.read_record(tmp_path)
    with pytest.raises(RunError, match="^no metrics.json: crashed or still running"):
        runs.read_record(tmp_path / "elsewhere")


def test_a_reader_never_sees_half_a_record(tmp_path):
    # A writer process replaces the record as fast as it can while this process reads it.
    code = (
        "import sys\n"
        "from mlp_lab.runs import write_record\n"
        "for i in range(100_000):\n"
        "    write_record(sys.argv[1], {'n': i, 'history': [{'epoch': e} for e in range(200)]})\n"
    )
    runs.write_record(tmp_path, {"n": -1})
    writer = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)])
    seen, deadline = set(), time.monotonic() + 60
    try:
        while len(seen) < 200 and time.monotonic() < deadline:
            seen.add(runs.read_record(tmp_path)["n"])  # raises on half a file
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    assert len(seen) == 200  # the record changed under the reader 200 times, each one whole


def test_runs_are_found_in_launch_order_and_overrides_read(tmp_path):
    for n in (10, 2, 1):
        (tmp_path / str(n) / ".hydra").mkdir(parents=True)
    (tmp_path / "2/.hydra/overrides.yaml").write_text("- seed=3\n- +model.dropout=0.1\n")
    assert runs.find_runs(tmp_path) == [tmp_path / "1", tmp_path / "2", tmp_path / "10"]
    assert runs.overrides(tmp_path / "2") == {"seed": "3", "model.dropout": "0.1"}
    assert runs.overrides(tmp_path / "1") == {}
