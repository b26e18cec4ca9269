"""The frontier: overhead against robustness of each cheap-penalty setting, verdicts vs full n=1."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import tiny_config
from jrbench import cli
from jrbench.config import RegConfig
from jrbench.frontier import FRONTIER_COLUMNS, frontier, write_frontier
from jrbench.overhead import case_name
from jrbench.results import collect


def test_case_names_match_the_overhead_cases():
    from jrbench.overhead import default_cases

    cases = default_cases((1, 3, -1), (16,), True, (4,), True)
    for c in cases:
        if not c.reference:
            assert case_name(c.reg) == c.name
    assert case_name(RegConfig(["jacobian"], jr_subsample=16, jr_every=2)) == "jacobian-n1-sub16-every2"
    assert case_name(RegConfig(["l2"])) == "plain"


def _run(root, name, seed, pgd, noise, R, **reg):
    config = tiny_config(("jacobian",), seed=seed, **reg)
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(config.to_dict()))
    (run / "model.pt").write_bytes(b"")
    pd.DataFrame({"epoch": [1], "test_acc": [0.95], "test_R_z": [R]}).to_csv(run / "metrics.csv", index=False)
    pd.DataFrame([{"attack": "pgd", "norm": "linf", "strength": 0.1, "accuracy": pgd, "loss": "ce64", "n_examples": 100},
                  {"attack": "noise", "norm": "gaussian", "strength": 0.5, "accuracy": noise, "loss": "none",
                   "n_examples": 100}]).to_csv(run / "attacks.csv", index=False)


@pytest.fixture
def study(tmp_path):
    full = {"pgd": [0.50, 0.55, 0.52], "noise": [0.90, 0.91, 0.89]}
    sub = {"pgd": [0.49, 0.56, 0.51], "noise": [0.90, 0.90, 0.90]}     # diffs -1, +1, -1 points: no difference
    every = {"pgd": [0.30, 0.33, 0.31], "noise": [0.80, 0.82, 0.79]}   # clearly worse
    for s in range(3):
        _run(tmp_path, f"full-{s}", s, full["pgd"][s], full["noise"][s], 1.0)
        _run(tmp_path, f"sub-{s}", s, sub["pgd"][s], sub["noise"][s], 1.5, jr_subsample=16)
        _run(tmp_path, f"every-{s}", s, every["pgd"][s], every["noise"][s], 3.0, jr_every=4)
    overhead = pd.DataFrame({"case": ["plain", "jacobian-n1", "jacobian-n1-sub16", "jacobian-n1-every4"],
                             "ratio_median": [1.0, 2.0, 1.45, 1.25]})
    return tmp_path, overhead


def test_frontier_rows_verdicts_and_goal(study, tmp_path):
    root, overhead = study
    result = frontier(collect([root]), overhead)
    t = result.table.set_index("setting")
    assert list(result.table.columns) == FRONTIER_COLUMNS
    sub, every = t.loc["mnist: jacobian-n1-sub16"], t.loc["mnist: jacobian-n1-every4"]
    assert sub["overhead_ratio"] == 1.45 and sub["R"] == pytest.approx(1.5)
    assert sub["pgd_linf_acc"] == pytest.approx((0.49 + 0.56 + 0.51) / 3)
    assert sub["verdict_vs_full"].startswith("not worse") and "3 seeds" in sub["verdict_vs_full"]
    assert every["verdict_vs_full"].startswith("worse") and "PGD-Linf -21.0 [-23.5, -18.5]" in every["verdict_vs_full"]  # diffs -20, -22, -21: mean -21 +- 4.303 * 1 / sqrt 3
    assert t.loc["mnist: jacobian-n1", "verdict_vs_full"] == "reference"
    assert "--jr-subsample 16" in sub["train_args"] and "--seed" not in sub["train_args"]
    assert len(result.goal) == 1 and result.goal[0].startswith("no setting at or below 1.3x")
    files = write_frontier(result, tmp_path / "out", "test CPU")
    assert pd.read_csv(files[0]).columns.tolist() == FRONTIER_COLUMNS and files[1].stat().st_size > 1000


def test_frontier_cli(study, tmp_path):
    root, overhead = study
    overhead.to_csv(tmp_path / "overhead.csv", index=False)
    out = tmp_path / "front"
    result = CliRunner().invoke(cli.app, ["frontier", str(root), "--overhead", str(tmp_path / "overhead.csv"),
                                          "--out", str(out), "--goal-ratio", "1.5"])
    assert result.exit_code == 0, result.output
    assert "jacobian-n1-sub16" in result.output and (out / "frontier.csv").is_file()
    bad = CliRunner().invoke(cli.app, ["frontier", str(root), "--overhead", str(tmp_path / "nope.csv")])
    assert bad.exit_code == 2 and "nope.csv" in bad.output


def test_a_missing_verdict_is_not_a_pass():
    """'not worse' needs both the PGD-Linf and the noise verdict; one alone is incomplete."""
    from jrbench.frontier import _verdict_text

    row = dict(diff=-1.0, ci_low=-3.0, ci_high=1.0, n_seeds=1, method="paired t")
    noise = pd.DataFrame([dict(row, metric="noise_acc", verdict="no difference")])
    both = pd.concat([noise, pd.DataFrame([dict(row, metric="pgd_acc", verdict="no difference")])])
    assert _verdict_text(noise).startswith("incomplete verdict (no PGD-Linf verdict)") and "1 seed," in _verdict_text(noise)
    assert _verdict_text(both).startswith("not worse: ")
    assert _verdict_text(both.assign(verdict=["no difference", "worse"])).startswith("worse: ")
