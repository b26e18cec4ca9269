"""The overhead regression gate: like with like (this code against a baseline), interleaved."""
from __future__ import annotations

import dataclasses
import subprocess

import pandas as pd
import pytest
import torch

import jrbench
from jrbench.config import RunConfig
from jrbench.data.datasets import DATASETS
from jrbench.errors import UserError
from jrbench.cost.gate import (Arm, GateSpec, _arm_cases, _decide, compare_arms, load_baseline_package,
                               load_gate_spec, median_interval, repo_root, resolve_baseline, stage_module)

from conftest import REPO

MNIST = DATASETS.get("mnist").info


def _batch(n: int = 64):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.slow
def test_gate_fails_for_the_autograd_path_forced_against_the_tape():
    """--jr-backend autograd (the double backward) against the tape, the exact penalty of lenet:
    1.3x to 2.8x slower here (AMD EPYC, idle to heavily loaded); the gate must call it a regression.
    Rounds go on (up to 80) until the interval is narrow, so load widens it without flipping it."""
    spec = GateSpec(cases=["jacobian-exact"], tolerance=0.05, halfwidth=0.03, min_rounds=15, max_rounds=80,
                    block=5, warmup=2, max_seconds=600)
    x, y = _batch()
    result = compare_arms(Arm("candidate", jrbench, {"jr_backend": "autograd"}), Arm("baseline", jrbench),
                          x, y, spec, MNIST)
    row = result.table.iloc[0]
    assert row["verdict"] == "slower", result.table.to_dict("records")
    assert result.failures and "jacobian-exact" in result.failures[0] and "tolerance of 5%" in result.failures[0]
    assert row["ci_low"] > 1.05 and 15 <= row["rounds"] <= 80
    both = result.rounds.groupby("arm")["case"].value_counts()
    assert both["candidate"]["plain"] == both["baseline"]["plain"] == row["rounds"]


@pytest.mark.slow
def test_gate_passes_same_code_against_itself():
    spec = GateSpec(cases=["jacobian-n1"], tolerance=0.25, halfwidth=0.05, min_rounds=15, max_rounds=15,
                    warmup=2, max_seconds=600)
    x, y = _batch(32)
    result = compare_arms(Arm("candidate", jrbench), Arm("baseline", jrbench), x, y, spec, MNIST)
    assert result.failures == [], result.table


def _table(relative, low, high):
    return pd.DataFrame({"case": ["jacobian-n1"], "ratio_candidate": [2.0 * relative], "ratio_baseline": [2.0],
                         "relative": [relative], "ci_low": [low], "ci_high": [high], "rounds": [40]})


@pytest.mark.parametrize("relative, low, high, verdict, fails", [
    (1.30, 1.15, 1.45, "slower", True),       # the whole interval above 1 + tolerance
    (1.12, 1.02, 1.25, "inconclusive", False),  # median above, interval reaches below: noise
    (1.02, 0.97, 1.06, "same", False),
    (0.70, 0.65, 0.75, "faster", False),
])
def test_decision_rule(relative, low, high, verdict, fails):
    table = _table(relative, low, high)
    failures, notes = _decide(table, GateSpec(tolerance=0.10), narrow=True)
    assert table["verdict"].iloc[0] == verdict and bool(failures) == fails


def test_median_interval_covers_the_median_and_narrows_with_rounds():
    g = torch.Generator().manual_seed(1)
    few = (1 + 0.05 * torch.randn(20, generator=g)).tolist()
    many = (1 + 0.05 * torch.randn(400, generator=g)).tolist()
    m1, lo1, hi1 = median_interval(few)
    m2, lo2, hi2 = median_interval(many)
    assert lo1 <= m1 <= hi1 and lo2 <= m2 <= hi2 and (hi2 - lo2) < (hi1 - lo1)
    assert 0.98 < lo2 and hi2 < 1.02


def _git_available() -> bool:
    try:
        repo_root()
        return True
    except UserError:
        return False


