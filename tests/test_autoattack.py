"""AutoAttack (jrbench.evaluate.autoattack): closed-form linear models, the per-example record, seeds,
the new sanity warnings and bad input through the CLI."""
from __future__ import annotations

import dataclasses

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from jrbench.evaluate import attacks as A
from jrbench.evaluate import autoattack as AA
from jrbench.evaluate.attack_checks import sanity_warnings
from jrbench.evaluate.attack_common import AttackBoundsError, check_in_ball
from jrbench.cli import app
from jrbench.config import DataConfig, ModelConfig, RegConfig, RunConfig, TrainConfig
from jrbench.data.datasets import DATASETS, Data, DatasetInfo, DatasetSpec, Split
from jrbench.errors import UserError
from jrbench.models.architectures import Classifier, build_model
from jrbench.stats import wilson_interval

from conftest import tiny_data

SHAPE = (1, 8, 8)  # 64 pixels; Square's L2 start needs images of at least 5 x 5
D, C = 64, 10
AA_NAMES = ["aa-apgd-ce", "aa-apgd-t", "aa-fab-t", "aa-square", "autoattack"]
PAPER = (AA.APGD_STEPS, AA.FAB_STEPS, AA.SQUARE_QUERIES, AA.SQUARE_P_INIT, AA.STANDARD_TARGETS,
         AA.RESTARTS)


@pytest.fixture(autouse=True, scope="module")
def small_budgets():
    """Smaller iteration and query budgets keep these tests fast (examples beyond eps use a
    component's whole budget); the composition, seeds, checks and rows are the same."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AA, "APGD_STEPS", 40)
        mp.setattr(AA, "FAB_STEPS", 20)
        mp.setattr(AA, "SQUARE_QUERIES", 200)
        yield


def test_defaults_are_the_papers_standard_version():
    assert PAPER == (100, 100, 5000, 0.8, 9, 1)


def linear_problem(n: int = 60, seed: int = 0):
    """f(x) = W (x - 0.5), 10 classes, pixels in [0.3, 0.7], labels = the model's prediction.

    The smallest perturbation that changes the class is exact for a linear model: the
    distance to the nearest halfspace {f_c >= f_y}, (f_y - f_c) / ||w_y - w_c||_q with q the
    dual norm (2 for L2, 1 for L-inf), as long as the box [0, 1] does not bind."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(C, D, generator=gen)
    lin = nn.Linear(D, C)
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(-0.5 * w.sum(1))
    model = Classifier(nn.Sequential(nn.Flatten(), lin), [0.0], [1.0], SHAPE, C, "linear").eval()
    x = 0.5 + 0.2 * (2 * torch.rand(n, *SHAPE, generator=gen) - 1)
    with torch.no_grad():
        f = model(x).double()
    y = f.argmax(1)
    gap = f.gather(1, y[:, None]) - f                     # (n, C), f_y - f_c
    dw = w.double()[y][:, None, :] - w.double()[None]     # (n, C, D), w_y - w_c
    own = torch.nn.functional.one_hot(y, C).bool()
    dist = {"l2": (gap / dw.norm(dim=2)).masked_fill(own, math.inf).amin(1),
            "linf": (gap / dw.abs().sum(2)).masked_fill(own, math.inf).amin(1)}
    return model, x, y, dist


@pytest.fixture(scope="module")
def linear_run():
    """One run_attacks on the linear model: noise, PGD and AutoAttack at both norms, eps 0
    and the median closed-form distance."""
    model, x, y, dist = linear_problem()
    eps = {norm: float(dist[norm].median()) for norm in ("linf", "l2")}
    assert max(float(d[d <= 2 * eps[n]].max()) for n, d in dist.items()) < 0.3  # box free
    cfg = A.AttackConfig(noise=True, pgd=True, fgsm=False, autoattack=True, sigmas=[0.0, 0.1],
                         draws=2, norms=("linf", "l2"), eps_linf=[0.0, eps["linf"]],
                         eps_l2=[0.0, eps["l2"]], steps=10, seed=3)
    index = torch.arange(len(x)) * 3 + 5
    out = A.run_attacks(model, x, y, cfg, num_classes=C, example_index=index, example_seed=7)
    return dict(model=model, x=x, y=y, dist=dist, eps=eps, index=index, cfg=cfg,
                table=out.table, examples=out.examples)


