"""The Jacobian penalty of a net with train-mode BatchNorm (issue 17, item 3).

Definition (jrbench.penalty.regularizers.step_loss): the cross-entropy forward runs once over the
whole batch in train mode; each example's J_z is the Jacobian of the net with every BatchNorm held
at that forward's batch mean and biased variance (detached). The references below build that
frozen net by hand (an explicit per-channel affine map per BatchNorm, sharing the model's
parameters) and take each example's Jacobian with torch.autograd.functional.jacobian.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from jrbench.config import RegConfig
from jrbench.errors import UserError
from jrbench.models.architectures import Classifier, build_model
from jrbench.penalty import jacobian as jac
from jrbench.penalty import regularizers
from jrbench.penalty.jacobian import (batch_statistic_norms, cpu_input_gradient_kernels, frozen_batch_norm,
                                      random_unit_vectors, recorded_batch_stats)
from jrbench.penalty.regularizers import jacobian_path, step_loss

B, K, C = 6, 3, 4
BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)


def _model(extra: nn.Module | None = None, track_1d: bool = True) -> Classifier:
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Tanh(), nn.Flatten(),
              nn.Linear(3 * 5 * 5, 6), nn.BatchNorm1d(6, track_running_stats=track_1d), nn.Tanh(),
              nn.Linear(6, C)]
    if extra is not None:
        layers.insert(3, extra)
    model = Classifier(nn.Sequential(*layers), [0.5], [0.25], (1, 5, 5), C, "tiny-bn").double()
    with torch.no_grad():  # affine maps and running statistics away from their defaults
        for m in model.modules():
            if isinstance(m, BN_TYPES):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                if m.running_mean is not None:
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 2.0)
    return model


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.rand(B, 1, 5, 5, dtype=torch.float64, generator=g), torch.randint(0, C, (B,), generator=g)


class _Affine(nn.Module):
    """A BatchNorm held at fixed statistics, written out: (x - mean) / sqrt(var + eps) * w + b."""

    def __init__(self, bn, mean, var):
        super().__init__()
        self.bn, self.mean, self.var = bn, mean, var

    def forward(self, x):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        scale = (self.bn.weight / torch.sqrt(self.var + self.bn.eps)).view(shape)
        return (x - self.mean.view(shape)) * scale + self.bn.bias.view(shape)


def _frozen_reference(model, x):
    """The net with each BatchNorm replaced by the affine map it was in one train-mode forward on
    all of ``x`` (statistics computed layer by layer on a copy, so the model is untouched)."""
    stats, a = [], model.normalize(x).detach()
    with torch.no_grad():
        for layer in copy.deepcopy(model.net):
            if isinstance(layer, BN_TYPES):
                dims = [0, *range(2, a.dim())]
                if layer.training or layer.running_mean is None:
                    stats.append((a.mean(dims), a.var(dims, unbiased=False)))
                else:
                    stats.append((layer.running_mean.clone(), layer.running_var.clone()))
            a = layer(a)
    it = iter(stats)
    return nn.Sequential(*[_Affine(layer, *next(it)) if isinstance(layer, BN_TYPES) else layer
                           for layer in model.net])


def _jacobians(model, x, rows, create_graph=False):
    """Exact per-example Jacobians (rows, C, D) of the frozen reference net, with respect to z."""
    frozen = _frozen_reference(model, x)
    z = model.normalize(x).detach()
    return torch.stack([
        torch.autograd.functional.jacobian(lambda zi: frozen(zi.unsqueeze(0)).squeeze(0), z[i],
                                           create_graph=create_graph).reshape(C, -1)
        for i in range(rows)])


def _replayed_estimate(model, x, kind, n_proj, rows, seed, create_graph=False):
    """The estimator's value for the directions the path draws after torch.manual_seed(seed)."""
    jac_ = _jacobians(model, x, rows, create_graph)
    torch.manual_seed(seed)
    total = 0.0
    for _ in range(n_proj):
        if kind == "vjp":
            v = random_unit_vectors((rows, C), x)
            total = total + C * torch.einsum("kc,kcd->kd", v, jac_).pow(2).sum(1)
        else:
            u = torch.randn((rows, 1, 5, 5), dtype=x.dtype).reshape(rows, -1)
            total = total + torch.einsum("kcd,kd->kc", jac_, u).pow(2).sum(1)
    return 0.5 * (total / n_proj).mean()


