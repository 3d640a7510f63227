import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mlp_lab.model import (
    MLP,
    ScratchBatchNorm,
    ScratchDropout,
    ScratchLinear,
    ScratchReLU,
)


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
@pytest.mark.parametrize("impl", ["torch", "scratch"])
def test_parameter_counts(hidden, expected, impl):
    model = MLP(784, hidden, 10, impl=impl)
    assert (
        sum(p.numel() for p in model.parameters()) == expected == dense_params([784, *hidden, 10])
    )
    with_bn = MLP(784, hidden, 10, impl=impl, batch_norm=True)
    assert sum(p.numel() for p in with_bn.parameters()) == expected + 2 * sum(hidden)


def test_lab_initialisation_normal_weights_zero_biases():
    torch.manual_seed(0)
    model = MLP(784, [256, 256], 10, init_std=0.01)
    first = model.layers[0]
    assert first.weight.std().item() == pytest.approx(0.01, rel=0.02)
    assert abs(first.weight.mean().item()) < 5e-4
    assert all(torch.count_nonzero(m.bias) == 0 for m in model.linear_layers())


def test_forward_matches_hand_written_network_on_both_input_shapes():
    torch.manual_seed(0)
    model = MLP(784, [32, 16], 10, activation="tanh", mean=0.3, std=0.4)
    images = torch.rand(5, 1, 28, 28)
    x = (images.reshape(5, 784) - 0.3) / 0.4
    l1, l2, l3 = model.linear_layers()
    h1 = torch.tanh(F.linear(x, l1.weight, l1.bias))
    expected = F.linear(torch.tanh(F.linear(h1, l2.weight, l2.bias)), l3.weight, l3.bias)
    torch.testing.assert_close(model(images), expected)
    torch.testing.assert_close(model(images.reshape(5, 784)), expected)


def test_layer_order_follows_the_lab():
    model = MLP(784, [8, 8], 10, batch_norm=True, dropout=0.5)
    kinds = [type(m).__name__ for m in model.layers]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Dropout"] * 2 + ["Linear"]


def test_unknown_activation_and_impl_list_valid_names():
    with pytest.raises(ValueError, match="valid: relu, sigmoid, tanh"):
        MLP(784, [8], 10, activation="swish")
    with pytest.raises(ValueError, match="valid: torch, scratch"):
        MLP(784, [8], 10, impl="numpy")


# Scratch vs torch: the same weights give the same outputs and gradients.


def test_scratch_linear_equals_nn_linear():
    torch.manual_seed(0)
    ref, ours = nn.Linear(6, 4), ScratchLinear(6, 4)
    with torch.no_grad():
        ours.weight.copy_(ref.weight.T)
        ours.bias.copy_(ref.bias)
    x = torch.randn(5, 6)
    torch.testing.assert_close(ours(x), ref(x))
    ours(x).square().sum().backward()
    ref(x).square().sum().backward()
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad.T)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad)


def test_scratch_relu_equals_torch_relu_with_gradient():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 3.0], requires_grad=True)
    y = x.detach().clone().requires_grad_()
    ScratchReLU()(x).sum().backward()
    F.relu(y).sum().backward()
    torch.testing.assert_close(ScratchReLU()(x), F.relu(y))
    torch.testing.assert_close(x.grad, y.grad)


def test_scratch_dropout_draws_the_same_mask_as_torch():
    x = torch.randn(64, 32)
    torch.manual_seed(3)
    ours = ScratchDropout(0.3)(x)
    torch.manual_seed(3)
    ref = F.dropout(x, 0.3, training=True)
    torch.testing.assert_close(ours, ref)
    kept = ours != 0
    torch.testing.assert_close(ours[kept], x[kept] / 0.7)
    assert kept.float().mean().item() == pytest.approx(0.7, abs=0.03)


def test_scratch_dropout_is_identity_in_eval():
    layer = ScratchDropout(0.5).eval()
    x = torch.randn(8, 8)
    assert torch.equal(layer(x), x)


