"""The MLP: images in [0, 1] to logits, as torch modules or the lab's own operations."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from hydra.utils import get_class
from torch import nn

from mlp_lab.config import ACTIVATIONS, IMPLS


class ScratchLinear(nn.Module):
    """`X @ W + b` with W stored as in × out, as the lab wrote it."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        # torch's default initialisation of nn.Linear amounts to U(-1/√in, 1/√in) for both.
        bound = 1 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


class ScratchReLU(nn.Module):
    """max(x, 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Written as a select, not torch.maximum, so the gradient at exactly 0 is 0 as in torch's
        # ReLU; torch.maximum would split it, 0.5 to each side.
        return torch.where(x > 0, x, torch.zeros((), dtype=x.dtype, device=x.device))


class ScratchDropout(nn.Module):
    """Inverted dropout: a Bernoulli(1 - p) keep mask scaled by 1/(1 - p), in training only."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        mask = torch.empty_like(x).bernoulli_(1 - self.p)
        return x * mask / (1 - self.p)


class ScratchBatchNorm(nn.Module):
    """Batch norm over the batch dimension with learnable γ/β and running statistics for eval."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            mean = x.mean(0)
            var = ((x - mean) ** 2).mean(0)
            with torch.no_grad():  # like torch: the running variance is the unbiased estimate
                n = x.shape[0]
                unbiased = var * n / max(n - 1, 1)
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(unbiased, self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        return self.weight * (x - mean) / torch.sqrt(var + self.eps) + self.bias


def build_activation(name: str, impl: str = "torch") -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")
    # The lab wrote ReLU by hand and took the other activations from torch.
    if impl == "scratch" and name == "relu":
        return ScratchReLU()
    return get_class(ACTIVATIONS[name])()


class MLP(nn.Module):
    """Normalise, flatten, then per hidden width: Linear → [BatchNorm] → activation → [Dropout]."""

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        num_classes: int,
        activation: str = "relu",
        init_std: float | None = 0.01,
        mean: float = 0.0,
        std: float = 1.0,
        normalize: bool = True,
        dropout: float = 0.0,
        batch_norm: bool = False,
        impl: str = "torch",
        max_norm: float | None = None,
    ):
        super().__init__()
        if impl not in IMPLS:
            raise ValueError(f"unknown impl {impl!r}; valid: {', '.join(IMPLS)}")
        scratch = impl == "scratch"
        linear = ScratchLinear if scratch else nn.Linear
        norm = ScratchBatchNorm if scratch else nn.BatchNorm1d
        drop = ScratchDropout if scratch else nn.Dropout
        # Buffers, so a checkpoint alone maps [0, 1] images to logits.
        self.register_buffer("mean", torch.tensor(float(mean) if normalize else 0.0))
        self.register_buffer("std", torch.tensor(float(std) if normalize else 1.0))
        self.max_norm = max_norm
        layers: list[nn.Module] = []
        width_in = in_features
        for width in hidden:
            layers.append(linear(width_in, width))
            if batch_norm:
                layers.append(norm(width))
            layers.append(build_activation(activation, impl))
            if dropout > 0:
                layers.append(drop(dropout))
            width_in = width
        layers.append(linear(width_in, num_classes))
        self.layers = nn.Sequential(*layers)
        if init_std is not None:  # the lab's N(0, init_std²) weights and zero biases
            for layer in self.linear_layers():
                nn.init.normal_(layer.weight, std=init_std)
                nn.init.zeros_(layer.bias)

    def linear_layers(self) -> list[nn.Module]:
        return [m for m in self.layers if isinstance(m, nn.Linear | ScratchLinear)]

    @torch.no_grad()
    def apply_max_norm(self) -> None:
        """Scale each unit's incoming weight vector back to L2 norm max_norm where it is longer."""
        if self.max_norm is None:
            return
        for layer in self.linear_layers():
            # nn.Linear keeps a unit's weights in a row (out × in), ScratchLinear in a column.
            dim = 0 if isinstance(layer, nn.Linear) else 1
            layer.weight.copy_(layer.weight.renorm(2, dim, self.max_norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1)
        return self.layers((x - self.mean) / self.std)
