"""Verdicts and the worst case per example, on small run directories written by hand.

No training: each fake run is a config.json, an empty model.pt and the tables the report
reads (metrics.csv, attacks.csv, attack_examples.csv, margins.csv) with chosen numbers, so
every expected value below is computed by hand from those numbers.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import tiny_config
from jrbench import cli
from jrbench import stats
from jrbench.report.writer import ReportOptions, write_report
from jrbench.report.table import format_wide, group_table, run_table
from jrbench.analysis.results import collect
from jrbench.errors import UserError
from jrbench.analysis.verdicts import (COMPACT_COLUMNS, VERDICT_COLUMNS, apply_correction, compact_tables, correction_note,
                              raw_verdicts, verdict_lines, verdicts)
from jrbench.analysis.worst_case import worst_case_examples

T_975_DF2 = 4.302652729911275  # Student t quantile, 97.5%, 2 degrees of freedom
EXAMPLE_COLUMNS = ["example", "attack", "norm", "strength", "loss", "clean_correct", "robust", "broken",
                   "example_seed"]


def write_run(root, name, regs=("none",), seed=0, *, acc=0.9, R_z=10.0, attacks=(), examples=None,
              margins=None, lr=0.05):
    """A run directory: ``attacks`` rows (attack, norm, strength, accuracy); ``examples`` the
    attack_examples.csv table; ``margins`` {quantity: per-example values}."""
    config = tiny_config(regs, seed=seed)
    config.train.lr = lr
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(config.to_dict()))
    (run / "model.pt").write_bytes(b"")
    pd.DataFrame({"epoch": [1, 2], "test_acc": [0.5, acc], "test_R_z": [2 * R_z, R_z]}).to_csv(
        run / "metrics.csv", index=False)
    if attacks:
        rows = [{"attack": a, "norm": n, "strength": s, "accuracy": v, "loss": "none" if a == "noise" else "ce64",
                 "n_examples": 100} for a, n, s, v in attacks]
        pd.DataFrame(rows).to_csv(run / "attacks.csv", index=False)
    if examples is not None:
        examples.to_csv(run / "attack_examples.csv", index=False)
    if margins:
        n = len(next(iter(margins.values())))
        pd.DataFrame({"index": range(n), "correct": 1, **margins}).to_csv(run / "margins.csv", index=False)
    return run


def examples_table(clean, outcomes):
    """attack_examples.csv from {(attack, norm, strength): per-example robust values (None:
    no row for that example)}; loss ce64 for attacks, 'none' for noise."""
    rows = []
    for (attack, norm, strength), values in outcomes.items():
        for example, robust in enumerate(values):
            if robust is None:
                continue
            noise = attack == "noise"
            rows.append({"example": example, "attack": attack, "norm": norm, "strength": strength,
                         "loss": "none" if noise else "ce64", "clean_correct": clean[example], "robust": robust,
                         "broken": 0 if noise else int(clean[example] and not robust), "example_seed": 0})
    return pd.DataFrame(rows, columns=EXAMPLE_COLUMNS)


def row(table, metric, strength=""):
    sel = table[(table["metric"] == metric) & (table["strength"] == strength)]
    assert len(sel) == 1, (metric, strength, table[["metric", "strength"]])
    return sel.iloc[0]


# ----------------------------------------------------------------------------- several seeds
@pytest.fixture
def three_seeds(tmp_path):
    """Plain and Jacobian, seeds 0, 1, 2: clean, noise, PGD and R_z chosen per seed."""
    plain = {"acc": [0.75, 0.77, 0.81], "noise": [0.80, 0.82, 0.79], "pgd": [0.40, 0.45, 0.42], "R": [30.0, 28.0, 33.0]}
    jr = {"acc": [0.80, 0.84, 0.85], "noise": [0.82, 0.79, 0.80], "pgd": [0.30, 0.33, 0.31], "R": [1.0, 1.2, 0.9]}
    for name, regs, v in (("plain", ("none",), plain), ("jr", ("jacobian",), jr)):
        for seed in range(3):
            write_run(tmp_path / "runs", f"{name}-s{seed}", regs, seed, acc=v["acc"][seed], R_z=v["R"][seed],
                      attacks=[("noise", "gaussian", 0.5, v["noise"][seed]), ("pgd", "linf", 0.1, v["pgd"][seed])])
    return tmp_path / "runs"


def test_paired_t_over_seeds_matches_the_hand_computation(three_seeds):
    table, gaps = verdicts(collect([three_seeds]))
    clean = row(table, "clean_acc")
    # per-seed differences in points: 5, 7, 4; mean 16/3; sample variance ((-1/3)^2 + (5/3)^2 + (-4/3)^2) / 2 = 7/3
    mean, se = 16 / 3, math.sqrt(7 / 3 / 3)
    t = mean / se
    p = 1 - t / math.sqrt(2 + t * t)  # two-sided, Student t with 2 df: F(t) = 1/2 + t / (2 sqrt(2 + t^2))
    assert clean["diff"] == pytest.approx(mean, rel=1e-9)
    assert clean["ci_low"] == pytest.approx(mean - T_975_DF2 * se, rel=1e-9)
    assert clean["ci_high"] == pytest.approx(mean + T_975_DF2 * se, rel=1e-9)
    assert clean["p_value"] == pytest.approx(p, rel=1e-9) and p == pytest.approx(0.02627, abs=1e-4)
    assert clean["n_seeds"] == 3 and clean["method"] == "paired t over seeds" and clean["verdict"] == "better"
    assert clean["group"] == "lenet jacobian λ_JR=0.01 n_proj=1" and clean["baseline"] == "lenet none"


def test_better_worse_and_no_difference_and_the_direction_of_R(three_seeds):
    table, _ = verdicts(collect([three_seeds]))
    assert row(table, "pgd_acc", "linf 0.1")["verdict"] == "worse"  # -10, -12, -11 points
    assert row(table, "pgd_acc", "linf 0.1")["diff"] == pytest.approx(-11.0)
    noise = row(table, "noise_acc", "sigma 0.5")  # +2, -3, +1 points
    assert noise["verdict"] == "no significant difference" and noise["ci_low"] < 0 < noise["ci_high"]
    r = row(table, "R_z")  # R fell from about 30 to about 1: smaller is better
    assert r["diff"] == pytest.approx(((1.0 - 30) + (1.2 - 28) + (0.9 - 33)) / 3) and r["ci_high"] < 0
    assert r["verdict"] == "better"


@pytest.mark.slow
def test_verdicts_csv_has_exactly_the_columns_and_the_report_a_section(three_seeds, tmp_path):
    result = write_report(collect([three_seeds]), tmp_path / "out", ReportOptions(cells=False))
    written = pd.read_csv(tmp_path / "out" / "verdicts.csv", keep_default_na=False)
    assert list(written.columns) == VERDICT_COLUMNS == [
        "metric", "strength", "group", "baseline", "diff", "ci_low", "ci_high", "p_value", "p_adjusted", "correction",
        "n_seeds", "method", "verdict", "stands_for"]
    assert set(written["correction"]) == {"bh"}
    assert set(written["verdict"]) <= {"better", "worse", "no significant difference"}
    assert len(written) == len(result.verdicts) == 4  # clean, noise, PGD, R_z
    line = next(v for v in result.verdict_lines if "clean accuracy" in v)
    assert line == ("lenet jacobian λ_JR=0.01 n_proj=1 vs lenet none, clean accuracy: +5.3 points [1.5, 9.1], "
                    "p = 0.026, BH-adjusted p = 0.035, 3 seeds, paired t over seeds: better")
    for name in ("summary.md", "report.md"):
        text = (tmp_path / "out" / name).read_text()
        assert "## Verdicts" in text and line in text
        assert "The family is the report's 4 distinct comparisons, the rows of verdicts.csv" in text
        assert "Benjamini-Hochberg" in text and "strength-0 row" not in text.split("## Verdicts")[1].split("The family")[1]
        assert "per-comparison 95%" in text and "changed 0 of the 3 raw better / worse verdicts" in text
    assert any("jr-s0: margins.csv: missing" in g for g in result.gaps)


def test_no_plain_group_with_the_same_recipe_is_a_gap(tmp_path):
    write_run(tmp_path, "plain", ("none",), 0, lr=0.05)
    write_run(tmp_path, "jr", ("jacobian",), 0, lr=0.01)  # another recipe: no partner
    table, gaps = verdicts(collect([tmp_path]))
    assert table.empty and list(table.columns) == VERDICT_COLUMNS
    assert any("no plain" in g and "recipe" in g for g in gaps)


def test_paired_t_with_identical_differences_and_none():
    d = stats.paired_t(np.array([0.5, 0.6]), np.array([0.5, 0.6]))
    assert (d.diff, d.ci_low, d.ci_high, d.p_value) == (0.0, 0.0, 0.0, 1.0)


# ----------------------------------------------------------------------------- one seed
def one_seed_runs(root):
    """Plain and Jacobian, seed 0, 40 examples: under PGD-Linf 0.1 b = 2 examples only the
    plain model keeps, c = 10 only the Jacobian one keeps; noise shares differ on 5 examples."""
    clean = [1] * 40
    plain_pgd = [1] * 20 + [0] * 20
    jr_pgd = [1] * 18 + [0] * 2 + [1] * 10 + [0] * 10
    plain_noise = [0.8, 0.8, 0.4, 1.0, 0.6] + [1.0] * 35
    jr_noise = [1.0, 0.8, 0.6, 0.6, 1.0] + [1.0] * 35  # up, tie, up, down, up
    margins_plain = {"margin_random_median": 0.5 + 0.01 * np.arange(30), "margin_adv_l2": 0.2 + 0.01 * np.arange(30)}
    margins_jr = {"margin_random_median": 1.0 + 0.01 * np.arange(30), "margin_adv_l2": 0.2 + 0.01 * np.arange(30)}
    for name, regs, pgd, noise, margins in (("plain", ("none",), plain_pgd, plain_noise, margins_plain),
                                            ("jr", ("jacobian",), jr_pgd, jr_noise, margins_jr)):
        ex = examples_table(clean, {("pgd", "linf", 0.1): pgd, ("noise", "gaussian", 0.5): noise})
        write_run(root, name, regs, 0, attacks=[("pgd", "linf", 0.1, np.mean(pgd)),
                                                ("noise", "gaussian", 0.5, np.mean(noise))],
                  examples=ex, margins=margins)
    return root


def test_one_seed_mcnemar_exact_by_hand(tmp_path):
    table, gaps = verdicts(collect([one_seed_runs(tmp_path)]), correction="none")  # the raw p decides here
    b, c, n = 2, 10, 40
    # p = 2 P(Binom(12, 1/2) <= 2) = 2 (C(12,0) + C(12,1) + C(12,2)) / 2^12 = 2 * 79 / 4096
    p = 2 * (1 + 12 + 66) / 4096
    for metric in ("pgd_acc", "worst_case_acc"):  # PGD is the only attack here: the worst case is PGD's
        r = row(table, metric, "linf 0.1")
        assert r["diff"] == pytest.approx(100 * (c - b) / n) and r["p_value"] == pytest.approx(p)
        assert r["n_seeds"] == 1 and r["verdict"] == "better"
        assert r["method"].startswith("McNemar exact (40 examples, b = 2, c = 10;")
        assert "examples only; 1 seed: training noise not covered" in r["method"]
        # the interval is Clopper-Pearson's for theta = P(Jacobian right | discordant), mapped to
        # (m / n)(2 theta - 1): at its ends the binomial tails are 2.5%
        m = b + c
        lo, hi = ((v / 100 * n / m + 1) / 2 for v in (r["ci_low"], r["ci_high"]))
        upper_tail = sum(math.comb(m, k) * lo**k * (1 - lo) ** (m - k) for k in range(c, m + 1))
        lower_tail = sum(math.comb(m, k) * hi**k * (1 - hi) ** (m - k) for k in range(0, c + 1))
        assert upper_tail == pytest.approx(0.025, abs=1e-9) and lower_tail == pytest.approx(0.025, abs=1e-9)
    clean = row(table, "clean_acc")  # both right everywhere: no discordant pair
    assert (clean["diff"], clean["p_value"], clean["verdict"]) == (0.0, 1.0, "no significant difference")


def test_one_seed_sign_test_for_noise_and_bootstrap_for_margins(tmp_path):
    table, gaps = verdicts(collect([one_seed_runs(tmp_path)]))
    noise = row(table, "noise_acc", "sigma 0.5")
    # 3 examples up, 1 down, 1 tie: p = 2 P(Binom(4, 1/2) <= 1) = 2 (1 + 4) / 16
    assert noise["p_value"] == pytest.approx(10 / 16) and noise["verdict"] == "no significant difference"
    assert noise["diff"] == pytest.approx(100 * (0.2 + 0 + 0.2 - 0.4 + 0.4) / 40)
    assert "sign test" in noise["method"] and "3 examples up, 1 down" in noise["method"]
    random = row(table, "margin_random_median")  # every Jacobian margin 0.5 larger
    assert random["diff"] == pytest.approx(0.5) and random["ci_low"] > 0 and random["verdict"] == "better"
    assert "bootstrap" in random["method"] and "training noise not covered" in random["method"]
    adv = row(table, "margin_adv_l2")  # the same values: no difference
    assert adv["diff"] == 0 and adv["verdict"] == "no significant difference"
    again, _ = verdicts(collect([tmp_path]))
    pd.testing.assert_frame_equal(table, again)  # seeded
    assert any("R_z" in g and "2 seeds" in g for g in gaps)  # one seed: R_z has no per-example values


def test_one_seed_without_per_example_records_is_a_gap(tmp_path):
    write_run(tmp_path, "plain", ("none",), 0, attacks=[("pgd", "linf", 0.1, 0.5)])
    write_run(tmp_path, "jr", ("jacobian",), 0, attacks=[("pgd", "linf", 0.1, 0.6)])
    table, gaps = verdicts(collect([tmp_path]))
    assert table.empty
    assert any("no per-example record" in g and "attack_examples.csv" in g for g in gaps)


# ----------------------------------------------------------------------------- the worst case
def worst_case_runs(root):
    """Run 'a' has per-example records of PGD, FGSM, AutoAttack and one of its components at
    L-inf 0.1 (FGSM lacks example 4) and of PGD alone at 0.2; run 'b' has only attacks.csv."""
    clean = [1, 1, 0, 1, 1]
    outcomes = {("pgd", "linf", 0.1): [1, 1, 0, 1, 1], ("fgsm", "linf", 0.1): [1, 0, 0, 1, None],
                ("autoattack", "linf", 0.1): [1, 1, 0, 0, 1], ("aa-apgd-ce", "linf", 0.1): [1, 1, 0, 1, 1],
                ("pgd", "linf", 0.2): [0, 0, 0, 1, 1], ("noise", "gaussian", 0.5): [0.0, 0.5, 0.0, 1.0, 1.0]}
    attacks = [("pgd", "linf", 0.1, 0.8), ("autoattack", "linf", 0.1, 0.6), ("pgd", "linf", 0.2, 0.4)]
    write_run(root, "a", ("none",), 0, attacks=attacks, examples=examples_table(clean, outcomes))
    write_run(root, "b", ("none",), 1, attacks=[("pgd", "linf", 0.1, 0.7)])
    return root


def test_worst_case_per_example_by_hand(tmp_path):
    worst_case_runs(tmp_path)
    table = pd.read_csv(tmp_path / "a" / "attack_examples.csv")
    w = worst_case_examples(table.assign(loss=table["loss"].fillna("none")))
    at = w[w["strength"] == 0.1].set_index("example")
    # examples 0-3 (FGSM has no row for 4): min over attacks = 1, 0 (FGSM), 0, 0 (AutoAttack)
    assert list(at.index) == [0, 1, 2, 3] and list(at["robust"]) == [1, 0, 0, 0]
    assert at["attacks"].iloc[0] == "pgd/ce64+fgsm/ce64+autoattack/ce64+aa-apgd-ce/ce64"
    assert at["n_left_out"].iloc[0] == 1

    c = collect([tmp_path])
    s = c.summary
    rows = s[(s["run_id"] == "a") & (s["attack"] == "worst-case")].set_index("strength")
    assert rows.loc[0.1, "value"] == pytest.approx(1 / 4) and rows.loc[0.1, "n"] == 4
    assert rows.loc[0.2, "value"] == pytest.approx(2 / 5) and rows.loc[0.2, "settings"].startswith("attacks=pgd/ce64")
    assert "left_out=1" in rows.loc[0.1, "settings"]
    assert any(g.run_id == "b" and g.item == "attack_examples.csv" and "falls back" in g.reason for g in c.gaps)

    runs = run_table(s).set_index("run_id")
    assert runs.loc["a", "robust_linf_acc"] == pytest.approx(0.25) and not runs.loc["a", "robust_linf_acc_fallback"]
    assert runs.loc["a", "pgd_linf_acc"] == pytest.approx(0.8) and runs.loc["a", "aa_linf_acc"] == pytest.approx(0.6)
    assert runs.loc["b", "robust_linf_acc"] == pytest.approx(0.7) and runs.loc["b", "robust_linf_acc_fallback"]
    text = format_wide(group_table(runs.reset_index(), by_seed_group=False)).set_index("run")
    assert text.loc["a", "robust acc % L∞ ε=0.1 (worst case)"] == "25.0"
    assert text.loc["b", "robust acc % L∞ ε=0.1 (worst case)"] == "70.0 (PGD only)"
    assert text.loc["a", "acc % AutoAttack-L∞ ε=0.1"] == "60.0" and text.loc["b", "acc % PGD-L∞ ε=0.1"] == "70.0"
    assert "acc % AutoAttack-L2 ε=1.5" not in text.columns  # no run has it


def test_worst_case_over_seeds_in_the_verdicts(tmp_path):
    clean = [1, 1, 1, 1]
    for seed, (pgd_plain, fgsm_plain, pgd_jr) in enumerate((([1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]),
                                                            ([1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]))):
        write_run(tmp_path, f"plain-s{seed}", ("none",), seed, examples=examples_table(
            clean, {("pgd", "linf", 0.1): pgd_plain, ("fgsm", "linf", 0.1): fgsm_plain}))
        write_run(tmp_path, f"jr-s{seed}", ("jacobian",), seed, examples=examples_table(
            clean, {("pgd", "linf", 0.1): pgd_jr}))
    table, _ = verdicts(collect([tmp_path]))
    r = row(table, "worst_case_acc", "linf 0.1")
    # worst case: plain 1/4 and 2/4 (FGSM breaks more than PGD), Jacobian 3/4 and 4/4: +50 points each seed
    assert r["diff"] == pytest.approx(50.0) and r["n_seeds"] == 2 and r["method"] == "paired t over seeds"
    line = verdict_lines(table[table["metric"] == "worst_case_acc"])[0]
    assert "L∞ 0.1 worst case: +50.0 points [50.0, 50.0]" in line and line.endswith(": better")


# ----------------------------------------------------------------------------- multiplicity
# The three_seeds family by hand: raw p of clean (paired t above) 0.026271, noise 1 (differences +2, -3, +1
# points: mean 0), PGD 0.0027435 and R_z 0.0027416 (scipy's ttest_rel, the same formula). Sorted: R_z, PGD,
# clean, noise.
P_RAW = {"clean_acc": 0.02627100887970472, "noise_acc": 1.0, "pgd_acc": 0.0027434893944259142,
         "R_z": 0.0027415798433777575}


def test_holm_over_the_report_family_by_hand(three_seeds):
    table, _ = verdicts(collect([three_seeds]), correction="holm")
    p = P_RAW
    # Holm: min(1, (m - i + 1) p_(i)), made non-decreasing: 4 p_R, max(4 p_R, 3 p_PGD), 2 p_clean, 1
    holm = {"R_z": 4 * p["R_z"], "pgd_acc": max(4 * p["R_z"], 3 * p["pgd_acc"]), "clean_acc": 2 * p["clean_acc"],
            "noise_acc": 1.0}
    for metric, strength in (("clean_acc", ""), ("noise_acc", "sigma 0.5"), ("pgd_acc", "linf 0.1"), ("R_z", "")):
        r = row(table, metric, strength)
        assert r["p_value"] == pytest.approx(p[metric], rel=1e-9)
        assert r["p_adjusted"] == pytest.approx(holm[metric], rel=1e-9) and r["correction"] == "holm"
    # clean: 2 x 0.0263 = 0.0525 > 0.05, so Holm turns its 'better' into no significant difference;
    # its interval stays the per-comparison 95% one, which excludes 0
    clean = row(table, "clean_acc")
    assert clean["verdict"] == "no significant difference" and clean["ci_low"] > 0
    assert row(table, "pgd_acc", "linf 0.1")["verdict"] == "worse" and row(table, "R_z")["verdict"] == "better"
    assert "changed 1 of the 3 raw better / worse verdicts" in correction_note(table)
    assert "Holm" in correction_note(table) and "2 remain" in correction_note(table)


def test_bh_and_none_over_the_report_family_by_hand(three_seeds):
    p = P_RAW
    bh, _ = verdicts(collect([three_seeds]))  # the default
    # BH step-up: p_(i) m / i, then the running minimum from the largest down
    expected = {"noise_acc": 1.0, "clean_acc": p["clean_acc"] * 4 / 3, "pgd_acc": p["pgd_acc"] * 4 / 2,
                "R_z": min(p["R_z"] * 4 / 1, p["pgd_acc"] * 4 / 2)}
    for metric in expected:
        r = bh[bh["metric"] == metric].iloc[0]
        assert r["p_adjusted"] == pytest.approx(expected[metric], rel=1e-9) and r["correction"] == "bh"
    assert row(bh, "clean_acc")["verdict"] == "better"  # 0.035 < 0.05
    none, _ = verdicts(collect([three_seeds]), correction="none")
    assert (none["p_adjusted"] == none["p_value"]).all() and set(none["correction"]) == {"none"}
    assert "No correction" in correction_note(none)
    assert list(raw_verdicts(bh)) == list(none["verdict"])
    with pytest.raises(UserError, match="--correction must be one of bh, holm, none"):
        verdicts(collect([three_seeds]), correction="bonferroni")


def test_apply_correction_recomputes_a_written_table():
    """p_adjusted over a table read back from verdicts.csv (the committed reports can be re-decided)."""
    base = dict(strength="", group="g", baseline="b", n_seeds=3, method="paired t over seeds")
    table = pd.DataFrame([dict(base, metric="clean_acc", diff=2.0, ci_low=1.0, ci_high=3.0, p_value=0.01),
                          dict(base, metric="clean_acc", diff=2.0, ci_low=1.0, ci_high=3.0, p_value=0.04),
                          dict(base, metric="R_z", diff=-2.0, ci_low=-3.0, ci_high=-1.0, p_value=0.03),
                          dict(base, metric="clean_acc", diff=-2.0, ci_low=-3.0, ci_high=-1.0, p_value=0.005)])
    holm = apply_correction(table, "holm")
    assert list(holm["p_adjusted"]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert list(holm["verdict"]) == ["better", "no significant difference", "no significant difference", "worse"]
    bh = apply_correction(table, "bh")
    assert list(bh["p_adjusted"]) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert list(bh["verdict"]) == ["better", "better", "better", "worse"]  # R_z: smaller is better


def test_compact_tables_leave_out_repeats():
    """Strength-0 rows with the clean row's numbers repeat it (a table written before repeats were
    dropped); one with numbers of its own stays ('= clean'); a worst case with PGD's numbers repeats PGD."""
    base = dict(group="g", baseline="b", n_seeds=3, method="paired t over seeds", correction="bh")
    numbers = dict(diff=5.0, ci_low=1.0, ci_high=9.0, p_value=0.01, p_adjusted=0.02, verdict="better")
    other = dict(diff=4.0, ci_low=-1.0, ci_high=9.0, p_value=0.1, p_adjusted=0.2, verdict="no significant difference")
    table = pd.DataFrame([dict(base, metric="clean_acc", strength="", **numbers),
                          dict(base, metric="noise_acc", strength="sigma 0", **numbers),
                          dict(base, metric="noise_acc", strength="sigma 0.5", **other),
                          dict(base, metric="worst_case_acc", strength="linf 0", **numbers),
                          dict(base, metric="worst_case_acc", strength="linf 0.1", **numbers),
                          dict(base, metric="worst_case_acc", strength="linf 0.2", **other),
                          dict(base, metric="pgd_acc", strength="linf 0", **numbers),
                          dict(base, metric="pgd_acc", strength="linf 0.1", **numbers),
                          dict(base, metric="pgd_acc", strength="linf 0.2", **numbers),
                          dict(base, metric="certified_acc", strength="l2 0", **numbers),
                          dict(base, metric="certified_acc", strength="linf 0", **other),  # other examples
                          dict(base, metric="R_z", strength="", **dict(numbers, p_adjusted=0.0004))])
    [(group, baseline, rows)] = compact_tables(table)
    assert (group, baseline) == ("g", "b") and list(rows.columns) == COMPACT_COLUMNS
    assert list(zip(rows["metric"], rows["strength"])) == [
        ("clean", ""), ("noise", "σ 0.5"), ("worst case", "L∞ 0.2"), ("PGD = worst case", "L∞ 0.1"),
        ("PGD", "L∞ 0.2"), ("certified (best deterministic certificate) = clean", "L∞ 0"), ("R_z", "")]
    first = rows.iloc[0]
    assert (first["difference [95% CI]"], first["adjusted p"], first["verdict"]) == ("+5.0 [+1.0, +9.0]", "0.02", "better")
    assert rows.iloc[1]["verdict"] == "n.s." and rows.iloc[-1]["adjusted p"] == "< 0.001"


