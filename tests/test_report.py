"""jrbench report: collect run directories into a tidy table, aggregate, plot, cross-section.

Three tiny runs trained on the toy data of conftest (plain seeds 0 and 1, Jacobian seed 0),
attacked and measured with tiny settings; the Jacobian run has no margins (a gap).
"""
from __future__ import annotations

import os
import json
import math
import shlex
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from conftest import tiny_config, tiny_data
from jrbench import cli
from jrbench.evaluate.attacks import AttackConfig
from jrbench.report.cells import (adversarial_direction, choose_point, make_plane,
                           orthonormal_directions, predict_plane, run_cross_sections)
from jrbench.config import DataConfig, ModelConfig, RegConfig, RunConfig, TrainConfig
from jrbench.data.datasets import write_idx_folder
from jrbench.evaluate.api import attack_run, margins_run
from jrbench.analysis.provenance import train_command_line
from jrbench.analysis.worst_case import WORST_CASE
from jrbench.errors import UserError
from jrbench.report.writer import ReportOptions, report_command_line, write_report
from jrbench.report.table import Strengths, format_wide, group_table, nearest_strength, run_table
from jrbench.analysis.results import TIDY_COLUMNS, collect
from jrbench.training.rundir import load_run
from jrbench.stats import median_ci
from jrbench.training.loop import train

runner = CliRunner()
RUNS = {"plain-s0": (("none",), 0), "plain-s1": (("none",), 1), "jr-s0": (("jacobian",), 0)}
PNGS = ["accuracy_noise.png", "accuracy_linf.png", "accuracy_l2.png", "margins_ecdf.png",
        "spectra.png", "cells_random.png", "cells_adversarial.png"]


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    data = tiny_data()
    data_dir = write_idx_folder(root / "data", data.train, data.test)
    attacks = AttackConfig(noise=True, pgd=True, fgsm=False, sigmas=[0.0, 0.5], draws=2, norms=("linf", "l2"),
                           eps_linf=[0.0, 0.1], eps_l2=[1.0, 2.0], steps=2, batch_size=64)
    for name, (regs, seed) in RUNS.items():
        config = tiny_config(regs, epochs=2, seed=seed)
        config.data.data_dir = str(data_dir)
        run_dir = root / "runs" / name
        train(config, run_dir, data=data)
        attack_run(run_dir, attacks, n_examples=32, device="cpu")
        if name != "jr-s0":
            margins_run(run_dir, n_examples=12, n_directions=2, device="cpu")
    return root


@pytest.fixture(scope="module")
def collection(runs_root):
    return collect([runs_root / "runs"])


def _last(runs_root, name, column):
    return float(pd.read_csv(runs_root / "runs" / name / "metrics.csv")[column].iloc[-1])


def _value(summary, run_id, table, quantity, statistic, **kw):
    sel = summary[(summary["run_id"] == run_id) & (summary["table"] == table)
                  & (summary["quantity"] == quantity) & (summary["statistic"] == statistic)]
    for key, value in kw.items():
        sel = sel[sel[key] == value]
    assert len(sel) == 1, (run_id, table, quantity, kw, len(sel))
    return float(sel["value"].iloc[0])


