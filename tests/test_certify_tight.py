"""jrbench certify --crown / --alpha-crown on a trained run: the per-example-and-eps table, the skips
(attacked, covered by a cheaper certificate, not certified at a smaller eps) and what they may
never hide, soundness against attacks, the windowed and dense backward passes agree, and the
command's and spec's errors."""
import math

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from jrbench.certify import crown
from jrbench.certify.api import CERTIFY_CSV, CERTIFY_EXAMPLES_CSV, CertifyConfig, certify_model, soundness_violations
from jrbench.certify.tight import BOUNDS_CSV
from jrbench.cli import app
from conftest import block_split
from jrbench.data.datasets import DATASETS, DIGITS, MNIST_LIKE, DatasetInfo, DatasetSpec
from jrbench.errors import UserError
from jrbench.evaluate.api import attack_model
from jrbench.models.architectures import build_model
from jrbench.evaluate.attack_config import AttackConfig

EPS_LINF = [0.0, 0.01, 0.05, 0.3]
EPS_L2 = [0.0, 0.2, 3.0]
N = 8
STATUSES = {"misclassified", "skipped-attacked", "skipped-certified", "not-tried", "certified", "uncertified"}


@pytest.fixture(scope="module")
def blocks():
    """A registered data set 'blocks' (28x28 grey, 10 classes: a bright 7x7 block whose place is the
    class, on noise), and a LeNet trained on it by a plain Adam loop (seconds): robust at small
    radii, broken at large ones."""
    g = torch.Generator().manual_seed(0)
    split = lambda n: block_split(n, g, noise=60, block=200, labels=torch.arange(n) % 10)  # noqa: E731
    train_split, test_split = split(300), split(60)
    info = DatasetInfo("blocks", (1, 28, 28), 10, (0.2,), (0.3,), DIGITS, MNIST_LIKE)
    torch.manual_seed(0)
    model = build_model("lenet", (1, 28, 28), 10, [0.2], [0.3])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = train_split.images.float() / 255, train_split.labels
    for step in range(120):
        idx = torch.arange(step * 30, step * 30 + 30) % len(x)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(DATASETS._entries, "blocks", DatasetSpec(info, lambda data_dir: (train_split, test_split)))
        yield model.eval()


@pytest.fixture(scope="module")
def run(tmp_path_factory, blocks):
    """A result folder of the model with PGD on both norms (the attacks the skips read)."""
    out = tmp_path_factory.mktemp("tight") / "blocks-lenet"
    attacks = AttackConfig(noise=False, pgd=True, fgsm=False, norms=("linf", "l2"), eps_linf=EPS_LINF,
                           eps_l2=EPS_L2, steps=10, restarts=1)
    attacked = attack_model(blocks, "blocks", attacks, n_examples=N, example_seed=1, device="cpu", out=out)
    return out, attacked


@pytest.fixture(scope="module")
def skipped(run, blocks):
    path, _ = run
    config = CertifyConfig(lipschitz=True, ibp=True, crown=True, alpha_crown=True, alpha_steps=5,
                           eps_linf=EPS_LINF, eps_l2=EPS_L2)
    return certify_model(blocks, "blocks", config, n_examples=N, example_seed=1, device="cpu", out=path)


@pytest.fixture(scope="module")
def unskipped(run, blocks):
    path, _ = run
    config = CertifyConfig(lipschitz=False, ibp=True, crown=True, skip=False, eps_linf=EPS_LINF, eps_l2=EPS_L2)
    return certify_model(blocks, "blocks", config, n_examples=N, example_seed=1, device="cpu")


