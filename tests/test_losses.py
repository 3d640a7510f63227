import math

import pytest
import torch
import torch.nn.functional as F
from conftest import quiet

from mlp_lab.config import LOSSES
from mlp_lab.losses import build_loss
from mlp_lab.model import MLP
from mlp_lab.train import load_config


@pytest.fixture
def batch():
    torch.manual_seed(0)
    # Large logits check numerical stability as well as the formula.
    logits = torch.randn(32, 10) * torch.tensor([1.0] * 16 + [40.0] * 16)[:, None]
    return logits.requires_grad_(), torch.randint(0, 10, (32,))


def one_hot(target):
    return F.one_hot(target, 10).float()


def assert_same_loss_and_grad(ours, reference, logits):
    torch.testing.assert_close(ours, reference)
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_ref,) = torch.autograd.grad(reference, logits)
    torch.testing.assert_close(g_ours, g_ref)


def test_cross_entropy_equals_torch(batch):
    logits, y = batch
    assert_same_loss_and_grad(build_loss("ce")(logits, y), F.cross_entropy(logits, y), logits)


@pytest.mark.parametrize("on", ["logits", "probs"])
def test_mse_and_mae_equal_torch_on_one_hot_targets(batch, on):
    logits, y = batch

    def outputs():
        return logits.softmax(1) if on == "probs" else logits

    mse = build_loss("mse", on=on)(logits, y)
    assert_same_loss_and_grad(mse, F.mse_loss(outputs(), one_hot(y)), logits)
    mae = build_loss("mae", on=on)(logits, y)
    assert_same_loss_and_grad(mae, F.l1_loss(outputs(), one_hot(y)), logits)


@pytest.mark.parametrize("delta", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("on", ["logits", "probs"])
def test_huber_equals_torch(batch, delta, on):
    logits, y = batch
    outputs = logits.softmax(1) if on == "probs" else logits
    ours = build_loss("huber", delta=delta, on=on)(logits, y)
    assert_same_loss_and_grad(ours, F.huber_loss(outputs, one_hot(y), delta=delta), logits)


def test_focal_on_a_hand_computed_example():
    # Softmax of [0, 0, ln 2] is [1/4, 1/4, 1/2]: p_t = 1/2 for target 2, 1/4 for target 0.
    logits = torch.tensor([[0.0, 0.0, math.log(2)], [0.0, 0.0, math.log(2)]])
    target = torch.tensor([2, 0])
    expected = (
        -0.25 * (1 - 0.5) ** 2 * math.log(0.5) + -0.25 * (1 - 0.25) ** 2 * math.log(0.25)
    ) / 2
    loss = build_loss("focal", alpha=0.25, gamma=2.0)(logits, target)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.119134, abs=1e-6)


def test_focal_with_gamma_zero_is_alpha_times_cross_entropy(batch):
    logits, y = batch
    ours = build_loss("focal", alpha=0.25, gamma=0.0)(logits, y)
    assert_same_loss_and_grad(ours, 0.25 * F.cross_entropy(logits, y), logits)


def test_focal_down_weights_easy_examples():
    easy, hard = torch.tensor([[5.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    target = torch.tensor([0])
    focal, ce = build_loss("focal"), build_loss("ce")
    assert focal(easy, target) / ce(easy, target) < focal(hard, target) / ce(hard, target)


@pytest.mark.parametrize("covers", ["all", "weights"])
def test_ce_l2_adds_lambda_times_the_direct_sum_of_squares(batch, covers):
    logits, y = batch
    torch.manual_seed(1)
    model = MLP(784, [16], 10, batch_norm=True, init_std=None)
    loss = build_loss("ce_l2", model=model, lam=0.01, covers=covers)(logits, y)
    named = dict(model.named_parameters())
    if covers == "weights":
        named = {k: v for k, v in named.items() if k in ("layers.0.weight", "layers.3.weight")}
    penalty = sum(v.detach().pow(2).sum() for v in named.values())
    torch.testing.assert_close(loss, F.cross_entropy(logits, y) + 0.01 * penalty)
    loss.backward()
    for name, p in model.named_parameters():
        if name in named:
            torch.testing.assert_close(p.grad, 0.02 * p.detach())
        else:  # outside the penalty: no gradient reaches it (the logits here are not the model's)
            assert p.grad is None


def test_ce_l2_keeps_the_model_out_of_its_state():
    model = MLP(784, [8], 10)
    loss = build_loss("ce_l2", model=model)
    assert list(loss.parameters()) == [] and loss.state_dict() == {}


def test_unknown_loss_lists_valid_names():
    with pytest.raises(ValueError, match="valid: ce, mse, mae, huber, focal, ce_l2"):
        build_loss("hinge")


@pytest.mark.real_data
@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_learns_real_fashion_mnist_in_two_epochs(name, real_data_root, tmp_path):
    from mlp_lab.fit import train

    # torch's default initialisation: from the lab's N(0, 0.01²) start, the losses with small
    # gradients (huber: half of mse's) are still at 0.495 val accuracy after two epochs.
    cfg = load_config(
        *quiet(real_data_root, f"loss={name}", "model.init_std=null", "trainer.max_epochs=2")
    )
    record = train(cfg, tmp_path)
    assert record["config"]["loss"]["name"] == name
    assert record["best_val_acc"] >= 0.5, record["history"]


@pytest.mark.parametrize("eps", [0.1, 0.3])
@pytest.mark.parametrize("name", ["ce", "ce_l2"])
def test_label_smoothing_equals_torch(batch, eps, name):
    logits, y = batch
    model = MLP(4, [3], 2)
    extra = {"model": model, "lam": 0.0} if name == "ce_l2" else {}
    ours = build_loss(name, label_smoothing=eps, **extra)(logits, y)
    assert_same_loss_and_grad(ours, F.cross_entropy(logits, y, label_smoothing=eps), logits)