# ----------------------------------------------------------------------------- the tidy table
@pytest.mark.slow
def test_tidy_table_has_every_measurement_with_provenance(runs_root, collection):
    s = collection.summary
    assert list(s.columns) == TIDY_COLUMNS
    assert sorted(s["run_id"].unique()) == sorted(RUNS)
    for name, (regs, seed) in RUNS.items():
        run_dir = runs_root / "runs" / name
        rows = s[s["run_id"] == name]
        env = json.loads((run_dir / "env.json").read_text())
        first = rows.iloc[0]
        assert (first["dataset"], first["model"], first["regularizers"], first["seed"]) == ("mnist", "lenet", regs[0], seed)
        assert first["lambda_jr"] == (0.01 if regs == ("jacobian",) else 0.0)
        assert first["torch_version"] == env["packages"]["torch"] and first["jrbench_version"] == env["packages"]["jrbench"]
        assert first["torchattacks_version"] == env["packages"]["torchattacks"]
        assert (rows["git_commit"].astype(str) == str(env["git_commit"])).all()
        assert _value(s, name, "metrics", "test_acc", "last_epoch") == pytest.approx(_last(runs_root, name, "test_acc"))
        assert _value(s, name, "metrics", "test_R_z", "last_epoch") == pytest.approx(_last(runs_root, name, "test_R_z"))
        attacks = pd.read_csv(run_dir / "attacks.csv")
        got = rows[(rows["table"] == "attacks") & (rows["attack"] != "worst-case")]  # worst case: attack_examples.csv
        assert len(got) == len(attacks) == 2 + 2 + 2
        for a in attacks.itertuples():
            v = _value(s, name, "attacks", "accuracy", "mean", attack=a.attack, norm=a.norm, strength=a.strength)
            assert v == pytest.approx(a.accuracy)
    # margins and Jacobian: statistics of the per-example files
    m = pd.read_csv(runs_root / "runs" / "plain-s0" / "margins.csv")
    j = pd.read_csv(runs_root / "runs" / "plain-s0" / "jacobian.csv")
    assert _value(s, "plain-s0", "margins", "margin_adv_l2", "median") == pytest.approx(m["margin_adv_l2"].median())
    assert _value(s, "plain-s0", "jacobian", "R_z", "mean") == pytest.approx(0.5 * (j["frobenius_z"] ** 2).mean())
    sv = s[(s["run_id"] == "plain-s0") & (s["quantity"] == "singular_value_pixel")]
    assert sorted(sv["k"]) == list(range(10))
    assert sv.set_index("k")["value"][0.0] == pytest.approx(j["sv_0_pixel"].mean())
    # groups: the plain seeds share one, the Jacobian run has its own
    gid = s.drop_duplicates("run_id").set_index("run_id")["group_id"]
    assert gid["plain-s0"] == gid["plain-s1"] != gid["jr-s0"]
    ex = collection.examples
    assert len(ex[(ex["run_id"] == "plain-s0") & (ex["quantity"] == "margin_adv_l2")]) == len(m)


@pytest.mark.slow
def test_seed_groups_give_mean_std_and_count(runs_root, collection):
    runs = run_table(collection.summary)
    wide = group_table(runs).set_index("group_label")
    acc = [_last(runs_root, n, "test_acc") for n in ("plain-s0", "plain-s1")]
    jac = [_last(runs_root, n, "test_jac_frob_z") for n in ("plain-s0", "plain-s1")]
    plain = wide.loc["lenet none"]
    assert plain["n_seeds"] == 2 and plain["seeds"] == "0,1"
    assert plain["clean_acc"] == pytest.approx(np.mean(acc))
    assert plain["clean_acc_std"] == pytest.approx(np.std(acc, ddof=1))
    assert plain["jac_frob_z"] == pytest.approx(np.mean(jac))
    assert plain["jac_frob_z_std"] == pytest.approx(np.std(jac, ddof=1))
    jr = wide.loc["lenet jacobian λ_JR=0.01 n_proj=1"]
    assert jr["n_seeds"] == 1 and math.isnan(jr["clean_acc_std"]) and math.isnan(jr["margin_adv"])
    text = format_wide(group_table(runs)).set_index("run")
    assert "±" in text.loc["lenet none", "clean acc %"]
    assert text.loc["lenet jacobian λ_JR=0.01 n_proj=1", "median adv. margin (DeepFool)"] == "–"
    assert len(group_table(runs, by_seed_group=False)) == 3


def test_nearest_strength_is_picked_and_marked():
    rows = pd.DataFrame({"table": "attacks", "attack": "pgd", "norm": "l2", "loss": ["ce64", "ce64", "ce32"],
                         "strength": [1.0, 2.0, 1.5], "value": [0.6, 0.3, 0.9]})
    assert nearest_strength(rows, "pgd", "l2", 1.5) == (0.6, 1.0)  # ce64 preferred; tie -> the smaller
    assert nearest_strength(rows, "pgd", "l2", 1.9) == (0.3, 2.0)
    assert all(math.isnan(v) for v in nearest_strength(rows, "pgd", "linf", 0.1))


DEFAULT_HEADERS = ["run", "data set", "seeds", "clean acc %", "mean ‖J_z‖_F", "R = ½ mean ‖J_z‖_F²",
                   "acc % noise σ=0.5", "robust acc % L∞ ε=0.1 (worst case)", "acc % PGD-L∞ ε=0.1",
                   "robust acc % L2 ε=1.5 (worst case)", "acc % PGD-L2 ε=1.5", "median random margin",
                   "median adv. margin (DeepFool)", "median 1st-order margin", "overhead × (s/step vs plain)"]


