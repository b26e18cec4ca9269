"""Outside models (issue 10 §1): torch.export programs and module:function factories through
`jrbench attack`, `margins` and `report`, and attack_model / margins_model from Python."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from conftest import tiny_config, tiny_data
from jrbench.cli import app
from jrbench.config import DataConfig
from jrbench.data.datasets import load_data, write_idx_folder
from jrbench.errors import UserError

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the factories are imported by module name, as a user's would be
    sys.path.insert(0, str(HERE))
import outside_factory  # noqa: E402

runner = CliRunner()
MEAN, STD = 0.2, 0.4
ATTACK = ["--noise", "--sigma", "0.3", "--draws", "2", "--pgd", "--norm", "linf", "--eps", "0.05",
          "--steps", "2", "--n-examples", "24", "--noise-examples", "24", "--device", "cpu"]
MARGINS = ["--n-examples", "6", "--directions", "2", "--device", "cpu"]


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result, result.output + (result.stderr if result.stderr_bytes is not None else "")


def export(module: nn.Module, path: Path) -> Path:
    x = torch.rand(4, 1, 28, 28)
    torch.export.save(torch.export.export(module.eval(), (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)),
                      str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Nearest-centroid weights for synth-digits, saved as a state dict and as .pt2 programs: the
    pixel model, and the same classifier expecting z = (x - MEAN) / STD (weights file and .pt2
    with the normalization built in)."""
    root = tmp_path_factory.mktemp("outside")
    train = load_data(DataConfig("synth-digits")).train
    x = train.images[:2000].float().div(255).flatten(1)
    y = train.labels[:2000]
    mu = torch.stack([x[y == c].mean(0) for c in range(10)])
    weight, bias = mu, -0.5 * (mu ** 2).sum(1)
    net = outside_factory.make_model()
    with torch.no_grad():
        net[1].weight.copy_(weight)
        net[1].bias.copy_(bias)
    torch.save(net.state_dict(), root / "centroid.pt")
    export(net, root / "centroid.pt2")
    znet = outside_factory.make_model()  # the same function of x, written on z: x = STD z + MEAN
    with torch.no_grad():
        znet[1].weight.copy_(weight * STD)
        znet[1].bias.copy_(bias + weight.sum(1) * MEAN)
    torch.save(znet.state_dict(), root / "zcentroid.pt")
    export(nn.Sequential(outside_factory.Norm(MEAN, STD), znet), root / "builtin.pt2")
    return root


@pytest.mark.slow
def test_pt2_and_factory_with_weights_give_the_same_tables_and_provenance(files, tmp_path):
    outs = {"pt2": tmp_path / "pt2", "factory": tmp_path / "factory"}
    sources = {"pt2": [files / "centroid.pt2"],
               "factory": ["outside_factory:make_model", "--weights", files / "centroid.pt"]}
    for kind, out in outs.items():
        for command, opts in (("attack", ATTACK), ("margins", MARGINS)):
            result, text = cli(command, *sources[kind], "--dataset", "synth-digits", "--out", out, *opts)
            assert result.exit_code == 0, text
        assert {"model.json", "env.json", "attacks.csv", "attack_examples.csv", "margins.csv",
                "jacobian.csv"} <= {p.name for p in out.iterdir()}
    assert "only the pixel-space" in text  # no --input-normalized: no z space, and the CLI says so
    pt2 = json.loads((outs["pt2"] / "model.json").read_text())
    fac = json.loads((outs["factory"] / "model.json").read_text())
    assert pt2["kind"] == "torch.export" and pt2["dataset"] == "synth-digits" and pt2["input_normalized"] is None
    assert pt2["sha256"] == hashlib.sha256((files / "centroid.pt2").read_bytes()).hexdigest()
    assert fac["factory"] == "outside_factory:make_model"
    assert fac["weights_sha256"] == hashlib.sha256((files / "centroid.pt").read_bytes()).hexdigest()
    a, b = (pd.read_csv(outs[k] / "attacks.csv") for k in ("pt2", "factory"))
    assert a["accuracy"].tolist() == b["accuracy"].tolist() and len(a) == 2
    assert (a["regularizers"] == "outside").all() and (a["run_id"] == "pt2").all()
    assert 0.5 < a.loc[a["attack"] == "noise", "accuracy"].iloc[0] <= 1  # a real classifier, not chance
    ea, eb = (pd.read_csv(outs[k] / "attack_examples.csv") for k in ("pt2", "factory"))
    assert ea["robust"].tolist() == eb["robust"].tolist() and len(ea) == 2 * 24
    ma, mb = (pd.read_csv(outs[k] / "margins.csv") for k in ("pt2", "factory"))
    pd.testing.assert_series_equal(ma["margin_adv_l2"], mb["margin_adv_l2"], rtol=1e-4)
    jac = pd.read_csv(outs["pt2"] / "jacobian.csv")
    assert jac["frobenius_z"].isna().all() and (jac["frobenius_pixel"] > 0).all()
    # for a linear model the pixel Jacobian is its weight matrix, whatever the example
    assert jac["frobenius_pixel"].iloc[0] == pytest.approx(float(torch.load(files / "centroid.pt")["1.weight"].norm()),
                                                           rel=1e-4)