@pytest.mark.slow
def test_cli_report_prints_the_verdicts(three_seeds, tmp_path):
    result = CliRunner().invoke(cli.app, ["report", str(three_seeds), "--out", str(tmp_path / "out"), "--no-cells"])
    assert result.exit_code == 0, result.output
    assert "lenet jacobian λ_JR=0.01 n_proj=1 vs lenet none (3 seeds)" in result.output
    assert "p (BH)" in result.output and "+5.3 [+1.5, +9.1]" in result.output and "better" in result.output
    holm = CliRunner().invoke(cli.app, ["report", str(three_seeds), "--out", str(tmp_path / "holm"), "--no-cells",
                                        "--correction", "holm"])
    assert holm.exit_code == 0, holm.output
    assert "p (Holm)" in holm.output
    written = pd.read_csv(tmp_path / "holm" / "verdicts.csv", keep_default_na=False)
    assert set(written["correction"]) == {"holm"} and row(written, "clean_acc")["verdict"] == "no significant difference"
    assert "--correction holm" in (tmp_path / "holm" / "report.md").read_text()
    bad = CliRunner().invoke(cli.app, ["report", str(three_seeds), "--correction", "bonferroni"])
    assert bad.exit_code == 2


def test_a_spec_names_the_correction(tmp_path, monkeypatch):
    from jrbench.cli.sweep import finish_sweep_report
    from jrbench.study.spec import parse_spec

    text = 'name = "s"\n[grid]\nseed = [0]\n[report]\ncorrection = "{}"\n'
    spec = parse_spec(text.format("holm"), "s.toml")
    assert spec.report.correction == "holm"
    with pytest.raises(UserError, match=r"line 5.*correction.*one of bh, holm, none"):
        parse_spec(text.format("sidak"), "s.toml")

    class Seen(Exception):  # the options the sweep's report would be written with
        pass

    def write_report(collection, out, options, **kw):
        raise Seen(options.correction)

    monkeypatch.setattr("jrbench.report.writer.write_report", write_report)
    monkeypatch.setattr("jrbench.analysis.results.collect", lambda paths: None)
    with pytest.raises(Seen) as seen:
        finish_sweep_report(tmp_path, tmp_path / "report", spec.report, "cpu", quiet=True)
    assert seen.value.args[0] == "holm"