def test_scratch_batch_norm_equals_torch_in_train_and_eval():
    torch.manual_seed(0)
    ref, ours = nn.BatchNorm1d(5), ScratchBatchNorm(5)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-0.5, 0.5)
        ours.weight.copy_(ref.weight)
        ours.bias.copy_(ref.bias)
    for step in range(4):
        x = torch.randn(16, 5) * (step + 1) + step
        x_ref = x.clone().requires_grad_()
        x_ours = x.clone().requires_grad_()
        out_ref, out_ours = ref(x_ref), ours(x_ours)
        torch.testing.assert_close(out_ours, out_ref)
        weights = torch.randn(16, 5)
        (out_ref * weights).sum().backward()
        (out_ours * weights).sum().backward()
        torch.testing.assert_close(x_ours.grad, x_ref.grad)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad)
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    ref.eval(), ours.eval()
    x = torch.randn(3, 5)
    torch.testing.assert_close(ours(x), ref(x))


def copy_torch_to_scratch(ref: MLP, ours: MLP) -> None:
    ref_state, ours_state = ref.state_dict(), ours.state_dict()
    with torch.no_grad():
        for key, value in ours_state.items():
            source = ref_state[key]
            value.copy_(source.T if value.ndim == 2 else source)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_scratch_mlp_equals_torch_mlp_outputs_and_gradients(activation):
    kwargs = dict(activation=activation, batch_norm=True, dropout=0.2, init_std=None)
    torch.manual_seed(0)
    ref = MLP(784, [32, 16], 10, **kwargs, impl="torch")
    ours = MLP(784, [32, 16], 10, **kwargs, impl="scratch")
    copy_torch_to_scratch(ref, ours)
    x, y = torch.rand(20, 784), torch.arange(20) % 10
    for step in range(3):  # train mode: batch statistics, dropout masks from the same seed
        torch.manual_seed(100 + step)
        loss_ref = F.cross_entropy(ref(x), y)
        torch.manual_seed(100 + step)
        loss_ours = F.cross_entropy(ours(x), y)
        torch.testing.assert_close(loss_ours, loss_ref)
        ref.zero_grad(), ours.zero_grad()
        loss_ref.backward(), loss_ours.backward()
        ref_grads = dict(ref.named_parameters())
        for name, p in ours.named_parameters():
            expected = ref_grads[name].grad
            torch.testing.assert_close(p.grad, expected.T if p.ndim == 2 else expected)
    ref.eval(), ours.eval()  # eval mode: running statistics, no dropout
    torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize("impl", ["torch", "scratch"])
def test_max_norm_caps_every_units_incoming_weights_and_spares_shorter_ones(impl):
    torch.manual_seed(0)
    model = MLP(20, [8, 6], 3, impl=impl, init_std=None, max_norm=2.0)
    layer = model.linear_layers()[0]
    unit_dim = 1 if impl == "torch" else 0  # the axis that runs over one unit's inputs
    with torch.no_grad():
        layer.weight.mul_(torch.linspace(0.5, 30, 8).unsqueeze(unit_dim))
    before = [lin.weight.detach().clone() for lin in model.linear_layers()]
    model.apply_max_norm()
    for old, lin in zip(before, model.linear_layers(), strict=True):
        norms, old_norms = lin.weight.norm(dim=unit_dim), old.norm(dim=unit_dim)
        assert (norms <= 2.0 + 1e-5).all()
        short = old_norms <= 2.0
        # Short vectors keep their values; long ones keep their direction at length 2.
        kept = old.index_select(1 - unit_dim, short.nonzero().squeeze(1))
        assert torch.equal(lin.weight.index_select(1 - unit_dim, short.nonzero().squeeze(1)), kept)
        torch.testing.assert_close(norms[~short], torch.full_like(norms[~short], 2.0))
    assert (before[0].norm(dim=unit_dim) > 2).any()  # the test did cap something
    unbounded = MLP(20, [8, 6], 3, impl=impl)
    weights = [lin.weight.detach().clone() for lin in unbounded.linear_layers()]
    unbounded.apply_max_norm()  # max_norm None: nothing changes
    assert all(
        torch.equal(w, lin.weight)
        for w, lin in zip(weights, unbounded.linear_layers(), strict=True)
    )
