"""The training loss of each regularizer, against direct computations."""
import torch
import torch.nn.functional as F
from torch import nn

from jrbench.config import RegConfig
from jrbench.jacobian import frobenius_sq_exact
from jrbench.models import build_model
from jrbench.regularizers import model_dropout, step_loss, weight_decay


def _setup():
    torch.manual_seed(0)
    model = build_model("lenet", (1, 28, 28), 10, [0.13], [0.31]).double()
    x = torch.rand(8, 1, 28, 28, dtype=torch.float64)
    y = torch.randint(0, 10, (8,))
    return model, x, y


def test_exact_jacobian_penalty_value_and_total():
    model, x, y = _setup()
    loss = step_loss(model, x, y, RegConfig(["jacobian"], lambda_jr=0.1, n_proj=-1))
    z = model.normalize(x).requires_grad_(True)
    want_r = 0.5 * frobenius_sq_exact(model.net(z), z).mean()
    assert torch.allclose(loss.jacobian, want_r)
    assert torch.allclose(loss.total, F.cross_entropy(model(x), y) + 0.1 * want_r)


def test_subsample_uses_the_first_k_examples_and_full_ce():
    model, x, y = _setup()
    loss = step_loss(model, x, y, RegConfig(["jacobian"], n_proj=-1, jr_subsample=3))
    z = model.normalize(x[:3]).requires_grad_(True)
    assert torch.allclose(loss.jacobian, 0.5 * frobenius_sq_exact(model.net(z), z).mean())
    assert torch.allclose(loss.ce, F.cross_entropy(model(x), y))


def test_penalty_gradient_reaches_the_weights():
    model, x, y = _setup()
    loss = step_loss(model, x, y, RegConfig(["jacobian"], lambda_jr=1.0, n_proj=-1))
    plain = step_loss(model, x, y, RegConfig(["none"]))
    g_jr = torch.autograd.grad(loss.total, model.net[0].weight)[0]
    g_plain = torch.autograd.grad(plain.total, model.net[0].weight)[0]
    assert not torch.allclose(g_jr, g_plain)


def test_input_grad_is_double_backprop():
    model, x, y = _setup()
    loss = step_loss(model, x, y, RegConfig(["input-grad"], lambda_ig=0.5))
    z = model.normalize(x).requires_grad_(True)
    per_example = F.cross_entropy(model.net(z), y, reduction="none")
    want = 0.0
    for i in range(8):
        (g,) = torch.autograd.grad(per_example[i], z, retain_graph=True)
        want += 0.5 * g[i].pow(2).sum() / 8
    assert torch.allclose(loss.input_grad, want)


def test_l2_and_dropout_act_through_optimizer_and_model():
    assert weight_decay(RegConfig(["l2"], weight_decay=1e-3)) == 1e-3
    assert weight_decay(RegConfig(["jacobian"])) == 0.0
    assert model_dropout(RegConfig(["dropout", "jacobian"], dropout=0.3)) == 0.3
    model = build_model("lenet", (1, 28, 28), 10, [0.13], [0.31], dropout=0.3)
    assert any(isinstance(m, nn.Dropout) and m.p == 0.3 for m in model.modules())
    assert not any(isinstance(m, nn.Dropout) for m in build_model("lenet", (1, 28, 28), 10, [0.1], [0.3]).modules())