def test_plain_runs_differing_only_in_unused_settings_are_one_baseline(tmp_path):
    """Options of a regularizer a run does not use (jr_every, jr_backend, lipschitz_bound,
    noise_sigma on a plain run) change nothing: those plain runs form one group, and the Jacobian
    group is paired with every seed of it. Group ids of default configs are those of earlier
    versions (pinned), so earlier reports keep their labels."""
    from jrbench.analysis.provenance import group_id

    assert group_id(tiny_config(("none",))) == "mnist-lenet-none-8a1847"
    assert group_id(tiny_config(("jacobian",))) == "mnist-lenet-jacobian-d77a02"
    assert group_id(tiny_config(("jacobian", "noise"))) == "mnist-lenet-jacobian+noise-4227d1"
    plain_acc, jr_acc = [0.75, 0.77, 0.81, 0.70], [0.80, 0.84, 0.85, 0.78]
    odd = [{}, {"jr_every": 4}, {"lipschitz_bound": 30.0, "jr_backend": "autograd"}, {"noise_sigma": 0.5}]
    for seed in range(4):
        run = write_run(tmp_path, f"plain-s{seed}", ("none",), seed, acc=plain_acc[seed])
        config = json.loads((run / "config.json").read_text())
        config["reg"].update(odd[seed])
        (run / "config.json").write_text(json.dumps(config))
        write_run(tmp_path, f"jr-s{seed}", ("jacobian",), seed, acc=jr_acc[seed])
    table, gaps = verdicts(collect([tmp_path]))
    clean = row(table, "clean_acc")
    assert clean["n_seeds"] == 4 and not [g for g in gaps if "baseline" in g], gaps
    diffs = np.subtract(jr_acc, plain_acc) * 100
    assert clean["diff"] == pytest.approx(diffs.mean())


