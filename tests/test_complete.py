"""Complete verification by MILP (jrbench.certify.complete): agreement with brute force on a tiny
network, exactness of the encoding of every layer kind at fixed inputs, counterexamples and
verdicts on a small conv net with a max pool, timeouts, and bad input."""
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

from jrbench.certify import complete, crown
from jrbench.errors import UserError
from jrbench.models.architectures import Classifier, PixelClassifier


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """These networks are tiny: one thread is fastest, and far faster on a busy machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ----------------------------------------------------------------------------- models
def _fill(g: torch.Generator, layers, scale: float = 1.0, bias: float = 0.5) -> None:
    with torch.no_grad():
        for m in layers:
            m.weight.copy_(torch.randn(m.weight.shape, generator=g, dtype=torch.float64).float() * scale)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g, dtype=torch.float64).float() * bias)


def tiny(seed: int) -> PixelClassifier:
    """2-8-8-2 ReLU net on (1, 1, 2) pixels whose first-layer hyperplanes cross the unit square."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    _fill(g, (net[1], net[3], net[5]), scale=2.0, bias=1.0)
    with torch.no_grad():
        through = torch.rand(8, 2, generator=g, dtype=torch.float64).float()
        net[1].bias.copy_(-(net[1].weight * through).sum(1))
    return PixelClassifier(net, (1, 1, 2), 2, "tiny")


def convnet(seed: int) -> PixelClassifier:
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3))
    _fill(g, (net[0], net[4]))
    return PixelClassifier(net, (1, 6, 6), 3, "conv")


def clean_point(model, seed: int) -> tuple[torch.Tensor, int]:
    x = torch.rand(model.input_shape, generator=torch.Generator().manual_seed(1000 + seed), dtype=torch.float64)
    x = x.float()
    with torch.no_grad():
        y = int(model(x[None]).argmax())
    return x, y


def margin(model, pts: torch.Tensor, y: int) -> torch.Tensor:
    """(N,) float64 f_y - max_{j != y} f_j."""
    with torch.no_grad():
        f = model(pts).double()
    return f[:, y] - f.scatter(1, torch.full((len(f), 1), y), -math.inf).amax(1)


def in_ball(cx: torch.Tensor, x: torch.Tensor, eps: float) -> bool:
    d = cx.double() - x.double()
    return bool((d.abs() <= eps).all() and (cx >= 0).all() and (cx <= 1).all())


# ----------------------------------------------------------------------------- brute force
def exact_min_margin(model: PixelClassifier, x: torch.Tensor, y: int, eps: float) -> float:
    """min over the box of f_y - f_other for a Flatten-Linear-ReLU-...-Linear net on two pixels: a
    depth-first walk over the activation regions (a neuron branches only where its sign changes on
    the current region, both checked by LP), then one LP per region (scipy's HiGHS)."""
    linears = [m for m in model.net if isinstance(m, nn.Linear)]
    ws = [m.weight.detach().double().numpy() for m in linears]
    bs = [m.bias.detach().double().numpy() for m in linears]
    x0 = x.double().flatten().numpy()
    box = list(zip(np.clip(x0 - eps, 0, 1), np.clip(x0 + eps, 0, 1)))
    c = ws[-1][y] - ws[-1][1 - y]
    c0 = bs[-1][y] - bs[-1][1 - y]
    best = math.inf

    def lp(cost, a_ub, b_ub):
        return linprog(cost, A_ub=np.array(a_ub) if a_ub else None, b_ub=np.array(b_ub) if b_ub else None,
                       bounds=box, method="highs")

    def walk(a_ub, b_ub, layer, k, rows, consts, post_rows, post_consts):
        nonlocal best
        if k == len(rows):
            q, q0 = np.array(post_rows), np.array(post_consts)
            if layer + 1 < len(ws) - 1:
                return walk(a_ub, b_ub, layer + 1, 0, ws[layer + 1] @ q, ws[layer + 1] @ q0 + bs[layer + 1], [], [])
            r = lp(c @ q, a_ub, b_ub)
            if r.status == 0:
                best = min(best, r.fun + c @ q0 + c0)
            return
        a, a0 = rows[k], consts[k]
        low, high = lp(a, a_ub, b_ub), lp(-a, a_ub, b_ub)
        if low.status != 0:  # an empty region
            return
        if low.fun + a0 >= 0:
            return walk(a_ub, b_ub, layer, k + 1, rows, consts, post_rows + [a], post_consts + [a0])
        if -high.fun + a0 <= 0:
            return walk(a_ub, b_ub, layer, k + 1, rows, consts, post_rows + [0 * a], post_consts + [0.0])
        walk(a_ub + [-a], b_ub + [a0], layer, k + 1, rows, consts, post_rows + [a], post_consts + [a0])
        walk(a_ub + [a], b_ub + [-a0], layer, k + 1, rows, consts, post_rows + [0 * a], post_consts + [0.0])

    walk([], [], 0, 0, ws[0], bs[0], [], [])
    return best


