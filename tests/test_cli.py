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


@pytest.mark.slow
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
    attack = ["attack", str(out), "--noise", "--sigma", "0.3", "--pgd", "--norm", "linf", "--eps", "0.1",
              "--steps", "5", "--n-examples", "40", "--example-seed", "3", "--device", "cpu"]
    ok = _run(*attack)
    assert ok.exit_code == 0, ok.output
    assert "run: attacks" in ok.output and "2/2" in ok.output and "pgd linf eps=0.1" in ok.output  # one step per attack and strength
    attacks = pd.read_csv(out / "attacks.csv")
    assert {("noise", 0.3), ("pgd", 0.1)} <= set(zip(attacks["attack"], attacks["strength"]))
    assert ((attacks["accuracy"] >= 0) & (attacks["accuracy"] <= 1)).all()
    quiet = _run(*attack, "--quiet")
    assert quiet.exit_code == 0 and "run: attacks" not in quiet.output and "accuracy under attack" in quiet.output
    ok = _run("margins", str(out), "--n-examples", "40", "--example-seed", "3", "--directions", "2", "--device", "cpu")
    assert ok.exit_code == 0, ok.output
    assert "Jacobian spectra" in ok.output  # the progress bar's last label
    margins = pd.read_csv(out / "margins.csv")
    assert (margins["margin_random_min"] > 0).all()
    # the same examples: margins measures the correctly classified ones among those attack attacked
    examples = pd.read_csv(out / "attack_examples.csv")
    examples = examples[(examples["attack"] == "pgd") & (examples["example_seed"] == 3)]
    assert examples["example"].nunique() == 40
    assert sorted(margins["index"]) == sorted(examples.loc[examples["clean_correct"].astype(bool), "example"])
    quiet = _run("margins", str(out), "--n-examples", "40", "--example-seed", "3", "--directions", "2",
                 "--device", "cpu", "--quiet")
    assert quiet.exit_code == 0 and "Jacobian spectra" not in quiet.output and "written:" in quiet.output


def test_list_shows_registries():
    result = _run("list")
    assert result.exit_code == 0
    for name in ["synth-digits", "fashion-mnist", "lenet", "ddnet", "resnet18", "input-grad"]:
        assert name in result.output


def test_ctrl_c_names_the_command_that_resumes(monkeypatch):
    from jrbench.cli import common as cli
    from jrbench.cli import train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "run_training", interrupted)
    monkeypatch.setattr(cli.sys, "argv", ["jrbench", "train", "--epochs", "1", "--out", "somewhere"])
    result = _run("train", "--epochs", "1", "--out", "somewhere")
    assert result.exit_code == 130
    assert "jrbench train --epochs 1 --out somewhere --resume" in result.output.replace("\n", " ")
    assert "jrbench sweep s.toml" in cli.resume_hint("sweep_command", ["sweep", "s.toml"])


@pytest.mark.parametrize("command, flag, choices", [
    ("train", "--schedule", ["none", "step", "cosine"]),
    ("train", "--jr-backend", ["auto", "tape", "autograd"]),
    ("train", "--jr-estimator", ["vjp", "jvp"]),
    ("train", "--device", ["auto", "cpu", "cuda", "cuda:N"]),
    ("attack", "--loss", ["ce64", "ce32"]),
    ("attack", "--norm", ["linf", "l2"]),
    ("overhead", "--jr-backend", ["auto", "tape", "autograd"]),
    ("sweep", "--engine", ["local", "ray"]),
])
def test_fixed_choices_are_listed_in_help_and_a_wrong_one_exits_2(command, flag, choices, tmp_path):
    import re

    help_text = re.sub(r"\s+", "", runner.invoke(app, [command, "--help"], env={"COLUMNS": "250"}).output)
    assert "|".join(choices) in help_text, help_text  # <a|b> or, repeatable, <list[a|b]>
    args = {"train": ["--out", str(tmp_path / "run")], "attack": ["somewhere"], "overhead": ["--out", str(tmp_path / "o.csv")],
            "sweep": ["s.toml"]}[command]
    bad = _run(command, *args, flag, "nonsense")
    assert bad.exit_code == 2 and "nonsense" in bad.output, bad.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "o.csv").exists()


def test_device_accepts_cuda_n():
    from jrbench.cli.common import check_device as _check_device

    assert _check_device("cuda:1") == "cuda:1"