def test_two_baseline_groups_of_one_recipe_are_a_gap(tmp_path):
    """A custom baseline rule that admits two groups of one recipe: the one with more runs is
    used and the other is named in a gap (before, the last one silently won)."""
    from jrbench.analysis.provenance import group_labels
    from jrbench.analysis.verdicts import comparisons

    for seed in range(3):
        write_run(tmp_path, f"l2-s{seed}", ("l2",), seed)
        write_run(tmp_path, f"jr-s{seed}", ("jacobian",), seed)
    write_run(tmp_path, "drop-s0", ("dropout",), 0)
    records = collect([tmp_path]).runs
    labels = group_labels(records)
    found, gaps = comparisons(records, labels, is_baseline=lambda c: c.reg.names != ["jacobian"])
    (only,) = found
    assert only.baseline.startswith("mnist-lenet-l2-") and len(only.baseline_runs) == 3
    assert any("second baseline group" in g and "dropout" in g for g in gaps), gaps


# ----------------------------------------------------------------------------- one verdict per measurement
def write_certificates(run, clean, radius, grid, examples):
    """certify.csv and certify_examples.csv of a Lipschitz certificate (L-inf) written by hand."""
    n = len(clean)
    rows = [{"method": "lipschitz", "norm": "linf", "strength": eps, "sigma": -1.0,
             "certified_acc": sum(c and r >= eps for c, r in zip(clean, radius)) / n, "ci_low": 0.0, "ci_high": 1.0,
             "n_examples": n, "n_certified": 0, "seconds": 0.1, "settings": "float64", "example_seed": 0}
            for eps in grid]
    pd.DataFrame(rows).to_csv(run / "certify.csv", index=False)
    pd.DataFrame([{"example": e, "method": "lipschitz", "norm": "linf", "sigma": -1.0, "radius": r, "predicted": 0,
                   "abstain": False, "label": 0, "clean_correct": c, "example_seed": 0, "seed": 0}
                  for e, r, c in zip(examples, radius, clean)]).to_csv(run / "certify_examples.csv", index=False)


