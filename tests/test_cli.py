"""The command line: thin commands, clear errors with exit code 2, no tracebacks."""
import json

import pandas as pd

import pytest
from typer.testing import CliRunner

from jrbench.cli import app

runner = CliRunner()


def _run(*args):
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result


@pytest.mark.parametrize("args, needle", [
    (["--reg", "jacobain"], "Did you mean 'jacobian'"),
    (["--model", "lenett"], "Did you mean 'lenet'"),
    (["--dataset", "fasion-mnist"], "Did you mean 'fashion-mnist'"),
    (["--lambda-jr", "-1"], "--lambda-jr must be zero or positive"),
    (["--n-proj", "0"], "--n-proj must be"),
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--epochs", "-2"], "--epochs must be positive"),
    (["--reg", "none", "--reg", "l2"], "cannot be combined"),
    (["--momentum", "2"], "--momentum must be in [0, 1)"),
])
def test_bad_train_options_exit_2_with_a_message(args, needle, tmp_path):
    result = _run("train", "--out", str(tmp_path / "run"), *args)
    assert result.exit_code == 2 and needle in result.output, result.output
    assert not (tmp_path / "run").exists()  # nothing written


def test_missing_mnist_exits_2_without_writing(tmp_path, monkeypatch):
    import urllib.error
    import torchvision.datasets.utils as tv_utils

    def no_network(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tv_utils.urllib.request, "urlopen", no_network)
    result = _run("train", "--dataset", "mnist", "--data-dir", str(tmp_path / "data"),
                  "--out", str(tmp_path / "run"))
    assert result.exit_code == 2 and "could not be downloaded" in result.output
    assert not (tmp_path / "run").exists()


def test_train_synth_digits_end_to_end_then_resume_is_a_no_op(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--train-subset", "600", "--test-subset", "200", "--epochs", "1",
            "--reg", "jacobian", "--reg", "l2", "--device", "cpu", "--out", str(out)]
    result = _run(*args)
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output and (out / "model.pt").is_file()
    assert json.loads((out / "config.json").read_text())["reg"]["names"] == ["jacobian", "l2"]
    again = _run(*args)
    assert again.exit_code == 2 and "--resume" in again.output
    model_before, metrics_before = (out / "model.pt").read_bytes(), (out / "metrics.csv").read_text()
    resumed = _run(*args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert (out / "model.pt").read_bytes() == model_before and (out / "metrics.csv").read_text() == metrics_before

    # attack / margins: every run directory is checked before any table is written
    missing = str(tmp_path / "no-such-run")
    for command in (["attack", str(out), missing, "--noise", "--sigma", "0.1", "--n-examples", "20"],
                    ["margins", str(out), missing, "--n-examples", "10"]):
        bad = _run(*command, "--device", "cpu")
        assert bad.exit_code == 2 and "no-such-run" in bad.output and "Traceback" not in bad.output, bad.output
    for bad_option in (["--noise", "--sigma", "-0.1"], ["--pgd", "--norm", "l3"], ["--n-examples", "100000"]):
        bad = _run("attack", str(out), *bad_option, "--device", "cpu")
        assert bad.exit_code == 2 and "Traceback" not in bad.output, bad.output
    assert not (out / "attacks.csv").exists() and not (out / "margins.csv").exists()

    # the success paths
    ok = _run("attack", str(out), "--noise", "--sigma", "0.3", "--pgd", "--norm", "linf", "--eps", "0.1",
              "--steps", "5", "--n-examples", "40", "--device", "cpu")
    assert ok.exit_code == 0, ok.output
    attacks = pd.read_csv(out / "attacks.csv")
    assert {("noise", 0.3), ("pgd", 0.1)} <= set(zip(attacks["attack"], attacks["strength"]))
    assert ((attacks["accuracy"] >= 0) & (attacks["accuracy"] <= 1)).all()
    ok = _run("margins", str(out), "--n-examples", "10", "--directions", "2", "--device", "cpu")
    assert ok.exit_code == 0, ok.output
    margins = pd.read_csv(out / "margins.csv")
    assert len(margins) == 10 and (margins["margin_random_min"] > 0).all()


def test_list_shows_registries():
    result = _run("list")
    assert result.exit_code == 0
    for name in ["synth-digits", "fashion-mnist", "lenet", "ddnet", "resnet18", "input-grad"]:
        assert name in result.output


def test_ctrl_c_names_the_command_that_resumes(monkeypatch):
    from jrbench import cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_training", interrupted)
    monkeypatch.setattr(cli.sys, "argv", ["jrbench", "train", "--epochs", "1", "--out", "somewhere"])
    result = _run("train", "--epochs", "1", "--out", "somewhere")
    assert result.exit_code == 130
    assert "jrbench train --epochs 1 --out somewhere --resume" in result.output.replace("\n", " ")
    assert "jrbench sweep s.toml" in cli.resume_hint("sweep_command", ["sweep", "s.toml"])