def _tiny_problem():
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.rand(24, 1, 4, 4)
    y = model(x).argmax(1)  # every example correctly classified
    return model, x, y


def _check_calls(calls):
    dones = [done for done, _, _ in calls]
    totals = {total for _, total, _ in calls}
    assert len(totals) == 1 and dones == sorted(dones) and len(set(dones)) == len(dones)
    assert dones[-1] == totals.pop() and len(dones) >= 2


def test_attack_progress_callback_counts_attacks_and_strengths():
    from jrbench.evaluate.attacks import AttackConfig, run_attacks

    model, x, y = _tiny_problem()
    calls = []
    config = AttackConfig(noise=True, pgd=True, fgsm=True, sigmas=[0.1, 0.2], draws=2, norms=("linf", "l2"),
                          eps_linf=[0.0, 0.1], eps_l2=[0.5], steps=2, batch_size=10)
    run_attacks(model, x, y, config, on_progress=lambda *a: calls.append(a))
    _check_calls(calls)
    assert calls[-1][1] == 2 + 2 + 1 + 2  # noise x2, pgd linf x2, pgd l2 x1, fgsm x2


def test_margins_progress_callback_counts_batches():
    from jrbench.evaluate.margins import measure_margins

    model, x, y = _tiny_problem()
    calls = []
    measure_margins(model, x, y, n_directions=2, batch_size=10, on_progress=lambda *a: calls.append(a))
    _check_calls(calls)
    assert calls[-1][1] == 1 + 3  # random directions, then 3 DeepFool batches of at most 10


def test_overhead_progress_callback_counts_pairs():
    import torch

    from jrbench.models.architectures import build_model
    from jrbench.cost.overhead import OverheadConfig, cases_of, time_steps

    torch.manual_seed(0)
    model = build_model("mlp", (1, 28, 28), 10, (0.5,), (0.5,))
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    cfg = OverheadConfig(n_projs=(1,), subsamples=(), reference=False, pairs=3, warmup=0)
    calls = []
    time_steps(model, x, y, cases_of(cfg), pairs=3, warmup=0, on_progress=lambda *a: calls.append(a))
    _check_calls(calls)
    assert calls[-1][:2] == (3, 3)


def test_attack_refuses_eps_and_the_norms_own_grid_together(tmp_path):
    from typer.testing import CliRunner

    from jrbench.cli import app

    result = CliRunner().invoke(app, ["attack", str(tmp_path), "--pgd", "--norm", "l2", "--eps", "0.5",
                                      "--eps-l2", "1.0"])
    assert result.exit_code == 2 and "--eps and --eps-l2 both give the l2 grid" in result.output


def test_a_cuda_device_the_machine_lacks_is_a_clear_error(monkeypatch):
    import pytest
    import torch

    from jrbench.device import resolve_device
    from jrbench.errors import UserError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(UserError, match=r"--device cuda:2: this machine has 2 CUDA devices \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA device is available"):
        resolve_device("cuda:0")
    assert resolve_device("auto") == torch.device("cpu")


def test_messages_keep_their_brackets(tmp_path):
    """Rich markup would eat '[[case]]' and labels such as 'lenet l2 [ebcf4b]' (a tag to rich): every
    message and table cell that carries outside text is escaped."""
    from rich.console import Console

    from jrbench.cli.common import escape

    bad = tmp_path / "budget.toml"
    bad.write_text("x = 1\n")
    result = runner.invoke(app, ["overhead", "--check", str(bad)])
    assert result.exit_code == 2 and "[[case]] tables" in result.output, result.output
    spec = tmp_path / "s.toml"
    spec.write_text('name = "s"\nblock = 1\n')
    result = runner.invoke(app, ["sweep", str(spec)])
    assert result.exit_code == 2 and "[[block]] tables" in result.output, result.output
    console = Console(width=200, record=True)
    console.print(escape("lenet l2 wd=0.0005 [ebcf4b]"))
    assert "[ebcf4b]" in console.export_text()


def test_help_names_every_flag_whole_on_an_80_column_terminal():
    """Rich's help panels cut long flag names ('--autoattack-eps…' twice); click's plain help wraps."""
    result = runner.invoke(app, ["attack", "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0
    for flag in ("--autoattack-eps-linf", "--autoattack-eps-l2", "--input-normalized", "--noise-examples"):
        assert flag in result.output, flag
    assert "…" not in result.output and max(map(len, result.output.splitlines())) <= 80
