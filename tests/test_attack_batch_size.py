"""Attack results that do not depend on the batch size (jrbench.evaluate.attacks): PGD's random
starts drawn per example, each example's own gradient with 'ce64', gradient statistics per row.
Small MLPs and linear models on 8x8 or 4x4 images, a few dozen examples."""
from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import torch
from torch import nn

from jrbench.evaluate import attacks as A
from jrbench.evaluate import autoattack as AA
from jrbench.evaluate.attack_common import (Float64Logits, PerExampleDraws, check_in_ball,
                                            mean_loss_model)
from jrbench.models.architectures import Classifier, build_model

EPS = {"linf": 0.05, "l2": 0.5}


@pytest.fixture(scope="module")
def trained():
    """A 3-class MLP at its random initialization (8x8 images) and 24 examples labelled by its
    own predictions, every 6th relabelled wrong; at EPS PGD breaks some examples and not others.
    Their positions in an imagined test split: 5, 8, 11, ..."""
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 3, [0.5], [0.25]).eval()
    x = torch.rand(24, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::6] = (y[::6] + 1) % 3
    return model, x, y, torch.arange(24) * 3 + 5


# PGD as usual, and PGD whose tiny steps leave the random start to decide (a random search: the
# setting in which per-batch starts would change results on this model, for both norms)
SETTINGS = {"usual": dict(eps_linf=[0.0, 0.02, EPS["linf"]], eps_l2=[0.0, 0.2, EPS["l2"]], steps=5),
            "start decides": dict(eps_linf=[0.1, 0.2], eps_l2=[2.0, 3.0], steps=2, alpha=1e-3)}


def config(norm: str, batch_size: int, setting: str = "usual") -> A.AttackConfig:
    return A.AttackConfig(noise=False, norms=(norm,), restarts=2, seed=3, batch_size=batch_size,
                          **SETTINGS[setting])


def starts(model, x, y, norm: str, seed: int, index: torch.Tensor, restart: int = 0):
    """PGD's random starts: the attack with no steps returns clip(x + start, 0, 1)."""
    atk = A.make_attack(model, "pgd", norm, EPS[norm], steps=0, alpha=0.01)
    seeds = [A.pgd_start_seed(seed, norm, restart, int(i)) for i in index]
    return atk(x, y, start_seeds=seeds)


# ----------------------------------------------------------------------------- random starts


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.slow
def test_pgd_results_identical_for_batch_sizes_3_7_500(trained, norm, setting):
    model, x, y, index = trained
    out = {bs: A.run_attacks(model, x, y, config(norm, bs, setting), example_index=index)
           for bs in (3, 7, 500)}
    for bs in (3, 7):
        pd.testing.assert_frame_equal(out[bs].examples, out[500].examples)
        pd.testing.assert_frame_equal(out[bs].table.drop(columns="seconds"),
                                      out[500].table.drop(columns="seconds"))
    pgd = out[500].table[out[500].table.attack == "pgd"]
    assert 0 < pgd.accuracy.min() < pgd.accuracy.max()  # some examples broken, not all: teeth


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_example_attacked_alone_as_in_a_batch(trained, norm, setting):
    model, x, y, index = trained
    cfg = config(norm, 500, setting)
    kw = dict(attack="pgd", norm=norm, eps=getattr(cfg, f"eps_{norm}")[-1], steps=cfg.steps,
              alpha=cfg.alpha, restarts=2, seed=3)
    batch = A.attack_correct(model, x, y, example_index=index, batch_size=500, **kw)
    alone = torch.cat([A.attack_correct(model, x[i:i + 1], y[i:i + 1], example_index=index[i:i + 1],
                                        **kw) for i in range(len(x))])
    assert torch.equal(batch, alone)
    # the same examples in another order and with other neighbours: the same per example
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    shuffled = A.attack_correct(model, x[perm], y[perm], example_index=index[perm], batch_size=6,
                                **kw)
    assert torch.equal(shuffled, batch[perm])
    assert 0 < batch.sum() < len(x)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_start_is_each_examples_own_draw(trained, norm):
    """Example i's start is drawn from a CPU generator seeded with pgd_start_seed alone, float32,
    as torchattacks draws it (L-inf: uniform in the eps cube; L2: a normal direction scaled to a
    uniform share of eps); neither the batch nor the other examples change it."""
    model, x, y, index = trained
    full = starts(model, x, y, norm, 7, index)
    parts = torch.cat([starts(model, x[i:i + 7], y[i:i + 7], norm, 7, index[i:i + 7])
                       for i in range(0, len(x), 7)])
    assert torch.equal(full, parts)
    for i in (0, 13, 23):
        gen = torch.Generator().manual_seed(A.pgd_start_seed(7, norm, 0, int(index[i])))
        if norm == "linf":
            delta = torch.empty(x.shape[1:]).uniform_(-EPS[norm], EPS[norm], generator=gen)
        else:
            delta = torch.empty(x.shape[1:]).normal_(generator=gen)
            radius = torch.empty(1, 1, 1).uniform_(0, 1, generator=gen)
            delta = delta * (radius / delta.norm() * EPS[norm])
        expected = (x[i] + delta).clamp(0, 1)
        assert torch.allclose(full[i], expected, rtol=0, atol=1e-6)
        if norm == "linf":
            assert torch.equal(full[i], expected)  # elementwise: exact
    check_in_ball(x, full, EPS[norm], norm)
    assert (full != x).flatten(1).any(1).all()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_starts_deterministic_by_seed_and_restart_and_independent_of_global_rng(trained, norm):
    model, x, y, index = trained
    torch.manual_seed(1)
    first = starts(model, x, y, norm, 7, index)
    torch.manual_seed(2)
    state = torch.get_rng_state()
    assert torch.equal(first, starts(model, x, y, norm, 7, index))
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is not drawn from
    for other in (starts(model, x, y, norm, 8, index), starts(model, x, y, norm, 7, index, 1),
                  starts(model, x, y, norm, 7, index + 1)):
        assert (other != first).flatten(1).any(1).all()  # every example's start changes


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_outputs_in_ball_and_pixel_range_with_big_steps(trained, norm):
    model, x, y, index = trained
    eps = EPS[norm]
    atk = A.make_attack(model, "pgd", norm, eps, steps=6, alpha=eps)
    seeds = [A.pgd_start_seed(0, norm, 0, int(i)) for i in index]
    for xs in (x, x.round()):  # the second: every pixel at 0 or 1, starts clipped
        adv = atk(xs, y, start_seeds=seeds)
        check_in_ball(xs, adv, eps, norm)
        assert adv.min() >= 0 and adv.max() <= 1 and adv.dtype == xs.dtype