@pytest.fixture
def zero_strength_runs(tmp_path):
    """Plain and Jacobian, 3 seeds. Noise σ 0 on the whole test set (its accuracy is test_acc);
    PGD at L-inf 0 and 0.1 on 4 fixed examples (their clean accuracy differs from test_acc); a
    Lipschitz certificate whose examples 0-3 are classified correctly as often as the attacked
    ones, but not the same ones (certify_examples.csv: the attacked clean pattern reversed)."""
    test_acc = {"plain": [0.75, 0.77, 0.81], "jr": [0.80, 0.84, 0.85]}
    clean = {"plain": [[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]], "jr": [[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 0]]}
    pgd = {"plain": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]], "jr": [[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 1, 0]]}
    noise = {"plain": [0.70, 0.72, 0.69], "jr": [0.78, 0.75, 0.79]}
    for name, regs in (("plain", ("none",)), ("jr", ("jacobian",))):
        for seed in range(3):
            c, p = clean[name][seed], pgd[name][seed]
            ex = examples_table(c, {("pgd", "linf", 0.0): c, ("pgd", "linf", 0.1): p})
            run = write_run(tmp_path / "runs", f"{name}-s{seed}", regs, seed, acc=test_acc[name][seed], examples=ex,
                            attacks=[("noise", "gaussian", 0.0, test_acc[name][seed]),
                                     ("noise", "gaussian", 0.5, noise[name][seed]),
                                     ("pgd", "linf", 0.0, np.mean(c)), ("pgd", "linf", 0.1, np.mean(p))])
            write_certificates(run, c[::-1], [0.5] * 4, [0.0, 0.1], examples=range(4))
    return tmp_path / "runs"


