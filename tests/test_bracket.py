"""The bracket in the report: attacked against certified accuracy with CROWN, alpha-CROWN and
complete verification, the unknown share and the gap, exact robust accuracy and the attacks'
over-report where every example is decided, the soundness checks of the tight certificates, and
the verdicts on verified robustness.

No training and no certifying: each fake run is a config.json, a model.pt (empty, or a freshly
built LeNet where the counterexamples must be re-run) and the tables the report reads, written by
hand, so every expected number below is counted by hand from them.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import tiny_config
from jrbench import stats
from jrbench.analysis.bracket import bracket_examples
from jrbench.analysis.results import BRACKET, collect
from jrbench.analysis.verdicts import correction_note, verdict_lines, verdicts
from jrbench.report.table import bracket_table, exact_table
from jrbench.report.writer import ReportOptions, write_report

IDS = 100  # example k is test example IDS + k: the report must go by example, not by position


def write_cert_run(root, name, regs=("none",), seed=0, *, clean, radii, grid, attacks=None, bounds=None,
                   steps=40, model=False):
    """A run directory with certificates written by hand.

    ``clean``: per example 0/1; ``radii``: {method: per-example radius} (L-inf; closed-ball methods
    give the largest eps of ``grid`` they certify); ``attacks``: {(attack, eps): per-example broken
    0/1} (L-inf, loss ce64); ``bounds``: {eps: per-example status} of complete verification
    (certify_bounds.csv); ``model``: a real LeNet in model.pt (else an empty file)."""
    config = tiny_config(regs, seed=seed)
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(config.to_dict()))
    if model:
        from jrbench.data.datasets import DATASETS
        from jrbench.models.architectures import build_model

        info = DATASETS.get("mnist").info
        torch.manual_seed(seed)
        net = build_model("lenet", info.input_shape, info.num_classes, info.mean, info.std, 0.0)
        torch.save({"state_dict": net.state_dict(), "config": config.to_dict()}, run / "model.pt")
    else:
        (run / "model.pt").write_bytes(b"")
    n = len(clean)
    pd.DataFrame({"epoch": [1, 2], "test_acc": [0.5, float(np.mean(clean))], "test_R_z": [2.0, 1.0]}).to_csv(
        run / "metrics.csv", index=False)
    examples = [IDS + k for k in range(n)]
    cert_rows, ex_rows = [], []
    for method, radius in radii.items():
        for eps in grid:
            k = sum(c and r >= eps for c, r in zip(clean, radius))
            cert_rows.append({"method": method, "norm": "linf", "strength": eps, "sigma": -1.0,
                              "certified_acc": k / n, "ci_low": 0.0, "ci_high": 1.0, "n_examples": n,
                              "n_certified": k, "seconds": 0.1, "settings": "float64", "example_seed": 0})
        ex_rows += [{"example": e, "method": method, "norm": "linf", "sigma": -1.0, "radius": r, "predicted": 0,
                     "abstain": False, "label": 0, "clean_correct": c, "example_seed": 0, "seed": 0}
                    for e, r, c in zip(examples, radius, clean)]
    pd.DataFrame(cert_rows).to_csv(run / "certify.csv", index=False)
    pd.DataFrame(ex_rows).to_csv(run / "certify_examples.csv", index=False)
    if attacks:
        rows, summary = [], []
        for (attack, eps), broken in attacks.items():
            rows += [{"example": e, "attack": attack, "norm": "linf", "strength": eps, "loss": "ce64",
                      "clean_correct": c, "robust": int(c and not b), "broken": int(c and b), "example_seed": 0,
                      "label": 0, "seed": 0} for e, c, b in zip(examples, clean, broken)]
            summary.append({"attack": attack, "norm": "linf", "strength": eps, "loss": "ce64",
                            "accuracy": np.mean([c and not b for c, b in zip(clean, broken)]), "n_examples": n,
                            "steps": steps if attack == "pgd" else np.nan, "restarts": 1, "seed": 0,
                            "example_seed": 0})
        pd.DataFrame(rows).to_csv(run / "attack_examples.csv", index=False)
        pd.DataFrame(summary).to_csv(run / "attacks.csv", index=False)
    if bounds:
        rows = [{"example": e, "method": "complete", "norm": "linf", "eps": eps, "status": status,
                 "by": "milp", "margin_lower": np.nan, "seconds": 0.1, "example_seed": 0}
                for eps, statuses in bounds.items() for e, status in zip(examples, statuses)]
        pd.DataFrame(rows).to_csv(run / "certify_bounds.csv", index=False)
    return run


def bracket_value(summary, quantity, eps, run_id=None, attack=None):
    sel = summary[(summary["table"] == BRACKET) & (summary["quantity"] == quantity)
                  & np.isclose(summary["strength"], eps)]
    if run_id is not None:
        sel = sel[sel["run_id"] == run_id]
    if attack is not None:
        sel = sel[sel["attack"] == attack]
    assert len(sel) == 1, (quantity, eps, attack, len(sel))
    return float(sel["value"].iloc[0])


# ----------------------------------------------------------------------------- unknown share and gap
# 10 examples at L-inf 0, 0.1, 0.2. Example 0 misclassified; CROWN certifies 1 and 2 to 0.2, 3, 4 and 9
# to 0.1; complete verification verifies 3 at 0.2, falsifies 6 at 0.1 (PGD missed it) and 9 at 0.2,
# leaves 4, 7 and 8 unknown; PGD breaks 5 at 0.1 and 7 at 0.2, FGSM 8 at 0.2.
CLEAN = [0, 1, 1, 1, 1, 1, 1, 1, 1, 1]
MIXED = dict(
    clean=CLEAN, grid=[0.0, 0.1, 0.2],
    radii={"crown": [0, 0.2, 0.2, 0.1, 0.1, 0, 0, 0, 0, 0.1],
           "complete": [0, 0.2, 0.2, 0.2, 0.1, 0, 0, 0, 0, 0.1]},
    attacks={("pgd", 0.0): [0] * 10, ("fgsm", 0.0): [0] * 10,
             ("pgd", 0.1): [0, 0, 0, 0, 0, 1, 0, 0, 0, 0], ("fgsm", 0.1): [0] * 10,
             ("pgd", 0.2): [0, 0, 0, 0, 0, 1, 0, 1, 0, 0], ("fgsm", 0.2): [0, 0, 0, 0, 0, 0, 0, 0, 1, 0]},
    bounds={0.0: ["misclassified"] + ["verified"] * 9,
            0.1: ["misclassified", "verified", "verified", "verified", "verified", "falsified", "falsified",
                  "unknown", "unknown", "verified"],
            0.2: ["misclassified", "verified", "verified", "verified", "unknown", "falsified", "falsified",
                  "unknown", "unknown", "falsified"]})


def test_unknown_share_and_gap_by_hand(tmp_path):
    write_cert_run(tmp_path, "plain", **MIXED)
    collection = collect([tmp_path])
    assert collection.errors == []
    s = collection.summary
    # eps 0.1: certified {1, 2, 3, 4, 9}; broken {0 misclassified, 5 PGD, 6 falsified}; unknown {7, 8};
    # the worst case over PGD and FGSM keeps {1, 2, 3, 4, 6, 7, 8, 9}: 0.8, so the gap is 80 - 50 = 30 points,
    # more than the unknown share (20): the attacks missed example 6, which complete verification falsified
    # eps 0.2: certified {1, 2, 3} (3 by complete verification only); broken {0, 5, 6 (falsified at 0.1),
    # 7, 8, 9}; unknown {4}; worst case {1, 2, 3, 4, 6, 9}: 0.6, gap 30 points
    expected = {0.1: (0.5, 0.3, 0.2, 0.8), 0.2: (0.3, 0.6, 0.1, 0.6)}
    for eps, (cert, broken, unknown, worst) in expected.items():
        certified = s[(s["table"] == "certify") & (s["attack"] == "certified") & (s["quantity"] == "accuracy")
                      & np.isclose(s["strength"], eps)]
        assert certified["value"].tolist() == [pytest.approx(cert)]
        assert "complete+crown" in certified["settings"].iloc[0]  # the tight certificates are in the best one
        assert bracket_value(s, "broken_share", eps) == pytest.approx(broken)
        assert bracket_value(s, "unknown_share", eps) == pytest.approx(unknown)
        assert bracket_value(s, "gap", eps) == pytest.approx(worst - cert)
        assert not (s["quantity"] == "exact_accuracy")[np.isclose(s["strength"], eps)].any()  # not exact there
    lo, hi = stats.wilson_interval(2, 10)
    row = s[(s["quantity"] == "unknown_share") & np.isclose(s["strength"], 0.1)].iloc[0]
    assert (row["ci_low"], row["ci_high"], row["n"]) == (pytest.approx(lo), pytest.approx(hi), 10)
    assert "complete verification" in row["settings"] and "fgsm+pgd" in row["settings"]
    # radius 0: every example decided (certified when correct, else misclassified): exact, no over-report
    assert bracket_value(s, "exact_accuracy", 0.0) == pytest.approx(0.9)
    assert bracket_value(s, "over_report", 0.0, attack="pgd") == 0
    # the per-example table behind it
    per = bracket_examples(pd.read_csv(tmp_path / "plain" / "certify_examples.csv"),
                           pd.read_csv(tmp_path / "plain" / "certify.csv"),
                           pd.read_csv(tmp_path / "plain" / "attack_examples.csv"),
                           pd.read_csv(tmp_path / "plain" / "certify_bounds.csv"))
    at = per[np.isclose(per["strength"], 0.1)].set_index("example")
    assert at.index[at["unknown"] == 1].tolist() == [IDS + 7, IDS + 8]
    assert at.loc[IDS + 6, ["attacked_broken", "falsified"]].tolist() == [0, 1]
    # the report's bracket table: the tight methods' own columns, unknown and gap
    table = bracket_table(s).set_index("ε")
    assert {"crown", "complete", "unknown", "gap (points)"} <= set(table.columns) and "alpha-crown" not in table
    assert table.loc["0.1", ["certified (best)", "attacked (worst case)", "unknown", "gap (points)"]].tolist() == \
        ["50.0", "80.0", "20.0", "30.0"]
    assert exact_table(s).empty  # exact only at radius 0, which the table leaves out


def test_a_run_without_bounds_or_attacks_still_gets_its_shares(tmp_path):
    spec = dict(MIXED, attacks=None, bounds=None)
    write_cert_run(tmp_path, "plain", **spec)
    s = collect([tmp_path]).summary
    # nothing is known broken but example 0 (misclassified): eps 0.2 leaves 10 - 1 - 3 certified = 6 unknown
    assert bracket_value(s, "unknown_share", 0.2) == pytest.approx(0.6)
    assert not (s["quantity"] == "gap").any()  # no worst case measured: no gap


# ----------------------------------------------------------------------------- exact where all is decided
# Example 0 misclassified; complete verification verifies 1-5 and falsifies 6, 7, 8 at 0.1, 9 broken by PGD;
# PGD breaks 9 only, FGSM 8 and 9, AutoAttack 6, 8 and 9.
EXACT = dict(
    clean=CLEAN, grid=[0.0, 0.1], radii={"complete": [0, 0.1, 0.1, 0.1, 0.1, 0.1, 0, 0, 0, 0]},
    attacks={("pgd", 0.1): [0, 0, 0, 0, 0, 0, 0, 0, 0, 1], ("fgsm", 0.1): [0, 0, 0, 0, 0, 0, 0, 0, 1, 1],
             ("autoattack", 0.1): [0, 0, 0, 0, 0, 0, 1, 0, 1, 1]},
    bounds={0.1: ["misclassified"] + ["verified"] * 5 + ["falsified"] * 4})


def test_exact_accuracy_and_the_attacks_over_report(tmp_path):
    write_cert_run(tmp_path, "plain", **EXACT)
    collection = collect([tmp_path])
    assert collection.errors == []
    s = collection.summary
    assert bracket_value(s, "unknown_share", 0.1) == 0
    assert bracket_value(s, "exact_accuracy", 0.1) == pytest.approx(0.5)  # 5 of 10 verified
    # PGD keeps 1-8 (80%), FGSM 1-7 (70%), AutoAttack and the worst case 1-5 and 7 (60%)
    for attack, over in (("pgd", 0.3), ("fgsm", 0.2), ("autoattack", 0.1), ("worst-case", 0.1)):
        assert bracket_value(s, "over_report", 0.1, attack=attack) == pytest.approx(over), attack
    assert bracket_value(s, "gap", 0.1) == pytest.approx(0.1)  # the worst case (60) minus certified (50)
    table = exact_table(s)
    assert table[["norm", "ε", "exact robust acc %", "PGD-40 over-report", "AutoAttack over-report",
                  "FGSM over-report", "worst case over-report"]].values.tolist() == [
        ["linf", "0.1", "50.0", "+30.0", "+10.0", "+20.0", "+10.0"]]


@pytest.mark.slow
def test_the_report_shows_the_bracket_the_exact_table_and_the_plot(tmp_path, capsys):
    write_cert_run(tmp_path / "runs", "plain", **MIXED)
    write_cert_run(tmp_path / "runs", "jr", ("jacobian",), **EXACT)
    result = write_report(collect([tmp_path / "runs"]), tmp_path / "out", ReportOptions(cells=False))
    assert capsys.readouterr().out == ""  # the library never prints
    out = tmp_path / "out"
    assert (out / "bracket_linf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "bracket_l2.png").exists()  # no certificate at L2: no plot, and no gap for it
    assert not any("bracket" in g for g in result.gaps)
    report = (out / "report.md").read_text()
    bracket = report[report.index("## Certified and attacked accuracy"):report.index("## Verdicts")]
    assert "| unknown | gap (points) |" in bracket and "### Exact robust accuracy" in bracket
    assert "| lenet jacobian λ_JR=0.01 n_proj=1 | linf | 0.1 | 50.0 | +30.0 | +10.0 | +20.0 | +10.0 |" in bracket
    assert "no attack broke an example" in bracket
    assert "](bracket_linf.png)" in report and "★ where none is unknown" in report
    assert "### Exact robust accuracy" in (out / "summary.md").read_text()
    summary = pd.read_csv(out / "summary.csv")
    assert {"broken_share", "unknown_share", "gap", "exact_accuracy", "over_report"} <= set(
        summary.loc[summary["table"] == BRACKET, "quantity"])
    assert set(summary.loc[summary["table"] == BRACKET, "source"]) == {"certify_examples.csv"}


# ----------------------------------------------------------------------------- soundness
def test_a_crown_certificate_an_attack_contradicts_is_an_error(tmp_path):
    spec = dict(MIXED, radii={"crown": [0, 0.2, 0.2, 0.1, 0.1, 0.2, 0, 0, 0, 0.1]})  # CROWN covers 5 to 0.2
    write_cert_run(tmp_path, "plain", **{**spec, "bounds": None})
    errors = collect([tmp_path]).errors
    # PGD broke example 5 at 0.1 and at 0.2: both inside CROWN's closed ball of 0.2
    assert len(errors) == 2 and all(f"example {IDS + 5}: crown certifies it within linf radius 0.2" in e
                                    for e in errors)
    assert {"eps 0.1", "eps 0.2"} == {e.split("broke it at ")[1].split(":")[0] for e in errors}


@pytest.mark.parametrize("method", ["alpha-crown", "complete"])
def test_the_other_tight_certificates_are_checked_too(tmp_path, method):
    write_cert_run(tmp_path, "plain", clean=CLEAN, grid=[0.0, 0.1], radii={method: [0, 0.1] + [0] * 8},
                   attacks={("fgsm", 0.1): [0, 1] + [0] * 8})
    errors = collect([tmp_path]).errors
    assert len(errors) == 1 and f"example {IDS + 1}: {method} certifies it within linf radius 0.1" in errors[0]


def test_complete_verification_contradicted_in_certify_bounds_is_an_error(tmp_path):
    # certify_examples.csv has CROWN only; certify_bounds.csv says complete verification verified example 4
    # at 0.1, which FGSM broke there, and falsified example 1, which CROWN certifies to 0.2
    write_cert_run(tmp_path, "plain", clean=CLEAN, grid=[0.0, 0.1], radii={"crown": [0, 0.2] + [0] * 8},
                   attacks={("fgsm", 0.1): [0, 0, 0, 0, 1, 0, 0, 0, 0, 0]},
                   bounds={0.1: ["misclassified", "falsified", "unknown", "unknown", "verified"] + ["unknown"] * 5})
    errors = sorted(collect([tmp_path]).errors)
    assert len(errors) == 2, errors
    assert f"example {IDS + 1}: complete verification falsified it at linf eps 0.1" in errors[0]
    assert "crown certifies it within radius 0.2" in errors[0]
    assert f"example {IDS + 4}: complete calls it verified at linf eps 0.1" in errors[1]
    assert "fgsm (ce64) broke it at eps 0.1" in errors[1]


def test_an_unconfirmed_counterexample_is_an_error(tmp_path):
    run = write_cert_run(tmp_path, "plain", clean=CLEAN, grid=[0.0, 0.1], model=True,
                         radii={"complete": [0] * 10}, bounds={0.1: ["misclassified"] + ["falsified"] * 9})
    from jrbench.training.rundir import load_run

    model, _ = load_run(run, "cpu")
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(3, 1, 28, 28, generator=g) * 0.8 + 0.1
    x = clean.clone()
    x[2] += 0.5  # outside the ball of 0.1
    with torch.no_grad():
        predicted = model(x).argmax(1)
    # example 1: label != prediction (confirmed); 2: the model predicts its label (not confirmed); 3: out of the ball
    labels = torch.stack([(predicted[0] + 1) % 10, predicted[1], (predicted[2] + 1) % 10])
    torch.save({"example": torch.tensor([IDS + 1, IDS + 2, IDS + 3]), "eps": torch.full((3,), 0.1, dtype=torch.float64),
                "label": labels, "predicted": labels, "x": x, "clean": clean,
                "example_seed": torch.zeros(3, dtype=torch.long)}, run / "certify_counterexamples.pt")
    collection = collect([tmp_path])
    errors = collection.errors
    assert len(errors) == 2, errors
    assert f"example {IDS + 2}: the counterexample at L-inf eps 0.1" in errors[0] and "classifies it as" in errors[0]
    assert f"example {IDS + 3}:" in errors[1] and "outside the ball" in errors[1]
    result = write_report(collection, tmp_path / "out", ReportOptions(cells=False))
    assert result.errors == errors and "- ERROR: plain: example 102" in (tmp_path / "out" / "report.md").read_text()


def test_a_counterexamples_file_that_cannot_be_rechecked_is_a_gap(tmp_path):
    run = write_cert_run(tmp_path, "plain", **EXACT)  # model.pt is empty: the model cannot be loaded
    (run / "certify_counterexamples.pt").write_bytes(b"not a file torch wrote")
    collection = collect([tmp_path])
    assert collection.errors == []
    assert any("certify_counterexamples.pt: not re-checked" in str(g) for g in collection.gaps)


# ----------------------------------------------------------------------------- verdicts
def three_seed_runs(root):
    """Plain and Jacobian, seeds 0-2, CROWN and complete verification only (no Lipschitz, no IBP): the
    certified shares at L-inf 0.1 are 2, 3, 2 of 10 (plain) and 5, 6, 6 of 10 (Jacobian)."""
    radii = {}
    for name, counts in (("plain", [2, 3, 2]), ("jr", [5, 6, 6])):
        for seed, k in enumerate(counts):
            crown = [0.2] * (k - 1) + [0.0] * (10 - k + 1)
            complete = [0.1 if i == k - 1 else 0.0 for i in range(10)]  # one more, by complete verification only
            radii[name, seed] = (crown, complete)
            write_cert_run(root, f"{name}-s{seed}", ("none",) if name == "plain" else ("jacobian",), seed,
                           clean=[1] * 10, grid=[0.0, 0.1, 0.2], radii={"crown": crown, "complete": complete})
    return radii


def test_verified_robustness_verdicts_over_seeds(tmp_path):
    radii = three_seed_runs(tmp_path)
    table, gaps = verdicts(collect([tmp_path]))
    acc = table[(table["metric"] == "certified_acc") & (table["strength"] == "linf 0.1")]
    assert len(acc) == 1
    assert acc["diff"].iloc[0] == pytest.approx(100 * np.mean([0.5 - 0.2, 0.6 - 0.3, 0.6 - 0.2]))
    assert acc["method"].iloc[0] == "paired t over seeds" and acc["n_seeds"].iloc[0] == 3
    # at L-inf 0 every run certifies its clean accuracy, test_acc here: the clean row stands for it (one family
    # member, not two)
    assert set(table.loc[table["metric"] == "certified_acc", "strength"]) == {"linf 0.1", "linf 0.2"}
    assert table.loc[table["metric"] == "clean_acc", "stands_for"].tolist() == ["certified_acc linf 0"]
    radius = table[table["metric"] == "certified_radius"]
    best = {key: np.median(np.maximum(*map(np.asarray, r))) for key, r in radii.items()}
    assert radius["strength"].tolist() == ["linf"]
    assert radius["diff"].iloc[0] == pytest.approx(np.mean([best["jr", s] - best["plain", s] for s in range(3)]))
    # one family: the new verdicts are adjusted together with the others (BH over every row)
    assert set(table["correction"]) == {"bh"} and {"clean_acc", "R_z"} <= set(table["metric"])
    np.testing.assert_allclose(table["p_adjusted"], stats.adjust_p_values(table["p_value"].to_numpy(float), "bh"))
    assert f"The family is the report's {len(table)} distinct comparisons" in correction_note(table)
    lines = verdict_lines(table)
    assert any("L∞ 0.1 certified" in line and "best deterministic certificate" not in line for line in lines)
    assert any("median certified L∞ radius" in line for line in lines)


def test_verified_robustness_verdicts_with_one_seed(tmp_path):
    for name, regs, k in (("plain", ("none",), 2), ("jr", ("jacobian",), 8)):
        write_cert_run(tmp_path, name, regs, 0, clean=[1] * 10, grid=[0.0, 0.1],
                       radii={"alpha-crown": [0.1] * k + [0.0] * (10 - k)},
                       attacks={("pgd", 0.1): [0] * 10})
    table, _ = verdicts(collect([tmp_path]))
    acc = table[(table["metric"] == "certified_acc") & (table["strength"] == "linf 0.1")].iloc[0]
    assert acc["diff"] == pytest.approx(60.0) and acc["method"].startswith("McNemar exact (10 examples, b = 0, c = 6")
    assert (table["metric"] == "certified_radius").sum() == 1
