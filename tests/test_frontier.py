"""The frontier: overhead against robustness of each cheap-penalty setting, verdicts vs full n=1."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import tiny_config
from jrbench import cli
from jrbench.config import RegConfig
from jrbench import stats
from jrbench.errors import UserError
from jrbench.study.frontier import (FRONTIER_COLUMNS, FRONTIER_VERDICT_COLUMNS, frontier, frontier_figure,
                                    spread_labels, write_frontier)
from jrbench.cost.overhead import case_name
from jrbench.analysis.results import collect


def test_case_names_match_the_overhead_cases():
    from jrbench.cost.overhead import default_cases

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
    sub8 = {"pgd": [0.54, 0.51, 0.52], "noise": [0.90, 0.91, 0.89]}    # diffs +4, -4, 0 points: wide, noise equal
    for s in range(3):
        _run(tmp_path, f"full-{s}", s, full["pgd"][s], full["noise"][s], 1.0)
        _run(tmp_path, f"sub-{s}", s, sub["pgd"][s], sub["noise"][s], 1.5, jr_subsample=16)
        _run(tmp_path, f"every-{s}", s, every["pgd"][s], every["noise"][s], 3.0, jr_every=4)
        _run(tmp_path, f"sub8-{s}", s, sub8["pgd"][s], sub8["noise"][s], 2.0, jr_subsample=8)
    overhead = pd.DataFrame({"case": ["plain", "jacobian-n1", "jacobian-n1-sub16", "jacobian-n1-every4",
                                      "jacobian-n1-sub8"],
                             "ratio_median": [1.0, 2.0, 1.45, 1.25, 1.2]})
    return tmp_path, overhead


def test_frontier_rows_verdicts_and_goal(study, tmp_path):
    root, overhead = study
    result = frontier(collect([root]), overhead)
    t = result.table.set_index("setting")
    assert list(result.table.columns) == FRONTIER_COLUMNS
    sub, every = t.loc["mnist: jacobian-n1-sub16"], t.loc["mnist: jacobian-n1-every4"]
    assert sub["overhead_ratio"] == 1.45 and sub["R"] == pytest.approx(1.5)
    assert sub["pgd_linf_acc"] == pytest.approx((0.49 + 0.56 + 0.51) / 3)
    # sub16: PGD diffs -1, +1, -1 points (mean -1/3, sd sqrt(4/3), se 2/3): lower bound -1/3 - 2.92 * 2/3 = -2.28;
    # noise diffs 0, -1, +1 (mean 0, se 1/sqrt 3): lower -1.69; both above -3: not worse
    assert sub["verdict_vs_full"] == ("not worse: PGD-Linf -0.3 [-2.3, +1.6], noise +0.0 [-1.7, +1.7] points "
                                      "(one-sided 95% bounds), margin 3 points, 3 seeds, paired t over seeds")
    # every4: diffs -20, -22, -21 (se 1/sqrt 3): upper bound -21 + 2.92 / sqrt 3 = -19.3 < -3: worse
    assert every["verdict_vs_full"].startswith("worse: PGD-Linf -21.0 [-22.7, -19.3]")
    # sub8: PGD diffs +4, -4, 0 (sd 4, se 4/sqrt 3): lower -6.74, upper +6.74: inconclusive; noise equal (no spread)
    assert t.loc["mnist: jacobian-n1-sub8", "verdict_vs_full"] == (
        "inconclusive (13 seeds would decide it: 80% power if as good as full n=1, at the observed spread): "
        "PGD-Linf +0.0 [-6.7, +6.7], noise +0.0 [+0.0, +0.0] points (one-sided 95% bounds), margin 3 points, "
        "3 seeds, paired t over seeds")
    assert t.loc["mnist: jacobian-n1", "verdict_vs_full"] == "reference"
    assert "--jr-subsample 16" in sub["train_args"] and "--seed" not in sub["train_args"]
    assert len(result.goal) == 1 and result.goal[0].startswith("no setting at or below 1.3x plain is shown not worse")
    v = result.verdicts.set_index(["setting", "metric"])
    assert list(result.verdicts.columns) == FRONTIER_VERDICT_COLUMNS
    pgd8 = v.loc[("mnist: jacobian-n1-sub8", "pgd_acc")]
    assert pgd8["sd"] == pytest.approx(4.0) and pgd8["seeds_needed"] == stats.seeds_for_noninferiority(4.0, 3.0) == 13
    assert pgd8["verdict"] == "inconclusive" and pgd8["strength"] == "linf 0.1" and pgd8["margin"] == 3.0
    assert pgd8["lower"] == pytest.approx(-2.919985580355516 * 4 / math.sqrt(3), abs=1e-9)
    assert ("mnist: jacobian-n1", "pgd_acc") not in v.index  # the reference is not compared with itself
    files = write_frontier(result, tmp_path / "out", "test CPU")
    assert pd.read_csv(files[0]).columns.tolist() == FRONTIER_COLUMNS and files[1].stat().st_size > 1000
    assert pd.read_csv(files[2]).columns.tolist() == FRONTIER_VERDICT_COLUMNS


def test_the_margin_decides(study):
    """A wider margin turns sub8's inconclusive PGD row into not worse and meets the goal at 1.3x."""
    root, overhead = study
    wide = frontier(collect([root]), overhead, margin=7.0).table.set_index("setting")
    assert wide.loc["mnist: jacobian-n1-sub8", "verdict_vs_full"].startswith("not worse")  # -6.74 > -7
    result = frontier(collect([root]), overhead, margin=7.0)
    assert len(result.goal) == 1 and result.goal[0].startswith("mnist: jacobian-n1-sub8 (1.20x plain): not worse")
    for bad in (0.0, -1.0, 150.0):
        with pytest.raises(UserError, match="--margin"):
            frontier(collect([root]), overhead, margin=bad)


