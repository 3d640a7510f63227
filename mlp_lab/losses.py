"""The lab's classification losses, written out by hand: `build_loss("focal", gamma=2.0)`."""

from __future__ import annotations

import inspect

import torch
from hydra.utils import get_class
from torch import nn

from mlp_lab.config import LOSSES, LossConfig


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    # Shifting by the row maximum keeps exp() finite; logsumexp is the stable log Σ exp.
    shifted = logits - logits.max(dim=1, keepdim=True).values.detach()
    return shifted - shifted.exp().sum(dim=1, keepdim=True).log()


class CrossEntropyLoss(nn.Module):
    """−log softmax(z)_y; with label smoothing ε the target is (1 − ε)·one-hot + ε/K."""

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits, target):
        log_p = log_softmax(logits)
        nll = -log_p.gather(1, target[:, None]).squeeze(1)
        if not self.label_smoothing:
            return nll.mean()
        eps = self.label_smoothing
        return ((1 - eps) * nll - eps * log_p.mean(dim=1)).mean()


class _OneHotLoss(nn.Module):
    """Elementwise loss between the one-hot target and the logits (or probabilities), averaged."""

    def __init__(self, on: str = "logits"):
        super().__init__()
        self.on = on

    def forward(self, logits, target):
        outputs = logits.softmax(dim=1) if self.on == "probs" else logits
        one_hot = torch.zeros_like(outputs).scatter_(1, target[:, None], 1.0)
        return self.elementwise(outputs - one_hot).mean()


class MSELoss(_OneHotLoss):
    """(y − ŷ)²."""

    def elementwise(self, diff):
        return diff**2


class MAELoss(_OneHotLoss):
    """|y − ŷ|."""

    def elementwise(self, diff):
        return diff.abs()


class HuberLoss(_OneHotLoss):
    """½Δ² where |Δ| ≤ δ, else δ(|Δ| − ½δ)."""

    def __init__(self, delta: float = 1.0, on: str = "logits"):
        super().__init__(on)
        self.delta = delta

    def elementwise(self, diff):
        small = diff.abs() <= self.delta
        return torch.where(small, 0.5 * diff**2, self.delta * (diff.abs() - 0.5 * self.delta))


class FocalLoss(nn.Module):
    """−α(1 − p_t)^γ log p_t, with p_t the softmax probability of the true class."""

    def __init__(self, alpha: float = 1.0, gamma: float = 2.0):
        super().__init__()
        self.alpha, self.gamma = alpha, gamma

    def forward(self, logits, target):
        log_pt = log_softmax(logits).gather(1, target[:, None]).squeeze(1)
        return (-self.alpha * (1 - log_pt.exp()) ** self.gamma * log_pt).mean()


class CrossEntropyL2Loss(CrossEntropyLoss):
    """Cross-entropy + λ·Σ‖W‖² over all the model's parameters (the lab's choice) or its weights."""

    def __init__(
        self, model: nn.Module, lam: float = 0.01, covers: str = "all", label_smoothing=0.0
    ):
        super().__init__(label_smoothing)
        self.lam, self.covers = lam, covers
        # A list keeps the model out of this module's parameters and state_dict.
        self._model = [model]

    def penalised(self) -> list[torch.Tensor]:
        params = self._model[0].parameters()
        if self.covers == "all":
            return list(params)
        return [p for p in params if p.ndim == 2]  # weight matrices; not biases, not BN's γ/β

    def forward(self, logits, target):
        penalty = sum((p**2).sum() for p in self.penalised())
        return super().forward(logits, target) + self.lam * penalty


def loss_options(name: str) -> set[str]:
    """The keyword arguments the named loss accepts."""
    return set(inspect.signature(get_class(LOSSES[name])).parameters)


def own_options(cfg: LossConfig) -> dict:
    """The loss section's options that its loss takes: the section holds every loss's."""
    accepted = loss_options(cfg.name)
    return {k: v for k, v in vars(cfg).items() if k in accepted}


def build_loss(name: str, **options) -> nn.Module:
    """The loss `name` as a module, given only the options its constructor takes."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}")
    accepted = loss_options(name)
    return get_class(LOSSES[name])(**{k: v for k, v in options.items() if k in accepted})