def test_per_example_draws_refuse_other_randomness():
    with pytest.raises(RuntimeError, match="rand"):
        with PerExampleDraws([1, 2], n_draws=1):
            torch.rand(2, 3)
    with pytest.raises(RuntimeError, match="one row per example"):
        with PerExampleDraws([1, 2], n_draws=1):
            torch.empty(3, 4).uniform_()
    with PerExampleDraws([1, 2], n_draws=1):
        a = torch.empty(2, 3).normal_()
        b = torch.rand(2, 3, generator=torch.Generator().manual_seed(0))  # its own generator
        c = torch.empty(2, 3).uniform_()  # past the start: the global RNG
    assert torch.equal(a[1], torch.empty(3).normal_(generator=torch.Generator().manual_seed(2)))
    assert b.shape == c.shape == (2, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_draws_the_cpus_starts_and_ignores_the_batch_size(trained):
    model, x, y, index = trained
    gpu = copy.deepcopy(model).double().cuda()  # float64: no decision flips on rounding
    xg, yg = x.double().cuda(), y.cuda()
    for norm in ("linf", "l2"):
        cpu_start = starts(copy.deepcopy(model).double(), x.double(), y, norm, 7, index)
        gpu_start = starts(gpu, xg, yg, norm, 7, index).cpu()
        assert torch.allclose(cpu_start, gpu_start, rtol=0, atol=1e-12)  # drawn on the CPU
        kw = dict(attack="pgd", norm=norm, eps=EPS[norm], steps=5, restarts=2, seed=3,
                  example_index=index)
        out = [A.attack_correct(gpu, xg, yg, batch_size=bs, **kw).cpu() for bs in (3, 500)]
        assert torch.equal(out[0], out[1])


# ----------------------------------------------------------------------------- gradients


def confident_linear(gap: float) -> Classifier:
    """Two classes on 4x4 images: logits (-z/2, z/2) with z = gap * (mean pixel - 0.5) * 2."""
    lin = nn.Linear(16, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.stack([-torch.ones(16), torch.ones(16)]) * gap / 16)
        lin.bias.copy_(torch.tensor([gap / 2, -gap / 2]))
    return Classifier(nn.Sequential(nn.Flatten(), lin), [0.0], [1.0], (1, 4, 4), 2, "linear")


def test_ce64_gradient_is_each_examples_own_whatever_the_batch():
    """torchattacks ascends the batch mean of the cross-entropy; the 'ce64' wrapper undoes the
    1/B, so a confident example's float32 gradient (logit gap about 100: softmax(other) ~ 4e-44,
    a float32 subnormal) does not underflow to zero in a batch of 500."""
    model = confident_linear(gap=100.0)
    x, y = torch.full((500, 1, 4, 4), 1.0), torch.ones(500, dtype=torch.long)

    def grad(wrapper, n):
        xb = x[:n].clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(wrapper(xb), y[:n])  # the batch mean, as torchattacks
        return torch.autograd.grad(loss, xb)[0]

    plain = Float64Logits(model)
    assert (grad(plain, 1) != 0).all() and (grad(plain, 500) == 0).all()  # 1/B underflows
    own = mean_loss_model(model, "ce64")
    g1, g500 = grad(own, 1), grad(own, 500)
    assert (g1 != 0).all() and torch.equal(g500, g1.expand_as(g500))
    assert mean_loss_model(model, "ce32") is model  # ce32: torchattacks as is


def test_fgsm_and_pgd_ce64_on_confident_examples_independent_of_batch_size(monkeypatch):
    """Logit gaps 88 to 132: an example's float32 gradient is a subnormal, non-zero up to a gap
    of about 103 and zero beyond; 1/B of it (torchattacks' batch mean) would be zero from a gap
    of 103 - ln B, so without the 'ce64' wrapper the batch size decides which examples move."""
    model = confident_linear(gap=200.0)
    x = torch.linspace(0.72, 0.83, 60).view(60, 1, 1, 1).expand(60, 1, 4, 4).contiguous()
    y = torch.ones(60, dtype=torch.long)
    for kw in (dict(attack="fgsm", norm="linf", eps=0.3),
               dict(attack="pgd", norm="linf", eps=0.3, steps=3)):
        out = [A.attack_correct(model, x, y, batch_size=bs, **kw) for bs in (1, 7, 60)]
        assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])
        assert 0 < out[0].sum() < len(x)
    monkeypatch.setattr(A, "mean_loss_model", lambda model, loss: Float64Logits(model))
    fgsm = [A.attack_correct(model, x, y, batch_size=bs, attack="fgsm", norm="linf", eps=0.3)
            for bs in (1, 60)]
    assert fgsm[1].sum() > fgsm[0].sum()  # the batch mean: fewer examples move in a batch of 60


