"""jrbench certify: certificates of a trained run on fixed test examples, their tables, their
soundness against attacks on the same examples, and the command's errors."""
import math

import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from jrbench.evaluate.attack_config import AttackConfig
from jrbench.certify.api import (CERTIFY_CSV, CERTIFY_EXAMPLES_CSV, CertifyConfig, certify_model, certify_run,
                             soundness_violations)
from jrbench.cli import app
from jrbench.config import DataConfig, ModelConfig, RegConfig, RunConfig, TrainConfig
from jrbench.errors import UserError
from jrbench.evaluate.api import attack_run, fixed_examples
from jrbench.training.loop import train

EPS_LINF = [0.0, 0.005, 0.01, 0.02, 0.05, 0.1]
EPS_L2 = [0.0, 0.05, 0.1, 0.2, 0.5, 1.0]
N = 100


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A Jacobian-regularized lenet on synth-digits (small margins of certified radius exist)."""
    out = tmp_path_factory.mktemp("certify") / "run"
    config = RunConfig(DataConfig("synth-digits", train_subset=1000, test_subset=300), ModelConfig("lenet"),
                       RegConfig(["jacobian"], lambda_jr=0.05),
                       TrainConfig(epochs=2, batch_size=64, seed=0, device="cpu", jacobian_eval_examples=32))
    train(config, out)
    return out


@pytest.fixture(scope="module")
def certified(run):
    config = CertifyConfig(lipschitz=True, ibp=True, smoothing=True, sigmas=[0.25], n0=20, n=200, alpha=0.01,
                           eps_linf=EPS_LINF, eps_l2=EPS_L2)
    return certify_run(run, config, n_examples=N, example_seed=3, device="cpu")


@pytest.mark.slow
def test_tables_are_written_with_one_row_per_example_and_certificate(run, certified):
    table = pd.read_csv(run / CERTIFY_CSV)
    examples = pd.read_csv(run / CERTIFY_EXAMPLES_CSV)
    assert len(table) == 2 * len(EPS_LINF) + len(EPS_L2) * 2  # lipschitz (both norms), ibp (linf), smoothing (l2)
    assert examples.groupby(["method", "norm", "sigma"]).size().to_dict() == {
        ("ibp", "linf", -1.0): N, ("lipschitz", "l2", -1.0): N, ("lipschitz", "linf", -1.0): N,
        ("smoothing", "l2", 0.25): N}
    for col in ("example", "method", "norm", "sigma", "radius", "predicted", "abstain"):
        assert col in examples.columns
    # the examples are jrbench attack's examples for the same --example-seed
    from jrbench.training.rundir import load_config
    from jrbench.data.datasets import load_data
    _, labels, index = fixed_examples(load_data(load_config(run).data), N, 3)
    assert sorted(examples["example"].unique()) == sorted(index.tolist())
    lip = table[table["method"] == "lipschitz"]
    assert lip["lipschitz_bound"].nunique() == 1 and lip["lipschitz_bound"].iloc[0] > 0
    # re-running replaces rows instead of adding
    certify_run(run, CertifyConfig(lipschitz=True, ibp=False, eps_linf=EPS_LINF, eps_l2=EPS_L2),
                n_examples=N, example_seed=3, device="cpu")
    assert len(pd.read_csv(run / CERTIFY_CSV)) == len(table)
    assert len(pd.read_csv(run / CERTIFY_EXAMPLES_CSV)) == len(examples)


@pytest.mark.slow
def test_certified_accuracy_starts_at_clean_accuracy_and_falls_with_eps(certified):
    t, ex = certified.table, certified.examples
    clean = ex[ex["method"] == "lipschitz"].drop_duplicates("example")["clean_correct"].mean()
    for (method, norm), rows in t.groupby(["method", "norm"]):
        rows = rows.sort_values("strength")
        acc = rows["certified_acc"].to_numpy()
        assert (acc[1:] <= acc[:-1] + 1e-12).all(), (method, norm)
        if method != "smoothing":
            assert acc[0] == pytest.approx(clean), (method, norm)
    # the per-example radii say the same as the table, strength by strength (one rule: covers)
    from jrbench.certify.api import covers
    for r in t[t["method"] != "smoothing"].itertuples():
        sel = ex[(ex["method"] == r.method) & (ex["norm"] == r.norm)]
        assert r.certified_acc == pytest.approx(covers(sel["radius"], r.strength, sel["clean_correct"]).mean()), \
            (r.method, r.norm, r.strength)
    # radii: zero for misclassified examples, never negative; lipschitz L-inf radius = L2 / sqrt(d)
    assert (ex["radius"] >= 0).all()
    assert (ex.loc[(ex["clean_correct"] == 0) & (ex["method"] != "smoothing"), "radius"] == 0).all()
    lip = ex[ex["method"] == "lipschitz"].pivot(index="example", columns="norm", values="radius")
    assert torch.allclose(torch.tensor(lip["linf"].to_numpy()), torch.tensor(lip["l2"].to_numpy()) / 28.0)
    assert (lip["linf"] <= lip["l2"] / 28.0).all()  # rounded down: never above the exact quotient
    # every correctly classified example has a positive Lipschitz radius (its logit gap is positive)
    lip_l2 = ex[(ex["method"] == "lipschitz") & (ex["norm"] == "l2")]
    assert ((lip_l2["radius"] > 0) == (lip_l2["clean_correct"] == 1)).all()
    smooth = ex[ex["method"] == "smoothing"]
    assert (smooth.loc[smooth["abstain"], "radius"] == 0).all()


@pytest.fixture(scope="module")
def attacked(run, certified):
    """PGD and FGSM at radii where the certificates cover some examples and not others: the 30%,
    60% and 90% quantiles of the best certified radius of each norm (so the soundness check is
    never vacuous, whatever the training reached on this CPU); then the certificates again on a
    grid that holds those radii (the report's bracket compares them strength by strength)."""
    ex = certified.examples
    best = ex[ex["method"].isin(["lipschitz", "ibp"]) & (ex["radius"] > 0)].groupby(["norm", "example"])["radius"].max()
    grids = {norm: sorted({round(float(q), 6) for q in best[norm].quantile([0.3, 0.6, 0.9])}) for norm in ("linf", "l2")}
    attacks = AttackConfig(noise=False, pgd=True, fgsm=True, norms=("linf", "l2"), eps_linf=grids["linf"],
                           eps_l2=grids["l2"], steps=10, restarts=1)
    result = attack_run(run, attacks, n_examples=N, example_seed=3, device="cpu")
    again = certify_run(run, CertifyConfig(lipschitz=True, ibp=True, eps_linf=sorted(set(EPS_LINF + grids["linf"])),
                                           eps_l2=sorted(set(EPS_L2 + grids["l2"]))),
                        n_examples=N, example_seed=3, device="cpu")
    return result, again


@pytest.mark.slow
def test_no_attack_breaks_a_certified_example(attacked):
    result, certified = attacked
    covered = certified.examples[certified.examples["radius"] > 0]
    checked = covered.merge(result.examples, on=["example", "norm"])
    assert (checked["radius"] > checked["strength"]).sum() >= 10  # pairs the check really covers
    assert soundness_violations(certified.examples, result.examples).empty


@pytest.mark.slow
def test_report_brackets_attacked_accuracy_with_certified(run, certified, attacked, tmp_path):
    from jrbench.report.writer import ReportOptions, write_report
    from jrbench.analysis.results import collect

    collection = collect([run])
    summary = collection.summary
    cert = summary[(summary["table"] == "certify") & (summary["attack"] == "certified")
                   & (summary["quantity"] == "accuracy")].set_index(["norm", "strength"])["value"]
    worst = summary[(summary["table"] == "attacks") & (summary["attack"] == "worst-case")].set_index(
        ["norm", "strength"])["value"]
    common = cert.index.intersection(worst.index)
    assert len(common) >= 4
    assert (cert[common] <= worst[common] + 1e-12).all()  # certified <= attacked, strength by strength
    assert collection.errors == []
    result = write_report(collection, tmp_path / "report", ReportOptions(cells=False))
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Certified and attacked accuracy" in text and "no attack broke an example" in text
    assert "certified acc % L∞" in text
    assert "Certified and attacked accuracy" in (tmp_path / "report" / "summary.md").read_text()
    assert result.errors == []


def test_soundness_check_finds_a_planted_contradiction():
    cert = pd.DataFrame({"example": [1, 2, 3, 4, 5], "method": ["ibp", "lipschitz", "smoothing", "ibp", "lipschitz"],
                         "norm": ["linf", "l2", "l2", "linf", "l2"], "sigma": [-1.0, -1.0, 0.25, -1.0, -1.0],
                         "radius": [0.1, 0.5, 2.0, 0.1, 0.5]})
    attacked = pd.DataFrame({"example": [1, 1, 2, 3, 4, 5], "attack": ["pgd", "pgd", "noise", "pgd", "fgsm", "pgd"],
                             "norm": ["linf", "linf", "gaussian", "l2", "linf", "l2"],
                             "strength": [0.05, 0.2, 0.1, 1.0, 0.1, 0.5],
                             "loss": "ce64", "clean_correct": 1, "broken": [1, 1, 1, 1, 1, 1]})
    bad = soundness_violations(cert, attacked)
    # ibp covers example 1 at 0.1 but PGD broke it at 0.05; at 0.2 there is no contradiction; noise
    # is no attack; smoothing certifies g, not the model; IBP certified example 4 in the closed box of
    # 0.1, so FGSM breaking it at 0.1 contradicts it; a Lipschitz radius 0.5 is the open ball: PGD at
    # exactly 0.5 does not
    assert bad[["example", "method", "strength"]].values.tolist() == [[1, "ibp", 0.05], [4, "ibp", 0.1]]
    # an older attack_examples.csv without the broken column: derived from clean_correct and robust
    older = attacked.drop(columns="broken").assign(robust=0)
    pd.testing.assert_frame_equal(soundness_violations(cert, older), bad)


@pytest.mark.slow
def test_linear_outside_model_radius_is_the_closed_form(tmp_path):
    torch.manual_seed(0)
    lin = nn.Linear(784, 10)
    net = nn.Sequential(nn.Flatten(), lin)
    from jrbench.models.architectures import PixelClassifier
    model = PixelClassifier(net, (1, 28, 28), 10, "linear")
    config = CertifyConfig(lipschitz=True, ibp=True, eps_linf=[0.0, 0.001], eps_l2=[0.0, 0.01])
    result = certify_model(model, "synth-digits", config, n_examples=50, device="cpu", out=tmp_path / "m")
    ex = result.examples[(result.examples["method"] == "lipschitz") & (result.examples["norm"] == "l2")]
    from jrbench.data.datasets import load_data
    images, labels, index = fixed_examples(load_data(DataConfig("synth-digits")), 50, 0)
    x = images.double().div(255).flatten(1)
    W, b = lin.weight.double().detach(), lin.bias.double().detach()
    f = x @ W.T + b
    expected = []
    for i in range(50):
        yi = int(labels[i])
        if int(f[i].argmax()) != yi:
            expected.append(0.0)
            continue
        expected.append(min(float((f[i, yi] - f[i, j]) / (W[yi] - W[j]).norm()) for j in range(10) if j != yi))
    assert torch.allclose(torch.tensor(ex["radius"].to_numpy()), torch.tensor(expected, dtype=torch.float64),
                          rtol=1e-5, atol=1e-9)
    assert (tmp_path / "m" / CERTIFY_CSV).is_file() and (tmp_path / "m" / "model.json").is_file()


@pytest.mark.parametrize("args, needle", [
    (["--smoothing", "--sigma", "0"], "--sigma"),
    (["--smoothing", "--sigma", "-0.5"], "--sigma"),
    (["--smoothing", "--n0", "200", "--n", "100"], "--n0"),
    (["--smoothing", "--alpha", "1.5"], "--alpha"),
    (["--smoothing", "--alpha", "0"], "--alpha"),
    (["--eps-linf", "-0.1"], "--eps-linf"),
])
@pytest.mark.slow
def test_bad_settings_exit_2_with_one_clear_line(run, args, needle):
    before = sorted(p.name for p in run.iterdir())
    result = CliRunner().invoke(app, ["certify", str(run), "--device", "cpu", "--quiet", *args])
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in run.iterdir()) == before


