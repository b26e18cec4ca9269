"""--reg ibp and --reg crown-ibp (jrbench.penalty.certified_training): the training bounds contain the
logits of the ball, CROWN-IBP agrees with certify's CROWN where their pre-activation bounds agree,
the loss, the schedule step by step, the training-time certificate against certify --ibp, the
refusals, run ids and specs; and (slow) a trained model whose certified accuracy stands far above
plain's, with every later command working on it."""
from __future__ import annotations

import copy
import math
import shutil

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from conftest import tiny_config, tiny_data
from jrbench.certify import crown
from jrbench.certify.api import certify_run
from jrbench.certify.config import CertifyConfig
from jrbench.certify.ibp import certified_linf, margin_lower_bounds
from jrbench.cli import app
from jrbench.config import DataConfig, ModelConfig, RegConfig, RunConfig, TrainConfig, check_fields
from jrbench.analysis.provenance import group_id, short_label
from jrbench.cost.overhead import case_name, default_cases, time_steps
from jrbench.errors import UserError
from jrbench.models.architectures import Classifier, build_model, eval_mode
from jrbench.models.lipschitz import strictly_correct
from jrbench.penalty import crown_ibp
from jrbench.penalty.certified_training import BoundStep, CertifiedTraining, Schedule, worst_case_logits
from jrbench.penalty.regularizers import BoundTerm, check_model_name, step_loss
from jrbench.schema import FieldError
from jrbench.study.spec import parse_spec
from jrbench.training.loop import train

runner = CliRunner()
MEAN, STD = [0.13], [0.31]


def conv_net():
    """Rules beyond LeNet's: stride 2, padding='same', LeakyReLU, average pooling, overlapping max pooling."""
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.LeakyReLU(0.1),
                        nn.Conv2d(4, 4, 3, padding="same"), nn.ReLU(), nn.AvgPool2d(2), nn.MaxPool2d(3, 1),
                        nn.Flatten(), nn.Linear(4 * 5 * 5, 12), nn.ReLU(), nn.Dropout(0.3), nn.Linear(12, 10))
    return Classifier(net, MEAN, STD, (1, 28, 28), 10, "conv")


def models():
    torch.manual_seed(2)
    return {"lenet": build_model("lenet", (1, 28, 28), 10, MEAN, STD, dropout=0.5),
            "mlp": build_model("mlp", (1, 28, 28), 10, MEAN, STD), "conv": conv_net()}


def margins_of(logits, labels):
    """(N, C): f_y - f_j, +inf on the label's own column."""
    return (logits.gather(1, labels[:, None]) - logits).scatter(1, labels[:, None], math.inf)


# ----------------------------------------------------------------------------- soundness of the training bounds
@pytest.mark.parametrize("name", ["lenet", "mlp", "conv"])
@pytest.mark.parametrize("reg, beta", [("ibp", 0.0), ("crown-ibp", 1.0), ("crown-ibp", 0.3)])
def test_training_bounds_contain_the_logits_of_random_points_of_the_ball(name, reg, beta):
    model = models()[name].train()  # training mode: dropout is the identity in the bound, as in eval
    training = CertifiedTraining(model, RegConfig([reg]))
    model64 = copy.deepcopy(model).double().eval()
    torch.manual_seed(3)
    x = torch.rand(4, 1, 28, 28)
    x[0] = 0.0  # a box clipped at 0
    y = torch.randint(0, 10, (4,))
    eps = 0.03
    low = training.margins(x, y, BoundStep(eps, 0.5, beta))
    assert low.dtype == torch.float32 and low.requires_grad
    worst = worst_case_logits(low, y)  # what the loss sees: z_j >= f_j - f_y over the ball, z_y = 0
    assert torch.equal(worst.gather(1, y[:, None]), torch.zeros(4, 1))
    lo, hi = (x.double() - eps).clamp(0, 1), (x.double() + eps).clamp(0, 1)
    for i in range(4):
        t = torch.rand(200, 1, 28, 28, dtype=torch.float64)
        corners = (torch.rand_like(t[:50]) < 0.5).double()
        points = torch.cat([lo[i] + t * (hi[i] - lo[i]), lo[i] + corners * (hi[i] - lo[i])])
        with torch.no_grad():
            logits = model64(points)
        m = margins_of(logits, y[i].expand(len(points)))
        tol = 1e-4 * (1 + logits.abs().amax())
        assert (m >= low[i].double() - tol).all()
        assert (logits - logits[:, y[i]:y[i] + 1] <= worst[i].double() + tol).all()