# cases chosen so that both outcomes occur, and verified ones through the MILP (not only CROWN)
TINY_CASES = [(0, 0.1), (0, 0.3), (1, 0.05), (1, 0.2), (1, 0.3), (3, 0.05), (7, 0.2), (7, 0.3),
              (9, 0.2), (10, 0.3), (11, 0.3)]


@pytest.mark.slow
def test_agrees_with_brute_force_on_a_tiny_net():
    paths = {"verified-milp": 0, "falsified": 0}
    for seed, eps in TINY_CASES:
        model = tiny(seed)
        x, y = clean_point(model, seed)
        exact = exact_min_margin(model, x, y, eps)
        if abs(exact) < 1e-6:
            continue
        out = complete.verify(model, x, y, eps, timeout_s=30)
        case = f"seed {seed} eps {eps}: exact {exact:.6g}, {out}"
        assert (out.status == "verified") == (exact > 0), case
        assert (out.status == "falsified") == (exact < 0), case
        if out.status == "verified":
            assert out.margin_lower <= exact + 1e-6, case  # a lower bound
            assert out.counterexample is None
            paths["verified-milp"] += "CROWN" not in out.note
        else:
            cx = out.counterexample
            assert cx.dtype == torch.float32 and tuple(cx.shape) == (1, 1, 2) and in_ball(cx, x, eps), case
            assert float(margin(model, cx[None], y)[0]) <= 0, case
            assert exact - 1e-6 <= out.margin_lower <= 0, case
            paths["falsified"] += 1
        assert out.seconds >= 0
    assert paths["verified-milp"] >= 3 and paths["falsified"] >= 3, paths


def _solve(milp, logits, y: int, j: int) -> tuple[str, float]:
    """(status, optimum) of the MILP's objective f_y - f_j solved to optimality."""
    h = complete._new_highs()
    h.setOptionValue("mip_rel_gap", 0.0)
    h.setOptionValue("mip_abs_gap", 1e-9)
    h.setOptionValue("time_limit", 20.0)
    complete._pass_model(h, milp)
    cost = np.asarray((logits.matrix[y] - logits.matrix[j]).todense()).ravel()
    h.changeColsCost(milp.ncols, np.arange(milp.ncols, dtype=np.int32), cost)
    h.changeObjectiveOffset(float(logits.const[y] - logits.const[j]))
    h.run()
    status = h.modelStatusToString(h.getModelStatus())
    value = h.getInfo().objective_function_value
    h.clear()
    return status, value


@pytest.mark.slow
def test_milp_optimum_is_the_exact_minimum():
    """The encoding is exact: its optimum is the brute-force minimum (not only its sign)."""
    for seed, eps in [(0, 0.3), (1, 0.3), (7, 0.3), (9, 0.2)]:
        model = tiny(seed)
        x, y = clean_point(model, seed)
        bounds = crown.compute_bounds(model, crown.InputSet.make(x[None], eps, "linf"))
        milp, logits, _, binaries = complete._build(bounds)
        assert binaries > 0
        status, value = _solve(milp, logits, y, 1 - y)
        exact = exact_min_margin(model, x, y, eps)
        assert status == "Optimal" and value == pytest.approx(exact, abs=1e-6), (seed, eps, value, exact)


def _every_layer_net() -> Classifier:
    g = torch.Generator().manual_seed(5)
    bn = nn.BatchNorm2d(4)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1), bn, nn.LeakyReLU(0.1),
        nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=2), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding="same"), nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1), nn.AvgPool2d(2), nn.Identity(), nn.Flatten(), nn.Dropout(0.3),
        nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    _fill(g, (net[0], net[3], net[5], net[12], net[14]))
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(4, generator=g) * 0.3)
        bn.running_var.copy_(torch.rand(4, generator=g) + 0.5)
        bn.weight.copy_(torch.randn(4, generator=g))
        bn.bias.copy_(torch.randn(4, generator=g) * 0.3)
    return Classifier(net, [0.4, 0.5], [0.3, 0.25], (2, 8, 8), 3, "every-layer").eval()