def test_unsupported_layer_is_refused_by_name(tmp_path):
    result = CliRunner().invoke(app, ["certify", "outside_factory:make_unsupported", "--dataset", "synth-digits",
                                      "--lipschitz", "--device", "cpu", "--quiet", "--out", str(tmp_path / "m")])
    assert result.exit_code == 2, result.output
    assert "Softplus" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "m" / CERTIFY_CSV).exists()


@pytest.mark.slow
def test_command_prints_the_table_and_the_bound_and_keeps_one_example_set(run, certified, tmp_path):
    import shutil

    copy = shutil.copytree(run, tmp_path / "run")
    result = CliRunner().invoke(app, ["certify", str(copy), "--device", "cpu", "--quiet", "--n-examples", "40",
                                      "--eps-linf", "0", "--eps-linf", "0.01", "--eps-l2", "0.1"])
    assert result.exit_code == 0, result.output
    assert "Lipschitz bound" in result.output and "certify.csv" in result.output
    assert "another example set" in result.output
    table, examples = pd.read_csv(copy / CERTIFY_CSV), pd.read_csv(copy / CERTIFY_EXAMPLES_CSV)
    assert set(table["n_examples"]) == {40} and set(table["example_seed"]) == {0}
    assert set(examples["example_seed"]) == {0} and examples["example"].nunique() == 40