def _wide_text(collection, strengths=None, by_seed_group=True):
    return format_wide(group_table(run_table(collection.summary, strengths), by_seed_group))


@pytest.mark.slow
def test_one_strength_each_keeps_the_table(collection):
    """Given once, or not at all (mnist: sigma 0.5, eps 0.1 and 1.5), the table is the same."""
    default = _wide_text(collection)
    assert list(default.columns) == DEFAULT_HEADERS
    assert default.loc[0, "acc % PGD-L2 ε=1.5"].endswith(" @1")  # nearest strength measured: 1.0
    for strengths in (Strengths(sigma=[0.5], eps_linf=[0.1], eps_l2=[1.5]), Strengths(0.5, 0.1, 1.5)):
        pd.testing.assert_frame_equal(_wide_text(collection, strengths), default)
    assert "noise_acc" in run_table(collection.summary, Strengths(sigma=[0.5])).columns


@pytest.mark.slow
def test_several_strengths_give_a_column_each_in_ascending_order(runs_root, collection):
    strengths = Strengths(sigma=[0.5, 0.0, 0.4], eps_linf=[0.1, 0.0])
    text = _wide_text(collection, strengths, by_seed_group=False).set_index("run")
    noise = ["acc % noise σ=0", "acc % noise σ=0.4", "acc % noise σ=0.5"]
    pgd = ["acc % PGD-L∞ ε=0", "acc % PGD-L∞ ε=0.1"]
    headers = list(text.columns)
    assert headers[5:8] == noise and headers[10:12] == pgd
    assert headers[8:10] == ["robust acc % L∞ ε=0 (worst case)", "robust acc % L∞ ε=0.1 (worst case)"]
    assert "acc % PGD-L2 ε=1.5" in headers and "acc % noise σ=0.5" in headers  # the others as before
    runs = run_table(collection.summary, strengths).set_index("run_id")
    for name in RUNS:
        attacks = pd.read_csv(runs_root / "runs" / name / "attacks.csv").set_index(["attack", "norm", "strength"])
        for sigma in (0.0, 0.5):  # each column: the attacks table's row at its strength
            expected = attacks.loc[("noise", "gaussian", sigma), "accuracy"]
            assert runs.loc[name, f"noise_acc@{sigma:g}"] == pytest.approx(expected)
            assert text.loc[name, f"acc % noise σ={sigma:g}"] == f"{100 * expected:.1f}"
        for eps in (0.0, 0.1):
            expected = attacks.loc[("pgd", "linf", eps), "accuracy"]
            assert runs.loc[name, f"pgd_linf_acc@{eps:g}"] == pytest.approx(expected)
            assert text.loc[name, f"acc % PGD-L∞ ε={eps:g}"] == f"{100 * expected:.1f}"
        # 0.4 was not measured: the nearest (0.5), marked in that column alone
        assert runs.loc[name, "noise_acc@0.4"] == runs.loc[name, "noise_acc@0.5"]
        assert text.loc[name, "acc % noise σ=0.4"] == text.loc[name, "acc % noise σ=0.5"] + " @0.5"
    groups = _wide_text(collection, strengths).set_index("run")  # seeds: mean ± std per column
    assert groups.loc["lenet none", "acc % noise σ=0"].count("±") == 1
    close = _wide_text(collection, Strengths(sigma=[0.1, 0.1000001]))  # distinct strengths: distinct columns
    assert close.columns[6:8].tolist() == ["acc % noise σ=0.1", "acc % noise σ=0.1000001"]