# ----------------------------------------------------------------------------- closed form


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.slow
def test_robust_accuracy_matches_linear_closed_form(linear_run, norm):
    table, dist, eps = linear_run["table"], linear_run["dist"][norm], linear_run["eps"][norm]
    row = table[(table.attack == "autoattack") & (table.norm == norm) & (table.strength == eps)]
    assert len(row) == 1
    expected = int((dist > eps).sum())              # examples no attack can break
    assert abs(int(row.n_correct.iloc[0]) - expected) <= 1, (row.n_correct.iloc[0], expected)
    assert 0.3 < expected / len(dist) < 0.7         # the test means something
    clean = table[(table.attack == "autoattack") & (table.norm == norm) & (table.strength == 0)]
    assert clean.accuracy.iloc[0] == 1.0            # labels are the model's predictions
    ex = linear_run["examples"]
    ok = ex[(ex.attack == "autoattack") & (ex.norm == norm) & (ex.strength == eps)]
    robust = ok.set_index("example").robust.reindex(linear_run["index"].numpy()).to_numpy()
    beyond = (dist > eps * (1 + 1e-4)).numpy()
    inside = (dist < eps * (1 - 1e-3)).numpy()
    assert (robust[beyond] == 1).all()              # the ball check holds: none beyond broken
    assert (robust[inside] == 0).sum() >= inside.sum() - 1  # all inside found, within one


@pytest.mark.slow
def test_rows_are_cumulative_per_component(linear_run):
    table = linear_run["table"]
    aa = table[table.attack.isin(AA_NAMES)]
    assert len(aa) == 2 * 2 * len(AA_NAMES)  # 2 norms x 2 eps x (4 components + total)
    for (norm, eps), g in aa.groupby(["norm", "strength"]):
        acc = g.set_index("attack").accuracy.reindex(AA_NAMES).to_numpy()
        assert (np.diff(acc) <= 0).all() and acc[-1] == acc[-2], (norm, eps, acc)
        targets = g.set_index("attack").targets
        assert targets["aa-apgd-t"] == targets["aa-fab-t"] == targets["autoattack"] == 9
        assert math.isnan(targets["aa-apgd-ce"]) and math.isnan(targets["aa-square"])
        steps = g.set_index("attack").steps
        assert steps["aa-apgd-ce"] == AA.APGD_STEPS and steps["aa-square"] == AA.SQUARE_QUERIES
        assert (g.loss == "ce64").all() and (g.restarts == 1).all()
        total = g.set_index("attack").seconds
        assert total["autoattack"] == pytest.approx(total[AA_NAMES[:-1]].sum())


@pytest.mark.slow
def test_adversarial_examples_stay_in_ball_and_pixel_range():
    model, x, y, dist = linear_problem(n=20, seed=1)
    for norm in ("linf", "l2"):
        eps = float(dist[norm].median())
        for name in AA.COMPONENTS:
            atk = AA.make_component(model, name, norm, eps, n_targets=3, num_classes=C)
            atk.seed = 0
            with AA.frozen(model):
                adv = atk(x, y).detach()
            check_in_ball(x, adv, eps, norm)
            delta = (adv - x).flatten(1).double()
            size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
            assert size.max() <= eps * (1 + 1e-5) and adv.min() >= 0 and adv.max() <= 1
            with torch.no_grad():
                broken = model(adv).argmax(1) != y
            assert not broken[dist[norm] > eps * (1 + 1e-4)].any(), name
    assert all(p.requires_grad for p in model.parameters())  # frozen() restores the flags


def test_fast_forward_copy_gives_the_same_logits_and_gradients():
    torch.manual_seed(0)
    model = build_model("lenet", (1, 28, 28), C, [0.1], [0.3]).eval()
    fast = AA.fast_forward_copy(model)
    assert sum(isinstance(m, AA.FastMaxPool2d) for m in fast.modules()) == 2
    x = torch.rand(7, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), fast(x))
    grads = []
    for m in (model, fast, AA.InputGradModel(fast)):
        xa = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(m(xa).double().logsumexp(1).sum(), xa)
        grads.append(grad)
    assert torch.equal(grads[0], grads[1]) and torch.allclose(grads[0], grads[2], atol=1e-6)
    odd = nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1), nn.MaxPool2d(2, ceil_mode=True))
    assert AA.fast_forward_copy(odd) is odd  # overlapping or padded pools are left alone
    pool = AA.FastMaxPool2d(nn.MaxPool2d((2, 3)))
    a = torch.randn(2, 3, 9, 11)
    with torch.no_grad():
        assert torch.equal(pool(a), nn.functional.max_pool2d(a, (2, 3)))


def test_pipeline_raises_when_a_component_leaves_the_ball(monkeypatch):
    import torchattacks

    model, x, y, dist = linear_problem(n=10)
    monkeypatch.setattr(torchattacks.APGD, "forward",
                        lambda self, images, labels: (images + 2 * self.eps).clamp(0, 1))
    with pytest.raises(AttackBoundsError):
        AA.autoattack_correct(model, x, y, norm="linf", eps=0.01, num_classes=C)


