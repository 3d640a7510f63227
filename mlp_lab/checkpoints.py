"""A run's checkpoints read back: its config to resume with, its last and best, a model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mlp_lab.config import ConfigError, TrainConfig
from mlp_lab.runs import CHECKPOINTS, RunError, read_record

if TYPE_CHECKING:
    from mlp_lab.module import MLPClassifier


def resumed_config(run_dir: Path, overrides: list[str]) -> TrainConfig:
    """The config a run was started with, and what this command line changes in it."""
    saved = run_dir / ".hydra" / "config.yaml"
    if not saved.is_file():
        raise ConfigError(
            f"resume={run_dir} is not a run directory (no .hydra/config.yaml): give one of "
            "outputs/runs/<time>"
        )
    changes = [o for o in overrides if not o.startswith(("resume=", "hydra."))]
    try:
        changed = OmegaConf.from_dotlist(changes)
        cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.load(saved), changed)
    except OmegaConfBaseException as err:
        raise ConfigError(
            f"resume: {' '.join(changes)} cannot change the saved config of {run_dir} "
            f"({str(err).splitlines()[0]}); only key=value overrides such as "
            "trainer.max_epochs=20 can"
        ) from None
    cfg.resume = str(run_dir)
    return OmegaConf.to_object(cfg)


def last_checkpoint(run_dir: Path | str) -> Path:
    """The checkpoint of a run's latest completed epoch, which `resume=` continues from."""
    return Path(run_dir) / CHECKPOINTS / "last.ckpt"


def checkpoint_file(path: Path | str) -> Path:
    """A checkpoint file as given, or a run directory's best checkpoint (named in its record)."""
    path = Path(path)
    if path.is_dir():
        try:
            record = read_record(path)
        except RunError as err:
            raise RunError(f"{path} is not a finished mlp_lab run ({err})") from None
        if "checkpoint" not in record:
            raise RunError(
                f"{path} is not a finished run (status {record.get('status')}): give one of its "
                "checkpoints/*.ckpt, or resume it first"
            )
        path = path / record["checkpoint"]
    if not path.is_file():
        raise RunError(f"checkpoint {path} not found")
    return path


def load_model(path: Path | str) -> MLPClassifier:
    """The model of a checkpoint file, or of a run directory's best checkpoint, in eval mode."""
    # Imported here: every command reads runs before it composes its config, and most never load.
    import torch

    from mlp_lab.module import MLPClassifier

    path = checkpoint_file(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        hparams = checkpoint.get("hyper_parameters", {})
    except Exception as err:  # pickle, zip and torch errors alike: not a checkpoint we can read
        raise RunError(f"{path} is not a checkpoint: {err}") from None
    if not {"model", "loss", "optimizer", "data"} <= hparams.keys():
        raise RunError(f"{path} is not an mlp_lab checkpoint (no model or data settings)")
    return MLPClassifier.load_from_checkpoint(path, map_location="cpu").eval()
