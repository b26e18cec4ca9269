"""CROWN and alpha-CROWN (jrbench.certify.crown): bounds hold at random points of the ball and at
PGD's best point, are exact on one linear layer and on a net whose every ReLU is stable, are
tighter than interval bounds where the relaxation matters (not always: see the last comparison),
and the layers without a rule are refused."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from jrbench.certify import crown, ibp
from jrbench.errors import UserError
from jrbench.models.architectures import Classifier, PixelClassifier, build_model


def margins(logits, labels):
    """(N, C): f_y - f_j, +inf on the label's own column."""
    return (logits.gather(1, labels[:, None]) - logits).scatter(1, labels[:, None], math.inf)


def mixed_model():
    """Every layer kind CROWN has a rule for: strided/padded/grouped convolutions, eval BatchNorm,
    LeakyReLU, average pooling, an overlapping padded max pool, dropout, a hidden Linear."""
    torch.manual_seed(1)
    bn = nn.BatchNorm2d(4)
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.2, 3), bn.weight.data.uniform_(-2, 2)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1), bn, nn.LeakyReLU(0.1),
                        nn.Conv2d(4, 4, 3, padding=1, groups=2), nn.ReLU(), nn.AvgPool2d(2, 1),
                        nn.MaxPool2d(3, 2, padding=1), nn.Flatten(), nn.Linear(36, 12), nn.ReLU(), nn.Dropout(0.5),
                        nn.Linear(12, 5))
    return PixelClassifier(net, (2, 12, 12), 5, "mixed").eval()


def models():
    torch.manual_seed(2)
    return {"lenet": build_model("lenet", (1, 16, 16), 10, [0.13], [0.31], dropout=0.5).eval(),
            "mlp": build_model("mlp", (1, 8, 8), 4, [0.5], [0.25]).eval(),
            "mixed": mixed_model()}


def sampled_worst(model, x, y, eps, norm, draws=300, seed=0):
    """(N, C) the smallest margins seen at random points of the ball ∩ [0, 1] (corners included for L-inf)."""
    g = torch.Generator().manual_seed(seed)
    model64 = copy.deepcopy(model).double()
    x64 = x.double()
    worst = torch.full((len(x), model.num_classes), math.inf, dtype=torch.float64)
    for k in range(draws):
        if norm == "linf":
            u = torch.rand(x.shape, generator=g, dtype=torch.float64) * 2 - 1
            d = eps * (u.sign() if k % 2 else u)
        else:
            d = torch.randn(x.shape, generator=g, dtype=torch.float64)
            d = d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * eps * torch.rand(len(x), 1, 1, 1, generator=g,
                                                                                  dtype=torch.float64) ** 0.1
        with torch.no_grad():
            worst = torch.minimum(worst, margins(model64((x64 + d).clamp(0, 1)), y))
    return worst


def pgd_worst(model, x, y, eps, norm, steps=40):
    """(N, C) margins at the point of a float64 PGD on the smallest margin (one restart)."""
    model64 = copy.deepcopy(model).double()
    x64 = x.double()
    delta = torch.zeros_like(x64, requires_grad=True)
    step = 2.5 * eps / steps
    for _ in range(steps):
        m = margins(model64((x64 + delta).clamp(0, 1)), y).amin(1).sum()
        (grad,) = torch.autograd.grad(m, delta)
        with torch.no_grad():
            if norm == "linf":
                delta -= step * grad.sign()
                delta.clamp_(-eps, eps)
            else:
                delta -= step * grad / grad.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, 1, 1, 1)
                scale = (eps / delta.flatten(1).norm(dim=1).clamp_min(1e-30)).clamp(max=1).view(-1, 1, 1, 1)
                delta *= scale
            delta.copy_((x64 + delta).clamp(0, 1) - x64)
    with torch.no_grad():
        return margins(model64(x64 + delta), y)


@pytest.mark.parametrize("name", ["lenet", "mlp", "mixed"])
@pytest.mark.parametrize("norm,eps", [("linf", 0.01), ("linf", 0.05), ("l2", 0.1), ("l2", 0.5)])
@pytest.mark.slow
def test_bounds_hold_at_random_points_and_at_pgds_point(name, norm, eps):
    model = models()[name]
    torch.manual_seed(3)
    x = torch.rand(4, *model.input_shape)
    x[0] = 0.0  # a ball clipped at 0
    x[1, :, :2] = 1.0
    with torch.no_grad():
        y = model(x).argmax(1)
    y[3] = (y[3] + 1) % model.num_classes  # a misclassified example: bounds still hold
    low = crown.margin_lower_bounds(model, x, y, eps, norm)
    low_alpha = crown.margin_lower_bounds(model, x, y, eps, norm, alpha_steps=10)
    worst = torch.minimum(sampled_worst(model, x, y, eps, norm), pgd_worst(model, x, y, eps, norm))
    finite = torch.isfinite(worst)
    assert bool((low[finite] <= worst[finite]).all()), (low - worst)[finite].max()
    assert bool((low_alpha[finite] <= worst[finite]).all())
    assert bool((low_alpha[finite] >= low[finite]).all())  # alpha-CROWN is never looser (the max of both)
    assert torch.isinf(low[~finite]).all()  # the label's own column


