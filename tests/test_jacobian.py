"""The Jacobian estimators against exact computations."""
import pytest
import torch
from torch import nn

from jrbench.penalty.jacobian import frobenius_sq, frobenius_sq_exact, frobenius_sq_projected, jacobian_frobenius
from jrbench.models.architectures import Classifier, build_model


def _exact_by_autograd(model, x):
    """||d logits / dz||_F^2 per example from torch.autograd.functional.jacobian."""
    z = model.normalize(x)
    out = []
    for i in range(x.shape[0]):
        J = torch.autograd.functional.jacobian(lambda zi: model.net(zi.unsqueeze(0))[0], z[i])
        out.append(J.pow(2).sum())
    return torch.stack(out)


@pytest.mark.parametrize("name", ["mlp", "lenet"])
def test_exact_matches_autograd_jacobian(name):
    torch.manual_seed(0)
    model = build_model(name, (1, 28, 28), 10, [0.13], [0.31]).double().eval()
    x = torch.rand(5, 1, 28, 28, dtype=torch.float64)
    z = model.normalize(x).requires_grad_(True)
    got = 0.5 * frobenius_sq(model.net(z), z, n_proj=-1)
    want = 0.5 * _exact_by_autograd(model, x)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-8)


def test_projection_is_unbiased():
    torch.manual_seed(1)
    model = build_model("lenet", (1, 28, 28), 10, [0.13], [0.31]).double().eval()
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64)
    z = model.normalize(x).requires_grad_(True)
    logits = model.net(z)
    exact = frobenius_sq_exact(logits, z)
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([frobenius_sq_projected(logits, z, 1, generator=g) for _ in range(2000)])
    mean, se = draws.mean(0), draws.std(0) / draws.shape[0] ** 0.5
    assert torch.all((mean - exact).abs() < 3 * se), (mean, exact, se)
    assert torch.all(draws.std(0) > 0)  # it is random, not the exact value in disguise


def test_linear_model_jacobian_is_W():
    torch.manual_seed(2)
    linear = nn.Linear(784, 10).double()
    model = Classifier(nn.Sequential(nn.Flatten(), linear), [0.5], [0.25], (1, 28, 28), 10, "linear").double()
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    z = model.normalize(x).requires_grad_(True)
    w_sq = linear.weight.pow(2).sum()
    assert torch.allclose(frobenius_sq_exact(model.net(z), z), w_sq.expand(3))
    # each projection: C ||v^T W||^2 for its own unit v; their mean over many draws -> ||W||_F^2
    g = torch.Generator().manual_seed(0)
    est = torch.stack([frobenius_sq_projected(model.net(z), z, 4, generator=g) for _ in range(500)]).mean()
    assert abs(est / w_sq - 1) < 0.05
    # pixel-space Jacobian is W / std
    assert torch.allclose(jacobian_frobenius(model, x, "pixel"), (w_sq.sqrt() / 0.25).expand(3), rtol=1e-5)
    assert torch.allclose(jacobian_frobenius(model, x, "normalized"), w_sq.sqrt().expand(3), rtol=1e-5)


def test_random_vectors_follow_input_device_and_dtype():
    z = torch.rand(3, 5, dtype=torch.float64, requires_grad=True)
    logits = z @ torch.rand(5, 4, dtype=torch.float64)
    est = frobenius_sq_projected(logits, z, 2)
    assert est.dtype == torch.float64 and est.shape == (3,)


@pytest.mark.parametrize("kernel, padding", [(5, 2), (3, 0), (3, 1)])
def test_conv_input_adjoint_is_the_input_gradient_and_differentiates_right(kernel, padding):
    from jrbench.penalty.vjp_tape import _ConvAdjoint, conv_input_adjoint

    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, kernel, padding=padding).double()
    z = torch.rand(2, 2, 9, 9, dtype=torch.float64, requires_grad=True)
    h = conv(z)
    u = torch.rand_like(h)
    (want,) = torch.autograd.grad(h, z, u)
    assert torch.allclose(conv_input_adjoint(conv)(u), want)
    w = conv.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda uu, ww: _ConvAdjoint.apply(uu, ww, (padding, padding)),
                                    (u.clone().requires_grad_(True), w))
    assert conv_input_adjoint(nn.Conv2d(2, 3, 3, stride=2)) is None


def test_training_gradients_equal_the_plain_autograd_route():
    """The first-conv shortcut changes speed, not the gradient of CE + lambda R."""
    from jrbench.config import RegConfig
    from jrbench.cost.overhead import reference_exact_loss
    from jrbench.penalty.regularizers import step_loss

    torch.manual_seed(0)
    model = build_model("lenet", (1, 28, 28), 10, [0.13], [0.31]).double()
    x, y = torch.rand(5, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (5,))
    params = list(model.parameters())
    ours = torch.autograd.grad(step_loss(model, x, y, RegConfig(["jacobian"], lambda_jr=0.5, n_proj=-1)).total, params)
    ref = torch.autograd.grad(reference_exact_loss(model, x, y, 0.5), params)
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)
