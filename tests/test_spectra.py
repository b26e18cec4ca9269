"""Per-example Jacobians and spectra against torch.autograd.functional.jacobian + svdvals."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from jrbench.errors import UserError
from jrbench.evaluate.margins import first_order_margins
from jrbench.models.architectures import build_model
from jrbench.evaluate.spectra import (jacobian_table, per_example_jacobian,
                             spectral_norm_power_iteration)

MODELS = {  # name -> (input shape, classes, mean, std)
    "lenet": ((1, 16, 16), 10, [0.1307], [0.3081]),
    "mlp": ((3, 6, 6), 7, [0.5, 0.4, 0.3], [0.2, 0.5, 0.9]),
}


def make(name: str, n: int = 5, seed: int = 0):
    shape, classes, mean, std = MODELS[name]
    torch.manual_seed(seed)
    model = build_model(name, shape, classes, mean, std).double().eval()
    x = torch.rand(n, *shape, dtype=torch.float64)
    return model, x


def reference_jacobian(fn, inp: torch.Tensor) -> torch.Tensor:
    """(B, C, D) from torch.autograd.functional.jacobian, one example at a time."""
    return torch.stack([
        torch.autograd.functional.jacobian(lambda a: fn(a.unsqueeze(0))[0], inp[b]).flatten(1)
        for b in range(inp.shape[0])])


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.slow
def test_jacobian_matches_autograd_functional(name):
    model, x = make(name)
    ref_x = reference_jacobian(model, x)
    ref_z = reference_jacobian(model.net, model.normalize(x))
    torch.testing.assert_close(per_example_jacobian(model, x, "pixel", batch_size=2), ref_x)
    torch.testing.assert_close(per_example_jacobian(model, x, "normalized", batch_size=3), ref_z)
    assert ref_x.abs().max() > 1e-6  # not a trivially zero Jacobian


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.slow
def test_table_singular_values_match_svdvals(name):
    model, x = make(name)
    y = torch.zeros(x.shape[0], dtype=torch.long)
    table = jacobian_table(model, x, y, batch_size=2)
    classes = MODELS[name][1]
    assert len(table) == 2 * x.shape[0]
    assert [c for c in table.columns if c.startswith("sv_")] == [f"sv_{k}" for k in range(classes)]
    logits = model(x).detach()
    gap = logits.topk(2, dim=1).values
    gap = gap[:, 0] - gap[:, 1]
    refs = {"pixel": reference_jacobian(model, x),
            "normalized": reference_jacobian(model.net, model.normalize(x))}
    for wrt, ref in refs.items():
        rows = table[table["wrt"] == wrt].sort_values("index")
        sv = torch.linalg.svdvals(ref)
        got = torch.tensor(rows[[f"sv_{k}" for k in range(classes)]].to_numpy())
        torch.testing.assert_close(got, sv, rtol=1e-9, atol=1e-12)
        assert (got[:, :-1] >= got[:, 1:]).all()
        torch.testing.assert_close(torch.tensor(rows["spectral"].to_numpy()), sv[:, 0])
        fro = torch.linalg.norm(ref, dim=(1, 2))
        torch.testing.assert_close(torch.tensor(rows["frobenius"].to_numpy()), fro)
        torch.testing.assert_close(torch.tensor(rows["stable_rank"].to_numpy()), fro ** 2 / sv[:, 0] ** 2)
        torch.testing.assert_close(torch.tensor(rows["logit_gap"].to_numpy()), gap)
    radius = gap / (math.sqrt(2) * torch.linalg.svdvals(refs["pixel"])[:, 0])
    for wrt in ("pixel", "normalized"):  # pixel-space radius, on both rows of an example
        rows = table[table["wrt"] == wrt].sort_values("index")
        torch.testing.assert_close(torch.tensor(rows["radius_first_order_local"].to_numpy()), radius)


def test_pixel_and_normalized_jacobians_differ_by_std_per_channel():
    model, x = make("mlp")
    jac_x = per_example_jacobian(model, x, "pixel").view(x.shape[0], -1, *x.shape[1:])
    jac_z = per_example_jacobian(model, x, "normalized").view_as(jac_x)
    std = torch.tensor(MODELS["mlp"][3], dtype=x.dtype).view(1, 1, -1, 1, 1)
    torch.testing.assert_close(jac_x, jac_z / std)
    assert not torch.allclose(jac_x, jac_z, rtol=0.05)  # the stds really differ from 1


@pytest.mark.slow
def test_plain_module_with_std_argument_matches_classifier():
    model, x = make("mlp")
    plain = nn.Sequential(model.normalize, model.net)  # no .normalize / .net attributes
    std = model.normalize.std.clone()
    torch.testing.assert_close(per_example_jacobian(plain, x, "normalized", std=std),
                               per_example_jacobian(model, x, "normalized"))
    torch.testing.assert_close(spectral_norm_power_iteration(plain, x, "normalized", std=std),
                               spectral_norm_power_iteration(model, x, "normalized"))


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("wrt", ["pixel", "normalized"])
@pytest.mark.slow
def test_power_iteration_matches_top_singular_value(name, wrt):
    model, x = make(name, n=4)
    top = torch.linalg.svdvals(per_example_jacobian(model, x, wrt))[:, 0]
    est = spectral_norm_power_iteration(model, x, wrt, iters=3000, tol=1e-13, seed=1, batch_size=3)
    torch.testing.assert_close(est, top, rtol=1e-6, atol=0)
    rough = spectral_norm_power_iteration(model, x, wrt, iters=1, seed=1)
    assert (rough <= top * (1 + 1e-12)).all()  # ||J v|| with ||v|| = 1 is a lower bound
    assert (rough < top * (1 - 1e-6)).any()  # one step is not yet converged


def test_power_iteration_is_deterministic_by_seed():
    model, x = make("lenet", n=3)
    a = spectral_norm_power_iteration(model, x, iters=2, seed=3)
    b = spectral_norm_power_iteration(model, x, iters=2, seed=3)
    c = spectral_norm_power_iteration(model, x, iters=2, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_radius_is_below_first_order_margin():
    """||(e_top - e_2nd)^T J|| <= sqrt(2) ||J||_2, so the radius never exceeds the estimate."""
    model, x = make("lenet", n=6)
    table = jacobian_table(model, x, torch.zeros(6, dtype=torch.long))
    radius = torch.tensor(table[table["wrt"] == "pixel"].sort_values("index")
                          ["radius_first_order_local"].to_numpy())
    margin, _ = first_order_margins(model, x)
    assert (radius <= margin * (1 + 1e-9)).all()
    assert (radius > 0.1 * margin).all()


def test_eval_mode_is_used_and_restored():
    torch.manual_seed(0)
    model = build_model("mlp", (1, 4, 4), 3, [0.0], [1.0], dropout=0.5).double().train()
    x = torch.rand(4, 1, 4, 4, dtype=torch.float64)
    a = per_example_jacobian(model, x)
    b = per_example_jacobian(model, x)
    assert torch.equal(a, b)  # dropout off
    assert model.training


def test_unknown_space_is_a_user_error():
    model, x = make("mlp", n=1)
    with pytest.raises(UserError, match="pixel"):
        per_example_jacobian(model, x, "pixels")
    with pytest.raises(UserError):
        per_example_jacobian(model, x, batch_size=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda_like_on_cpu():
    model, x = make("lenet", n=4)
    y = torch.zeros(4, dtype=torch.long)
    cpu = jacobian_table(model, x, y)
    gpu = jacobian_table(model.cuda(), x.cuda(), y.cuda())
    num = cpu.select_dtypes("number").columns
    torch.testing.assert_close(torch.tensor(gpu[num].to_numpy()), torch.tensor(cpu[num].to_numpy()))
    est = spectral_norm_power_iteration(model, x.cuda(), iters=3000, tol=1e-13)
    torch.testing.assert_close(est.cpu(), torch.tensor(cpu[cpu["wrt"] == "pixel"]["spectral"].to_numpy()),
                               rtol=1e-6, atol=0)