def linear_net(classes=4, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, classes))
    return Classifier(net, [0.4], [0.25], (1, 6, 6), classes, "linear").eval()


def kkt_minimum(a, x0, lo, hi, eps):
    """min a . t over ||t - x0||_2 <= eps, lo <= t <= hi (float64, bisection on the multiplier)."""
    corner = torch.where(a > 0, lo, hi)
    if (corner - x0).norm() <= eps:
        return float(a @ corner)

    def point(mu):
        return (x0 - a / (2 * mu)).clamp(lo, hi)
    left, right = 1e-12, 1e12  # ||t(mu) - x0|| falls as mu grows
    for _ in range(400):
        mid = math.sqrt(left * right)
        left, right = (mid, right) if (point(mid) - x0).norm() > eps else (left, mid)
    return float(a @ point(right))


def test_one_linear_layer_is_exact_for_both_norms():
    """f = W (x - m)/s + b is affine: min of (w_y - w_j) . x over the L-inf box is closed-form; over
    the L2 ball ∩ box it is a . t at the KKT point t(mu) = clip(x0 - a / (2 mu), lo, hi) with
    ||t(mu) - x0|| = eps (found here by bisection on mu, not by the dual search CROWN uses), or the
    box's corner when that lies inside the ball."""
    model = linear_net()
    mean, std = float(model.normalize.mean), float(model.normalize.std)  # float32 0.4 and 0.25, exactly
    w = model.net[1].weight.detach().double() / std
    b = model.net[1].bias.detach().double() - model.net[1].weight.detach().double().sum(1) * mean / std
    torch.manual_seed(0)
    x = 0.3 + 0.4 * torch.rand(3, 1, 6, 6)
    x[2, 0, :3] = 0.0  # a third of the pixels at the box's edge
    y = torch.tensor([0, 1, 2])
    for norm, eps in (("linf", 0.05), ("l2", 0.2), ("l2", 1.5)):
        low = crown.margin_lower_bounds(model, x, y, eps, norm)
        for i in range(3):
            x0 = x[i].flatten().double()
            for j in range(4):
                if j == y[i]:
                    continue
                a, c = w[y[i]] - w[j], b[y[i]] - b[j]
                lo, hi = (x0 - eps).clamp(0, 1), (x0 + eps).clamp(0, 1)
                if norm == "linf":
                    exact = float(torch.minimum(a * lo, a * hi).sum() + c)
                else:
                    exact = float(kkt_minimum(a, x0, lo, hi, eps) + c)
                assert float(low[i, j]) <= exact + 1e-9
                assert float(low[i, j]) == pytest.approx(exact, rel=1e-6, abs=1e-6), (norm, eps, i, j)


def test_a_net_whose_every_relu_is_stable_gets_the_exact_linear_bound():
    """Large positive biases keep every hidden ReLU on over the ball: the net is affine there, with
    slope the margin's gradient at x0, and CROWN's bound is that affine map's exact minimum."""
    torch.manual_seed(4)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 3))
    with torch.no_grad():
        net[1].bias.fill_(20.0)
        net[3].weight.abs_()
        net[3].bias.fill_(5.0)
    model = PixelClassifier(net, (1, 4, 4), 3, "stable").eval()
    x = torch.rand(2, 1, 4, 4)
    y = torch.tensor([0, 2])
    eps = 0.05
    low = crown.margin_lower_bounds(model, x, y, eps, "linf")
    model64 = copy.deepcopy(model).double()
    for i in range(2):
        x0 = x[i:i + 1].double().requires_grad_(True)
        for j in range(3):
            if j == y[i]:
                continue
            m = (model64(x0)[0, y[i]] - model64(x0)[0, j])
            (g,) = torch.autograd.grad(m, x0)
            lo, hi = (x0 - eps).clamp(0, 1), (x0 + eps).clamp(0, 1)
            exact = float(m.detach() + (torch.minimum(g * (lo - x0), g * (hi - x0))).sum())
            assert float(low[i, j]) == pytest.approx(exact, rel=1e-9, abs=1e-9)


