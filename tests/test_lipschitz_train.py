"""--reg lipschitz (projection after each step, certified at each epoch's end) and --reg noise
(Gaussian augmentation): soundness of the bound, the projection, resume, seeding, config and CLI."""
import dataclasses
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from conftest import tiny_config, tiny_data
from jrbench import load_run
from jrbench.cli import app
from jrbench.config import RegConfig, RunConfig, check_fields
from jrbench.errors import UserError
from jrbench.models.lipschitz import lipschitz_bound, power_iteration
from jrbench.penalty.lipschitz_constraint import LipschitzConstraint, constraint_for
from jrbench.models.architectures import build_model
from jrbench.cost.overhead import case_name, default_cases, time_steps
from jrbench.penalty.regularizers import add_noise, step_loss
from jrbench.training.rundir import CHECKPOINT, METRICS
from jrbench.study.spec import parse_spec
from jrbench.training.loop import LIPSCHITZ_STATE, train

TIMING = ["seconds_per_step", "seconds_per_step_mean", "epoch_seconds"]
MEAN, STD = [0.13], [0.31]


def _config(regs, model="lenet", epochs=1, seed=0, **reg):
    config = tiny_config(regs, epochs=epochs, seed=seed, **reg)
    config.model.name = model
    return config


def _metrics(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=TIMING).reset_index(drop=True)


@pytest.mark.parametrize("model", ["mlp", "lenet"])
@pytest.mark.slow
def test_trained_model_is_certified_at_most_k(tmp_path, model):
    k_bound = 1.0
    torch.manual_seed(0)
    assert lipschitz_bound(build_model(model, (1, 28, 28), 10, MEAN, STD)).total > 2 * k_bound  # not vacuous
    result = train(_config(("lipschitz",), model, epochs=2, lipschitz_bound=k_bound), tmp_path / "run",
                   data=tiny_data(96, 32))
    assert lipschitz_bound(result.model).total <= k_bound * (1 + 1e-6)
    saved, _ = load_run(tmp_path / "run")
    assert lipschitz_bound(saved).total <= k_bound * (1 + 1e-6)
    certified = pd.read_csv(tmp_path / "run" / METRICS)["lipschitz_bound_certified"]
    assert len(certified) == 2 and (certified <= k_bound * (1 + 1e-6)).all()


def test_projection_keeps_each_layer_estimate_at_most_k():
    torch.manual_seed(0)
    model = build_model("lenet", (1, 28, 28), 10, MEAN, STD)
    constraint = LipschitzConstraint(model, 2.0, seed=0)
    k = constraint.budget
    assert k == pytest.approx((2.0 * STD[0]) ** (1 / 5))  # 5 weight layers; 1/std the only fixed factor
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)  # big steps: the projection works
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    for _ in range(5):
        opt.zero_grad()
        step_loss(model, x, y, RegConfig(["lipschitz"])).total.backward()
        opt.step()
        constraint.project()
        for layer, u, sigma in zip(constraint.layers, constraint.vectors, constraint.sigmas):
            assert float(sigma) <= k * (1 + 1e-6)
            # ||W u|| at the kept unit vector, from the weights themselves (0 iterations)
            with torch.no_grad():
                norm = float(power_iteration(layer.module, layer.input_shape, u, iters=0)[0])
            assert norm <= k * (1 + 1e-5)


def test_projection_leaves_layers_under_budget_alone():
    torch.manual_seed(0)
    model = build_model("mlp", (1, 28, 28), 10, MEAN, STD)
    before = {n: p.clone() for n, p in model.named_parameters()}
    constraint = LipschitzConstraint(model, 1e9)
    constraint.project()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert constraint_for(model, RegConfig(["none"])) is None