# (name, RegConfig, rows penalized, how to get the reference: "exact" or an estimator to replay)
PATHS = [
    ("autograd-exact", RegConfig(["jacobian"], lambda_jr=1.0, n_proj=-1), B, "exact"),
    ("autograd-subsample", RegConfig(["jacobian"], lambda_jr=1.0, n_proj=-1, jr_subsample=K), K, "exact"),
    ("autograd-n3", RegConfig(["jacobian"], lambda_jr=1.0, n_proj=3), B, "vjp"),
    ("autograd-n3-subsample", RegConfig(["jacobian"], lambda_jr=1.0, n_proj=3, jr_subsample=K), K, "vjp"),
    ("jvp-n1", RegConfig(["jacobian"], lambda_jr=1.0, jr_estimator="jvp"), B, "jvp"),
    ("jvp-n3", RegConfig(["jacobian"], lambda_jr=1.0, n_proj=3, jr_estimator="jvp"), B, "jvp"),
    ("jvp-n3-subsample", RegConfig(["jacobian"], lambda_jr=1.0, n_proj=3, jr_estimator="jvp", jr_subsample=K),
     K, "jvp"),
    ("jr-every-2", RegConfig(["jacobian"], lambda_jr=1.0, n_proj=-1, jr_every=2), B, "exact"),
    ("with-input-grad", RegConfig(["jacobian", "input-grad"], lambda_jr=1.0, n_proj=-1, jr_subsample=K), K, "exact"),
    ("jvp-with-input-grad", RegConfig(["jacobian", "input-grad"], lambda_jr=1.0, n_proj=3, jr_estimator="jvp",
                                      jr_subsample=K), K, "jvp"),
]


def _reference_penalty(model, x, rows, kind, n_proj, seed, create_graph=False):
    if kind == "exact":
        return 0.5 * _jacobians(model, x, rows, create_graph).pow(2).sum((1, 2)).mean()
    return _replayed_estimate(model, x, kind, n_proj, rows, seed, create_graph)


@pytest.mark.parametrize("name,reg,rows,kind", PATHS, ids=[p[0] for p in PATHS])
@pytest.mark.slow
def test_every_path_is_the_frozen_statistics_penalty(name, reg, rows, kind):
    """Value: 0.5 mean_i ||J_i||_F^2 (or the estimator at the same directions) of the frozen net,
    the first ``rows`` examples under the whole batch's statistics; weight gradient: that of the
    reference penalty plus the plain train-mode cross-entropy's."""
    model, (x, y) = _model(), _data()
    assert jacobian_path(model, reg) == ("jvp" if reg.jr_estimator == "jvp" else "autograd")
    params = list(model.parameters())
    torch.manual_seed(7)
    loss = step_loss(model, x, y, reg, step=0)
    got = torch.autograd.grad(loss.total, params, allow_unused=True)
    want_r = _reference_penalty(model, x, rows, kind, reg.n_proj, 7, create_graph=True)
    torch.testing.assert_close(loss.jacobian, want_r.detach(), rtol=1e-10, atol=1e-12)

    want_total = F.cross_entropy(model.net(model.normalize(x)), y) + reg.lambda_jr * reg.jr_every * want_r
    if "input-grad" in reg.names:
        frozen, z = _frozen_reference(model, x), model.normalize(x).detach()
        ig = 0.0
        for i in range(B):  # d CE_i / d z_i, example by example
            zi = z[i:i + 1].clone().requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(frozen(zi), y[i:i + 1]), zi, create_graph=True)
            ig = ig + 0.5 * g.pow(2).sum() / B
        torch.testing.assert_close(loss.input_grad, ig.detach(), rtol=1e-10, atol=1e-12)
        want_total = want_total + reg.lambda_ig * ig
    torch.testing.assert_close(loss.total.detach(), want_total.detach(), rtol=1e-10, atol=1e-12)
    want = torch.autograd.grad(want_total, params, allow_unused=True)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-10)


