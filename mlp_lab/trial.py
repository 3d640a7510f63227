"""A run's side of a search: the study's storage, its pruner, the trial it reports to."""

from __future__ import annotations

from pathlib import Path

import optuna

from mlp_lab.config import PrunerConfig, TrialConfig
from mlp_lab.messages import first_line


def open_storage(url: str | None) -> optuna.storages.BaseStorage | None:
    """Optuna's storage for a URL; one line naming the setting when it cannot be opened."""
    if url is None:
        return None
    try:
        if url.startswith("journal:"):
            path = Path(url.removeprefix("journal:"))
            path.parent.mkdir(parents=True, exist_ok=True)
            backend = optuna.storages.journal.JournalFileBackend(str(path))
            return optuna.storages.JournalStorage(backend)
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(url)
    except Exception as err:  # SQLAlchemy's, a driver's or the network's: all say "cannot open"
        reason = first_line(err)
        raise SystemExit(
            f"error: hydra.sweeper.storage={url} cannot be opened ({reason}): give "
            "sqlite:///path.db, journal:path.log or a reachable database URL such as "
            "postgresql://user@host/db"
        ) from None


def build_pruner(cfg: PrunerConfig) -> optuna.pruners.BasePruner:
    if cfg.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=cfg.startup_trials, n_warmup_steps=cfg.warmup_epochs
        )
    if cfg.name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, cfg.warmup_epochs))
    if cfg.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, cfg.warmup_epochs))
    return optuna.pruners.NopPruner()


def open_trial(cfg: TrialConfig) -> optuna.Trial:
    """The trial a run of a search reports to (its number in `cfg`), from the run's own process."""
    storage = open_storage(cfg.storage)
    study = optuna.load_study(
        study_name=cfg.study_name, storage=storage, pruner=build_pruner(cfg.pruner)
    )
    study_id = storage.get_study_id_from_name(cfg.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, cfg.number)
    return optuna.trial.Trial(study, trial_id)