def test_config_needs_a_certificate():
    with pytest.raises(UserError, match="--lipschitz"):
        CertifyConfig(lipschitz=False, ibp=False, smoothing=False).validate()
    assert math.isfinite(CertifyConfig().n)


SPEC = """
name = "c"
[base]
dataset = "synth-digits"
[certify]
lipschitz = true
ibp = true
eps_linf = {linf}
eps_l2 = {l2}
n_examples = {n}
example_seed = 3
"""


@pytest.mark.slow
def test_a_study_certifies_its_cells_and_knows_when_it_is_done(run, certified, tmp_path):
    from jrbench.study.sweep import certify_done
    from jrbench.study.spec import certify_config, parse_spec

    spec = parse_spec(SPEC.format(linf=EPS_LINF, l2=EPS_L2, n=N), tmp_path / "c.toml")
    config = spec.certify
    assert certify_config({"lipschitz": True, "ibp": True, "eps_linf": EPS_LINF, "eps_l2": EPS_L2}).smoothing is False
    assert config.lipschitz and config.ibp and not config.smoothing  # a study names what it certifies
    assert certify_done(run, spec)
    more = parse_spec(SPEC.format(linf=EPS_LINF, l2=EPS_L2 + [3.0], n=N), tmp_path / "c.toml")
    assert not certify_done(run, more)
    other = parse_spec(SPEC.format(linf=EPS_LINF, l2=EPS_L2, n=N - 1), tmp_path / "c.toml")
    assert not certify_done(run, other)


