"""Margins: exact on an affine classifier (closed forms), sound on a nonlinear one."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from jrbench.errors import UserError
from jrbench.evaluate.margins import (_find_crossing, adversarial_margins, first_correct, first_order_margins,
                             measure_margins, median_over_directions, predict,
                             random_direction_margins, random_unit_directions)
from jrbench.models.architectures import Classifier, build_model

SHAPE, CLASSES = (2, 4, 4), 5
MEAN, STD = [0.4, 0.6], [0.2, 0.3]
RTOL = 1e-3  # the bisection tolerance used below


def linear_classifier(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(SHAPE), CLASSES))
    return Classifier(net, MEAN, STD, SHAPE, CLASSES, "linear").double().eval()


def affine_form(model: Classifier) -> tuple[torch.Tensor, torch.Tensor]:
    """(W', b') with logits = W' x + b' in pixel space: W' = W diag(1/std), b' = b - W' mean."""
    std = model.normalize.std.expand(1, *SHAPE).reshape(-1)
    mean = model.normalize.mean.expand(1, *SHAPE).reshape(-1)
    lin = model.net[1]
    w = lin.weight.detach() / std
    return w, lin.bias.detach() - w @ mean


@pytest.fixture
def linear_case():
    model = linear_classifier()
    x = torch.rand(60, *SHAPE, dtype=torch.float64)
    y = predict(model, x)
    w, b = affine_form(model)
    torch.testing.assert_close(model(x), x.flatten(1) @ w.T + b)  # the closed form is right
    return model, x, y, w, b


def test_linear_adversarial_margin_is_exact(linear_case):
    model, x, y, w, b = linear_case
    f = model(x).detach()
    rows = torch.arange(len(y))
    dw = w[y].unsqueeze(1) - w.unsqueeze(0)  # (B, K, D): w_y - w_j
    dist = (f[rows, y].unsqueeze(1) - f) / dw.norm(dim=2)
    dist[rows, y] = float("inf")
    exact = dist.min(dim=1).values
    adv = adversarial_margins(model, x, y, rtol=RTOL, batch_size=16)
    assert adv.success.all() and (adv.iterations == 1).all()
    assert (predict(model, x + adv.perturbation) != y).all()
    assert ((adv.norm_l2 / exact - 1).abs() <= 2 * RTOL).all()
    raw = adversarial_margins(model, x, y, refine=False)  # one DeepFool step, 2% overshoot
    torch.testing.assert_close(raw.norm_l2, 1.02 * (exact + 1e-4), rtol=1e-9, atol=0)


def test_linear_first_order_margin_is_exact(linear_case):
    model, x, y, w, b = linear_case
    f = model(x).detach()
    top2 = f.topk(2, dim=1)
    t, s = top2.indices[:, 0], top2.indices[:, 1]
    exact = (top2.values[:, 0] - top2.values[:, 1]) / (w[t] - w[s]).norm(dim=1)
    margin, gap = first_order_margins(model, x, batch_size=7)
    torch.testing.assert_close(margin, exact, rtol=1e-9, atol=0)
    torch.testing.assert_close(gap, top2.values[:, 0] - top2.values[:, 1])


def test_linear_random_direction_margin_is_exact(linear_case):
    model, x, y, w, b = linear_case
    k, t_max = 8, 30.0
    t = random_direction_margins(model, x, y, n_directions=k, seed=5, t_max=t_max,
                                 rtol=RTOL, batch_size=37)
    u = random_unit_directions(len(y), k, SHAPE, 5, x.device, x.dtype).flatten(2)
    f = model(x).detach()
    rows = torch.arange(len(y))
    gap = (f[rows, y].unsqueeze(1) - f).unsqueeze(1)  # (B, 1, K): f_y - f_j >= 0
    slope = torch.einsum("bkd,bjd->bkj", u, w[y].unsqueeze(1) - w.unsqueeze(0))
    crossing = torch.where(slope < 0, gap / -slope, torch.full_like(slope, float("inf")))
    exact = crossing.min(dim=2).values  # (B, k)
    reachable = exact <= t_max
    assert reachable.float().mean() > 0.3 and (~reachable).any()  # both cases occur
    assert ((t[reachable] / exact[reachable] - 1).abs() <= 2 * RTOL).all()
    assert (t[reachable] >= exact[reachable] * (1 - 1e-9)).all()  # the changed side
    assert torch.isinf(t[~reachable]).all()