@pytest.mark.parametrize("make", [lambda: _every_layer_net(), lambda: convnet(1)], ids=["every-layer", "convnet"])
def test_encoding_is_the_network_at_fixed_inputs(make):
    """Normalize, strided/dilated/grouped/"same"-padded convolutions, eval batch norm, LeakyReLU,
    ReLU, padded max pool, average pool, Flatten/Identity/Dropout, Linear: with the input columns
    fixed to a point of the box, the MILP's only solution is the network's, and its objective is
    the margin there."""
    model = make()
    x, y = clean_point(model, 7)
    eps = 0.15
    s = crown.InputSet.make(x[None], eps, "linf")
    bounds = crown.compute_bounds(model, s)
    milp, logits, n_in, binaries = complete._build(bounds)
    assert binaries > 0
    g = torch.Generator().manual_seed(3)
    lo, hi = milp.lo.copy(), milp.hi.copy()
    j = (y + 1) % 3
    for _ in range(4):
        p = (s.lo + (s.hi - s.lo) * torch.rand(s.lo.shape, generator=g, dtype=torch.float64)).flatten().numpy()
        milp.lo, milp.hi = lo.copy(), hi.copy()
        milp.lo[:n_in] = milp.hi[:n_in] = p
        status, value = _solve(milp, logits, y, j)
        with torch.no_grad():
            f = model.double()(torch.from_numpy(p).reshape(1, *model.input_shape))[0]
            model.float()
        assert status == "Optimal" and value == pytest.approx(float(f[y] - f[j]), abs=1e-6)


@pytest.mark.parametrize("kwargs", [dict(stride=2, padding=1), dict(padding="same", dilation=(1, 2)),
                                    dict(padding=(1, 2), padding_mode="reflect", groups=2),
                                    dict(padding=1, padding_mode="circular", stride=(1, 2)),
                                    dict(padding=2, padding_mode="replicate", bias=False)])