@pytest.mark.slow
def test_cli_repeats_the_strength_flags(runs_root, tmp_path):
    out = tmp_path / "report"
    result = runner.invoke(cli.app, ["report", str(runs_root / "runs"), "--out", str(out), "--no-cells",
                                     "--sigma", "0.5", "--sigma", "0", "--eps-l2", "2", "--eps-l2", "1"])
    assert result.exit_code == 0, result.output
    header = (out / "summary.md").read_text().splitlines()[0]
    assert "| acc % noise σ=0 | acc % noise σ=0.5 |" in header
    assert "| acc % PGD-L2 ε=1 | acc % PGD-L2 ε=2 |" in header
    command = (out / "report.md").read_text().split("```bash\n")[1].split("\n")[0]
    assert "--sigma 0 --sigma 0.5 --eps-l2 1 --eps-l2 2" in command
    assert shlex.split(command)[:3] == ["jrbench", "report", str(runs_root / "runs")]
    assert report_command_line(["r"], tmp_path, ReportOptions()) == f"jrbench report r --out {tmp_path}"
    for bad, message in ((["--sigma", "x"], "Invalid value for '--sigma'"),
                         (["--sigma", "0.5", "--sigma", "-1"], "--sigma must be zero or positive (pixel units), got -1.0"),
                         (["--eps-linf", "nan"], "--eps-linf must be zero or positive (pixel units), got nan")):
        result = runner.invoke(cli.app, ["report", str(runs_root / "runs"), "--out", str(tmp_path / "bad"),
                                         "--no-cells", *bad])
        words = " ".join(result.output.replace("│", " ").split())
        assert result.exit_code == 2 and message in words, (bad, result.output)
    with pytest.raises(UserError, match="--sigma must be zero or positive .pixel units., got -1.0"):
        ReportOptions(Strengths(sigma=[0.5, -1.0])).validate()
    with pytest.raises(UserError, match="--eps-l2 must be a number, got 'x'"):
        ReportOptions(Strengths(eps_l2=["x"])).validate()
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_overhead_is_the_ratio_to_the_plain_runs_median(runs_root, collection):
    spp = {n: pd.read_csv(runs_root / "runs" / n / "metrics.csv")["seconds_per_step"].min() for n in RUNS}
    expected = spp["jr-s0"] / ((spp["plain-s0"] + spp["plain-s1"]) / 2)  # median of two
    s = collection.summary
    assert _value(s, "jr-s0", "overhead", "seconds_per_step_ratio", "min_over_epochs") == pytest.approx(expected)
    assert _value(s, "plain-s0", "overhead", "seconds_per_step_ratio", "min_over_epochs") == pytest.approx(
        spp["plain-s0"] / np.median([spp["plain-s0"], spp["plain-s1"]]))
    alone = collect([runs_root / "runs" / "jr-s0"])
    assert math.isnan(_value(alone.summary, "jr-s0", "overhead", "seconds_per_step_ratio", "min_over_epochs"))
    assert any(g.item == "overhead" and "no plain" in g.reason for g in alone.gaps)


@pytest.mark.slow
def test_worst_case_from_the_per_example_record_and_the_pgd_fallback(runs_root, tmp_path):
    for name in ("with", "without"):
        shutil.copytree(runs_root / "runs" / "plain-s0", tmp_path / name)
    (tmp_path / "without" / "attack_examples.csv").unlink(missing_ok=True)
    attacks = pd.read_csv(tmp_path / "with" / "attacks.csv")
    pgd = attacks[(attacks["attack"] == "pgd") & (attacks["norm"] == "linf") & (attacks["strength"] == 0.1)].iloc[0]
    n, k = int(pgd["n_examples"]), int(pgd["n_correct"])
    rows = []  # PGD keeps the first k examples, FGSM breaks the first of them as well
    for attack, robust in (("pgd", [1] * k + [0] * (n - k)), ("fgsm", [0] + [1] * (k - 1) + [0] * (n - k))):
        rows += [{"example": i, "attack": attack, "norm": "linf", "strength": 0.1, "loss": "ce64", "clean_correct": 1,
                  "robust": r, "broken": 1 - r, "example_seed": 0} for i, r in enumerate(robust[:n])]
    pd.DataFrame(rows).to_csv(tmp_path / "with" / "attack_examples.csv", index=False)
    c = collect([tmp_path])
    runs = run_table(c.summary).set_index("run_id")
    assert runs.loc["with", "robust_linf_acc"] == pytest.approx(max(k - 1, 0) / n)
    assert runs.loc["with", "pgd_linf_acc"] == pytest.approx(pgd["accuracy"])
    assert not runs.loc["with", "robust_linf_acc_fallback"] and runs.loc["without", "robust_linf_acc_fallback"]
    assert runs.loc["without", "robust_linf_acc"] == pytest.approx(pgd["accuracy"])
    result = write_report(c, tmp_path / "out", ReportOptions(cells=False))
    assert any(g.startswith("without: attack_examples.csv: missing") and "falls back" in g for g in result.gaps)
    assert any(g.startswith("with: attack_examples.csv: no per-example record at l2") for g in result.gaps)
    assert "(PGD only" in result.table.iloc[0]["robust acc % L∞ ε=0.1 (worst case)"]
    assert "attacks=pgd/ce64+fgsm/ce64" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.slow
