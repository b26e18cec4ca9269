"""Tests for jrbench.evaluate.attacks (with attack_config, attack_common, attack_checks and the intervals
of jrbench.stats): closed-form linear models, a small trained MLP, sanity checks."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from jrbench.evaluate import attacks as A
from jrbench.evaluate.attack_checks import sanity_warnings
from jrbench.evaluate.attack_common import AttackBoundsError, check_in_ball, loss_model
from jrbench.evaluate.attack_config import LOSSES, default_eps, default_sigmas
from jrbench.errors import UserError
from jrbench.models.architectures import Classifier, build_model
from jrbench.stats import Z_95, noise_interval, wilson_interval

SHAPE = (1, 4, 4)  # 16 pixels
D = 16


def linear_binary(w: torch.Tensor, bias: float, scale: float = 1.0) -> Classifier:
    """Logits (-s/2 (w.x + b), s/2 (w.x + b)): class 1 iff w.x + b > 0, gap s |w.x + b|."""
    lin = nn.Linear(D, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.stack([-w, w]) * scale / 2)
        lin.bias.copy_(torch.tensor([-bias, bias]) * scale / 2)
    return Classifier(nn.Sequential(nn.Flatten(), lin), [0.0], [1.0], SHAPE, 2, "linear")


def linear_problem(n: int = 200, seed: int = 0):
    """Points in [0.3, 0.7]^16 labelled by a hyperplane through the centre; distances to it."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(D, generator=gen)
    w = w / w.norm()
    x = 0.5 + 0.2 * (2 * torch.rand(n, *SHAPE, generator=gen) - 1)
    margin = (x.flatten(1) - 0.5) @ w  # w.x + b with b = -0.5 sum(w)
    keep = margin.abs() > 1e-3
    x, margin = x[keep], margin[keep]
    y = (margin > 0).long()
    dist_l2 = margin.abs() / w.norm()
    dist_linf = margin.abs() / w.abs().sum()
    return w, -0.5 * float(w.sum()), x, y, dist_l2, dist_linf