def test_linear_measure_margins_table(linear_case):
    model, x, y, w, b = linear_case
    table = measure_margins(model, x, y, n_directions=6, t_max=1e4, batch_size=50)
    assert list(table.columns) == [
        "index", "label", "pred", "correct", "logit_gap", "margin_random_min",
        "margin_random_median", "margin_random_found_frac", "margin_adv_l2", "adv_success",
        "adv_success_clipped", "adv_iterations", "margin_first_order"]
    assert table["correct"].all() and table["adv_success"].all()
    # adversarial <= first order <= random (the first-order margin is one of the K-1 planes)
    assert (table["margin_adv_l2"] <= table["margin_first_order"] * (1 + 2 * RTOL)).all()
    assert (table["margin_first_order"] <= table["margin_random_min"]).all()
    assert (table["margin_random_min"] <= table["margin_random_median"]).all()


def small_mlp():
    torch.manual_seed(1)
    model = build_model("mlp", (1, 6, 6), 4, [0.5], [0.25]).eval()
    x = torch.rand(30, 1, 6, 6)
    return model, x, predict(model, x)


@pytest.mark.slow
def test_nonlinear_perturbations_flip_and_deepfool_beats_random_directions():
    model, x, y = small_mlp()
    k = 10
    adv = adversarial_margins(model, x, y, batch_size=8)
    assert adv.success.all()
    assert (predict(model, x + adv.perturbation) != y).all()
    torch.testing.assert_close(adv.norm_l2, adv.perturbation.flatten(1).norm(dim=1))
    t = random_direction_margins(model, x, y, n_directions=k, seed=2)
    found = torch.isfinite(t)  # far out a ReLU net is homogeneous: some rays never change
    assert found.float().mean() > 0.3 and found.any(dim=1).all()
    u = random_unit_directions(len(y), k, tuple(x.shape[1:]), 2, x.device, x.dtype)
    t_found = t.nan_to_num(posinf=0.0).view(len(y), k, 1, 1, 1)
    moved = predict(model, (x.unsqueeze(1) + t_found * u).flatten(0, 1)).view(len(y), k)
    assert (moved != y.unsqueeze(1))[found].all()
    before = predict(model, (x.unsqueeze(1) + 0.9 * t_found * u).flatten(0, 1)).view(len(y), k)
    assert (before == y.unsqueeze(1))[found].float().mean() > 0.9
    assert (adv.norm_l2 <= t.min(dim=1).values).all()


def test_clip_option_evaluates_clipped_points():
    model, x, y = small_mlp()
    t = random_direction_margins(model, x, y, n_directions=3, seed=0, clip=True, t_max=50.0)
    u = random_unit_directions(len(y), 3, tuple(x.shape[1:]), 0, x.device, x.dtype)
    found = torch.isfinite(t)
    moved = (x.unsqueeze(1) + t.nan_to_num(posinf=0.0).view(-1, 3, 1, 1, 1) * u).clamp(0, 1)
    flipped = predict(model, moved.flatten(0, 1)).view(-1, 3) != y.unsqueeze(1)
    assert found.any() and flipped[found].all()


@pytest.mark.slow
def test_measure_margins_skips_misclassified_and_is_deterministic():
    model, x, y = small_mlp()
    y = y.clone()
    y[::3] = (y[::3] + 1) % 4  # every third label wrong
    index = torch.arange(100, 100 + len(y))
    a = measure_margins(model, x, y, n_directions=4, seed=7, index=index, batch_size=9)
    b = measure_margins(model, x, y, n_directions=4, seed=7, index=index, batch_size=1000)
    c = measure_margins(model, x, y, n_directions=4, seed=8, index=index)
    wrong = ~a["correct"]
    assert wrong.sum() == 10 and (a["index"] == index.numpy()).all()
    assert a.loc[wrong, ["margin_random_min", "margin_adv_l2", "margin_first_order"]].isna().all().all()
    assert not a.loc[wrong, "adv_success"].any()
    assert a.loc[~wrong, ["margin_random_min", "margin_adv_l2"]].notna().all().all()
    cols = ["margin_random_min", "margin_adv_l2", "margin_first_order"]
    ok = a["correct"]
    torch.testing.assert_close(torch.tensor(a.loc[ok, cols].to_numpy()),  # inf == inf here
                               torch.tensor(b.loc[ok, cols].to_numpy()), rtol=2 * RTOL, atol=0)
    assert not a["margin_random_min"].equals(c["margin_random_min"])


def test_first_correct_picks_the_first_correct_ones():
    model, x, y = small_mlp()
    y = y.clone()
    y[[0, 2, 3]] = (y[[0, 2, 3]] + 1) % 4
    assert first_correct(model, x, y, 3).tolist() == [1, 4, 5]
    assert len(first_correct(model, x, y, 1000)) == len(y) - 3
    with pytest.raises(UserError):
        first_correct(model, x, y, 0)