def test_a_strength_0_repeat_is_no_verdict_and_the_family_is_the_distinct_comparisons(zero_strength_runs):
    table, _ = verdicts(collect([zero_strength_runs]))
    keys = list(zip(table["metric"], table["strength"]))
    # noise σ 0 has test_acc's value in every run: the clean row stands for it
    assert ("noise_acc", "sigma 0") not in keys and row(table, "clean_acc")["stands_for"] == "noise_acc sigma 0"
    # PGD at L-inf 0 is the worst case at L-inf 0 (the same examples): one verdict, the clean accuracy of the
    # 4 attacked examples, a measurement of its own (test_acc is over the whole test set)
    assert ("pgd_acc", "linf 0") not in keys
    zero = row(table, "worst_case_acc", "linf 0")
    assert zero["stands_for"] == "pgd_acc linf 0" and zero["diff"] != row(table, "clean_acc")["diff"]
    # plain 1/2, 3/4, 1/4 and Jacobian 3/4, 1, 3/4 of the 4 examples: +25, +25, +50 points
    assert zero["diff"] == pytest.approx(100 / 3)
    # certified at L-inf 0 has the same per-run values but other examples correct: a distinct measurement
    certified = row(table, "certified_acc", "linf 0")
    assert certified["stands_for"] == "" and certified["diff"] == pytest.approx(zero["diff"])
    assert certified["p_value"] == pytest.approx(zero["p_value"])
    assert len(table) == 9  # clean, noise 0.5, worst case 0 and 0.1, PGD 0.1, certified 0 and 0.1, radius, R_z
    assert ("certified_radius", "linf") in keys and ("R_z", "") in keys
    # the BH family is these 9 rows: with the 2 repeats as rows of their own the adjusted p would differ
    p = table["p_value"].to_numpy(float)
    assert np.allclose(table["p_adjusted"], stats.adjust_p_values(p, "bh"), rtol=1e-12)
    repeats = np.array([row(table, "clean_acc")["p_value"], zero["p_value"]])
    with_repeats = stats.adjust_p_values(np.concatenate([p, repeats]), "bh")[:len(p)]
    assert not np.allclose(table["p_adjusted"], with_repeats)
    note = correction_note(table)
    assert note.startswith("The family is the report's 9 distinct comparisons, the rows of verdicts.csv")
    assert "; 2 strength-0 rows with the same data as another row" in note
    lines = verdict_lines(table)
    assert any(", clean accuracy (also noise σ 0: the same data): " in line for line in lines)
    assert any(", L∞ 0 worst case (also PGD-L∞ 0: the same data): " in line for line in lines)