@pytest.mark.parametrize("extra, needle", [
    ("smoothing = true\nsigma = 0", "line 13: field 'sigma' must be a positive finite number, got 0"),
    ("n0 = 5\nn = 2\nsmoothing = true", r"line 12: field 'n0' gives invalid certify settings: n0 \(5\) must not exceed"),
    ("ibpp = true", "line 12: field 'ibpp' is not a certify option. Did you mean 'ibp'"),
])
def test_a_bad_certify_table_names_its_line(extra, needle, tmp_path):
    from jrbench.study.spec import parse_spec

    with pytest.raises(UserError, match=needle):
        parse_spec(SPEC.format(linf=[0.0], l2=[0.0], n=10) + extra, tmp_path / "c.toml")


def test_per_example_certified_outcomes_take_the_best_deterministic_certificate(tmp_path):
    from jrbench.analysis.run_records import RunRecord
    from jrbench.analysis.verdicts import certified_examples, example_values

    cert = pd.DataFrame({"method": ["lipschitz", "lipschitz", "ibp", "ibp", "smoothing"],
                         "norm": ["l2", "l2", "linf", "linf", "l2"], "strength": [0.0, 0.5, 0.0, 0.1, 0.5],
                         "sigma": [-1.0, -1.0, -1.0, -1.0, 0.25]})
    ex = pd.DataFrame({"example": [7, 8, 7, 8, 7, 8, 7], "method": ["lipschitz"] * 4 + ["ibp"] * 2 + ["smoothing"],
                       "norm": ["l2", "l2", "linf", "linf", "linf", "linf", "l2"], "sigma": -1.0,
                       "radius": [0.6, 0.001, 0.02, 0.0001, 0.1, 0.2, 9.0], "clean_correct": 1})
    attacked = pd.DataFrame({"example": [7, 8], "attack": "pgd", "norm": "linf", "strength": 0.1, "loss": "ce64",
                             "clean_correct": [1, 1], "robust": [1.0, 0.0], "broken": [0.0, 1.0],
                             "example_seed": 0, "label": [1, 2], "seed": 0})
    record = RunRecord(tmp_path, "r", None, {}, {"certify.csv": cert, "certify_examples.csv": ex,
                                                  "attack_examples.csv": attacked})
    got = certified_examples(record).set_index(["norm", "strength", "example"])["certified"].to_dict()
    # l2: example 7 at 0.6 (>= 0.5), example 8 at 0.001 only; linf: best of 0.02 (lipschitz) and 0.1 / 0.2 (ibp:
    # the largest eps of its grid it certifies, so it covers that eps itself)
    assert got == {("l2", 0.0, 7): 1.0, ("l2", 0.5, 7): 1.0, ("l2", 0.0, 8): 1.0, ("l2", 0.5, 8): 0.0,
                   ("linf", 0.0, 7): 1.0, ("linf", 0.1, 7): 1.0, ("linf", 0.0, 8): 1.0, ("linf", 0.1, 8): 1.0}
    values = example_values(record)
    assert set(values.loc[values["metric"] == "certified_acc", "strength"]) == {"l2 0", "l2 0.5", "linf 0", "linf 0.1"}