@pytest.mark.slow
def test_same_seed_same_result_and_global_rng_untouched():
    torch.manual_seed(0)
    model = build_model("mlp", SHAPE, C, [0.5], [0.25]).eval()  # untrained: weak boundaries
    x = torch.rand(16, *SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    cfg = A.AttackConfig(noise=False, pgd=False, fgsm=False, autoattack=True, norms=("linf",),
                         eps_linf=[0.015], aa_targets=2, seed=5, batch_size=10)
    state = torch.get_rng_state()
    first = A.run_attacks(model, x, y, cfg)
    assert torch.equal(state, torch.get_rng_state())
    torch.manual_seed(12345)  # the caller's RNG must not matter
    second = A.run_attacks(model, x, y, cfg)
    pd.testing.assert_frame_equal(first.table.drop(columns="seconds"),
                                  second.table.drop(columns="seconds"))
    pd.testing.assert_frame_equal(first.examples, second.examples)
    assert 0 < first.table.set_index("attack").accuracy["autoattack"] < 1  # some broken


# ----------------------------------------------------------------------------- the record


@pytest.mark.slow
def test_per_example_record_columns_and_values(linear_run):
    ex, table, n = linear_run["examples"], linear_run["table"], len(linear_run["x"])
    assert list(ex.columns[:9]) == ["example", "attack", "norm", "strength", "loss",
                                    "clean_correct", "robust", "broken", "example_seed"]
    assert len(ex) == n * len(table) and (ex.example_seed == 7).all()
    keys = ["attack", "norm", "strength", "loss"]
    assert not ex.duplicated(keys + ["example"]).any()
    for key, g in ex.groupby(keys):
        assert sorted(g.example) == sorted(linear_run["index"].tolist())
        row = table.set_index(keys).loc[key]
        assert g.robust.mean() == pytest.approx(row.accuracy)
        assert (g.clean_correct.isin([0, 1])).all()
        assert np.allclose(g.broken, g.clean_correct * (1 - g.robust))
        if key[0] == "noise":
            assert set(g.robust) <= {0.0, 0.5, 1.0}        # shares of 2 draws
        else:
            assert set(g.robust) <= {0.0, 1.0} and (g.robust <= g.clean_correct).all()
    wide = ex[ex.attack.isin(AA_NAMES)].pivot_table(index=["norm", "strength", "example"],
                                                    columns="attack", values="robust")
    for weaker, stronger in zip(AA_NAMES, AA_NAMES[1:]):
        assert (wide[stronger] <= wide[weaker]).all()      # cumulative per example


def test_unknown_component_and_target_counts_are_user_errors():
    model, x, y, _ = linear_problem(n=4)
    with pytest.raises(UserError, match="Did you mean 'apgd-t'"):
        AA.make_component(model, "apgd-tt", "linf", 0.1, n_targets=9, num_classes=C)
    with pytest.raises(UserError, match="--aa-targets"):
        AA.resolve_targets(5, None)
    with pytest.raises(UserError, match="1 to 4"):
        AA.resolve_targets(5, 5)
    with pytest.raises(UserError, match="at least 4 classes"):
        AA.resolve_targets(3, 2)
    assert AA.resolve_targets(10, None) == 9 and AA.resolve_targets(100, None) == 9
    assert AA.resolve_targets(5, 4) == 4
    with pytest.raises(UserError, match="--aa-targets must be at least 1, got 0"):
        A.AttackConfig(autoattack=True, aa_targets=0).validate()
    with pytest.raises(UserError, match="10 logits but the data set 12"):
        A.run_attacks(model, x, y, A.AttackConfig(noise=False, pgd=False, fgsm=False,
                                                  autoattack=True, eps_linf=[0.1],
                                                  eps_l2=[0.1]), num_classes=12)


def test_autoattack_grids_and_sweep_fields(tmp_path):
    from jrbench.runtables.examples import ExampleSet
    from jrbench.study.sweep import attack_done
    from jrbench.study.spec import attack_config, parse_spec

    own = A.AttackConfig(autoattack=True, autoattack_eps_linf=[0.1], eps_linf=[0.0, 0.3],
                         eps_l2=[1.0])
    assert own.autoattack_grids() == {"linf": [0.1]}
    alone = A.AttackConfig(noise=False, pgd=False, fgsm=False, autoattack=True,
                           autoattack_eps_l2=[0.5])
    assert alone.eps_norms() == [] and alone.autoattack_grids() == {"l2": [0.5]}
    alone.validate()  # no PGD grid needed
    shared = A.AttackConfig(pgd=False, fgsm=False, autoattack=True, norms=("l2",), eps_l2=[0.5])
    assert shared.eps_norms() == ["l2"] and shared.autoattack_grids() == {"l2": [0.5]}
    assert A.AttackConfig(pgd=True).autoattack_grids() == {}
    with pytest.raises(UserError, match=r"--autoattack-eps-linf must be in \[0, 1\] \(pixel units\), got 1.5"):
        A.AttackConfig(autoattack=True, autoattack_eps_linf=[1.5]).validate()

    text = ('name = "t"\n[attack]\nnoise = false\nfgsm = false\nautoattack = true\n'
            'autoattack_eps_linf = [0.1]\naa_targets = 9\neps_linf = [0.1]\nnorm = ["linf"]\n')
    spec = parse_spec(text, Path("t.toml"), tmp_path)
    assert spec.attack.autoattack_grids() == {"linf": [0.1]}
    examples = spec.attack_examples
    run = tmp_path / "run"
    run.mkdir()
    assert not attack_done(run, spec.attack, examples)
    _rows(("pgd", "linf", 0.1, 0.4)).to_csv(run / "attacks.csv", index=False)
    assert not attack_done(run, spec.attack, examples)        # no per-example record yet
    _record([("pgd", "linf", 0.1, [1])]).to_csv(run / "attack_examples.csv", index=False)
    assert not attack_done(run, spec.attack, examples)        # the study asks for AutoAttack too
    _rows(("pgd", "linf", 0.1, 0.4), ("autoattack", "linf", 0.1, 0.3)).to_csv(
        run / "attacks.csv", index=False)
    assert attack_done(run, spec.attack, examples) and attack_done(run)
    rows = _rows(("pgd", "linf", 0.1, 0.4), ("autoattack", "linf", 0.1, 0.3), ("noise", "gaussian", 0.5, 0.9))
    rows["n_examples"], rows["example_seed"] = [200, 200, 2000], 0
    rows.to_csv(run / "attacks.csv", index=False)
    replace = dataclasses.replace
    assert attack_done(run, replace(spec.attack, noise_examples=2000), ExampleSet(200))
    assert not attack_done(run, replace(spec.attack, noise_examples=2000), ExampleSet(1000))  # a changed n_examples
    assert not attack_done(run, replace(spec.attack, noise=True, sigmas=[0.5], noise_examples=500),
                           ExampleSet(200))                              # so does a changed noise_examples


# ----------------------------------------------------------------------------- warnings


def _rows(*rows):
    base = dict.fromkeys(A.ROW_COLUMNS, math.nan)
    out = []
    for attack, norm, eps, acc in rows:
        low, high = wilson_interval(acc * 1000, 1000)
        out.append({**base, "attack": attack, "norm": norm, "strength": eps, "accuracy": acc,
                    "ci_low": low, "ci_high": high, "n_examples": 1000, "loss": "ce64",
                    "steps": 40 if attack == "pgd" else 100, "grad_vanish_frac": 0.0,
                    "grad_zero_frac": 0.0})
    return pd.DataFrame(out, columns=A.ROW_COLUMNS)


def test_warning_when_autoattack_is_more_than_2_points_below_pgd():
    quiet = _rows(("pgd", "linf", 0.1, 0.40), ("autoattack", "linf", 0.1, 0.385))
    assert sanity_warnings(quiet) == []
    loud = _rows(("pgd", "linf", 0.1, 0.40), ("autoattack", "linf", 0.1, 0.35),
                 ("pgd", "l2", 1.0, 0.40), ("autoattack", "l2", 1.0, 0.39))
    warnings = sanity_warnings(loud)
    assert len(warnings) == 1 and "autoattack-linf" in warnings[0], warnings
    assert "5.0 points" in warnings[0] and "eps 0.1" in warnings[0]


def _record(rows):
    out = []
    for attack, norm, eps, robust in rows:
        for i, r in enumerate(robust):
            out.append({"example": 10 + i, "attack": attack, "norm": norm, "strength": eps,
                        "loss": "ce64", "clean_correct": 1, "robust": float(r),
                        "broken": 1.0 - r, "example_seed": 0, "label": 0, "seed": 0})
    return pd.DataFrame(out, columns=A.EXAMPLE_COLUMNS)


def test_warning_when_a_weaker_attack_breaks_what_a_stronger_misses():
    healthy = _record([("fgsm", "linf", 0.1, [1, 0, 1, 1]), ("pgd", "linf", 0.1, [1, 0, 0, 1]),
                       ("autoattack", "linf", 0.1, [0, 0, 0, 1]),
                       ("pgd", "linf", 0.05, [1, 0, 1, 1])])
    assert sanity_warnings(_rows(), examples=healthy) == []
    masked = _record([("fgsm", "linf", 0.1, [1, 0, 1, 1]), ("pgd", "linf", 0.2, [1, 1, 0, 1]),
                      ("autoattack", "linf", 0.1, [0, 0, 0, 1]),
                      ("autoattack", "l2", 0.1, [1, 1, 1, 1])])
    warnings = sanity_warnings(_rows(), examples=masked)
    assert len(warnings) == 1, warnings  # other norms are not compared
    assert "fgsm-linf (ce64) breaks examples that the stronger pgd-linf (ce64)" in warnings[0]
    assert "1 at eps 0.1" in warnings[0] and "example 11" in warnings[0]


# ----------------------------------------------------------------------------- the CLI

runner = CliRunner()


@pytest.fixture(scope="module")
def five_class(tmp_path_factory):
    """A lenet run on a 5-class data set (tiny blocks, labels 0..4) and the data set's entry."""
    from jrbench.training.loop import train

    base = tiny_data(n_train=400, n_test=80)

    def first_five(split: Split) -> Split:
        return Split(split.images[split.labels < 5], split.labels[split.labels < 5])

    five = Data(DatasetInfo("five-blocks", (1, 28, 28), 5, (0.2,), (0.3,), tuple("01234")),
                first_five(base.train), first_five(base.test))
    spec = DatasetSpec(five.info, lambda data_dir: (five.train, five.test))
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(DATASETS._entries, "five-blocks", spec)
        config = RunConfig(DataConfig("five-blocks"), ModelConfig("lenet"), RegConfig(["none"]),
                           TrainConfig(epochs=2, batch_size=32, lr=0.05, device="cpu",
                                       jacobian_eval_examples=16))
        run_dir = tmp_path_factory.mktemp("five") / "run"
        train(config, run_dir, data=five)
    return run_dir, spec


@pytest.fixture
def five_class_run(five_class, monkeypatch):
    """The 5-class run, its data set registered for the test."""
    run_dir, spec = five_class
    monkeypatch.setitem(DATASETS._entries, "five-blocks", spec)
    return run_dir


@pytest.mark.parametrize("args, needle", [
    (["--autoattack"], "--aa-targets N (1 to 4"),
    (["--autoattack", "--aa-targets", "5"], "from 1 to 4"),
    (["--autoattack", "--aa-targets", "0"], "--aa-targets must be at least 1, got 0"),
    (["--autoattack", "--aa-targets", "2", "--norm", "l3"], "is not one of 'linf', 'l2'"),
    (["--autoattack", "--aa-targets", "2", "--norm", "linf", "--eps", "-0.1"], "--eps-linf must be in [0, 1] (pixel units), got -0.1"),
    (["--pgd", "--eps-l2", "-1"], "--eps-l2 must be zero or positive (pixel units), got -1.0"),
    (["--aa-targets", "2", "--autoattack-eps-linf", "-0.1"], "--autoattack-eps-linf must be in [0, 1] (pixel units), got -0.1"),
    (["--autoatack"], "No such option"),
])
@pytest.mark.slow
def test_bad_attack_input_exits_2_with_a_message(five_class_run, args, needle):
    result = runner.invoke(app, ["attack", str(five_class_run), *args, "--n-examples", "8",
                                 "--device", "cpu"])
    assert result.exit_code == 2 and needle in result.output, result.output
    assert "Traceback" not in result.output
    assert not (five_class_run / "attacks.csv").exists()
    assert not (five_class_run / "attack_examples.csv").exists()


@pytest.mark.slow
def test_cli_autoattack_with_targets_writes_both_tables(five_class_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(five_class_run, run)
    result = runner.invoke(app, ["attack", str(run), "--autoattack", "--aa-targets", "2",
                                 "--norm", "linf", "--eps", "0.05", "--n-examples", "10",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "autoattack" in result.output and (run / "attack_examples.csv").is_file()
    table = pd.read_csv(run / "attacks.csv")
    assert sorted(table.attack) == sorted(AA_NAMES) and (table.targets.dropna() == 2).all()
    record = pd.read_csv(run / "attack_examples.csv")
    assert list(record.columns) == A.EXAMPLE_COLUMNS and len(record) == 10 * len(AA_NAMES)
    assert record.example.nunique() == 10 and record.example.max() < 80
    assert 0 < record.clean_correct.mean() and (record.broken <= record.clean_correct).all()