@pytest.mark.skipif(not _git_available(), reason="needs jrbench's git checkout")
def test_baseline_auto_is_the_parent_of_the_last_penalty_change_and_imports(tmp_path):
    root = repo_root()
    spec = GateSpec()
    sha, why = resolve_baseline(spec, root)
    last = subprocess.run(["git", "log", "-1", "--format=%H", "HEAD", "--", *spec.penalty_paths], cwd=root,
                          capture_output=True, text=True, check=True).stdout.strip()
    parent = subprocess.run(["git", "rev-parse", f"{last}^"], cwd=root, capture_output=True, text=True,
                            check=True).stdout.strip()
    assert sha == parent and "newest commit that changed" in why
    pkg = load_baseline_package(root, sha, tmp_path)
    assert pkg.__name__.startswith("jrbench_base_") and pkg is not jrbench
    assert stage_module(pkg, "overhead").__file__.startswith(str(tmp_path))
    with pytest.raises(UserError, match="rev-parse"):
        resolve_baseline(dataclasses.replace(spec, baseline="no-such-commit-xyz"), root)


def test_gate_spec_errors_name_the_field(tmp_path):
    bad = tmp_path / "gate.toml"
    bad.write_text('baseline = "auto"\ntolerance = "ten"\n')
    with pytest.raises(UserError, match="line 2: field 'tolerance'"):
        load_gate_spec(bad)
    bad.write_text('tolerence = 0.1\n')
    with pytest.raises(UserError, match="unknown field"):
        load_gate_spec(bad)


def test_cli_gate_bad_backend_exits_2():
    from typer.testing import CliRunner

    from jrbench.cli import app

    result = CliRunner().invoke(app, ["overhead", "--gate", str(REPO / "benchmarks" / "overhead_gate.toml"),
                                      "--jr-backend", "autogard"])
    assert result.exit_code == 2 and "autograd" in result.output


@pytest.mark.slow
def test_without_history_the_gate_checks_the_loose_bounds_and_says_so(monkeypatch):
    import jrbench.cost.gate as gate
    from jrbench.cost.budgets import Budget

    def no_git():
        raise UserError("not in a git checkout")

    monkeypatch.setattr(gate, "repo_root", no_git)
    spec = GateSpec(cases=["jacobian-n1"], min_rounds=3, max_rounds=3, warmup=1, max_seconds=600,
                    bounds=[Budget("jacobian-n1", 0.5, "plain", 1)])
    result = gate.run_gate(spec)
    assert "no baseline commit" in result.notes[0] and "loose bounds" in result.notes[0]
    assert len(result.failures) == 1 and "over its loose bound of 0.50x" in result.failures[0]
    assert result.table["baseline_commit"].iloc[0] == "none"
    with pytest.raises(UserError, match="not in a git checkout"):
        gate.run_gate(dataclasses.replace(spec, baseline="abc123"))


def test_gate_spec_errors_name_their_own_line(tmp_path):
    """A bound's bad field is blamed on its line in the 2nd [[case]], not on the first mention
    of the case (the `cases` list); a syntax error names its line; an unknown key its own."""
    bad = tmp_path / "gate.toml"
    head = 'cases = ["jacobian-n1", "jacobian-exact"]\ntolerance = 0.1\n\n[[case]]\nname = "jacobian-n1"\nmax_ratio = 3.0\n\n'
    bad.write_text(head + '[[case]]\nname = "jacobian-exact"\nmax_ratio = -20\n')
    with pytest.raises(UserError, match=r"gate.toml, line 10: field 'max_ratio' of case 'jacobian-exact'"):
        load_gate_spec(bad)
    bad.write_text(head + '[[case]]\nname = "jacobian-exact"\nmax_ratio = 20\nmax_ration = 2\n')
    with pytest.raises(UserError, match=r"gate.toml, line 11: unknown field\(s\) \['max_ration'\]"):
        load_gate_spec(bad)
    bad.write_text(head + 'halfwidth = 0.02\n')  # a top-level key after [[case]] belongs to that case
    with pytest.raises(UserError, match=r"line 8: unknown field\(s\) \['halfwidth'\] in case 'jacobian-n1'"):
        load_gate_spec(bad)
    bad.write_text(head + '[[case]\n')
    with pytest.raises(UserError, match=r"gate.toml, line 8, column 7: not valid TOML"):
        load_gate_spec(bad)
    spec = load_gate_spec(REPO / "benchmarks" / "overhead_gate.toml")
    text = (REPO / "benchmarks" / "overhead_gate.toml").read_text().splitlines()
    assert all(f'name = "{b.case}"' in text[b.line - 1] for b in spec.bounds)