def test_frontier_cli(study, tmp_path):
    root, overhead = study
    overhead.to_csv(tmp_path / "overhead.csv", index=False)
    out = tmp_path / "front"
    result = CliRunner().invoke(cli.app, ["frontier", str(root), "--overhead", str(tmp_path / "overhead.csv"),
                                          "--out", str(out), "--goal-ratio", "1.5", "--margin", "2.5"])
    assert result.exit_code == 0, result.output
    assert "jacobian-n1-sub16" in result.output and (out / "frontier.csv").is_file()
    assert "margin 2.5 points" in result.output and (out / "frontier_verdicts.csv").is_file()
    bad = CliRunner().invoke(cli.app, ["frontier", str(root), "--overhead", str(tmp_path / "nope.csv")])
    assert bad.exit_code == 2 and "nope.csv" in bad.output


def test_a_missing_verdict_is_not_a_pass():
    """'not worse' needs both the PGD-Linf and the noise verdict; one alone is incomplete."""
    from jrbench.study.frontier import _verdict_text

    row = dict(diff=-1.0, lower=-2.0, upper=0.0, n_seeds=2, margin=3.0, seeds_needed=4, verdict="not worse")
    noise = pd.DataFrame([dict(row, metric="noise_acc")])
    both = pd.concat([noise, pd.DataFrame([dict(row, metric="pgd_acc")])])
    assert _verdict_text(noise).startswith("incomplete verdict (no PGD-Linf verdict)") and "2 seeds," in _verdict_text(noise)
    assert _verdict_text(both).startswith("not worse: ")
    assert _verdict_text(both.assign(verdict=["not worse", "worse"])).startswith("worse: ")
    assert _verdict_text(both.assign(verdict=["inconclusive", "not worse"], seeds_needed=[9, 40])).startswith(
        "inconclusive (9 seeds would decide it")  # only the open metric counts
    assert _verdict_text(both.iloc[:0]).startswith("no verdict")


def test_spread_labels_keeps_the_gap_and_the_order():
    assert spread_labels([], 0.1) == []
    assert spread_labels([0.5], 0.1) == [0.5]
    # three wanted at one place: pushed up from it, 0.1 apart, order kept
    assert spread_labels([0.3, 0.3, 0.3], 0.1) == pytest.approx([0.3, 0.4, 0.5])
    # crowded at the top: pushed down from 1
    assert spread_labels([0.99, 0.98, 0.97], 0.1) == pytest.approx([1.0, 0.9, 0.8])
    # far apart: left where they are
    assert spread_labels([0.1, 0.9, 0.5], 0.1) == pytest.approx([0.1, 0.9, 0.5])
    # more than fit: evenly spread over [0, 1]
    assert spread_labels([0.5] * 5, 0.5) == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


def test_frontier_plot_has_intervals_and_names_that_do_not_overlap(study):
    """Each point has its interval over seeds; the setting names' boxes on the canvas are disjoint,
    even where settings sit at almost the same overhead and accuracy."""
    root, overhead = study
    overhead = overhead.assign(ratio_median=[1.0, 2.0, 1.201, 1.2, 1.202])  # three settings at one overhead
    result = frontier(collect([root]), overhead)
    t = result.table.set_index("setting")
    sub = t.loc["mnist: jacobian-n1-sub16"]
    mean, low, high = stats.mean_ci(np.array([0.49, 0.56, 0.51]))
    assert (sub["pgd_linf_acc"], sub["pgd_linf_low"], sub["pgd_linf_high"]) == pytest.approx((mean, low, high))
    assert sub["noise_low"] == pytest.approx(0.90) and sub["n_seeds"] == 3   # no spread: the interval is the mean
    fig = frontier_figure(result.table, "test CPU")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    from matplotlib.text import Annotation
    names = [a for a in ax.texts if isinstance(a, Annotation)]
    assert sorted(a.get_text() for a in names) == sorted(["n1", "n1-sub16", "n1-every4", "n1-sub8"])
    from matplotlib.text import Text
    boxes = [Text.get_window_extent(a, renderer) for a in names]   # the name's own box, without its leader line
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), (names[i].get_text(), names[j].get_text())
    bars = [c for c in ax.containers if c.has_yerr]
    assert len(bars) == 2   # PGD and noise, each with error bars


@pytest.mark.parametrize("extra", ["frontier-seeds.toml", "frontier-seeds-mnist.toml"])
def test_the_seed_specs_add_seeds_to_frontier_cells(extra):
    """The seed specs write into the frontier's folder and pair with its runs by seed: every cell is
    a cell of frontier.toml with another seed (same recipe, settings and attacks), and no seed repeats."""
    import dataclasses
    from pathlib import Path
    from jrbench.study.spec import load_spec

    bench = Path(__file__).resolve().parent.parent / "benchmarks"
    base, more = load_spec(bench / "frontier.toml"), load_spec(bench / extra)
    assert more.name == base.name and more.attack == base.attack

    def unseeded(c):
        return dataclasses.replace(c, train=dataclasses.replace(c.train, seed=-1))

    known = {json.dumps(unseeded(c).to_dict(), sort_keys=True) for c in base.cells}
    base_seeds = {c.train.seed for c in base.cells}
    for c in more.cells:
        assert json.dumps(unseeded(c).to_dict(), sort_keys=True) in known
        assert c.train.seed not in base_seeds