def test_the_report_says_how_many_distinct_comparisons(zero_strength_runs, tmp_path):
    result = write_report(collect([zero_strength_runs]), tmp_path / "out", ReportOptions(cells=False))
    written = pd.read_csv(tmp_path / "out" / "verdicts.csv", keep_default_na=False)
    assert len(written) == len(result.verdicts) == 9
    assert set(written["stands_for"]) == {"", "noise_acc sigma 0", "pgd_acc linf 0"}
    for name in ("summary.md", "report.md"):
        assert "The family is the report's 9 distinct comparisons" in (tmp_path / "out" / name).read_text()
    printed = CliRunner().invoke(cli.app, ["report", str(zero_strength_runs), "--out", str(tmp_path / "cli"),
                                           "--no-cells"])
    assert printed.exit_code == 0, printed.output
    assert "9 distinct comparisons" in printed.output and "worst case = clean" in printed.output


def test_one_seed_repeats_are_found_per_example(tmp_path):
    """One seed: noise σ 0 and PGD at L-inf 0 on the same 6 examples as the clean row are repeats;
    noise σ 0 on only 3 of them is not (other data)."""
    clean = {"plain": [1, 1, 0, 1, 0, 1], "jr": [1, 1, 1, 1, 1, 0]}
    for name, regs in (("plain", ("none",)), ("jr", ("jacobian",))):
        c = clean[name]
        ex = examples_table(c, {("noise", "gaussian", 0.0): c, ("pgd", "linf", 0.0): c,
                                ("pgd", "linf", 0.1): [0] * 6, ("noise", "gaussian", 0.5): [0.5] * 6})
        write_run(tmp_path / "a", name, regs, 0, examples=ex,
                  attacks=[("pgd", "linf", 0.1, 0.0), ("pgd", "linf", 0.0, np.mean(c))])
    table, _ = verdicts(collect([tmp_path / "a"]))
    assert list(zip(table["metric"], table["strength"])) == [
        ("clean_acc", ""), ("noise_acc", "sigma 0.5"), ("worst_case_acc", "linf 0.1"), ("pgd_acc", "linf 0.1")]
    assert row(table, "clean_acc")["stands_for"] == "noise_acc sigma 0; worst_case_acc linf 0; pgd_acc linf 0"
    for name, regs in (("plain", ("none",)), ("jr", ("jacobian",))):
        c = clean[name]
        ex = examples_table(c, {("noise", "gaussian", 0.0): c[:3] + [None] * 3, ("pgd", "linf", 0.1): [0] * 6})
        write_run(tmp_path / "b", name, regs, 0, examples=ex, attacks=[("pgd", "linf", 0.1, 0.0)])
    table, _ = verdicts(collect([tmp_path / "b"]))
    assert row(table, "noise_acc", "sigma 0")["stands_for"] == "" and row(table, "clean_acc")["stands_for"] == ""


