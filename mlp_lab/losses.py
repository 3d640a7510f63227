"""Classification losses, looked up by name: `build_loss("ce")`."""

from __future__ import annotations

from torch import nn

LOSSES: dict[str, type[nn.Module]] = {
    "ce": nn.CrossEntropyLoss,
}


def build_loss(name: str, **params) -> nn.Module:
    """A module whose `forward(logits, target)` returns the mean loss."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}")
    return LOSSES[name](**params)