def test_constant_model_reports_no_change():
    net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(SHAPE), CLASSES))
    nn.init.zeros_(net[1].weight)
    with torch.no_grad():
        net[1].bias.copy_(torch.arange(CLASSES, dtype=torch.float32))
    model = Classifier(net, MEAN, STD, SHAPE, CLASSES, "constant").eval()
    x = torch.rand(3, *SHAPE)
    y = torch.full((3,), CLASSES - 1)
    table = measure_margins(model, x, y, n_directions=2, t_max=4.0, max_iter=3)
    assert torch.isinf(torch.tensor(table["margin_random_min"].to_numpy())).all()
    assert (table["margin_random_found_frac"] == 0).all()
    assert not table["adv_success"].any() and table["margin_adv_l2"].isna().all()


@pytest.mark.parametrize("shape", ["linear", "curved", "step"])
def test_find_crossing_brackets_the_root_in_few_probes(shape):
    root = torch.tensor([0.3, 1.7, 5.0, 9.99], dtype=torch.float64)
    g_of = {"linear": lambda t, r: 2.0 * (r - t),
            "curved": lambda t, r: torch.exp(-t) - torch.exp(-r),
            "step": lambda t, r: torch.where(t < r, 1.0, -1.0).to(t.dtype)}[shape]
    calls = []

    def probe(i, t):
        calls.append(len(i))
        g = g_of(t, root[i])
        return t >= root[i], g

    lo, hi = torch.zeros(4, dtype=torch.float64), torch.full((4,), 10.0, dtype=torch.float64)
    t = _find_crossing(probe, lo, hi, g_of(lo, root), g_of(hi, root), RTOL)
    assert (t >= root).all() and (t <= root * (1 + RTOL)).all()
    max_probes = {"linear": 3, "curved": 12, "step": 20}[shape]  # bisection alone: 15
    assert len(calls) <= max_probes


def test_median_over_directions_counts_inf():
    t = torch.tensor([[3.0, 1.0, 2.0, 4.0], [1.0, float("inf"), 2.0, float("inf")]])
    assert median_over_directions(t).tolist() == [2.5, float("inf")]
    assert median_over_directions(t[:, :3]).tolist() == [2.0, 2.0]


@pytest.mark.parametrize("kwargs", [dict(n_directions=0), dict(t_start=5.0, t_max=1.0),
                                    dict(rtol=0.0), dict(batch_size=0)])
def test_bad_arguments_are_user_errors(kwargs):
    model, x, y = small_mlp()
    with pytest.raises(UserError):
        random_direction_margins(model, x[:2], y[:2], **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda_like_on_cpu(linear_case):
    model, x, y, w, b = linear_case
    cpu = measure_margins(model, x, y, n_directions=3)
    gpu = measure_margins(model.cuda(), x.cuda(), y.cuda(), n_directions=3)
    cols = ["logit_gap", "margin_adv_l2", "margin_first_order"]  # directions differ by device
    torch.testing.assert_close(torch.tensor(gpu[cols].to_numpy()), torch.tensor(cpu[cols].to_numpy()),
                               rtol=2 * RTOL, atol=0)
    assert gpu["adv_success"].all() and (gpu["margin_random_found_frac"] > 0).any()


def test_margins_refuses_a_corrupt_config_json_and_names_each_bad_option(tmp_path):
    """As attack does: a run directory whose config.json is unreadable is refused (exit 2)."""
    from typer.testing import CliRunner

    from jrbench.cli import app
    from jrbench.errors import UserError
    from jrbench.evaluate.api import check_margins_options

    with pytest.raises(UserError, match=r"--directions must be at least 1, got 0; --batch-size must be at least 1, got -1"):
        check_margins_options(5, 0, -1)
    from conftest import tiny_config, tiny_data
    from jrbench.data.datasets import write_idx_folder
    from jrbench.training.loop import train

    data = tiny_data(64, 32)
    config = tiny_config(epochs=1)
    config.data.data_dir = str(write_idx_folder(tmp_path / "data", data.train, data.test))
    run = tmp_path / "run"
    train(config, run, data=data)  # a whole run; then only its config.json is broken
    (run / "config.json").write_text("junk")
    result = CliRunner().invoke(app, ["margins", str(run), "--n-examples", "5", "--device", "cpu"])
    assert result.exit_code == 2 and "config.json" in result.output and "Traceback" not in result.output