# ----------------------------------------------------------------------------- gradient statistics


def dead_relu_model() -> Classifier:
    """logits (0, relu(s)) with s = 16 (mean pixel - 0.5): for s <= 0 both logits are 0 (class 0
    by argmax's first index) and the input gradient is exactly zero; for s > 0 class 1."""
    lin = nn.Linear(16, 1)
    with torch.no_grad():
        lin.weight.fill_(1.0)
        lin.bias.fill_(-8.0)
    net = nn.Sequential(nn.Flatten(), lin, nn.ReLU(), nn.Linear(1, 2))
    with torch.no_grad():
        net[3].weight.copy_(torch.tensor([[0.0], [1.0]]))
        net[3].bias.zero_()
    return Classifier(net, [0.0], [1.0], (1, 4, 4), 2, "dead-relu")


def test_gradient_stats_per_row_over_the_attacked_examples(monkeypatch):
    """Planted: 3 examples correct with zero gradient, 4 wrong with zero gradient (never
    attacked), 3 correct with a gradient. Each attacked row's grad_zero_frac is 3/6 (over the
    examples it attacks), not 7/10 (all examples); eps 0 and noise rows are NaN; a row on
    other examples carries their own share."""
    model = dead_relu_model()
    x = torch.cat([torch.full((7, 1, 4, 4), 0.3), torch.full((3, 1, 4, 4), 0.7)])
    y = torch.tensor([0] * 3 + [1] * 4 + [1] * 3)
    assert A.gradient_stats(model, x, y)["grad_zero_frac"] == pytest.approx(0.7)
    cfg = A.AttackConfig(sigmas=[0.0, 0.1], draws=2, eps_linf=[0.0, 0.05], eps_l2=[0.0, 0.5],
                         steps=2)
    df = A.run_attacks(model, x, y, cfg).table
    attacked = (df.attack != "noise") & (df.strength > 0)
    assert attacked.sum() == 3
    assert (df[attacked].grad_zero_frac == 0.5).all() and (df[attacked].grad_vanish_frac == 0.5).all()
    assert df[~attacked][["grad_zero_frac", "grad_vanish_frac"]].isna().all().all()
    # a row on other examples: 2 of its 4 attacked examples have a zero gradient
    part = [0, 1, 7, 8, 3, 4]
    rows = A.attack_rows(model, x[part], y[part], attack="fgsm", norm="linf", eps_list=[0.05])
    assert rows[0]["grad_zero_frac"] == 0.5 and rows[0]["n_examples"] == 6
    rows = A.attack_rows(model, x[[0, 7, 8, 9]], y[[0, 7, 8, 9]], attack="pgd", norm="linf",
                         eps_list=[0.05], steps=2, loss="ce32")
    assert rows[0]["grad_zero_frac"] == pytest.approx(1 / 4) and rows[0]["loss"] == "ce32"

    # AutoAttack: only the rows that ascend the cross-entropy from the clean point carry it
    def fake(model, x, y, *, clean_correct, **kw):
        out = AA.AutoAttackOutcome(clean_correct.clone())
        for name in AA.COMPONENTS:
            out.robust_after[name], out.seconds[name] = clean_correct.clone(), 0.0
        return out

    monkeypatch.setattr(A.AA, "autoattack_correct", fake)
    monkeypatch.setattr(A.AA, "resolve_targets", lambda num_classes, n_targets: 1)
    rows = pd.DataFrame(A.autoattack_rows(model, x, y, norm="linf", eps_list=[0.0, 0.05],
                                          num_classes=2))
    carried = rows.grad_zero_frac.notna()
    assert set(rows[carried].attack) == set(A.CE_AUTOATTACK_ROWS)
    assert (rows[carried].strength == 0.05).all() and (rows[carried].grad_zero_frac == 0.5).all()
    assert math.isnan(rows[(rows.attack == "aa-square") & (rows.strength > 0)].grad_zero_frac.iloc[0])