def test_cli_gate_quiet_shows_no_spinner(monkeypatch, tmp_path):
    import jrbench.cost.gate as gate
    from jrbench.cli import gate as cli

    calls = []

    def fake_run_gate(spec, *, baseline=None, reg_options=None, device="cpu", on_round=None):
        calls.append(on_round)
        table = pd.DataFrame({"case": ["jacobian-n1"], "ratio_candidate": [2.0], "ratio_baseline": [2.0],
                              "relative": [1.0], "ci_low": [0.98], "ci_high": [1.02], "rounds": [20],
                              "verdict": ["same"], "device_name": ["cpu"], "threads": [1],
                              "baseline_commit": ["0" * 40], "baseline_rule": ["test"]})
        return gate.GateResult(table, pd.DataFrame(), [], [], 1.0)

    def no_status(*args, **kwargs):
        raise AssertionError("the spinner ran under --quiet")

    monkeypatch.setattr(gate, "run_gate", fake_run_gate)
    monkeypatch.setattr(cli.err_console, "status", no_status)
    cli.run_gate_command(REPO / "benchmarks" / "overhead_gate.toml", None, "auto", "cpu", None, quiet=True)
    assert calls == [None]
    with pytest.raises(AssertionError, match="spinner"):
        cli.run_gate_command(REPO / "benchmarks" / "overhead_gate.toml", None, "auto", "cpu", None, quiet=False)


def _git_in(folder, *args):
    return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(not _git_available(), reason="needs git")
def test_baseline_auto_follows_the_penalty_through_a_pure_move(tmp_path):
    """A commit that only moves the penalty's files (the stage folders) is not a change of it:
    the baseline is the parent of the last commit that changed their content, under the old names."""
    _git_in(tmp_path, "init", "-q")
    _git_in(tmp_path, "config", "user.email", "t@t")
    _git_in(tmp_path, "config", "user.name", "t")
    (tmp_path / "pen.py").write_text("x = 1\n" * 20)
    (tmp_path / "other.py").write_text("y = 1\n")
    _git_in(tmp_path, "add", ".")
    _git_in(tmp_path, "commit", "-qm", "first")
    (tmp_path / "pen.py").write_text("x = 2\n" * 20)
    _git_in(tmp_path, "commit", "-qam", "the penalty changes")
    change = _git_in(tmp_path, "rev-parse", "HEAD")
    (tmp_path / "pkg").mkdir()
    _git_in(tmp_path, "mv", "pen.py", "pkg/pen.py")
    (tmp_path / "other.py").write_text("y = 2\n")
    _git_in(tmp_path, "commit", "-qam", "move (and an unrelated change)")
    spec = GateSpec(penalty_paths=["pkg/pen.py"])
    sha, why = resolve_baseline(spec, tmp_path)
    assert sha == _git_in(tmp_path, "rev-parse", f"{change}^") and change[:10] in why
    (tmp_path / "pkg" / "pen.py").write_text("x = 3\n" * 20)
    _git_in(tmp_path, "commit", "-qam", "changed after the move")
    sha, _ = resolve_baseline(spec, tmp_path)
    assert sha == _git_in(tmp_path, "rev-parse", "HEAD^")


@pytest.mark.skipif(not _git_available(), reason="needs jrbench's git checkout")
def test_a_baseline_in_the_flat_layout_loads_and_builds_its_cases(tmp_path):
    """Baselines before the stage folders have jrbench/overhead.py and jrbench/models.py: the gate
    finds their modules there and builds the same cases as with this checkout's layout."""
    root = repo_root()
    flat = subprocess.run(["git", "log", "-1", "--format=%H", "HEAD", "--", "jrbench/overhead.py"], cwd=root,
                          capture_output=True, text=True, check=True).stdout.strip()
    if not flat:
        pytest.skip("no flat-layout commit in this clone")
    old = load_baseline_package(root, f"{flat}^", tmp_path)
    assert stage_module(old, "overhead").__name__ == f"{old.__name__}.overhead"
    assert stage_module(jrbench, "overhead").__name__ == "jrbench.cost.overhead"
    assert stage_module(jrbench, "models").__name__ == "jrbench.models.architectures"
    names = ["jacobian-n1", "jacobian-exact"]
    assert [c.name for c in _arm_cases(Arm("b", old), names)] == [c.name for c in _arm_cases(Arm("c", jrbench), names)]
