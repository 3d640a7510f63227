"""Each match of another library's words (mlp_lab/messages.py) against the real message: a test
here fails when an upgrade rewords one."""

import logging
import os
import re
import warnings

import pytest
import torch
from conftest import classifier, quiet_trainer
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils._pytree import LeafSpec

from mlp_lab import messages


def test_a_failed_allocation_is_named_with_its_size():
    with pytest.raises(RuntimeError) as caught:
        torch.empty(2**40)  # 4 TiB of float32 on the CPU
    assert messages.out_of_memory(caught.value) == (
        "out of memory (4,096.0 GiB in one piece): use a smaller model.hidden or "
        "data.batch_size, or fewer jobs at once"
    )
    assert messages.out_of_memory(MemoryError()).startswith("out of memory: ")
    assert messages.out_of_memory(RuntimeError("shape mismatch")) is None


def test_a_single_value_for_a_list_setting_is_recognised():
    from omegaconf import OmegaConf, ValidationError

    from mlp_lab.config import ModelConfig

    model = OmegaConf.structured(ModelConfig)
    with pytest.raises(ValidationError) as caught:
        model.hidden = 256
    assert messages.not_a_list(str(caught.value))
    with pytest.raises(ValidationError) as other:
        model.dropout = "a lot"
    assert not messages.not_a_list(str(other.value))


def test_anomaly_detections_nan_is_recognised():
    x = torch.tensor(0.0, requires_grad=True)
    with warnings.catch_warnings(), pytest.raises(RuntimeError) as caught:
        warnings.simplefilter("ignore")  # anomaly mode's own warning: the forward's trace
        with torch.autograd.detect_anomaly():
            (x / x).backward()
    assert messages.autograd_found_nan(caught.value)
    assert not messages.autograd_found_nan(RuntimeError("element 0 of tensors does not require"))


class Kept(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def test_lightnings_tip_is_recognised(tmp_path):
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    kept = Kept()
    logger.addHandler(kept)
    data = torch.utils.data.TensorDataset(torch.rand(8, 784), torch.randint(0, 10, (8,)))
    trainer = quiet_trainer(
        max_epochs=1, enable_checkpointing=True, default_root_dir=tmp_path, limit_val_batches=0
    )
    try:
        trainer.fit(classifier("model.hidden=[4]"), torch.utils.data.DataLoader(data, 4))
    finally:
        logger.removeHandler(kept)
    adverts = [r for r in kept.records if "pypi.org/project/lit" in r.getMessage()]
    assert adverts and all(messages.lightning_tip(r) for r in adverts)
    assert not any(messages.lightning_tip(r) for r in kept.records if r not in adverts)


def test_lightnings_warnings_are_recognised(tmp_path, monkeypatch):
    srun = tmp_path / "srun"  # where SLURM's clients are installed, Lightning says so
    srun.write_text("#!/bin/sh\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_NTASKS", raising=False)

    def said() -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            LeafSpec()
            SLURMEnvironment._validate_srun_used()
            messages.quiet_lightning()
            LeafSpec()
            SLURMEnvironment._validate_srun_used()
        return [str(w.message) for w in caught]

    said_before_quiet = said()
    assert len(said_before_quiet) == 2  # both said before quiet_lightning, neither after
    for text in said_before_quiet:
        assert any(re.match(p, text, re.I) for p in messages.LIGHTNING_WARNINGS), text


def test_lightnings_warning_on_a_resumed_runs_checkpoints_is_recognised(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")  # a resumed run's own
    data = torch.utils.data.TensorDataset(torch.rand(8, 784), torch.randint(0, 10, (8,)))
    kept = ModelCheckpoint(dirpath=tmp_path / "checkpoints")
    trainer = quiet_trainer(
        max_epochs=1, callbacks=[kept], enable_checkpointing=True, limit_val_batches=0
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(classifier("model.hidden=[4]"), torch.utils.data.DataLoader(data, 4))
    said = [str(w.message) for w in caught if "checkpoints" in str(w.message)]
    assert said and all(re.match(messages.RESUMED_CHECKPOINTS, text) for text in said)