def test_input_normalized_gives_the_accuracies_of_the_built_in_normalization(files, tmp_path):
    normalized, builtin = tmp_path / "normalized", tmp_path / "builtin"
    result, text = cli("attack", "outside_factory:make_model", "--weights", files / "zcentroid.pt",
                       "--input-normalized", f"{MEAN},{STD}", "--dataset", "synth-digits", "--out", normalized, *ATTACK)
    assert result.exit_code == 0, text
    result, text = cli("attack", files / "builtin.pt2", "--dataset", "synth-digits", "--out", builtin, *ATTACK)
    assert result.exit_code == 0, text
    a, b = pd.read_csv(normalized / "attacks.csv"), pd.read_csv(builtin / "attacks.csv")
    assert a["accuracy"].tolist() == b["accuracy"].tolist()
    assert json.loads((normalized / "model.json").read_text())["input_normalized"] == {"mean": [MEAN], "std": [STD]}
    result, text = cli("margins", "outside_factory:make_model", "--weights", files / "zcentroid.pt",
                       "--input-normalized", f"{MEAN},{STD}", "--dataset", "synth-digits", "--out", normalized, *MARGINS)
    assert result.exit_code == 0, text
    jac = pd.read_csv(normalized / "jacobian.csv")  # J_z = J_x * STD
    assert (jac["frobenius_z"] / jac["frobenius_pixel"]).to_numpy() == pytest.approx(STD, rel=1e-4)


def test_python_api_takes_any_module(files, tmp_path):
    from jrbench import attack_model, margins_model
    from jrbench.evaluate.attacks import AttackConfig

    net = outside_factory.make_model()
    net.load_state_dict(torch.load(files / "centroid.pt"))
    config = AttackConfig(noise=True, pgd=False, fgsm=False, sigmas=[0.3], draws=2, noise_examples=16)
    result = attack_model(net, "synth-digits", config, n_examples=16, device="cpu")
    assert result.path is None and len(result.table) == 1 and len(result.examples) == 16
    out = tmp_path / "api"
    margins = margins_model(net, "synth-digits", n_examples=4, n_directions=2, device="cpu", out=out)
    assert len(margins.margins) == 4 and margins.notes and margins.jacobian["frobenius_z"].isna().all()
    info = json.loads((out / "model.json").read_text())
    assert info["kind"] == "python" and info["class"].endswith("Sequential")
    with_std = margins_model(net, "synth-digits", n_examples=4, n_directions=2, device="cpu", input_std=[0.5])
    assert (with_std.jacobian["frobenius_z"] / with_std.jacobian["frobenius_pixel"]).to_numpy() == pytest.approx(0.5)


@pytest.mark.slow
def test_report_puts_an_outside_model_beside_a_trained_run(tmp_path):
    from jrbench.evaluate.attacks import AttackConfig
    from jrbench.evaluate.api import attack_run
    from jrbench.training.loop import train

    data = tiny_data(128, 64)
    data_dir = write_idx_folder(tmp_path / "data", data.train, data.test)
    config = tiny_config(epochs=1)
    config.data.data_dir = str(data_dir)
    train(config, tmp_path / "runs" / "plain", data=data)
    attacks = AttackConfig(noise=True, pgd=False, fgsm=False, sigmas=[0.5], draws=2)
    attack_run(tmp_path / "runs" / "plain", attacks, n_examples=16, device="cpu")
    export(outside_factory.make_model(), tmp_path / "mine.pt2")
    result, text = cli("attack", tmp_path / "mine.pt2", "--dataset", "mnist", "--data-dir", data_dir,
                       "--noise", "--sigma", "0.5", "--draws", "2", "--n-examples", "16", "--device", "cpu",
                       "--out", tmp_path / "models" / "mine")
    assert result.exit_code == 0, text
    result, text = cli("report", tmp_path / "runs", tmp_path / "models", "--out", tmp_path / "report", "--no-cells")
    assert result.exit_code == 0, text
    summary = pd.read_csv(tmp_path / "report" / "summary.csv").merge(
        pd.read_csv(tmp_path / "report" / "runs.csv"), on=["run_id", "group_id", "group_label"])
    mine = summary[summary["run_id"] == "mine"]
    assert set(summary["run_id"]) == {"plain", "mine"} and len(mine)
    assert (mine["group_label"] == "mine").all() and (mine["regularizers"] == "outside").all()
    assert mine["seed"].isna().all() and mine["epochs"].isna().all()  # training columns are gaps
    assert "mine: metrics.csv: an outside model" in text
    # its clean accuracy on the whole test set: written by `jrbench attack`, shown in the report
    clean = mine[(mine["table"] == "metrics") & (mine["quantity"] == "test_acc")]["value"]
    net = outside_factory.make_model().eval()
    with torch.no_grad():
        expected = (net(data.test.images.float() / 255).argmax(1) == data.test.labels).double().mean().item()
    assert len(clean) == 1 and clean.iloc[0] == pytest.approx(expected)
    assert pd.read_csv(tmp_path / "models" / "mine" / "metrics.csv")["test_examples"].tolist() == [64]
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Outside models" in report and hashlib.sha256((tmp_path / "mine.pt2").read_bytes()).hexdigest()[:16] in report
    result, text = cli("report", tmp_path / "mine.pt2", "--out", tmp_path / "r2")
    assert result.exit_code == 2 and "attack it first" in text