def test_crown_ibp_equals_certify_crown_where_the_pre_activation_bounds_agree():
    """One hidden ReLU layer, or conv -> LeakyReLU -> max pool -> Linear: certify's CROWN takes interval
    bounds there too (no refinement below the first nonlinearity), so in float64 the two bounds agree
    up to certify's rounding slack. (After a ReLU, many max-pool windows hold several inputs whose
    lower bound is 0; which one the lower line takes is a tie that certify's outward rounding breaks
    otherwise: both bounds are sound, and they differ.)"""
    torch.manual_seed(5)
    nets = [nn.Sequential(nn.Flatten(), nn.Linear(36, 20), nn.ReLU(), nn.Linear(20, 5)),
            nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.LeakyReLU(0.1), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(27, 5))]
    for net in nets:
        model = Classifier(net, [0.4], [0.3], (1, 6, 6), 5, "small").double().eval()
        x = torch.rand(6, 1, 6, 6, dtype=torch.float64)
        y = torch.randint(0, 5, (6,))
        for eps in (0.01, 0.05, 0.2):
            ours = CertifiedTraining(model, RegConfig(["crown-ibp"])).margins(x, y, BoundStep(eps, 0.0, 1.0))
            theirs = crown.margin_lower_bounds(model, x, y, eps)
            finite = torch.isfinite(theirs)
            assert torch.equal(finite, torch.isfinite(ours))
            assert torch.allclose(ours[finite], theirs[finite], rtol=1e-8, atol=1e-8)


def test_training_margins_are_certify_margins_up_to_float32_rounding():
    """The same code (jrbench.models.interval) in float32 without rounding slack and in float64 with
    it: the bounds differ by float32 rounding, so the certified examples differ at most where a
    bound lies within that distance of zero."""
    model = models()["lenet"].eval()
    training = CertifiedTraining(model, RegConfig(["ibp"]))
    torch.manual_seed(6)
    x = torch.rand(64, 1, 28, 28)
    y = torch.randint(0, 10, (64,))
    for eps in (0.0, 1e-3, 0.01):
        with torch.no_grad():
            low32 = training.margins(x, y, BoundStep(eps, 0.5))
        low64 = margin_lower_bounds(model, x, y, eps)
        finite = torch.isfinite(low64)
        assert torch.equal(finite, torch.isfinite(low32))
        scale = 1 + low64[finite].abs()
        assert ((low32.double()[finite] - low64[finite]).abs() <= 1e-5 * scale).all()
        assert (low64[finite] <= low32.double()[finite] + 1e-5 * scale).all()


# ----------------------------------------------------------------------------- the loss
@pytest.mark.parametrize("kappa", [0.0, 0.5, 0.8])
def test_step_loss_mixes_the_natural_and_the_worst_case_cross_entropy(kappa):
    torch.manual_seed(7)
    model = build_model("lenet", (1, 28, 28), 10, MEAN, STD).eval()
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    reg = RegConfig(["ibp"], ibp_eps=0.02, ibp_kappa=kappa)
    training = CertifiedTraining(model, reg)
    loss = step_loss(model, x, y, reg, bound=BoundTerm(training, BoundStep(0.02, kappa)))
    with torch.no_grad():
        logits = model(x).double()
    low = margin_lower_bounds(model, x, y, 0.02)  # certify's float64 margins
    z = (-low).scatter(1, y[:, None], 0.0)
    expect = kappa * F.cross_entropy(logits, y) + (1 - kappa) * F.cross_entropy(z, y)
    assert float(loss.total.detach()) == pytest.approx(float(expect), rel=1e-4)
    assert float(loss.bound_ce) == pytest.approx(float(F.cross_entropy(z, y)), rel=1e-4)
    certified = int((strictly_correct(logits, y) & (low > 0).all(1)).sum())
    assert int(loss.certified) == certified
    # kappa 1 (the warm-up): plain cross-entropy, no bound computed
    plain = step_loss(model, x, y, reg, bound=BoundTerm(training, BoundStep(0.0, 1.0)))
    assert plain.bound_ce is None and float(plain.total.detach()) == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
    # the bound's gradient reaches the weights
    loss.total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# ----------------------------------------------------------------------------- the schedule
