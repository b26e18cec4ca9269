"""The training loss of each regularizer, against direct computations."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from jrbench.config import RegConfig
from jrbench.penalty.jacobian import frobenius_sq_exact
from jrbench.models.architectures import build_model
from jrbench.penalty.regularizers import model_dropout, step_loss, weight_decay


def _setup():
    torch.manual_seed(0)
    model = build_model("lenet", (1, 28, 28), 10, [0.13], [0.31]).double()
    x = torch.rand(8, 1, 28, 28, dtype=torch.float64)
    y = torch.randint(0, 10, (8,))
    return model, x, y


@pytest.mark.slow
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


@pytest.mark.slow
def test_jvp_estimator_is_unbiased_against_the_exact_value():
    """E ||J u||^2 = ||J||_F^2 for u ~ N(0, I): the mean of many draws within 4 standard errors."""
    model, x, y = _setup()
    z = model.normalize(x).requires_grad_(True)
    exact = 0.5 * frobenius_sq_exact(model.net(z), z).mean()
    torch.manual_seed(1)
    draws = torch.stack([step_loss(model, x, y, RegConfig(["jacobian"], jr_estimator="jvp")).jacobian
                         for _ in range(300)])
    assert abs(draws.mean() - exact) < 4 * draws.std() / 300 ** 0.5
    assert draws.std() > 0  # it is an estimate, not the exact value


def test_jvp_estimator_gradients_match_autograd_in_expectation_of_one_direction():
    """For one fixed direction u the jvp path's weight gradient equals autograd's of ||J u||^2."""
    from jrbench.penalty.regularizers import jvp_frobenius_sq

    model, x, y = _setup()
    z = model.normalize(x).detach()
    torch.manual_seed(3)
    _, est = jvp_frobenius_sq(model.net, z, 1)
    (g_jvp,) = torch.autograd.grad(est.sum(), model.net[0].weight)
    torch.manual_seed(3)
    u = torch.randn(z.shape, dtype=z.dtype)
    zz = z.clone().requires_grad_(True)
    out = model.net(zz)
    # J u by double-VJP: d/dw of ||J u||^2 with J u = d/ds <J^T s, u>
    s = torch.zeros_like(out, requires_grad=True)
    (jt_s,) = torch.autograd.grad(out, zz, s, create_graph=True)
    (ju,) = torch.autograd.grad((jt_s * u).sum(), s, create_graph=True)
    (g_ref,) = torch.autograd.grad(ju.pow(2).sum(), model.net[0].weight)
    assert torch.allclose(g_jvp, g_ref, atol=1e-10)


def test_jr_every_applies_the_penalty_every_kth_step_with_lambda_times_k():
    model, x, y = _setup()
    reg = RegConfig(["jacobian"], lambda_jr=0.1, n_proj=-1, jr_every=3)
    on = step_loss(model, x, y, reg, step=3)
    off = step_loss(model, x, y, reg, step=4)
    assert off.jacobian is None and torch.allclose(off.total, off.ce)
    assert torch.allclose(on.total, on.ce + 0.3 * on.jacobian)


def test_backend_paths_are_taken_and_agree():
    from unittest import mock

    from jrbench.penalty import vjp_tape
    from jrbench.penalty.regularizers import jacobian_path

    model, x, y = _setup()
    assert jacobian_path(model, RegConfig(["jacobian"])) == "tape"
    assert jacobian_path(model, RegConfig(["jacobian"], jr_backend="autograd")) == "autograd"
    assert jacobian_path(model, RegConfig(["jacobian"], jr_estimator="jvp")) == "jvp"
    with mock.patch.object(vjp_tape, "forward", wraps=vjp_tape.forward) as tape:
        a = step_loss(model, x, y, RegConfig(["jacobian"], n_proj=-1))
        assert tape.call_count == 1
        b = step_loss(model, x, y, RegConfig(["jacobian"], n_proj=-1, jr_backend="autograd"))
        assert tape.call_count == 1
    assert torch.allclose(a.total, b.total)


@pytest.mark.slow
def test_float32_tape_matches_autograd():
    torch.manual_seed(0)
    model = build_model("lenet", (1, 28, 28), 10, [0.13], [0.31])
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    grads = []
    for backend in ("tape", "autograd"):
        model.zero_grad()
        step_loss(model, x, y, RegConfig(["jacobian"], lambda_jr=1.0, n_proj=-1, jr_backend=backend)).total.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_tape_backend_refuses_a_net_it_does_not_cover():
    import pytest

    from jrbench.errors import UserError

    model = build_model("resnet18", (3, 32, 32), 10, [0.5] * 3, [0.25] * 3)
    x, y = torch.rand(2, 3, 32, 32), torch.randint(0, 10, (2,))
    with pytest.raises(UserError, match="--jr-backend tape"):
        step_loss(model, x, y, RegConfig(["jacobian"], jr_backend="tape"))


@pytest.mark.slow
def test_resnet18_step_through_autograd_and_jvp():
    torch.manual_seed(0)
    model = build_model("resnet18", (3, 32, 32), 10, [0.5] * 3, [0.25] * 3)
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    for reg in (RegConfig(["jacobian"]), RegConfig(["jacobian"], jr_estimator="jvp")):
        model.zero_grad()
        loss = step_loss(model, x, y, reg)
        loss.total.backward()
        assert loss.jacobian > 0 and model.net.conv1.weight.grad.abs().sum() > 0


def test_ddnet_step_with_the_jacobian_penalty():
    torch.manual_seed(0)
    model = build_model("ddnet", (3, 32, 32), 10, [0.49, 0.48, 0.45], [0.25, 0.24, 0.26])
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    loss = step_loss(model, x, y, RegConfig(["jacobian"], lambda_jr=0.01))
    loss.total.backward()
    assert torch.isfinite(loss.total) and loss.jacobian > 0
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(g.abs().sum() > 0 for g in grads)  # every layer, the first conv's included
