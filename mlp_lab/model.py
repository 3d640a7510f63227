"""The multilayer perceptron: images in [0, 1] to class logits, built from a list of widths."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
}


def build_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class MLP(nn.Module):
    """Normalise, flatten, then Linear → activation for each hidden width and a Linear to logits."""

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        num_classes: int,
        activation: str = "relu",
        init_std: float | None = 0.01,
        mean: float = 0.0,
        std: float = 1.0,
    ):
        super().__init__()
        # Buffers, so a checkpoint alone maps [0, 1] images to logits.
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))
        layers: list[nn.Module] = []
        width_in = in_features
        for width in hidden:
            layers += [nn.Linear(width_in, width), build_activation(activation)]
            width_in = width
        layers.append(nn.Linear(width_in, num_classes))
        self.layers = nn.Sequential(*layers)
        if init_std is not None:  # the lab's N(0, init_std²) weights and zero biases
            for layer in self.layers:
                if isinstance(layer, nn.Linear):
                    nn.init.normal_(layer.weight, std=init_std)
                    nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1)
        return self.layers((x - self.mean) / self.std)