def _bad_files(files, tmp_path):
    torch.save({"1.weight": torch.zeros(3, 3)}, tmp_path / "bad_weights.pt")
    torch.save(outside_factory.make_model().state_dict(), tmp_path / "state_dict.pt2")
    (tmp_path / "junk.pt2").write_bytes(b"not a zip")


BAD = [
    (["outside_factory:make_wrong_shape"], "not a classifier for synth-digits"),
    (["outside_factory:make_nan"], "non-finite logits"),
    (["no_such_module_xyz:make"], "cannot be imported"),
    (["outside_factory:missing"], "has no function 'missing'"),
    (["outside_factory:make_raising"], "raised RuntimeError: no GPU driver found"),
    (["outside_factory:make_not_a_module"], "not a torch nn.Module"),
    (["outside_factory:make_model", "--weights", "{tmp}/bad_weights.pt"], "does not fit the model"),
    (["{tmp}/state_dict.pt2"], "not a torch.export program (it looks like a torch.save file"),
    (["{tmp}/junk.pt2"], "not a torch.export program"),
    (["{tmp}/missing.pt2"], "does not exist"),
    (["outside_factory:make_model", "--input-normalized", "0.1,0.2,0.3"], "has 3 numbers"),
]


@pytest.mark.parametrize("command", ["attack", "margins"])
@pytest.mark.parametrize("args, needle", BAD)
def test_a_model_that_is_not_a_classifier_exits_2_with_a_message(files, tmp_path, command, args, needle):
    _bad_files(files, tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result, text = cli(command, *args, "--dataset", "synth-digits", "--out", tmp_path / "out", "--device", "cpu",
                       "--n-examples", "4")
    assert result.exit_code == 2, text
    assert needle in " ".join(text.split()) and "Traceback" not in text
    assert not (tmp_path / "out" / "attacks.csv").exists() and not (tmp_path / "out" / "margins.csv").exists()


def test_dataset_is_required_and_outside_options_need_an_outside_model(files, tmp_path):
    result, text = cli("attack", files / "centroid.pt2", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "--dataset" in text
    (tmp_path / "run").mkdir()
    result, text = cli("margins", tmp_path / "run", "--dataset", "mnist")
    assert result.exit_code == 2 and "--dataset is for outside models" in text
    result, text = cli("attack", files / "centroid.pt", "--dataset", "mnist")  # a state dict, not a model
    assert result.exit_code == 2 and "is a file" in text and "--weights" in text
    result, text = cli("attack", files / "centroid.pt")
    assert result.exit_code == 2 and "is a file, not a run directory" in text and "--weights" in text


def test_a_folder_of_another_model_is_refused(files, tmp_path):
    out = tmp_path / "m"
    assert cli("attack", files / "centroid.pt2", "--dataset", "synth-digits", "--out", out, *ATTACK)[0].exit_code == 0
    result, text = cli("attack", files / "builtin.pt2", "--dataset", "synth-digits", "--out", out, *ATTACK)
    assert result.exit_code == 2 and "another model" in text


def test_parse_normalization():
    from jrbench.evaluate.outside import parse_normalization

    assert parse_normalization("0.1307,0.3081", 1) == ([0.1307], [0.3081])
    assert parse_normalization("0.5,0.25", 3) == ([0.5] * 3, [0.25] * 3)
    assert parse_normalization("0.49,0.48,0.45,0.25,0.24,0.26", 3) == ([0.49, 0.48, 0.45], [0.25, 0.24, 0.26])
    for bad in ("0.5,0", "a,b", "0.1,0.2,0.3,0.4"):
        with pytest.raises(UserError):
            parse_normalization(bad, 3)


def test_gap_hints_repeat_every_argument_of_the_outside_model(tmp_path):
    """The suggested command names the weights and the normalization, so the folder accepts it."""
    from jrbench.analysis.run_records import outside_args

    info = {"kind": "factory", "factory": "pkg.mod:make", "weights": "/w/net.pt", "dataset": "mnist",
            "input_normalized": {"mean": [0.1307], "std": [0.3081]}}
    assert outside_args(info, tmp_path / "m") == (
        f"pkg.mod:make --weights /w/net.pt --dataset mnist --input-normalized 0.1307,0.3081 --out {tmp_path / 'm'}")
    plain = {"kind": "torch.export", "file": "/x/net.pt2", "dataset": "cifar10", "input_normalized": None}
    assert outside_args(plain, tmp_path) == f"/x/net.pt2 --dataset cifar10 --out {tmp_path}"