@pytest.mark.slow
def test_crown_is_tighter_than_ibp_at_small_radii_but_not_always():
    """On a LeNet at L-inf 0.01 CROWN's margin bounds beat interval bounds almost everywhere (the
    relaxation keeps the correlations IBP loses). Not always: on a wide, deep net at a radius where
    nearly every ReLU is unstable, the chords' slopes multiply and interval bounds can be tighter on
    some margins; the certify command keeps every certificate's radius and reports the best."""
    model = models()["lenet"]
    torch.manual_seed(5)
    x = torch.rand(8, *model.input_shape)
    with torch.no_grad():
        y = model(x).argmax(1)
    c, i = crown.margin_lower_bounds(model, x, y, 0.01, "linf"), ibp.margin_lower_bounds(model, x, y, 0.01)
    finite = torch.isfinite(c)
    assert (c[finite] >= i[finite]).double().mean() >= 0.95
    assert float((c - i)[finite].median()) > 0


@pytest.mark.slow
def test_alpha_crown_tightens_some_margins():
    model = models()["lenet"]
    torch.manual_seed(6)
    x = torch.rand(4, *model.input_shape)
    with torch.no_grad():
        y = model(x).argmax(1)
    c = crown.margin_lower_bounds(model, x, y, 0.02, "linf")
    a = crown.margin_lower_bounds(model, x, y, 0.02, "linf", alpha_steps=20)
    finite = torch.isfinite(c)
    assert bool((a[finite] >= c[finite]).all())
    assert float((a - c)[finite].max()) > 1e-3


def test_eps_zero_gives_the_logit_margins_themselves():
    model = models()["mixed"]
    x = torch.rand(3, *model.input_shape)
    with torch.no_grad():
        y = model(x).argmax(1)
        exact = margins(copy.deepcopy(model).double()(x.double()), y)
    for norm in ("linf", "l2"):
        low = crown.margin_lower_bounds(model, x, y, 0.0, norm)
        finite = torch.isfinite(exact)
        assert torch.allclose(low[finite], exact[finite], atol=1e-6)
        assert bool((low[finite] <= exact[finite] + 1e-12).all())  # the float64 forward rounds too


def test_certified_means_correct_and_every_margin_positive():
    model = models()["lenet"]
    torch.manual_seed(7)
    x = torch.rand(6, *model.input_shape)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[0] = (y[0] + 1) % 10
    ok, low = crown.certified(model, x, y, 0.0, "linf", batch_size=4)
    assert not ok[0] and bool(ok[1:].all())
    assert bool((low[1:] > 0).all())


def test_layers_without_a_rule_and_bad_input_are_refused():
    tanh = PixelClassifier(nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)), (1, 2, 2), 2, "t")
    assert "Tanh" in crown.supports(tanh) and "net.2" in crown.supports(tanh)
    with pytest.raises(UserError, match="Tanh"):
        crown.margin_lower_bounds(tanh, torch.rand(1, 1, 2, 2), torch.tensor([0]), 0.1)
    ceil = PixelClassifier(nn.Sequential(nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(), nn.Linear(4, 2)), (1, 3, 3),
                           2, "c")
    assert "ceil_mode" in crown.supports(ceil)
    model = models()["mlp"]
    assert crown.supports(model) is None
    x, y = torch.rand(1, 1, 8, 8), torch.tensor([0])
    for bad in (dict(eps=-0.1), dict(eps=math.inf), dict(norm="l1")):
        with pytest.raises(UserError):
            crown.margin_lower_bounds(model, x, y, **{"eps": 0.1, "norm": "linf", **bad})
    with pytest.raises(UserError, match="pixels"):
        crown.margin_lower_bounds(model, x + 2, y, 0.1)
    with pytest.raises(UserError, match="shape"):
        crown.margin_lower_bounds(model, torch.rand(1, 1, 9, 9), y, 0.1)


@pytest.mark.slow
def test_the_bounds_do_not_depend_on_the_batch():
    """Each example's bound is its own: its pre-activation bounds are refined example by example."""
    model = models()["lenet"]
    torch.manual_seed(8)
    x = torch.rand(5, *model.input_shape)
    with torch.no_grad():
        y = model(x).argmax(1)
    together = crown.margin_lower_bounds(model, x, y, 0.02, "l2")
    alone = torch.cat([crown.margin_lower_bounds(model, x[i:i + 1], y[i:i + 1], 0.02, "l2") for i in range(5)])
    finite = torch.isfinite(together)
    assert np.allclose(together[finite].numpy(), alone[finite].numpy(), rtol=1e-9, atol=1e-9)