@pytest.fixture(scope="module")
def trained():
    """A 3-class MLP trained on noisy templates (8x8 images), clean accuracy below 100%."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    templates = 0.5 + 0.2 * (torch.rand(3, 1, 8, 8, generator=gen) - 0.5)
    y = torch.arange(240) % 3
    x = (templates[y] + 0.25 * torch.randn(240, 1, 8, 8, generator=gen)).clamp(0, 1)
    model = build_model("mlp", (1, 8, 8), 3, [0.5], [0.25])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[:160]), y[:160]).backward()
        opt.step()
    model.eval()
    return model, x[160:], y[160:]


def clean_accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


# ----------------------------------------------------------------------------- config


def test_default_eps_grids():
    assert default_eps("mnist", "linf") == [0, 0.05, 0.1, 0.15, 0.2, 0.3]
    assert default_eps("fashion-mnist", "l2") == [0, 0.5, 1, 1.5, 2, 3]
    assert default_eps("cifar10", "linf")[-1] == pytest.approx(16 / 255)
    assert default_sigmas() == pytest.approx([0.1 * i for i in range(11)])
    with pytest.raises(UserError, match="Did you mean 'cifar10'"):
        default_eps("cifar-10", "linf")
    cfg = A.AttackConfig.for_dataset("cifar10", steps=7)
    assert cfg.eps_l2 == [0, 0.1, 0.25, 0.5, 1.0] and cfg.steps == 7
    cfg.validate()


@pytest.mark.parametrize("change, message", [
    (dict(eps_linf=[0.1, -0.1]), r"--eps-linf must be in \[0, 1\] \(pixel units\), got -0.1"),
    (dict(eps_l2=[float("nan")]), r"--eps-l2 must be zero or positive \(pixel units\), got nan"),
    (dict(eps_linf=[1.5]), r"--eps-linf must be in \[0, 1\]"),
    (dict(sigmas=[-0.2]), "--sigma must be zero or positive"),
    (dict(sigmas=[]), "--sigma is empty"),
    (dict(norms=("lnf",)), "Did you mean 'linf'"),
    (dict(loss="ce16"), "--loss must be one of ce64, ce32"),
    (dict(steps=0), "--steps must be at least 1"),
    (dict(restarts=0), "--restarts must be at least 1"),
    (dict(draws=0), "--draws must be at least 1"),
    (dict(batch_size=0), "--batch-size must be at least 1"),
    (dict(steps=2.5), "--steps must be an integer"),
    (dict(alpha=-0.01), "--alpha must be a positive finite number"),
    (dict(seed=-1), "--seed must be zero or positive"),
    (dict(noise=False, pgd=False, fgsm=False), "no attack"),
])
def test_validate_raises_user_error(change, message):
    with pytest.raises(UserError, match=message):  # where it is built
        A.AttackConfig.for_dataset("mnist", **change)
    cfg = A.AttackConfig.for_dataset("mnist")
    with pytest.raises(UserError, match=message):  # and where it is rebuilt
        dataclasses.replace(cfg, **change)


def test_grids_accept_numpy_numbers_and_reject_empty_norms():
    A.AttackConfig.for_dataset("mnist", eps_linf=list(np.linspace(0, 0.3, 4)),
                               sigmas=[np.float32(0.5)]).validate()
    with pytest.raises(UserError, match=r"--norm is empty"):
        A.AttackConfig.for_dataset("mnist", norms=()).validate()


def test_unknown_attack_norm_or_loss_in_library_calls(trained):
    model, _, _ = trained
    with pytest.raises(UserError, match="Did you mean 'pgd'"):
        A.make_attack(model, "pdg", "linf", 0.1)
    with pytest.raises(UserError, match="fgsm norm"):
        A.make_attack(model, "fgsm", "l2", 0.1)
    with pytest.raises(UserError, match="unknown loss"):
        loss_model(model, "ce")


def test_eps_grid_none_means_default_and_must_be_filled(trained):
    model, x, y = trained
    cfg = A.AttackConfig(eps_linf=[0.0], steps=2)
    cfg.validate()  # None: the data set's default, filled by the caller
    with pytest.raises(UserError, match="eps_l2 is not set"):
        A.run_attacks(model, x, y, cfg)
    cfg = A.AttackConfig(norms=("linf",), eps_linf=[0.0], sigmas=[0.0], draws=1)
    assert cfg.eps_norms() == ["linf"] and len(A.run_attacks(model, x, y, cfg).table) == 3
    assert A.AttackConfig(pgd=False, fgsm=False).eps_norms() == []


def test_inputs_outside_pixel_range_are_user_errors(trained):
    model, x, y = trained
    cfg = A.AttackConfig.for_dataset("mnist")
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        A.run_attacks(model, (x - 0.5) / 0.25, y, cfg)
    with pytest.raises(UserError, match="labels"):
        A.run_attacks(model, x, y[:-1], cfg)


# ----------------------------------------------------------------------------- statistics


def test_wilson_interval_closed_forms():
    z2 = Z_95**2
    low, high = wilson_interval(0, 10)
    assert low == 0 and high == pytest.approx(z2 / (10 + z2))
    low, high = wilson_interval(10, 10)
    assert low == pytest.approx(10 / (10 + z2)) and high == pytest.approx(1.0)
    low, high = wilson_interval(5, 10)
    assert (low + high) / 2 == pytest.approx(0.5) and high - low == pytest.approx(0.5268, abs=1e-4)


def test_noise_interval_counts_images_when_draws_agree():
    counts = torch.tensor([4] * 30 + [0] * 10)  # draws agree per image, as with sigma 0
    assert noise_interval(counts, draws=4) == pytest.approx(wilson_interval(30, 40))
    spread = torch.tensor([2] * 40)  # half of the draws of every image: independent-looking
    low, high = noise_interval(spread, draws=4)
    assert high - low < wilson_interval(20, 40)[1] - wilson_interval(20, 40)[0]


# ----------------------------------------------------------------------------- exact cases


def test_eps_and_sigma_zero_give_clean_accuracy(trained):
    model, x, y = trained
    clean = clean_accuracy(model, x, y)
    assert 0.5 < clean < 1.0  # the test needs some errors to mean something
    cfg = A.AttackConfig(sigmas=[0.0], draws=3, eps_linf=[0.0], eps_l2=[0.0], steps=5)
    df = A.run_attacks(model, x, y, cfg).table
    assert len(df) == 4 and set(df.attack) == {"noise", "pgd", "fgsm"}
    assert (df.accuracy == clean).all()
    assert (df.strength == 0).all()


@pytest.mark.parametrize("loss", ["ce64", "ce32"])
def test_pgd_l2_matches_linear_closed_form(loss):
    w, b, x, y, dist, _ = linear_problem()
    model = linear_binary(w, b)
    eps = float(dist.median())
    ok = A.attack_correct(model, x, y, attack="pgd", norm="l2", eps=eps, loss=loss)
    assert ok[dist > eps * (1 + 1e-4)].all()      # outside the ball: no attack can
    assert not ok[dist < 0.9 * eps].any()          # well inside: PGD must
    assert 0.3 < ok.double().mean() < 0.7


def test_pgd_and_fgsm_linf_match_linear_closed_form():
    w, b, x, y, _, dist = linear_problem(seed=1)
    model = linear_binary(w, b)
    eps = float(dist.median())
    for attack in ("pgd", "fgsm"):
        ok = A.attack_correct(model, x, y, attack=attack, norm="linf", eps=eps)
        assert ok[dist > eps * (1 + 1e-4)].all()
        assert not ok[dist < eps * (1 - 1e-4)].any()  # the corner -eps sign(w) is optimal


def test_adversarial_examples_stay_in_ball_and_pixel_range(trained):
    model, x, y = trained
    for norm, eps in (("linf", 0.05), ("l2", 0.6)):
        atk = A.make_attack(model, "pgd", norm, eps, steps=10, alpha=eps)  # big steps
        adv = atk(x, y)
        delta = (adv - x).flatten(1).double()
        size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
        assert size.max() <= eps * (1 + 1e-5) and size.max() > 0.9 * eps
        assert adv.min() >= 0 and adv.max() <= 1
        assert adv.dtype == torch.float32  # float64 logits, float32 pixels
        check_in_ball(x, adv, eps, norm)


def test_ball_checker_catches_violations(trained):
    _, x, _ = trained
    x = x.clone()
    with pytest.raises(AttackBoundsError, match="linf"):
        check_in_ball(x, (x + 0.101).clamp(0, 1).where(x < 0.8, x), 0.1, "linf")
    bump = torch.zeros_like(x)
    bump[:, 0, 0, 0] = 0.5
    with pytest.raises(AttackBoundsError, match="l2"):
        check_in_ball(x * 0.4, x * 0.4 + bump * 1.001, 0.5, "l2")
    outside = x.clone()
    outside[3, 0, 2, 2] = 1.0005
    with pytest.raises(AttackBoundsError, match=r"\[0, 1\]"):
        check_in_ball(x, outside, 0.1, "linf")
    check_in_ball(x * 0.4, x * 0.4 + bump, 0.5, "l2")  # on the sphere: fine


def test_pipeline_raises_when_an_attack_leaves_the_ball(trained, monkeypatch):
    import torchattacks

    model, x, y = trained
    monkeypatch.setattr(torchattacks.PGD, "forward",
                        lambda self, images, labels: (images + 2 * self.eps).clamp(0, 1))
    with pytest.raises(AttackBoundsError):
        A.attack_correct(model, x, y, attack="pgd", norm="linf", eps=0.05, steps=2)


# ----------------------------------------------------------------------------- behaviour


def test_accuracy_non_increasing_in_eps(trained):
    model, x, y = trained
    cfg = A.AttackConfig(noise=False, eps_linf=[0, 0.02, 0.05, 0.1, 0.2],
                         eps_l2=[0, 0.2, 0.5, 1.0, 2.0], steps=20, restarts=2)
    df = A.run_attacks(model, x, y, cfg).table
    for (attack, norm), g in df.groupby(["attack", "norm"]):
        acc = g.sort_values("strength").accuracy.to_numpy()
        assert (np.diff(acc) <= 0).all(), (attack, norm, acc)
        assert acc[0] > 0.5 and acc[-1] < acc[0]
    pgd = df[(df.attack == "pgd") & (df.norm == "linf")].accuracy.to_numpy()
    fgsm = df[df.attack == "fgsm"].accuracy.to_numpy()
    assert (pgd <= fgsm).all()


def test_attack_works_inside_no_grad(trained):
    model, x, y = trained
    kw = dict(attack="pgd", norm="linf", eps=0.05, steps=5)
    with torch.no_grad():
        inside = A.attack_correct(model, x, y, **kw)
        norms = A.input_gradient_norms(model, x, y)
    assert torch.equal(inside, A.attack_correct(model, x, y, **kw))
    assert (norms > 0).all()


def test_more_restarts_never_weaker(trained):
    model, x, y = trained
    kw = dict(attack="pgd", norm="l2", eps=0.5, steps=5, seed=3)
    one = A.attack_correct(model, x, y, restarts=1, **kw)
    three = A.attack_correct(model, x, y, restarts=3, **kw)
    assert (three <= one).all()  # restart 0 is the same run; later ones only break more


def test_deterministic_by_seed_and_leaves_global_rng_alone(trained):
    model, x, y = trained
    cfg = A.AttackConfig(sigmas=[0.3, 0.6], draws=4, eps_linf=[0.05], eps_l2=[0.5],
                         steps=5, seed=7, batch_size=25)
    state = torch.get_rng_state()
    first = A.run_attacks(model, x, y, cfg).table.drop(columns="seconds")
    assert torch.equal(state, torch.get_rng_state())
    torch.manual_seed(12345)  # the caller's RNG must not matter
    second = A.run_attacks(model, x, y, cfg).table.drop(columns="seconds")
    pd.testing.assert_frame_equal(first, second)
    counts = [A.noise_correct_counts(model, x, y, 0.6, draws=4, seed=s) for s in (0, 1)]
    assert not torch.equal(counts[0], counts[1])  # the seed is used


def test_model_mode_restored_and_eval_used():
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 3, [0.5], [0.25], dropout=0.5)
    model.train()
    x, y = torch.rand(30, 1, 8, 8), torch.arange(30) % 3
    cfg = A.AttackConfig(sigmas=[0.0, 0.2], draws=2, eps_linf=[0.0, 0.05], eps_l2=[0.3], steps=3)
    first = A.run_attacks(model, x, y, cfg).table.drop(columns="seconds")
    assert model.training and all(m.training for m in model.modules())
    second = A.run_attacks(model, x, y, cfg).table.drop(columns="seconds")
    pd.testing.assert_frame_equal(first, second)  # dropout was off during the attacks
    model.eval()
    assert first.accuracy.iloc[0] == clean_accuracy(model, x, y)


def test_gradient_norms_match_softmax_regression_closed_form():
    torch.manual_seed(0)
    lin = nn.Linear(D, 4)
    model = Classifier(nn.Sequential(nn.Flatten(), lin), [0.2], [0.5], SHAPE, 4, "softmax")
    x, y = torch.rand(20, *SHAPE), torch.arange(20) % 4
    W = lin.weight.double() / 0.5  # d logits / d x through z = (x - 0.2) / 0.5
    logits = x.flatten(1).double() @ W.T + (lin.bias.double() - 0.2 * W.sum(1))
    p = logits.softmax(1)
    expected = ((p - nn.functional.one_hot(y, 4).double()) @ W).norm(dim=1)
    got = A.input_gradient_norms(model, x, y, loss="ce64", batch_size=7)
    assert torch.allclose(got, expected, rtol=1e-5)


def test_float64_loss_breaks_more_than_float32():
    """A confident linear model (logit gaps 20 to 40 near the radius): float32 softmax
    rounds to 1, the CE gradient shrinks below 1e-10 and PGD-L2 stalls; ce64 does not."""
    w, b, x, y, dist, _ = linear_problem(n=300, seed=2)
    eps = 0.15
    model = linear_binary(w, b, scale=250.0)
    ok = {loss: A.attack_correct(model, x, y, attack="pgd", norm="l2", eps=eps, loss=loss)
          for loss in LOSSES}
    assert not ok["ce64"][dist < 0.9 * eps].any()      # the closed form: all inside break
    assert ok["ce64"].sum() + 20 < ok["ce32"].sum()     # float32 leaves many unbroken
    stats = A.gradient_stats(model, x, y, "ce32")
    assert stats["grad_vanish_frac"] > 0.2


def test_run_attacks_rows_are_tidy(trained):
    model, x, y = trained
    cfg = A.AttackConfig(sigmas=[0.0, 0.5], draws=2, norms=("l2",), eps_linf=[0.0, 0.1],
                         eps_l2=[0.0, 1.0], steps=4, restarts=2, alpha=0.1)
    df = A.run_attacks(model, x, y, cfg).table
    assert list(df.columns) == A.ROW_COLUMNS
    assert list(zip(df.attack, df.norm)) == [("noise", "gaussian")] * 2 + [("pgd", "l2")] * 2 \
        + [("fgsm", "linf")] * 2
    noise, pgd, fgsm = (df[df.attack == a] for a in ("noise", "pgd", "fgsm"))
    assert (noise.n_trials == 2 * len(x)).all() and noise.grad_vanish_frac.isna().all()
    assert (noise.loss == "none").all() and noise.steps.isna().all()
    assert (pgd.n_trials == len(x)).all() and (pgd.loss == "ce64").all()
    assert pgd.alpha.tolist() == [0.1, 0.1] and (pgd.restarts == 2).all()
    assert fgsm.alpha.tolist() == [0.0, 0.1] and (fgsm.steps == 1).all()
    assert (df.accuracy == df.n_correct / df.n_trials).all()
    assert ((df.ci_low <= df.accuracy) & (df.accuracy <= df.ci_high)).all()
    attacked = (df.attack != "noise") & (df.strength > 0)  # gradient statistics: attacked rows
    assert (df.grad_vanish_frac.notna() == attacked).all() and (df.seconds >= 0).all()
    assert df.dtypes["strength"] == float and df.dtypes["n_examples"] == int


def test_pgd_alpha_rule():
    assert A.pgd_alpha(0.3, 40) == pytest.approx(2.5 * 0.3 / 40)
    assert A.pgd_alpha(0.3, 40, alpha=0.01) == 0.01


# ----------------------------------------------------------------------------- sanity


def _table(rows):
    base = dict.fromkeys(A.ROW_COLUMNS, math.nan)
    out = []
    for attack, norm, strength, accuracy, n, extra in rows:
        low, high = wilson_interval(accuracy * n, n)
        noise = attack == "noise"
        row = {**base, "attack": attack, "norm": norm, "strength": strength,
               "accuracy": accuracy, "ci_low": low, "ci_high": high, "n_examples": n,
               "n_trials": n, "n_correct": accuracy * n, "loss": "none" if noise else "ce64",
               "steps": {"pgd": 40, "fgsm": 1}.get(attack, math.nan),
               "grad_vanish_frac": math.nan if noise else 0.01,
               "grad_zero_frac": math.nan if noise else 0.0}
        out.append({**row, **extra})
    return pd.DataFrame(out, columns=A.ROW_COLUMNS)


HEALTHY = [
    ("noise", "gaussian", 0.0, 0.98, 1000, {}), ("noise", "gaussian", 0.01, 0.98, 1000, {}),
    ("noise", "gaussian", 0.1, 0.97, 1000, {}), ("noise", "gaussian", 0.5, 0.80, 1000, {}),
    ("pgd", "linf", 0.0, 0.98, 1000, {}), ("pgd", "linf", 0.1, 0.40, 1000, {}),
    ("pgd", "linf", 0.3, 0.00, 1000, {}), ("fgsm", "linf", 0.0, 0.98, 1000, {}),
    ("fgsm", "linf", 0.1, 0.60, 1000, {}), ("fgsm", "linf", 0.3, 0.15, 1000, {}),
    ("pgd", "l2", 0.0, 0.98, 1000, {}), ("pgd", "l2", 1.0, 0.50, 1000, {}),
    ("pgd", "l2", 3.0, 0.01, 1000, {}),
]


def test_sanity_quiet_on_healthy_table():
    assert sanity_warnings(_table(HEALTHY), input_dim=784, dataset="mnist") == []


def test_sanity_tolerates_rises_within_noise():
    rows = HEALTHY + [("noise", "gaussian", 0.6, 0.81, 1000, {}),  # rises, inside the CI
                      ("pgd", "l2", 4.0, 0.012, 1000, {})]
    assert sanity_warnings(_table(rows), input_dim=784, dataset="mnist") == []


@pytest.mark.parametrize("change, pattern", [
    ({("pgd", "linf", 0.3): 0.55}, "rises from 40.0% at 0.1 to 55.0% at 0.3"),
    ({("pgd", "linf", 0.1): 0.70}, "weaker than FGSM at eps 0.1"),
    ({("pgd", "l2", 3.0): 0.995}, "weaker than white noise"),
    ({("pgd", "linf", 0.3): 0.35}, "35.0% accuracy at eps 0.3"),
])
def test_sanity_fires_on_symptoms(change, pattern):
    rows = [(a, n, s, change.get((a, n, s), acc), k, e) for a, n, s, acc, k, e in HEALTHY]
    warnings = sanity_warnings(_table(rows), input_dim=784, dataset="mnist")
    assert any(pattern in w for w in warnings), warnings


def test_sanity_vanishing_gradients():
    zero = [(a, n, s, acc, k, {"grad_zero_frac": 0.2} if a != "noise" else {})
            for a, n, s, acc, k, _ in HEALTHY]
    assert any("exactly zero" in w for w in sanity_warnings(_table(zero)))
    ce32 = [(a, n, s, acc, k, {"grad_vanish_frac": 0.2, "loss": "ce32"} if a != "noise" else {})
            for a, n, s, acc, k, _ in HEALTHY]
    assert any("rerun with loss 'ce64'" in w for w in sanity_warnings(_table(ce32)))
    ce64 = [(a, n, s, acc, k, {"grad_vanish_frac": 0.2} if a != "noise" else {})
            for a, n, s, acc, k, _ in HEALTHY]
    assert sanity_warnings(_table(ce64)) == []  # scale-free steps: small is not zero


def test_sanity_noise_check_needs_input_dim():
    rows = [(a, n, s, 0.995 if (a, n, s) == ("pgd", "l2", 3.0) else acc, k, e)
            for a, n, s, acc, k, e in HEALTHY]
    assert not any("white noise" in w for w in sanity_warnings(_table(rows), dataset="mnist"))