@pytest.mark.slow
def test_a_new_ibp_grid_never_lowers_what_an_earlier_grid_certified(run, tmp_path):
    """IBP run with a fine grid of small eps, then with one large eps: the per-example radius keeps the
    larger, so the certified share (best of Lipschitz and IBP) at each earlier eps stays at least IBP's
    own row there (the review found it fell to 0 after the second call)."""
    import shutil

    from jrbench.analysis.results import collect

    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("certify*.csv"))
    small = [0.0, 1e-6, 1e-4]
    certify_run(copy, CertifyConfig(lipschitz=False, ibp=True, eps_linf=small, eps_l2=[0.0]), n_examples=40,
                device="cpu")
    first = pd.read_csv(copy / CERTIFY_EXAMPLES_CSV)
    certify_run(copy, CertifyConfig(lipschitz=False, ibp=True, eps_linf=[0.3], eps_l2=[0.0]), n_examples=40,
                device="cpu")
    second = pd.read_csv(copy / CERTIFY_EXAMPLES_CSV)
    ibp = first.merge(second, on=["example", "method", "norm", "sigma"], suffixes=("_first", "_second"))
    assert len(ibp) == 40 and (ibp["radius_second"] >= ibp["radius_first"]).all()
    assert (ibp["radius_first"] > 0).any()  # the check is not vacuous: something was certified at 1e-6
    summary = collect([tmp_path]).summary
    rows = summary[summary["table"] == "certify"]
    for eps in small[1:]:
        own = rows[(rows["attack"] == "ibp") & (rows["norm"] == "linf") & (rows["strength"] == eps)]
        best = rows[(rows["attack"] == "certified") & (rows["norm"] == "linf") & (rows["strength"] == eps)]
        assert len(own) == 1 and len(best) == 1 and best["value"].iloc[0] >= own["value"].iloc[0]