# ----------------------------------------------------------------------------- --versus
def test_versus_compares_across_recipes_with_each_named_baseline_in_turn(tmp_path):
    """--versus none --versus jacobian: a group of another recipe (here another learning rate,
    as an IBP model trained longer) is compared with the plain and with the Jacobian group; the
    Jacobian group with the plain one only; the plain one with nothing. Without --versus the
    other-recipe group has no partner (a gap)."""
    plain, jr, ibp = [0.75, 0.77, 0.81], [0.80, 0.84, 0.85], [0.90, 0.91, 0.95]
    for seed in range(3):
        write_run(tmp_path, f"plain-s{seed}", ("none",), seed, acc=plain[seed])
        write_run(tmp_path, f"jr-s{seed}", ("jacobian",), seed, acc=jr[seed])
        write_run(tmp_path, f"ibp-s{seed}", ("ibp",), seed, acc=ibp[seed], lr=0.01)
    collection = collect([tmp_path])
    table, gaps = verdicts(collection, versus=["none", "jacobian"])
    clean = table[table["metric"] == "clean_acc"]
    pairs = {(g.split()[1], b.split()[1]): d for g, b, d in zip(clean["group"], clean["baseline"], clean["diff"])}
    assert set(pairs) == {("jacobian", "none"), ("ibp", "none"), ("ibp", "jacobian")}, pairs
    assert pairs[("ibp", "jacobian")] == pytest.approx(np.mean(np.subtract(ibp, jr)) * 100)
    assert pairs[("ibp", "none")] == pytest.approx(np.mean(np.subtract(ibp, plain)) * 100)
    assert not [g for g in gaps if "versus" in g], gaps
    plain_only, gaps = verdicts(collection)
    assert set(plain_only["group"]) == {"lenet jacobian λ_JR=0.01 n_proj=1"}
    assert any(g.startswith("lenet ibp") and "no plain" in g for g in gaps), gaps
    model, _ = verdicts(collection, versus=["lenet:none"])  # MODEL:REG names the same group
    assert len(model) == len(table[table["baseline"] == "lenet none"])


def test_versus_and_plain_comparisons_name_two_runs_of_one_seed_once(tmp_path):
    """Two baseline runs with seed 0: both ways of pairing use the first by run id and say so in
    one gap, however many groups are compared with that baseline."""
    for seed in range(3):
        write_run(tmp_path, f"plain-s{seed}", ("none",), seed, acc=0.7 + 0.01 * seed)
        write_run(tmp_path, f"jr-s{seed}", ("jacobian",), seed, acc=0.8 + 0.01 * seed)
        write_run(tmp_path, f"ibp-s{seed}", ("ibp",), seed, acc=0.9 + 0.01 * seed)
    write_run(tmp_path, "plain-s0-again", ("none",), 0, acc=0.1)
    collection = collect([tmp_path])
    for versus in (None, ["none"]):
        table, gaps = verdicts(collection, versus=versus)
        shared = [g for g in gaps if "share seed 0" in g]
        assert len(shared) == 1 and "plain-s0 is used" in shared[0], gaps
        clean = table[(table["metric"] == "clean_acc") & table["group"].str.startswith("lenet jacobian")]
        assert clean["diff"].iloc[0] == pytest.approx(10.0)  # 0.8 - 0.7 at every seed: the 0.1 run is unused


def test_versus_that_names_no_group_is_a_clear_error(tmp_path):
    for seed in range(2):
        write_run(tmp_path, f"plain-s{seed}", ("none",), seed)
    with pytest.raises(UserError, match=r"--versus 'jacobain' names no group.*lenet:none"):
        verdicts(collect([tmp_path]), versus=["jacobain"])
    with pytest.raises(UserError, match=r"--versus 'mlp:none' names no group"):
        verdicts(collect([tmp_path]), versus=["mlp:none"])
    result = CliRunner().invoke(cli.app, ["report", str(tmp_path), "--out", str(tmp_path / "out"), "--no-cells",
                                          "--versus", "jacobain"])
    assert result.exit_code == 2 and "names no group" in result.output and "Traceback" not in result.output


def test_a_spec_names_the_baselines(tmp_path):
    from jrbench.report.writer import report_command_line
    from jrbench.study.spec import parse_spec

    spec = parse_spec('name = "s"\n[grid]\nseed = [0]\n[report]\nversus = ["none", "jacobian"]\n', "s.toml")
    assert spec.report.versus == ["none", "jacobian"]
    options = ReportOptions.from_config(spec.report)
    assert "--versus none --versus jacobian" in report_command_line([tmp_path], tmp_path / "out", options)