@pytest.mark.slow
def test_resume_after_interrupt_equals_uninterrupted(tmp_path):
    data = tiny_data(96, 32)
    config = _config(("jacobian", "lipschitz", "noise"), epochs=2, lipschitz_bound=5.0)
    full = train(config, tmp_path / "full", data=data)

    def interrupt(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "cut", data=data, on_epoch=interrupt)
    state = torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=True)[LIPSCHITZ_STATE]
    assert len(state["vectors"]) == 5
    resumed = train(config, tmp_path / "cut", data=data, resume=True)
    pd.testing.assert_frame_equal(_metrics(full.metrics), _metrics(resumed.metrics))
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    ends = [torch.load(tmp_path / run / CHECKPOINT, weights_only=True)[LIPSCHITZ_STATE]["vectors"]
            for run in ("full", "cut")]
    assert all(torch.equal(a, b) for a, b in zip(*ends))


def test_resume_without_the_power_iteration_state_is_refused(tmp_path):
    data = tiny_data(32, 32)
    config = _config(("lipschitz",), "mlp", epochs=2)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "run", data=data, on_epoch=_raise_interrupt)
    checkpoint = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)
    del checkpoint[LIPSCHITZ_STATE]
    torch.save(checkpoint, tmp_path / "run" / CHECKPOINT)
    with pytest.raises(UserError, match=LIPSCHITZ_STATE):
        train(config, tmp_path / "run", data=data, resume=True)


def _raise_interrupt(row):
    raise KeyboardInterrupt


def test_a_model_without_a_rule_is_refused_before_training(tmp_path):
    with pytest.raises(UserError, match="--reg lipschitz needs .* model 'resnet18' is not one"):
        train(_config(("lipschitz",), "resnet18"), tmp_path / "run", data=tiny_data(64, 32))
    assert not (tmp_path / "run").exists()  # nothing written


def test_noise_stays_in_the_unit_interval_and_follows_the_seed():
    x = torch.rand(8, 1, 28, 28)
    x[0] = 0.0
    x[1] = 1.0
    torch.manual_seed(3)
    a = add_noise(x, 0.5)
    torch.manual_seed(3)
    b = add_noise(x, 0.5)
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= 0 and a.max() <= 1 and not torch.equal(a, x)
    assert (a[0] == 0).any() and (a[1] == 1).any()  # clipped, not rescaled
    assert 0.3 < float((a - x)[2:].std()) < 0.5  # noise of std 0.5, shrunk by clipping
    torch.manual_seed(4)
    assert not torch.equal(add_noise(x, 0.5), a)


def test_step_loss_sees_the_noisy_pixels():
    torch.manual_seed(0)
    model = build_model("mlp", (1, 28, 28), 10, MEAN, STD)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    torch.manual_seed(7)
    loss = step_loss(model, x, y, RegConfig(["noise"], noise_sigma=0.3))
    torch.manual_seed(7)
    assert torch.equal(loss.logits, model(add_noise(x, 0.3)).detach())
    assert not torch.equal(loss.logits, model(x).detach())


@pytest.mark.slow
def test_noise_training_is_seeded(tmp_path):
    data = tiny_data(64, 32)
    a = train(_config(("noise",), "mlp"), data=data).metrics
    b = train(_config(("noise",), "mlp"), data=data).metrics
    c = train(_config(("noise",), "mlp", noise_sigma=0.5), data=data).metrics
    pd.testing.assert_frame_equal(_metrics(a), _metrics(b))
    assert not _metrics(a).equals(_metrics(c))


@pytest.mark.parametrize("field, value, needle", [
    ("lipschitz_bound", 0.0, "--lipschitz-bound must be a positive finite number"),
    ("lipschitz_bound", -1.0, "--lipschitz-bound must be a positive finite number"),
    ("lipschitz_bound", float("inf"), "--lipschitz-bound must be a positive finite number"),
    ("lipschitz_bound", float("nan"), "--lipschitz-bound must be a positive finite number"),
    ("noise_sigma", 0.0, "--noise-sigma must be a positive finite number"),
    ("noise_sigma", -0.25, "--noise-sigma must be a positive finite number"),
])
def test_bad_settings_name_their_flag(field, value, needle):
    config = RunConfig(reg=dataclasses.replace(RegConfig(["lipschitz", "noise"]), **{field: value}))
    with pytest.raises(UserError, match=needle):
        check_fields(config)


