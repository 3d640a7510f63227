import pytest
import torch
import torch.nn.functional as F

from mlp_lab.model import MLP


def dense_params(sizes):
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


@pytest.mark.parametrize(
    "hidden, expected",
    # The lab printed 268,234 / 334,026 / 535,738 for the first three; its own
    # W1 784×256 + b1 256 + W2 256×256 + b2 256 + W3 256×10 + b3 10 adds up to 269,322.
    [
        ([256, 256], 269_322),
        ([256, 256, 256], 335_114),
        ([512, 256], 535_818),
        ([256, 128], 235_146),
    ],
)
def test_parameter_counts(hidden, expected):
    model = MLP(784, hidden, 10)
    assert (
        sum(p.numel() for p in model.parameters()) == expected == dense_params([784, *hidden, 10])
    )


def test_lab_initialisation_normal_weights_zero_biases():
    torch.manual_seed(0)
    model = MLP(784, [256, 256], 10, init_std=0.01)
    first = model.layers[0]
    assert first.weight.std().item() == pytest.approx(0.01, rel=0.02)
    assert abs(first.weight.mean().item()) < 5e-4
    assert all(torch.count_nonzero(m.bias) == 0 for m in model.layers if hasattr(m, "bias"))


def test_forward_matches_hand_written_network_on_both_input_shapes():
    torch.manual_seed(0)
    model = MLP(784, [32, 16], 10, activation="tanh", mean=0.3, std=0.4)
    images = torch.rand(5, 1, 28, 28)
    x = (images.reshape(5, 784) - 0.3) / 0.4
    l1, l2, l3 = (m for m in model.layers if isinstance(m, torch.nn.Linear))
    expected = F.linear(
        torch.tanh(F.linear(torch.tanh(F.linear(x, l1.weight, l1.bias)), l2.weight, l2.bias)),
        l3.weight,
        l3.bias,
    )
    torch.testing.assert_close(model(images), expected)
    torch.testing.assert_close(model(images.reshape(5, 784)), expected)


def test_unknown_activation_lists_valid_names():
    with pytest.raises(ValueError, match="valid: relu, sigmoid, tanh"):
        MLP(784, [8], 10, activation="swish")