def test_jr_every_off_step_is_plain_training():
    model, (x, y) = _model(), _data()
    ref = copy.deepcopy(model)
    loss = step_loss(model, x, y, RegConfig(["jacobian"], n_proj=-1, jr_every=2), step=1)
    assert loss.jacobian is None
    torch.testing.assert_close(loss.total, F.cross_entropy(ref(x), y))


CONFIGS = [p[1] for p in PATHS] + [RegConfig(["input-grad"]), RegConfig(["none"]),
                                   RegConfig(["jacobian"], n_proj=-1, jr_every=2)]


@pytest.mark.parametrize("reg", CONFIGS, ids=[p[0] for p in PATHS] + ["input-grad", "none", "jr-every-off"])
def test_running_statistics_are_updated_once_as_in_plain_training(reg):
    model, (x, y) = _model(), _data()
    plain = copy.deepcopy(model)
    logits = plain(x)
    loss = step_loss(model, x, y, reg, step=1 if reg.jr_every == 2 else 0)
    for got, want in zip(model.modules(), plain.modules()):
        if isinstance(got, BN_TYPES):
            torch.testing.assert_close(got.running_mean, want.running_mean, rtol=0, atol=1e-14)
            torch.testing.assert_close(got.running_var, want.running_var, rtol=0, atol=1e-14)
            assert int(got.num_batches_tracked) == int(want.num_batches_tracked) == 1
    torch.testing.assert_close(loss.logits, logits.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(loss.ce, F.cross_entropy(logits, y).detach(), rtol=0, atol=1e-12)


def test_untracked_batch_norm_in_eval_mode_uses_the_batch_and_is_frozen_at_it():
    """BatchNorm without running statistics normalizes with the batch in eval mode too."""
    model, (x, y) = _model(track_1d=False), _data()
    model.eval()
    assert [type(m) for m in batch_statistic_norms(model.net)] == [nn.BatchNorm1d]
    loss = step_loss(model, x, y, RegConfig(["jacobian"], n_proj=-1, jr_subsample=K))
    want = 0.5 * _jacobians(model, x, K).pow(2).sum((1, 2)).mean()
    torch.testing.assert_close(loss.jacobian, want, rtol=1e-10, atol=1e-12)
    assert model.net[5].running_mean is None and not model.net[5].training


def test_eval_mode_and_batch_norm_free_nets_keep_the_single_forward_path(monkeypatch):
    calls = []
    monkeypatch.setattr(regularizers, "recorded_batch_stats",
                        lambda norms: calls.append(norms) or recorded_batch_stats(norms))
    model, (x, y) = _model(), _data()
    model.eval()  # eval BatchNorm: an affine map on the running statistics already
    loss = step_loss(model, x, y, RegConfig(["jacobian"], n_proj=-1))
    torch.testing.assert_close(loss.jacobian, 0.5 * _jacobians(model, x, B).pow(2).sum((1, 2)).mean())
    lenet = build_model("lenet", (1, 28, 28), 10, [0.13], [0.31]).double()
    forwards = []
    lenet.net[0].register_forward_hook(lambda *a: forwards.append(1))  # the tape calls layers one by one
    xl, yl = torch.rand(4, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (4,))
    for reg in (RegConfig(["jacobian"], jr_backend="autograd"), RegConfig(["jacobian"]),
                RegConfig(["jacobian"], jr_estimator="jvp"), RegConfig(["input-grad"])):
        forwards.clear()
        step_loss(lenet, xl, yl, reg)
        assert len(forwards) == 1, reg
    assert calls == []


def test_the_tape_refuses_batch_norm_and_auto_falls_back_to_autograd():
    model, (x, y) = _model(), _data()
    assert jacobian_path(model, RegConfig(["jacobian"])) == "autograd"
    with pytest.raises(UserError, match="--jr-backend tape"):
        step_loss(model, x, y, RegConfig(["jacobian"], jr_backend="tape"))


def _bn_state(model):
    return [(m, m.training, m.running_mean, m.running_var,
             None if m.running_mean is None else m.running_mean.clone(),
             dict(vars(m)).get("forward"), len(m._forward_pre_hooks), len(m._forward_hooks))
            for m in model.modules() if isinstance(m, BN_TYPES)]


def _assert_restored(before, model, updated=False):
    for (m, training, mean, var, mean_value, fwd, n_pre, n_post) in before:
        assert m.training == training and m.running_mean is mean and m.running_var is var
        assert "forward" not in vars(m) and fwd is None and len(m._forward_pre_hooks) == n_pre == 0
        assert len(m._forward_hooks) == n_post == 0
        if mean is not None and not updated:
            assert torch.equal(m.running_mean, mean_value)


class _FailOnCall(nn.Module):
    """Identity that raises on its n-th call (1: the CE forward, 2: the penalty's frozen pass)."""

    def __init__(self, n):
        super().__init__()
        self.n, self.calls = n, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.n:
            raise RuntimeError("boom")
        return x


@pytest.mark.parametrize("reg", [RegConfig(["jacobian"], n_proj=-1), RegConfig(["jacobian"], jr_subsample=K),
                                 RegConfig(["jacobian"], n_proj=3, jr_estimator="jvp"), RegConfig(["input-grad"])],
                         ids=["autograd", "subsample", "jvp", "input-grad"])
def test_batch_norm_layers_are_restored_after_the_step_and_after_an_exception(reg):
    model, (x, y) = _model(), _data()
    before = _bn_state(model)
    step_loss(model, x, y, reg).total.backward()
    _assert_restored(before, model, updated=True)
    for n in (1, 2):  # raised in the recording forward, then in the frozen pass
        model = _model(_FailOnCall(n))
        before = _bn_state(model)
        with pytest.raises(RuntimeError, match="boom"):
            step_loss(model, x, y, reg)
        _assert_restored(before, model, updated=True)  # the CE forward ran through BatchNorm2d


def test_the_context_managers_restore_on_exception_and_freeze_exactly():
    model, (x, _) = _model(), _data()
    z = model.normalize(x)
    norms = batch_statistic_norms(model.net)
    before = _bn_state(model)
    with pytest.raises(KeyError):
        with recorded_batch_stats(norms) as stats:
            model.net(z)
            raise KeyError
    _assert_restored(before, model, updated=True)
    before = _bn_state(model)
    with pytest.raises(KeyError):
        with frozen_batch_norm(stats):
            assert not any(m.training for m in norms)
            frozen_logits = model.net(z)
            raise KeyError
    _assert_restored(before, model)
    torch.testing.assert_close(frozen_logits, _frozen_reference(model, x)(z), rtol=0, atol=1e-12)


def test_a_batch_norm_layer_called_twice_per_forward_is_refused():
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(4)
    net = nn.Sequential(nn.Flatten(), nn.Linear(25, 4), bn, nn.Tanh(), nn.Linear(4, 4), bn, nn.Linear(4, C))
    model = Classifier(net, [0.5], [0.25], (1, 5, 5), C, "shared-bn").double()
    x, y = _data()
    with pytest.raises(UserError, match="more than once"):
        step_loss(model, x, y, RegConfig(["jacobian"], jr_backend="autograd"))
    assert len(bn._forward_pre_hooks) == 0 and bn.training


@pytest.mark.parametrize("initial", [True, False])
def test_mkldnn_flag_is_left_as_found(initial):
    """Item 5: the input-gradient passes turn oneDNN off on the CPU and put the flag back."""
    previous = torch.backends.mkldnn.enabled
    try:
        torch.backends.mkldnn.enabled = initial
        model = build_model("lenet", (1, 28, 28), 10, [0.13], [0.31])
        x, y = torch.rand(2, 1, 28, 28), torch.randint(0, 10, (2,))
        step_loss(model, x, y, RegConfig(["jacobian"], jr_backend="autograd")).total.backward()
        assert torch.backends.mkldnn.enabled is initial
        with pytest.raises(RuntimeError, match="inside"):
            with cpu_input_gradient_kernels(x):
                assert torch.backends.mkldnn.enabled is False
                raise RuntimeError("inside")
        assert torch.backends.mkldnn.enabled is initial
        vjp = jac.autograd_vjp(torch.zeros(2, 10), x)  # no graph: autograd.grad raises inside
        with pytest.raises(RuntimeError):
            vjp(torch.ones(2, 10))
        assert torch.backends.mkldnn.enabled is initial
    finally:
        torch.backends.mkldnn.enabled = previous