def test_median_ci_covers_the_true_median_about_95_percent():
    rng = np.random.default_rng(0)
    hits = [lo <= math.log(2) <= hi for lo, hi in (median_ci(rng.exponential(size=60)) for _ in range(2000))]
    assert 0.93 <= np.mean(hits) <= 0.99


# ----------------------------------------------------------------------------- gaps and errors
@pytest.mark.slow
def test_missing_and_corrupt_tables_are_gaps(runs_root, tmp_path):
    shutil.copytree(runs_root / "runs" / "plain-s0", tmp_path / "broken")
    (tmp_path / "broken" / "attacks.csv").write_text("not,a\nrun,table\n")
    (tmp_path / "broken" / "attack_examples.csv").write_text("not,a\nrun,table\n")
    (tmp_path / "unfinished").mkdir()
    shutil.copy(runs_root / "runs" / "plain-s0" / "config.json", tmp_path / "unfinished")
    c = collect([runs_root / "runs" / "jr-s0", tmp_path])
    items = {(g.run_id, g.item) for g in c.gaps}
    assert {("jr-s0", "margins.csv"), ("jr-s0", "jacobian.csv"), ("broken", "attacks.csv"),
            ("broken", "attack_examples.csv"), ("unfinished", "model.pt")} <= items, items
    assert sorted(c.summary["run_id"].unique()) == ["broken", "jr-s0"]
    assert not (c.summary["run_id"] == "broken").loc[c.summary["table"] == "attacks"].any()
    result = write_report(c, tmp_path / "out", ReportOptions(cells=False))
    report = (tmp_path / "out" / "report.md").read_text()
    gaps = report.split("## Gaps")[1]
    assert "jr-s0: margins.csv: missing" in gaps and "broken: attacks.csv" in gaps
    assert any("jr-s0: margins.csv" in g for g in result.gaps)


@pytest.mark.slow
def test_a_column_no_run_has_is_one_gap_for_all_runs(runs_root, tmp_path):
    """Runs attacked at L-inf only (a study's choice): one gap line for all runs, no per-run
    command to run; a column some runs lack stays a gap of each of those runs."""
    from jrbench.report.table import run_table, table_gaps

    for name in ("plain-s0", "plain-s1"):
        shutil.copytree(runs_root / "runs" / name, tmp_path / name)
        for table in ("attacks.csv", "attack_examples.csv"):
            rows = pd.read_csv(tmp_path / name / table)
            rows[~((rows["attack"] == "pgd") & (rows["norm"] == "l2"))].to_csv(tmp_path / name / table, index=False)
    (tmp_path / "plain-s1" / "margins.csv").unlink()
    c = collect([tmp_path])
    gaps = table_gaps(run_table(c.summary), c)
    assert gaps.count("all runs: attacks.csv: no PGD L2 rows in any run") == 1
    assert not [g for g in gaps if "no PGD L2 rows;" in g], gaps
    assert not [g for g in gaps if g.startswith("all runs: margins.csv")], gaps  # plain-s0 has margins