def test_schedule_gives_every_step_its_exact_eps_kappa_and_beta():
    reg = RegConfig(["ibp"], ibp_eps=0.2, ibp_warmup_epochs=1, ibp_ramp_epochs=2, ibp_kappa=0.5)
    s = Schedule.of(reg, steps_per_epoch=4)
    assert (s.warmup, s.ramp) == (4, 8)
    for t in range(4):
        assert s.at(t) == BoundStep(0.0, 1.0, 0.0)
    for t in range(4, 12):
        p = (t - 3) / 8
        assert s.at(t) == BoundStep(0.2 * p, 1 - p * 0.5, 0.0)
    assert s.at(11) == BoundStep(0.2, 0.5, 0.0) and s.at(1000) == BoundStep(0.2, 0.5, 0.0)
    crown_s = Schedule.of(RegConfig(["crown-ibp"], ibp_warmup_epochs=0.5, ibp_ramp_epochs=0.25), steps_per_epoch=8)
    assert (crown_s.warmup, crown_s.ramp) == (4, 2)
    assert [crown_s.at(t).beta for t in range(8)] == [1.0, 1.0, 1.0, 1.0, 0.5, 0.0, 0.0, 0.0]
    jump = Schedule.of(RegConfig(["ibp"], ibp_warmup_epochs=0, ibp_ramp_epochs=0, ibp_eps=0.1, ibp_kappa=0.25), 5)
    assert jump.at(0) == BoundStep(0.1, 0.25, 0.0)


def test_training_steps_follow_the_schedule_across_epochs_and_resume(tmp_path, monkeypatch):
    import jrbench.training.loop as loop

    seen = []
    real = loop.step_loss

    def spy(model, x, y, reg, step=0, bound=None, *rest):  # rest: the margin ramp's share
        seen.append(bound.at)
        return real(model, x, y, reg, step, bound, *rest)

    monkeypatch.setattr(loop, "step_loss", spy)
    data = tiny_data(96, 32)  # 3 steps an epoch at batch 32
    config = tiny_config(("ibp",), epochs=3, ibp_eps=0.06, ibp_warmup_epochs=1, ibp_ramp_epochs=1, ibp_kappa=0.25)
    config.model.name, config.train.jacobian_eval_examples = "mlp", 2
    metrics = train(config, tmp_path / "run", data=data).metrics
    s = Schedule.of(config.reg, 3)
    assert seen == [s.at(t) for t in range(9)]
    assert list(metrics["ibp_eps"]) == [0.0, 0.06, 0.06] and list(metrics["ibp_kappa"]) == [1.0, 0.25, 0.25]
    assert math.isnan(metrics["train_ibp_ce"][0]) and (metrics["train_ibp_ce"][1:] > 0).all()
    assert metrics["test_ibp_certified"].between(0, 1).all()
    # a run resumed after its first epoch continues the schedule at step 3
    seen.clear()
    shutil.copytree(tmp_path / "run", tmp_path / "resumed")
    checkpoint = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    torch.save(checkpoint | {"epoch": 1}, tmp_path / "resumed" / "checkpoint.pt")
    train(config, tmp_path / "resumed", resume=True, data=data)
    assert seen == [s.at(t) for t in range(3, 9)]


def test_crown_ibp_trains_and_records_beta(tmp_path):
    data = tiny_data(64, 32)
    config = tiny_config(("crown-ibp",), epochs=2, ibp_eps=0.05, ibp_warmup_epochs=0.5, ibp_ramp_epochs=1)
    config.train.jacobian_eval_examples = 2
    metrics = train(config, tmp_path / "run", data=data).metrics
    assert list(metrics["crown_ibp_beta"]) == [0.5, 0.0]  # 2 steps an epoch: ramp steps 1 and 2 of 2 end the epochs
    assert torch.isfinite(torch.tensor(metrics["train_ibp_ce"].to_numpy())).all()