def test_l2_first_layer_bounds_follow_flatten_and_a_linear_over_the_last_axis():
    """The L2 ball's row norms at the first affine layer follow the shape through Flatten and act
    on the last axis as the layer does (found by review: both crashed); the bounds hold."""
    torch.manual_seed(0)
    last_axis = PixelClassifier(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Flatten(), nn.Linear(12, 3)),
                                (1, 3, 3), 3, "a").eval()
    bn = nn.BatchNorm1d(9).eval()
    flat_bn = Classifier(nn.Sequential(nn.Flatten(), bn, nn.Linear(9, 4), nn.ReLU(), nn.Linear(4, 3)), [0.5], [0.3],
                         (1, 3, 3), 3, "b").eval()
    x, y = torch.rand(2, 1, 3, 3), torch.tensor([0, 1])
    for model in (last_axis, flat_bn):
        low = crown.margin_lower_bounds(model, x, y, 0.1, "l2")
        worst = sampled_worst(model, x, y, 0.1, "l2")
        finite = torch.isfinite(worst)
        assert bool((low[finite] <= worst[finite]).all())


def pooled_model():
    """A LeakyReLU under a padded max pool without overlap, a strided convolution, ReLU and pool."""
    torch.manual_seed(11)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.LeakyReLU(0.1), nn.MaxPool2d(2, padding=1),
                        nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 5))
    return PixelClassifier(net, (1, 13, 13), 5, "pooled").eval()


@pytest.mark.parametrize("name", ["pooled", "lenet"])
def test_the_fused_and_banded_steps_give_the_plain_steps_bounds(name):
    """A max pool and the ReLU below it taken at once (crown_sparse.pool_relu_back), and the
    convolution below them as band products (crown_sparse._banded) or on the whole map, give the
    bounds of the separate steps (crown.FUSE off) up to the order of sums; alpha-CROWN too."""
    from jrbench.certify import crown_sparse

    model = pooled_model() if name == "pooled" else models()["lenet"]
    torch.manual_seed(12)
    x = torch.rand(3, *model.input_shape)
    with torch.no_grad():
        y = model(x).argmax(1)
    runs = {}
    try:
        for label, fuse, cost in (("plain", False, 3.0), ("banded", True, math.inf), ("whole", True, 0.0)):
            crown.FUSE, crown_sparse.DENSE_COST = fuse, cost
            runs[label] = [crown.margin_lower_bounds(model, x, y, eps, norm, alpha_steps=steps)
                           for norm, eps, steps in (("linf", 0.02, 0), ("l2", 0.3, 0), ("linf", 0.02, 3))]
    finally:
        crown.FUSE, crown_sparse.DENSE_COST = True, 3.0
    for label in ("banded", "whole"):
        for got, want in zip(runs[label], runs["plain"]):
            finite = torch.isfinite(want)
            assert torch.allclose(got[finite], want[finite], rtol=1e-9, atol=1e-9), (label, (got - want)[finite])
            assert torch.isinf(got[~finite]).all()


@pytest.mark.parametrize("dead", [0, 3])
def test_a_layer_whose_every_relu_is_dead_gives_the_constant_margins(dead):
    """A LeNet whose first (or second) convolution's ReLUs are all off over the ball computes a
    constant there: CROWN's bounds are its margins exactly, whatever the fused and banded steps
    keep (nothing: a collapsed IBP-trained model crashed the banded step before)."""
    model = copy.deepcopy(models()["lenet"])
    with torch.no_grad():
        model.net[dead].bias.fill_(-1e3)
    torch.manual_seed(13)
    x = torch.rand(3, *model.input_shape)
    with torch.no_grad():
        y = model(x).argmax(1)
        want = margins(copy.deepcopy(model).double()(x.double()), y)
    from jrbench.certify import crown_sparse

    try:
        for cost in (3.0, math.inf, 0.0):  # the default, always banded, always on the whole map
            crown_sparse.DENSE_COST = cost
            for norm, eps, steps in (("linf", 0.05, 0), ("l2", 0.5, 0), ("linf", 0.05, 2)):
                low = crown.margin_lower_bounds(model, x, y, eps, norm, alpha_steps=steps)
                finite = torch.isfinite(want)
                assert torch.allclose(low[finite], want[finite], rtol=1e-9, atol=1e-9), (cost, norm, low - want)
                assert bool((low[finite] <= want[finite]).all())
    finally:
        crown_sparse.DENSE_COST = 3.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bounds_equal_the_cpu_bounds():
    """Every tensor of the bound computation lives on the input's device (benchmarks/cuda_check.sh)."""
    model = models()["lenet"]
    torch.manual_seed(9)
    x = torch.rand(3, *model.input_shape)
    with torch.no_grad():
        y = model(x).argmax(1)
    for norm in ("linf", "l2"):
        cpu = crown.margin_lower_bounds(model, x, y, 0.02, norm, alpha_steps=3)
        gpu = crown.margin_lower_bounds(copy.deepcopy(model).cuda(), x.cuda(), y.cuda(), 0.02, norm, alpha_steps=3)
        assert gpu.device.type == "cuda"
        finite = torch.isfinite(cpu)
        assert torch.allclose(gpu.cpu()[finite], cpu[finite], rtol=1e-6, atol=1e-6)