def test_cli_empty_or_unreadable_folder_exits_2(tmp_path):
    result = runner.invoke(cli.app, ["report", str(tmp_path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "no run directories" in result.output, result.output
    result = runner.invoke(cli.app, ["report", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "is not a folder" in result.output
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    (bad / "model.pt").write_bytes(b"")
    result = runner.invoke(cli.app, ["report", str(tmp_path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "could be read" in result.output, result.output
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- the whole report
@pytest.mark.slow
def test_summary_files_write_provenance_once_and_join_back(collection):
    """summary.csv names each row's run; runs.csv holds each run's provenance once; joined on the run
    they give back the collected table (with the source as a path inside the run folder)."""
    from jrbench.report.writer import summary_files

    s = collection.summary
    measurements, runs = summary_files(s)
    assert len(runs) == s["run_id"].nunique() == len(collection.runs) and runs["run_id"].is_unique
    assert len(measurements) == len(s) and not {"git_commit", "device", "run_dir"} & set(measurements)
    joined = measurements.merge(runs, how="left", validate="many_to_one")  # on SUMMARY_KEYS
    back = joined.assign(source=[str(Path(d) / f) for d, f in zip(joined["run_dir"], joined["source"])])
    pd.testing.assert_frame_equal(back[list(s.columns)].reset_index(drop=True),
                                  s.assign(source=s["source"].astype(str)).reset_index(drop=True),
                                  check_dtype=False)


@pytest.mark.slow
def test_cli_writes_every_file_and_names_the_gaps(runs_root, tmp_path, capsys):
    out = tmp_path / "report"
    result = runner.invoke(cli.app, ["report", str(runs_root / "runs"), "--out", str(out), "--cell-grid", "21",
                                     "--cell-radius", "4"])
    assert result.exit_code == 0, result.output
    assert "clean acc %" in result.output and "gap:" in result.output and "jr-s0" in result.output
    for name in PNGS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    for name in ["summary.csv", "runs.csv", "examples.csv", "verdicts.csv", "summary.md", "report.md"]:
        assert (out / name).stat().st_size > 0
    assert "## Verdicts" in (out / "summary.md").read_text() and "## Verdicts" in (out / "report.md").read_text()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    report = (out / "report.md").read_text()
    # paths in the report's files are relative to its folder, not to where the command ran
    rel = os.path.relpath(runs_root / "runs" / "plain-s0", out)
    runs = pd.read_csv(out / "runs.csv")  # one row per run, its provenance; summary.csv names the run only
    assert str(runs_root) not in runs["run_dir"].iloc[0] and runs["run_id"].is_unique
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["run_id"]) == set(runs["run_id"]) and "git_commit" not in summary
    assert set(summary["source"]) <= {"metrics.csv", "attacks.csv", "attack_examples.csv", "margins.csv",
                                      "jacobian.csv", "certify.csv", "certify_examples.csv"}
    assert (out / runs["run_dir"].iloc[0] / "metrics.csv").exists()  # run_dir is relative to the report folder
    for name in PNGS:
        assert f"]({name})" in report
    assert report.count("jrbench train --dataset mnist") == 3 and "NOT clipped" in report
    assert "jrbench report" in report and f"]({rel}/attacks.csv)" in report
    assert pd.read_csv(out / "summary.csv").shape[0] > 100
    examples = pd.read_csv(out / "examples.csv")  # wide: a row per run and example
    assert {"run_id", "index", "margin_adv_l2", "margin_random_median"} <= set(examples.columns)
    assert not examples.duplicated(["run_id", "index"]).any()


@pytest.mark.slow
def test_library_never_prints(collection, tmp_path, capsys):
    write_report(collection, tmp_path / "out", ReportOptions(cells=False))
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


# ----------------------------------------------------------------------------- train commands
@pytest.mark.parametrize("config", [
    tiny_config(("none",)),
    tiny_config(("jacobian",), lambda_jr=0.05, n_proj=-1, jr_subsample=8),
    tiny_config(("jacobian",), n_proj=2, jr_estimator="jvp", jr_every=4, jr_backend="autograd"),
    tiny_config(("ibp", "noise"), ibp_eps=0.15, ibp_warmup_epochs=0.5, ibp_ramp_epochs=3, ibp_kappa=0.25,
                noise_sigma=0.1),
    tiny_config(("crown-ibp", "lipschitz"), ibp_eps=0.3, lipschitz_bound=20.0),
    RunConfig(DataConfig("synth-digits"), ModelConfig("aol-mlp"), RegConfig(["gloro", "noise"], margin_eps=1.5, margin_ramp_epochs=1.5),
              TrainConfig(epochs=2, device="cpu")),
    RunConfig(DataConfig("synth-digits", "/data here", 500, 100), ModelConfig("mlp"),
              RegConfig(["l2", "dropout", "input-grad"], weight_decay=1e-3, dropout=0.25, lambda_ig=0.1),
              TrainConfig(epochs=3, batch_size=100, lr=0.1, momentum=0.5, schedule="step", step_epochs=2,
                          gamma=0.5, seed=7, device="cpu")),
])
def test_train_command_rebuilds_the_config(config, monkeypatch, tmp_path):
    seen = {}

    class Stop(Exception):
        pass

    def capture(cfg, out, resume, quiet=False):
        seen["config"], seen["out"] = cfg, out
        raise Stop

    monkeypatch.setattr("jrbench.cli.train.run_training", capture)
    command = train_command_line(config, tmp_path / "run")
    line, _, comment = command.partition("  # ")
    result = runner.invoke(cli.app, shlex.split(line)[1:])
    assert isinstance(result.exception, Stop), result.output
    rebuilt = seen["config"].to_dict()
    for key, value in (p.split("=") for p in comment.removeprefix("Python API only: ").split(", ") if p):
        section = "data" if key == "subset_seed" else "train"
        rebuilt[section][key] = int(value)
    assert rebuilt == config.to_dict() and seen["out"] == tmp_path / "run"


# ----------------------------------------------------------------------------- cross-sections
@pytest.mark.slow
def test_cross_sections_share_point_and_directions(runs_root, collection):
    labels = {r.run_id: r.run_id for r in collection.runs}
    figs = run_cross_sections(collection.runs, labels, radius=2.0, n_grid=9, seed=3, device="cpu")
    assert [f.section.plane.kind for f in figs] == ["random", "adversarial"]
    models = {n: load_run(runs_root / "runs" / n)[0] for n in ("plain-s0", "jr-s0")}
    data = tiny_data()
    x, y = data.test.images.float() / 255, data.test.labels
    for f in figs:
        plane = f.section.plane
        assert list(f.section.predictions) == ["plain-s0", "jr-s0"]  # one run per group, plain first
        assert torch.equal(plane.point, x[plane.index]) and plane.index == choose_point(models, x, y)
        gram = plane.directions.flatten(1) @ plane.directions.flatten(1).T
        assert torch.allclose(gram, torch.eye(2), atol=1e-5)
        for name, model in models.items():  # each panel is that model on this very plane
            assert np.array_equal(f.section.predictions[name], predict_plane(model, plane, 9))
            assert f.section.predictions[name][4, 4] == plane.label  # the centre is the point itself
    adv = figs[1].section.plane
    assert adv.reference == "plain-s0"
    assert torch.allclose(adv.directions[0], adversarial_direction(models["plain-s0"], adv.point, adv.label))


def test_random_directions_are_seeded_and_orthogonal_to_a_given_one():
    a = orthonormal_directions((1, 4, 4), 2, seed=5, device="cpu", dtype=torch.float32)
    assert torch.equal(a, orthonormal_directions((1, 4, 4), 2, seed=5, device="cpu", dtype=torch.float32))
    u = a[0]
    b = orthonormal_directions((1, 4, 4), 3, seed=6, device="cpu", dtype=torch.float32, against=u)
    assert (b.flatten(1) @ u.flatten()).abs().max() < 1e-6


class Linear(nn.Module):
    """f(x) = W vec(x) + b on (1, 4, 4) pixels: a closed-form decision boundary."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.w, self.b = w, b

    def forward(self, x):
        return x.flatten(1) @ self.w.T + self.b


def test_linear_cross_section_boundary_is_where_the_closed_form_says():
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(2, 16, generator=g, dtype=torch.float64), torch.tensor([0.3, -0.2], dtype=torch.float64)
    model = Linear(w, b)
    x0 = torch.rand(1, 4, 4, generator=g, dtype=torch.float64)
    label = int(model(x0.unsqueeze(0)).argmax())
    dw, db = w[1 - label] - w[label], b[1 - label] - b[label]  # other class wins where dw.x + db > 0
    n, radius = 81, 4.0
    t = np.linspace(-radius, radius, n)
    step = t[1] - t[0]

    plane = make_plane("random", x0, label, 0, radius=radius, seed=1)
    preds = predict_plane(model, plane, n)
    a, c = float(dw @ plane.directions[0].flatten()), float(dw @ plane.directions[1].flatten())
    offset = float(dw @ x0.flatten() + db)
    t2, t1 = np.meshgrid(t, t, indexing="ij")  # rows: t2, columns: t1
    level = a * t1 + c * t2 + offset
    expected = np.where(level > 0, 1 - label, label)
    assert (preds == 1 - label).any() and (preds == label).any(), "the boundary should cross the square"
    assert np.array_equal(preds, expected)

    # adversarial plane: the boundary is the line t1 = gap / ||dw||, whatever t2
    plane = make_plane("adversarial", x0, label, 0, radius=radius, seed=1, reference=("linear", model))
    preds = predict_plane(model, plane, n)
    margin = -offset / float(dw.norm())
    assert 0 < margin < radius - step
    assert (preds == preds[0]).all()  # independent of t2: d2 is orthogonal to the gradient
    crossing = t[np.argmax(preds[0] != label)]
    assert margin <= crossing < margin + step + 1e-12


def test_rows_on_different_example_sets_are_a_gap():
    """attacks.csv rows of two example sets (example_seed, n_examples) are named, with their attacks."""
    from jrbench.analysis.results import example_sets_gap
    from jrbench.analysis.run_records import RunRecord

    rows = pd.DataFrame({"attack": ["pgd", "noise", "pgd"], "norm": ["linf", "gaussian", "linf"],
                         "strength": [0.1, 0.5, 0.2], "example_seed": [0, 0, -1], "n_examples": [500, 500, 5]})
    record = RunRecord(Path("r"), "r", None, {}, {"attacks.csv": rows})
    gap = example_sets_gap(record)
    assert gap is not None and "2 example sets" in str(gap)
    assert "example seed -1, 5 examples: pgd" in str(gap) and "example seed 0, 500 examples: noise+pgd" in str(gap)
    assert example_sets_gap(RunRecord(Path("r"), "r", None, {}, {"attacks.csv": rows.iloc[:2]})) is None


def _many_groups(n_groups: int = 10, n_seeds: int = 5):
    """A tidy summary and per-example margins of n_groups x n_seeds synthetic runs (long labels)."""
    rng = np.random.default_rng(0)
    rows, examples = [], []
    for g in range(n_groups):
        label = f"lenet l2+dropout+jacobian λ_JR=0.01 n_proj=1 wd=0.0005 p=0.5 [{g:06x}]"
        for seed in range(n_seeds):
            run = dict(run_id=f"g{g}-s{seed}", group_id=f"g{g}", group_label=label, dataset="mnist",
                       model="lenet", seed=seed, regularizers="none" if g == 0 else "jacobian")
            for k in range(10):
                rows.append({**run, "table": "jacobian", "quantity": "singular_value_pixel", "statistic": "mean",
                             "k": k, "value": float(rng.uniform(0.1, 10) / (k + 1)), "n": 290 + seed})
            for eps in (0.0, 0.1, 0.2):
                acc = float(np.clip(0.95 - eps * rng.uniform(2, 4), 0, 1))
                rows.append({**run, "table": "attacks", "attack": WORST_CASE, "norm": "linf", "strength": eps,
                             "value": acc, "ci_low": acc - 0.02, "ci_high": acc + 0.02, "n": 200,
                             "settings": "attacks=pgd/ce64", "loss": "ce64"})
            for quantity in ("margin_random_median", "margin_adv_l2"):
                for i, v in enumerate(rng.lognormal(0, 1, 50)):
                    examples.append({"run_id": run["run_id"], "group_id": run["group_id"],
                                     "group_label": label, "quantity": quantity, "index": i, "value": v})
    return pd.DataFrame(rows), pd.DataFrame(examples)


@pytest.mark.slow
def test_plots_with_many_runs_name_each_group_once_below_the_axes():
    """50 runs in 10 groups: the legend has one entry per group and lies outside every axes (inside,
    it covered the curves and collapsed the layout), and the layout warns of nothing."""
    import warnings

    from jrbench.report.plots import accuracy_figure, margins_figure, spectra_figure

    summary, examples = _many_groups()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figures = [margins_figure(examples, summary), spectra_figure(summary),
                   accuracy_figure(summary, WORST_CASE, "linf", "robust accuracy", "eps")]
        for fig in figures:
            fig.canvas.draw()
            (legend,) = fig.legends
            texts = [t.get_text() for t in legend.get_texts()]
            assert [t.split(" (")[0] for t in texts] == list(dict.fromkeys(summary["group_label"]))
            assert all(t.endswith(("(5 seeds, a line each)", "(mean ± std, 5 seeds)")) for t in texts), texts
            box = legend.get_window_extent()
            for ax in fig.axes:
                assert not box.overlaps(ax.get_window_extent()), ax.get_title()
            assert box.y0 >= 0 and box.x0 >= 0 and box.x1 <= fig.bbox.x1  # on the canvas