def test_conv_matrix_is_the_convolution(kwargs):
    conv = nn.Conv2d(2, 4, (3, 2), **kwargs).double()
    x = torch.randn(3, 2, 7, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a = complete._conv_matrix(conv, conv.weight.detach(), (2, 7, 6))
    with torch.no_grad():
        want = conv(x) - (conv.bias.view(1, -1, 1, 1) if conv.bias is not None else 0)
    got = a @ x.reshape(3, -1).numpy().T
    np.testing.assert_allclose(got.T, want.reshape(3, -1).numpy(), atol=1e-12)


# ----------------------------------------------------------------------------- a conv net with a max pool
def _attack(model, x: torch.Tensor, y: int, eps: float, steps: int = 60, restarts: int = 16) -> float:
    """The smallest margin that PGD (sign steps, ``restarts`` random starts in one batch) and 2000
    random points and 500 random corners of the ball ∩ [0, 1] reach."""
    g = torch.Generator().manual_seed(0)
    lo, hi = (x - eps).clamp(min=0), (x + eps).clamp(max=1)
    pts = lo + (hi - lo) * torch.rand((2000, *x.shape), generator=g)
    corners = torch.where(torch.rand((500, *x.shape), generator=g) < 0.5, lo, hi)
    best = float(margin(model, torch.cat([pts, corners]), y).min())
    z = lo + (hi - lo) * torch.rand((restarts, *x.shape), generator=g)
    for _ in range(steps):
        z.requires_grad_(True)
        f = model(z)
        other = f.masked_fill(torch.arange(f.shape[1]) == y, -math.inf).amax(1)
        (grad,) = torch.autograd.grad((f[:, y] - other).sum(), z)
        z = torch.minimum(torch.maximum(z.detach() - eps / 10 * grad.sign(), lo), hi)
    return min(best, float(margin(model, z, y).min()))


@pytest.mark.slow
def test_conv_maxpool_verdicts_are_sound():
    counts = {"verified": 0, "falsified": 0, "milp-verified": 0}
    for seed, eps in [(0, 0.1), (1, 0.05), (2, 0.02), (4, 0.05), (5, 0.1), (6, 0.1), (6, 0.3), (7, 0.2), (9, 0.05)]:
        model = convnet(seed)
        x = torch.rand(1, 6, 6, generator=torch.Generator().manual_seed(50 + seed))
        with torch.no_grad():
            y = int(model(x[None]).argmax())
        out = complete.verify(model, x, y, eps, timeout_s=30)
        case = f"seed {seed} eps {eps}: {out}"
        assert out.status in ("verified", "falsified"), case
        counts[out.status] += 1
        if out.status == "falsified":
            cx = out.counterexample
            assert cx.dtype == torch.float32 and cx.shape == x.shape and in_ball(cx, x, eps), case
            with torch.no_grad():
                assert int(model(cx[None]).argmax()) != y, case
            assert out.margin_lower <= 0
        else:
            counts["milp-verified"] += "CROWN" not in out.note
            found = _attack(model, x, y, eps)
            assert found > 0 and out.margin_lower <= found + 1e-6, case
    assert counts["falsified"] >= 3 and counts["milp-verified"] >= 3, counts
    assert counts["verified"] > counts["milp-verified"], counts  # and one by CROWN alone


# ----------------------------------------------------------------------------- timeouts
def _hard_mlp() -> tuple[PixelClassifier, torch.Tensor, int, float]:
    g = torch.Generator().manual_seed(11)
    net = nn.Sequential(nn.Flatten(), nn.Linear(100, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(),
                        nn.Linear(200, 10))
    _fill(g, (net[1], net[3], net[5]), scale=0.15, bias=0.1)
    model = PixelClassifier(net, (1, 10, 10), 10, "mlp")
    x, y = clean_point(model, 11)
    return model, x, y, 0.05


@pytest.mark.parametrize("timeout", [0.0, 0.01])
def test_timeout_gives_unknown(timeout):
    """A budget too small for the MILP (252 binaries, dense layers): unknown, never a guess. No
    assertion on the seconds it took: a loaded machine may overrun any bound (the solver's own
    time-limit path is exercised by the LeNet runs of results/bracket)."""
    model, x, y, eps = _hard_mlp()
    low = crown.margin_lower_bounds(model, x[None], torch.tensor([y]), eps)
    assert float(low.min()) < 0  # CROWN does not decide: the MILP has to
    assert float(margin(model, x[None], y)[0]) > 0  # nor does the clean point
    out = complete.verify(model, x, y, eps, timeout_s=timeout)
    assert out.status == "unknown" and out.counterexample is None, out
    assert "timeout" in out.note, out
    assert out.margin_lower <= 0  # the best bound proved (CROWN's at least) is not a certificate


# ----------------------------------------------------------------------------- clean errors and bad input
def test_misclassified_clean_example_is_falsified_by_itself():
    model = convnet(2)
    x = torch.rand(1, 6, 6, generator=torch.Generator().manual_seed(52))
    with torch.no_grad():
        y = int(model(x[None]).argmax())
    wrong = (y + 1) % 3
    out = complete.verify(model, x, wrong, 0.05)
    assert out.status == "falsified" and torch.equal(out.counterexample, x) and out.margin_lower < 0
    assert "misclassified" in out.note


def test_bad_input_raises_user_error():
    model = convnet(0)
    x, y = clean_point(model, 0)
    for kwargs in [dict(eps=-0.1), dict(eps=math.nan), dict(eps=math.inf), dict(x=x + 2), dict(x=x - 1),
                   dict(x=x[0]), dict(x=torch.rand(1, 5, 6)), dict(x=torch.full_like(x, math.nan)),
                   dict(label=3), dict(label=-1), dict(label=1.5), dict(timeout_s=-1.0), dict(threads=0),
                   dict(x=x.numpy())]:
        args = dict(x=x, label=y, eps=0.1) | kwargs
        with pytest.raises(UserError):
            complete.verify(model, args.pop("x"), **args)
    other = crown.compute_bounds(model, crown.InputSet.make(x[None], 0.2, "linf"))
    with pytest.raises(UserError, match="bounds"):
        complete.verify(model, x, y, 0.1, bounds=other)
    tanh = PixelClassifier(nn.Sequential(nn.Flatten(), nn.Linear(36, 4), nn.Tanh(), nn.Linear(4, 3)), (1, 6, 6), 3,
                           "tanh")
    assert complete.supports(tanh) is not None and complete.supports(model) is None
    with pytest.raises(UserError, match="Tanh"):
        complete.verify(tanh, x, 0, 0.1)


def test_given_bounds_are_used_and_threads_can_change():
    model = convnet(5)
    x = torch.rand(1, 6, 6, generator=torch.Generator().manual_seed(55))
    with torch.no_grad():
        y = int(model(x[None]).argmax())
    bounds = crown.compute_bounds(model, crown.InputSet.make(x[None], 0.1, "linf"))
    a = complete.verify(model, x, y, 0.1, bounds=bounds, threads=2)
    b = complete.verify(model, x, y, 0.1, threads=1)
    assert a.status == b.status == "verified" and "CROWN" not in a.note