def test_cli_bad_setting_exits_2(tmp_path):
    result = CliRunner().invoke(app, ["train", "--reg", "noise", "--noise-sigma", "0", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "--noise-sigma must be a positive finite number" in result.output
    assert not (tmp_path / "r").exists()


def test_run_ids_without_the_new_regularizers_are_unchanged():
    # computed before lipschitz_bound and noise_sigma were added to RegConfig
    assert RunConfig().run_id() == "synth-digits-lenet-none-s0-3fcf0fbe"
    combined = RunConfig(reg=RegConfig(["jacobian", "l2", "dropout", "input-grad"]))
    assert combined.run_id() == "synth-digits-lenet-jacobian+l2+dropout+input-grad-s0-5779c3c4"
    assert RunConfig(reg=RegConfig(["none"], lipschitz_bound=3.0, noise_sigma=0.1)).run_id() == RunConfig().run_id()
    lip = RunConfig(reg=RegConfig(["lipschitz"]))
    assert lip.run_id() != RunConfig(reg=RegConfig(["lipschitz"], lipschitz_bound=3.0)).run_id()
    assert lip.run_id() == RunConfig(reg=RegConfig(["lipschitz"], noise_sigma=0.1)).run_id()
    assert lip.run_id().startswith("synth-digits-lenet-lipschitz-s0-")


def test_list_shows_both_with_descriptions():
    result = CliRunner().invoke(app, ["list"])
    assert result.exit_code == 0
    assert "regularizer lipschitz: " in result.output and "--lipschitz-bound" in result.output
    assert "regularizer noise: " in result.output and "--noise-sigma" in result.output


def test_sweep_spec_takes_the_regularizers_and_their_keys():
    spec = parse_spec('name = "t"\n[base]\nepochs = 1\nmodel = "mlp"\n[grid]\n'
                      'reg = [["lipschitz"], ["noise"], ["jacobian", "noise"]]\n'
                      'lipschitz_bound = [5.0, 50]\nnoise_sigma = [0.1]\n', Path("t.toml"))
    assert [c.reg.names for c in spec.cells] == [["lipschitz"], ["lipschitz"], ["noise"], ["jacobian", "noise"]]
    assert [c.reg.lipschitz_bound for c in spec.cells[:2]] == [5.0, 50]
    assert {c.reg.noise_sigma for c in spec.cells} == {0.1}
    with pytest.raises(UserError, match="line 3: field 'reg' gives an invalid cell: --reg lipschitz needs"):
        parse_spec('name = "t"\n[base]\nreg = "lipschitz"\nmodel = "resnet18"\n', Path("t.toml"))
    with pytest.raises(UserError, match="line 4: field 'noise_sigma' must be a positive finite number, got 0.0"):
        parse_spec('name = "t"\n[grid]\nreg = [["noise"]]\nnoise_sigma = [0.0]\n', Path("t.toml"))


@pytest.mark.slow
def test_overhead_times_the_projection_and_the_noise():
    assert case_name(RegConfig(["lipschitz"])) == "lipschitz" and case_name(RegConfig(["noise"])) == "noise"
    assert case_name(RegConfig(["jacobian", "noise"])) == "jacobian-n1+noise"
    cases = default_cases((1,), (), False, lipschitz=True, noise=True)
    assert [c.name for c in cases] == ["plain", "jacobian-n1", "lipschitz", "noise"]
    assert all(case_name(c.reg) == c.name for c in cases)
    torch.manual_seed(0)
    model = build_model("mlp", (1, 28, 28), 10, MEAN, STD)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    times = time_steps(model, x, y, cases, pairs=2, warmup=0)
    assert list(times["case"]) == [c.name for c in cases] * 2 and (times["seconds"] > 0).all()