def test_a_few_ibp_steps_tighten_the_bound_by_orders_of_magnitude():
    """An mlp on the toy digits, 4 epochs of 8 steps (IBP: 1 epoch warm-up, 1 epoch ramp to 0.05) against
    plain SGD with the same seed. Measured (avx2 and ATEN_CPU_CAPABILITY=default alike): IBP certifies
    41% of 128 test examples at L-inf 0.05, median smallest margin bound -0.006; plain 0% and -116."""
    data = tiny_data(256, 128)
    x, y = data.test.images.float() / 255, data.test.labels
    result = {}
    for regs in (("none",), ("ibp",)):
        config = tiny_config(regs, epochs=4, ibp_eps=0.05, ibp_warmup_epochs=1, ibp_ramp_epochs=1)
        config.model.name, config.train.jacobian_eval_examples = "mlp", 2
        model = train(config, data=data).model.eval()
        result[regs[0]] = (float(certified_linf(model, x, y, 0.05).float().mean()),
                           float(margin_lower_bounds(model, x, y, 0.05).amin(1).median()))
    (plain_cert, plain_bound), (ibp_cert, ibp_bound) = result["none"], result["ibp"]
    assert plain_cert <= 0.02 and ibp_cert >= 0.2, result
    assert plain_bound < -20 and ibp_bound > -1, result


# ----------------------------------------------------------------------------- refusals
def test_models_the_bound_does_not_cover_are_refused_with_the_layer(tmp_path):
    config = tiny_config(("ibp",), epochs=1)
    config.model.name = "resnet18"
    with pytest.raises(UserError, match=r"--reg ibp .*model 'resnet18'.*layer net \(ResNet"):
        train(config, tmp_path / "run", data=tiny_data(32, 16))
    assert not (tmp_path / "run").exists()
    with pytest.raises(UserError, match="layer net"):
        check_model_name("resnet18", "mnist", RegConfig(["crown-ibp"]))
    check_model_name("lenet", "mnist", RegConfig(["crown-ibp"]))  # covered: no error
    with pytest.raises(UserError, match=r"--reg ibp has no rule for layer net.1 \(AOLLinear\)"):
        check_model_name("aol-mlp", "mnist", RegConfig(["ibp"]))
    bn = Classifier(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(1352, 10)),
                    MEAN, STD, (1, 28, 28), 10, "bn")
    with pytest.raises(UserError, match=r"--reg ibp has no rule for layer net.1 \(BatchNorm2d\)"):
        CertifiedTraining(bn, RegConfig(["ibp"]))
    tanh = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(784, 8), nn.Tanh(), nn.Linear(8, 10)),
                      MEAN, STD, (1, 28, 28), 10, "tanh")
    CertifiedTraining(tanh, RegConfig(["ibp"]))  # interval bounds cover Tanh
    with pytest.raises(UserError, match=r"--reg crown-ibp: no CROWN-IBP rule for layer net.2 \(Tanh"):
        CertifiedTraining(tanh, RegConfig(["crown-ibp"]))