@pytest.mark.slow
def test_one_row_per_example_method_norm_and_eps(run, skipped):
    path, _ = run
    bounds = pd.read_csv(path / BOUNDS_CSV)
    sizes = bounds.groupby(["method", "norm", "eps"]).size()
    assert set(sizes) == {N} and len(sizes) == 2 * (len(EPS_LINF) + len(EPS_L2))
    assert set(bounds["status"]) <= STATUSES
    table = pd.read_csv(path / CERTIFY_CSV)
    for method in ("crown", "alpha-crown"):
        assert len(table[table["method"] == method]) == len(EPS_LINF) + len(EPS_L2)
    # a row's certified share is what its examples' statuses say
    for r in table[table["method"].isin(["crown", "alpha-crown"])].itertuples():
        sel = bounds[(bounds["method"] == r.method) & (bounds["norm"] == r.norm) & (bounds["eps"] == r.strength)]
        assert r.certified_acc == pytest.approx(sel["status"].isin(["certified", "skipped-certified"]).mean())
        assert r.n_skipped_attacked == (sel["status"] == "skipped-attacked").sum()
    # the per-example radius is the largest eps certified
    ex = pd.read_csv(path / CERTIFY_EXAMPLES_CSV)
    crown_ex = ex[ex["method"] == "crown"].set_index(["norm", "example"])["radius"]
    good = bounds[(bounds["method"] == "crown") & bounds["status"].isin(["certified", "skipped-certified"])]
    expected = good.groupby(["norm", "example"])["eps"].max()
    assert (crown_ex[expected.index] == expected).all()
    # margins' lower bounds exist exactly where CROWN ran
    ran = bounds["status"].isin(["certified", "uncertified"])
    assert bounds.loc[ran, "margin_lower"].notna().all() and bounds.loc[~ran, "margin_lower"].isna().all()
    assert ((bounds.loc[ran, "margin_lower"] > 0) == (bounds.loc[ran, "status"] == "certified")).all()


@pytest.mark.slow
def test_skips_hide_nothing_that_running_would_have_found(skipped, unskipped):
    """Without skips, every example that an attack broke is uncertified (the skip only saved work),
    and with skips the certified share is at least the unskipped one's (a cheaper certificate
    counts); the skips happened (the test is not vacuous)."""
    a, b = skipped.bounds, unskipped.bounds
    a, b = a[a["method"] == "crown"], b[b["method"] == "crown"]
    assert (a["status"] == "skipped-attacked").sum() >= 2 and (a["status"] == "skipped-certified").sum() >= 3
    merged = a.merge(b, on=["example", "norm", "eps"], suffixes=("", "_all"))
    assert (merged.loc[merged["status"] == "skipped-attacked", "status_all"] == "uncertified").all()
    assert set(b["status"]) <= {"certified", "uncertified", "misclassified"}
    share = lambda t: t.groupby(["norm", "eps"])["status"].apply(  # noqa: E731
        lambda s: s.isin(["certified", "skipped-certified"]).mean())
    assert (share(a) >= share(b) - 1e-12).all()


@pytest.mark.slow
def test_no_attack_breaks_a_crown_certified_example(run, unskipped):
    _, attacked = run
    ex = unskipped.examples
    cert = ex[ex["method"] == "crown"]
    assert (cert["radius"] > 0).sum() >= 3
    assert soundness_violations(ex, attacked.examples).empty


@pytest.mark.slow
def test_windowed_and_dense_backward_passes_agree(blocks):
    from jrbench.data.datasets import load_data, to_pixels
    from jrbench.config import DataConfig
    from jrbench.evaluate.api import fixed_examples

    images, labels, _ = fixed_examples(load_data(DataConfig("blocks")), 6, 0)
    x = to_pixels(images, torch.device("cpu"))
    try:
        for norm, eps in (("linf", 0.05), ("l2", 0.5)):
            crown.PATCHES = True
            windowed = crown.margin_lower_bounds(blocks, x, labels, eps, norm)
            crown.PATCHES = False
            dense = crown.margin_lower_bounds(blocks, x, labels, eps, norm)
            finite = torch.isfinite(dense)
            assert torch.allclose(windowed[finite], dense[finite], rtol=1e-9, atol=1e-9)
    finally:
        crown.PATCHES = True


