"""The corruptions in the report: accuracy per corruption and severity, the mean and family means,
mCE and relative mCE against the plain group (computed by hand on small tables), the verdicts over
seeds and over examples, and the report's section, CSV and figure."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from jrbench.analysis.corruptions import (common_cells, corruption_cells, corruption_errors, group_errors,
                                          mce_table, run_corruption_values)
from jrbench.analysis.results import collect
from jrbench.analysis.verdicts import verdicts
from test_verdicts import EXAMPLE_COLUMNS, row, write_run

# accuracy per (corruption, severity); severity 0 is the clean images
PLAIN = {0: {("gaussian_noise", 0): .9, ("gaussian_noise", 1): .8, ("gaussian_noise", 2): .6,
             ("fog", 0): .9, ("fog", 1): .7, ("fog", 2): .5},
         1: {("gaussian_noise", 0): .9, ("gaussian_noise", 1): .8, ("gaussian_noise", 2): .4,
             ("fog", 0): .9, ("fog", 1): .7, ("fog", 2): .7}}
JR = {0: {("gaussian_noise", 0): .8, ("gaussian_noise", 1): .7, ("gaussian_noise", 2): .6,
          ("fog", 0): .8, ("fog", 1): .8, ("fog", 2): .7},
      1: {("gaussian_noise", 0): .8, ("gaussian_noise", 1): .7, ("gaussian_noise", 2): .6,
          ("fog", 0): .8, ("fog", 1): .8, ("fog", 2): .5}}


def corruption_attacks(cells: dict) -> list[tuple]:
    return [("corruption", name, float(s), acc) for (name, s), acc in cells.items()]


@pytest.fixture
def two_seeds(tmp_path):
    for name, regs, accs in (("plain", ("none",), PLAIN), ("jr", ("jacobian",), JR)):
        for seed in (0, 1):
            write_run(tmp_path / "runs", f"{name}-s{seed}", regs, seed, attacks=corruption_attacks(accs[seed]))
    return tmp_path / "runs"


def pair(collection):
    cells = corruption_cells(collection.summary)
    ids = dict(zip(cells["group_label"], cells["group_id"]))
    return ids["lenet jacobian λ_JR=0.01 n_proj=1"], ids["lenet none"]


def test_mce_and_relative_mce_by_hand(two_seeds):
    collection = collect([two_seeds])
    jr, plain = pair(collection)
    # errors averaged over seeds. plain: clean .10; gaussian_noise .20, .50; fog .30, .40
    #                             jr:    clean .20; gaussian_noise .30, .40; fog .20, .40
    errors = corruption_errors(group_errors(corruption_cells(collection.summary), jr),
                               group_errors(corruption_cells(collection.summary), plain)).set_index("corruption")
    assert errors.loc["gaussian_noise", "ce"] == pytest.approx(0.70 / 0.70)
    assert errors.loc["fog", "ce"] == pytest.approx(0.60 / 0.70)
    # relative: (E - E_clean) summed over severities
    assert errors.loc["gaussian_noise", "relative_ce"] == pytest.approx((0.10 + 0.20) / (0.10 + 0.40))
    assert errors.loc["fog", "relative_ce"] == pytest.approx((0.00 + 0.20) / (0.20 + 0.30))
    table = mce_table(collection.summary, [(jr, plain)]).set_index("group_id")
    assert table.loc[jr, "mCE"] == pytest.approx(100 * (1 + 6 / 7) / 2)
    assert table.loc[jr, "relative_mCE"] == pytest.approx(100 * (0.6 + 0.4) / 2)
    assert table.loc[jr, "mean_acc"] == pytest.approx((0.7 + 0.6 + 0.8 + 0.6) / 4)
    assert table.loc[jr, "clean_acc"] == pytest.approx(0.8)
    assert table.loc[plain, "mCE"] == pytest.approx(100) and table.loc[plain, "relative_mCE"] == pytest.approx(100)
    assert table.loc[plain, "mean_acc"] == pytest.approx((0.8 + 0.5 + 0.7 + 0.6) / 4)
    assert table.loc[jr, "n_runs"] == 2 and table.loc[jr, "n_corruptions"] == 2 and table.loc[jr, "left_out"] == ""


def test_a_corruption_plain_never_gets_wrong_has_no_ce():
    g = pd.DataFrame({"corruption": ["fog"] * 3, "severity": [0, 1, 2], "error": [0.0, 0.1, 0.2], "n_runs": 1})
    b = g.assign(error=[0.0, 0.0, 0.0])
    errors = corruption_errors(g, b)
    assert math.isnan(errors["ce"].iloc[0]) and math.isnan(errors["relative_ce"].iloc[0])


def test_verdicts_on_the_mean_and_the_families_by_hand(two_seeds):
    table, gaps = verdicts(collect([two_seeds]))
    # per-run means over the four cells: plain .65, .65; jr .70, .65 -> differences 5 and 0 points
    mean = row(table, "corruption_acc", "mean")
    assert mean["diff"] == pytest.approx(2.5) and mean["n_seeds"] == 2 and mean["method"] == "paired t over seeds"
    # noise family (gaussian_noise): plain .70, .60; jr .65, .65 -> -5, +5
    assert row(table, "corruption_acc", "noise")["diff"] == pytest.approx(0.0, abs=1e-9)
    # weather family (fog): plain .60, .70; jr .75, .65 -> +15, -5
    assert row(table, "corruption_acc", "weather")["diff"] == pytest.approx(5.0)
    assert set(table[table["metric"] == "corruption_acc"]["strength"]) == {"mean", "noise", "weather"}
    # inside the report's multiplicity family: adjusted over every row
    assert (table["correction"] == "bh").all() and (table["p_adjusted"] >= table["p_value"] - 1e-15).all()
    assert not [g for g in gaps if "corruption" in g]
    order = table[table["metric"] == "corruption_acc"]["strength"].tolist()
    assert order == ["mean", "noise", "weather"]


def test_the_runs_are_compared_on_the_cells_every_run_has(tmp_path):
    for name, regs, accs in (("plain", ("none",), PLAIN), ("jr", ("jacobian",), JR)):
        for seed in (0, 1):
            cells = dict(accs[seed])
            if name == "jr" and seed == 1:
                cells.pop(("fog", 2))
            write_run(tmp_path / "runs", f"{name}-s{seed}", regs, seed, attacks=corruption_attacks(cells))
    collection = collect([tmp_path / "runs"])
    ids = collection.summary.drop_duplicates("run_id").set_index("run_id")
    values, cells, extra = run_corruption_values(collection.summary, list(ids.index))
    assert cells == [("gaussian_noise", 1), ("gaussian_noise", 2), ("fog", 1)] and extra == 1
    plain0 = values[(values["run_id"] == "plain-s0") & (values["strength"] == "mean")]["value"].iloc[0]
    assert plain0 == pytest.approx((0.8 + 0.6 + 0.7) / 3)
    table, gaps = verdicts(collection)
    assert row(table, "corruption_acc", "weather")["diff"] == pytest.approx(100 * ((0.8 - 0.7) + (0.8 - 0.7)) / 2)
    assert any("3 corruption and severity cells" in g and "1 other cells" in g for g in gaps)
    assert common_cells(corruption_cells(collection.summary), ["plain-s0"]) == [
        ("gaussian_noise", 1), ("gaussian_noise", 2), ("fog", 1), ("fog", 2)]


def test_one_seed_sign_test_on_each_examples_share(tmp_path):
    """One seed in common: per example, the share of the cells it gets right under corruption, paired
    by example, an exact sign test."""
    from jrbench import stats

    def examples(outcomes):
        rows = []
        for (name, severity), values in outcomes.items():
            for example, right in enumerate(values):
                rows.append({"example": example, "attack": "corruption", "norm": name, "strength": float(severity),
                             "loss": "none", "clean_correct": 1, "robust": float(right), "broken": 1 - right,
                             "example_seed": 0})
        return pd.DataFrame(rows, columns=EXAMPLE_COLUMNS)

    plain = {("fog", 1): [1, 0, 0, 1, 0, 1], ("snow", 1): [0, 0, 1, 1, 0, 1]}
    jr = {("fog", 1): [1, 1, 1, 1, 0, 1], ("snow", 1): [1, 1, 1, 1, 0, 0]}
    for name, regs, outcomes in (("plain", ("none",), plain), ("jr", ("jacobian",), jr)):
        table = examples(outcomes)
        accs = table.groupby(["norm", "strength"])["robust"].mean()
        write_run(tmp_path / "runs", name, regs, 0, examples=table,
                  attacks=[("corruption", n, s, a) for (n, s), a in accs.items()])
    table, _ = verdicts(collect([tmp_path / "runs"]))
    mean = row(table, "corruption_acc", "mean")
    shares_plain = [0.5, 0, 0.5, 1, 0, 1]
    shares_jr = [1, 1, 1, 1, 0, 0.5]
    expected = stats.sign_test(pd.Series(shares_jr), pd.Series(shares_plain))
    assert mean["diff"] == pytest.approx(100 * expected.diff) and mean["p_value"] == pytest.approx(expected.p_value)
    assert "corrupted copies classified correctly" in mean["method"] and mean["n_seeds"] == 1
    assert row(table, "corruption_acc", "weather")["diff"] == pytest.approx(100 * expected.diff)  # fog, snow


@pytest.mark.slow
def test_the_report_has_the_section_the_csv_and_the_figure(two_seeds, tmp_path):
    from jrbench.report.writer import ReportOptions, write_report

    result = write_report(collect([two_seeds]), tmp_path / "report", ReportOptions(cells=False))
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Common corruptions" in text and "corruptions.png" in text
    assert "| lenet jacobian λ_JR=0.01 n_proj=1 | lenet none | 2 | 80.0 | 67.5 | 65.0 |  | 70.0 |  | 92.9 | 50.0 |" in text
    assert (tmp_path / "report" / "corruptions.png").stat().st_size > 10_000
    cells = pd.read_csv(tmp_path / "report" / "corruptions.csv")
    fog = cells[(cells["group_label"] == "lenet jacobian λ_JR=0.01 n_proj=1") & (cells["corruption"] == "fog")
                & (cells["severity"] == 2)]
    assert fog["accuracy_mean"].iloc[0] == pytest.approx(0.6) and fog["n_runs"].iloc[0] == 2
    assert "corruptions, mean over corruptions and severities" in "\n".join(result.verdict_lines)
    assert "corruption: 2 corruptions, severity ∈ {0, 1, 2}" in text
