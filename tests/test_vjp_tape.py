"""The explicit-VJP route against autograd: same logits, same J^T v, same weight gradients."""
import pytest
import torch
from torch import nn

from jrbench.penalty import vjp_tape
from jrbench.config import RegConfig
from jrbench.models.architectures import build_model
from jrbench.penalty.regularizers import step_loss


def _odd_net() -> nn.Sequential:
    """Strided, padded, dilated and 'same' convs, an overlapping padded pool, dropout."""
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(4, 5, 3, padding="same", dilation=2), nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1), nn.Conv2d(5, 3, 2), nn.ReLU(), nn.Identity(),
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(3 * 2 * 2, 7),
    )


def _nets():
    yield "mlp", build_model("mlp", (1, 28, 28), 10, [0.13], [0.31], dropout=0.2).net, (1, 28, 28)
    yield "lenet", build_model("lenet", (1, 28, 28), 10, [0.13], [0.31], dropout=0.2).net, (1, 28, 28)
    yield "ddnet", build_model("ddnet", (3, 20, 20), 10, [0.5] * 3, [0.25] * 3).net, (3, 20, 20)
    yield "odd", _odd_net(), (2, 11, 11)


@pytest.mark.parametrize("name, net, shape", list(_nets()), ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("k", [5, 2])
def test_vjp_and_its_weight_gradient_equal_autograd(name, net, shape, k):
    net = net.double().train()
    params = list(net.parameters())
    z = torch.randn(5, *shape, dtype=torch.float64)
    assert vjp_tape.supports(net)

    torch.manual_seed(3)  # the same dropout draws on both routes
    logits, vjp = vjp_tape.forward(net, z, k)
    torch.manual_seed(3)
    z_ref = z.clone().requires_grad_(True)
    logits_ref = net(z_ref)
    assert torch.allclose(logits, logits_ref)

    v = torch.randn(k, logits.shape[1], dtype=torch.float64)
    g = vjp(v)
    (g_ref,) = torch.autograd.grad(logits_ref[:k], z_ref, v, create_graph=True)
    assert g.shape == z[:k].shape
    assert torch.allclose(g, g_ref[:k])

    loss, loss_ref = g.pow(2).sum() + logits.sum(), g_ref.pow(2).sum() + logits_ref.sum()
    for a, b in zip(torch.autograd.grad(loss, params), torch.autograd.grad(loss_ref, params)):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_step_loss_takes_the_tape_and_matches_the_autograd_route():
    torch.manual_seed(0)
    model = build_model("lenet", (1, 28, 28), 10, [0.13], [0.31]).double()
    x, y = torch.rand(6, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (6,))
    params = list(model.parameters())
    reg = RegConfig(["jacobian"], lambda_jr=0.7, n_proj=2, jr_subsample=4)
    torch.manual_seed(1)
    fast = step_loss(model, x, y, reg)
    fast_grads = torch.autograd.grad(fast.total, params)

    wrapped = build_model("lenet", (1, 28, 28), 10, [0.13], [0.31]).double()
    wrapped.load_state_dict(model.state_dict())
    wrapped.net = nn.Sequential(nn.Sequential(*wrapped.net))  # not flat: autograd route
    assert not vjp_tape.supports(wrapped.net)
    torch.manual_seed(1)
    slow = step_loss(wrapped, x, y, reg)
    assert torch.allclose(fast.jacobian, slow.jacobian) and torch.allclose(fast.total, slow.total)
    for a, b in zip(fast_grads, torch.autograd.grad(slow.total, list(wrapped.parameters()))):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_unsupported_nets_fall_back():
    assert not vjp_tape.supports(build_model("resnet18", (3, 32, 32), 10, [0.5] * 3, [0.25] * 3).net)
    assert not vjp_tape.supports(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)))
    assert not vjp_tape.supports(nn.Sequential(nn.Linear(3, 3), nn.ReLU(inplace=True)))
    assert not vjp_tape.supports(nn.Sequential())
    # convs without a symmetric zero-padding adjoint take autograd's route too
    assert not vjp_tape.supports(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect")))
    assert not vjp_tape.supports(nn.Sequential(nn.Conv2d(1, 2, 4, padding="same")))
    assert vjp_tape.supports(nn.Sequential(nn.Conv2d(1, 2, 3, padding="same"), nn.Flatten()))