@pytest.mark.slow
def test_cli_runs_crown_and_refuses_bad_settings(tmp_path):
    """The command on an outside model (a factory of tests/outside_factory.py) with --crown, and its
    refusals of bad settings (exit 2, the flag named, no traceback)."""
    result = CliRunner().invoke(app, ["certify", "outside_factory:make_model", "--dataset", "synth-digits",
                                      "--crown", "--eps-linf", "0.01", "--eps-l2", "0.1", "--n-examples", "4",
                                      "--out", str(tmp_path / "m"), "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "crown" in result.output and "certify_bounds.csv" in result.output
    for args, word in ((["--crown", "--timeout", "0"], "--timeout"), (["--alpha-crown", "--alpha-steps", "0"],
                                                                      "--alpha-steps")):
        bad = CliRunner().invoke(app, ["certify", "outside_factory:make_model", "--dataset", "synth-digits", *args,
                                       "--out", str(tmp_path / "m"), "--device", "cpu", "--quiet"])
        assert bad.exit_code == 2 and word in bad.output and "Traceback" not in bad.output


def test_spec_takes_the_new_keys_and_names_a_bad_one(tmp_path):
    from jrbench.study.spec import load_spec

    body = ('name = "t"\n[base]\ndataset = "synth-digits"\n[grid]\nseed = [0]\n'
            '[certify]\ncrown = true\nalpha_crown = true\ncomplete = true\ntimeout = 5\nskip = false\n')
    (tmp_path / "ok.toml").write_text(body)
    spec = load_spec(tmp_path / "ok.toml")
    assert spec.certify.crown is True and spec.certify.skip is False and not spec.certify.lipschitz
    (tmp_path / "bad.toml").write_text(body.replace("crown = true\nalpha", 'crown = "yes"\nalpha'))
    with pytest.raises(UserError, match="crown"):
        load_spec(tmp_path / "bad.toml")
    with pytest.raises(UserError, match="timeout"):
        CertifyConfig(crown=True, timeout=-1)
    assert not math.isnan(CertifyConfig(crown=True).timeout)


def test_a_lipschitz_radius_covers_the_open_ball_only_and_eps_zero_needs_a_strict_margin():
    """Found by review: a Lipschitz radius r certifies the open ball, so at eps = r CROWN must run
    (here the point at distance r ties); and at eps 0 a tie is not counted as certified."""
    import numpy as np
    from torch import nn
    from jrbench.certify.tight import run_tight
    from jrbench.models.architectures import PixelClassifier

    lin = nn.Linear(1, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0], [0.0]]))
        lin.bias.copy_(torch.tensor([0.0, 0.25]))
    model = PixelClassifier(nn.Sequential(nn.Flatten(), lin), (1, 1, 1), 2, "t").eval()
    x, y = torch.full((1, 1, 1, 1), 0.5), torch.tensor([0])
    config = CertifyConfig(lipschitz=False, crown=True, eps_linf=[0.0, 0.25], eps_l2=[0.25])
    radius = {"closed": np.zeros(1), "open": np.array([0.25])}  # the margin 0.25 over slope 1
    never = {"linf": np.array([math.inf]), "l2": np.array([math.inf])}
    _, _, bounds, _ = run_tight("crown", model, x, y, model(x).argmax(1), config,
                                {"linf": radius, "l2": radius}, never, lambda *a: None, torch.tensor([0]))
    at_r = pd.concat(bounds).set_index(["norm", "eps"])["status"]
    assert at_r[("linf", 0.25)] == "uncertified" and at_r[("l2", 0.25)] == "uncertified"
    assert at_r[("linf", 0.0)] == "skipped-certified"  # the open ball of radius 0.25 holds eps 0
    with torch.no_grad():
        lin.bias.zero_()
        lin.weight.zero_()  # every logit 0: a tie, never certified
    zero = {"closed": np.zeros(1), "open": np.zeros(1)}
    _, _, bounds, _ = run_tight("crown", model, x, y, model(x).argmax(1), config,
                                {"linf": zero, "l2": zero}, never, lambda *a: None, torch.tensor([0]))
    assert pd.concat(bounds).set_index(["norm", "eps"])["status"][("linf", 0.0)] == "uncertified"