def test_the_command_line_refuses_with_exit_code_2(tmp_path):
    result = runner.invoke(app, ["train", "--dataset", "synth-digits", "--model", "resnet18", "--reg", "ibp",
                                 "--train-subset", "64", "--test-subset", "32", "--epochs", "1", "--device", "cpu",
                                 "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "layer net (ResNet" in result.output and "Traceback" not in result.output
    for args, flag in [(["--ibp-kappa", "1.5"], "--ibp-kappa"), (["--ibp-eps", "0"], "--ibp-eps"),
                       (["--ibp-ramp-epochs", "-1"], "--ibp-ramp-epochs"), (["--reg", "crown-ibp"], "--reg")]:
        result = runner.invoke(app, ["train", "--reg", "ibp", *args, "--out", str(tmp_path / "bad")])
        assert result.exit_code == 2 and flag in result.output, (args, result.output)


def test_option_checks():
    for kwargs, key in [(dict(ibp_kappa=-0.1), "ibp_kappa"), (dict(ibp_eps=-0.1), "ibp_eps"),
                        (dict(ibp_warmup_epochs=-1.0), "ibp_warmup_epochs")]:
        with pytest.raises(FieldError) as e:
            check_fields(RunConfig(reg=RegConfig(["ibp"], **kwargs)))
        assert e.value.key == key
    with pytest.raises(FieldError, match="choose one"):
        check_fields(RunConfig(reg=RegConfig(["ibp", "crown-ibp"])))
    with pytest.raises(FieldError, match="replace the cross-entropy"):
        check_fields(RunConfig(reg=RegConfig(["lipschitz-margin", "ibp"])))


# ----------------------------------------------------------------------------- ids, labels, specs, overhead
def test_ibp_options_leave_other_runs_ids_alone_and_count_for_both_bound_regularizers():
    plain = RunConfig(reg=RegConfig(["none"]))
    changed = RunConfig(reg=RegConfig(["none"], ibp_eps=0.3, ibp_kappa=0.1, ibp_ramp_epochs=2, ibp_warmup_epochs=0))
    assert plain.run_id() == changed.run_id() and group_id(plain) == group_id(changed)
    for name in ("ibp", "crown-ibp"):
        a, b = RunConfig(reg=RegConfig([name])), RunConfig(reg=RegConfig([name], ibp_eps=0.3))
        assert a.run_id() != b.run_id() and group_id(a) != group_id(b)
        assert "ε_train=0.3" in short_label(b)


def test_a_sweep_spec_takes_ibp_as_a_regularizer_and_its_options_as_keys(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text('name = "ibp"\n[base]\ndataset = "synth-digits"\nepochs = 1\nibp_kappa = 0.25\n'
                    'ibp_warmup_epochs = 0.5\nibp_ramp_epochs = 2\n'
                    '[grid]\nreg = ["ibp", "crown-ibp"]\nibp_eps = [0.1, 0.2]\n')
    cells = parse_spec(spec.read_text(), spec).cells
    assert len(cells) == 4
    assert {(tuple(c.reg.names), c.reg.ibp_eps) for c in cells} == {
        (("ibp",), 0.1), (("ibp",), 0.2), (("crown-ibp",), 0.1), (("crown-ibp",), 0.2)}
    assert all(c.reg.ibp_kappa == 0.25 and c.reg.ibp_warmup_epochs == 0.5 and c.reg.ibp_ramp_epochs == 2
               for c in cells)
    spec.write_text('name = "bad"\n[base]\ndataset = "synth-digits"\nmodel = "resnet18"\nreg = "ibp"\n')
    with pytest.raises(UserError, match="layer net"):
        parse_spec(spec.read_text(), spec)


def test_overhead_times_the_bound_steps():
    cases = default_cases((), (), reference=False, ibp=True, crown_ibp=True)
    assert [c.name for c in cases] == ["plain", "ibp", "crown-ibp"]
    assert [case_name(c.reg) for c in cases] == ["plain", "ibp", "crown-ibp"]
    torch.manual_seed(0)
    model = build_model("mlp", (1, 28, 28), 10, MEAN, STD)
    times = time_steps(model, torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,)), cases, pairs=1, warmup=0)
    assert list(times["case"]) == ["plain", "ibp", "crown-ibp"] and (times["seconds"] > 0).all()


# ----------------------------------------------------------------------------- a trained model (slow)
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A plain and an IBP-trained lenet on 2000 synth-digits (same seed, 3 epochs; IBP: 1 epoch of
    warm-up, a 1-epoch ramp to eps 0.1). Measured: IBP certifies 82% of 200 test digits at L-inf
    0.05 (test accuracy 89%), plain none (97%)."""
    root = tmp_path_factory.mktemp("ibp")
    data = DataConfig("synth-digits", train_subset=2000, test_subset=200)
    train_cfg = TrainConfig(epochs=3, batch_size=32, lr=0.05, seed=0, device="cpu", jacobian_eval_examples=32)
    runs = {}
    for name, reg in (("plain", RegConfig(["none"])),
                      ("ibp", RegConfig(["ibp"], ibp_eps=0.1, ibp_warmup_epochs=1, ibp_ramp_epochs=1))):
        config = RunConfig(copy.deepcopy(data), ModelConfig("lenet"), reg, copy.deepcopy(train_cfg))
        runs[name] = (root / name, train(config, root / name))
    return runs


def _test_split(run_dir):
    from jrbench.runtables.provenance import load_test_data
    from jrbench.training.rundir import load_config

    data = load_test_data(load_config(run_dir), None)
    return data.test.images.float() / 255, data.test.labels


@pytest.mark.slow
def test_ibp_training_certifies_far_more_than_plain(trained):
    certified = {}
    for name, (run_dir, result) in trained.items():
        x, y = _test_split(run_dir)
        model = result.model.eval()
        certified[name] = float(certified_linf(model, x, y, 0.05).float().mean())
        with torch.no_grad():
            low = margin_lower_bounds(model, x, y, 0.05).amin(1)
        certified[name + "-median-bound"] = float(low.median())
    assert certified["ibp"] >= 0.6 and certified["plain"] <= 0.02, certified
    assert certified["ibp-median-bound"] > 0 > certified["plain-median-bound"], certified
    assert trained["ibp"][1].metrics["test_acc"].iloc[-1] >= 0.75


@pytest.mark.slow
def test_the_training_time_certificate_is_certify_ibp(trained):
    run_dir, result = trained["ibp"]
    model = result.model.eval()
    x, y = _test_split(run_dir)
    eps = 0.1
    # the run's last metric: certify --ibp's bound on the whole test split at the training radius
    assert result.metrics["test_ibp_certified"].iloc[-1] == int(certified_linf(model, x, y, eps).sum()) / len(y)
    # the training bound (float32) against certify's result on the same examples
    table = certify_run(run_dir, CertifyConfig(lipschitz=False, ibp=True, eps_linf=[eps]), n_examples=200,
                        device="cpu").examples
    table = table[table["method"] == "ibp"].sort_values("example")
    certified_by_certify = torch.tensor((table["radius"] >= eps).to_numpy())
    index = torch.tensor(table["example"].to_numpy())
    training = CertifiedTraining(model, RegConfig(["ibp"], ibp_eps=eps))
    with torch.no_grad():
        low = training.margins(x[index], y[index], BoundStep(eps, 0.5))
        logits = model(x[index])
    by_training = strictly_correct(logits, y[index]) & (low > 0).all(1)
    near_zero = low.abs().amin(1) < 1e-4
    assert near_zero.float().mean() < 0.05
    assert torch.equal(by_training[~near_zero], certified_by_certify[~near_zero])
    assert 0.3 < float(certified_by_certify.float().mean()) < 1.0


@pytest.mark.slow
def test_every_command_works_on_an_ibp_trained_model(trained, tmp_path):
    run_dir, _ = trained["ibp"]
    common = ["--n-examples", "40", "--device", "cpu"]
    for args in (["attack", str(run_dir), "--pgd", "--norm", "linf", "--eps", "0.05", "--steps", "5", *common],
                 ["margins", str(run_dir), "--directions", "2", *common],
                 ["certify", str(run_dir), "--ibp", "--crown", "--lipschitz", "--eps-linf", "0.05", "--eps-l2", "0.01",
                  *common],
                 ["report", str(run_dir.parent), "--out", str(tmp_path / "report"), "--eps-linf", "0.05"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
    certified = pd.read_csv(run_dir / "certify.csv").set_index(["method", "norm", "strength"])["certified_acc"]
    attacked = pd.read_csv(run_dir / "attacks.csv").set_index(["attack", "norm", "strength"])["accuracy"]
    for method in ("ibp", "crown"):  # lower bounds under the attack's upper bound
        assert certified[(method, "linf", 0.05)] <= attacked[("pgd", "linf", 0.05)]
    assert certified[("ibp", "linf", 0.05)] > 0.3
    assert (tmp_path / "report" / "report.md").is_file()
    assert "ε_train=0.1" in (tmp_path / "report" / "report.md").read_text()
