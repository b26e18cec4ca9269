"""The report's common-corruptions section: tables, the mCE and a heat map per group.

From the tidy table only (:mod:`jrbench.analysis.corruptions`): per group (its seeds averaged) the
clean accuracy of the corrupted examples, the mean corruption accuracy over the corruptions and
severities 1-5 and per family, the mean corruption error (mCE) and the relative mCE against the
plain group of the same recipe (:func:`jrbench.analysis.verdicts.comparisons` pairs them);
accuracy per corruption; and ``corruptions.png``: per group a heat map (corruption x severity)
beside its accuracy against severity (the mean over corruptions, each family, and the plain
group's mean for reference). Nothing here when no run has corruption rows.
"""
from __future__ import annotations

import math
import textwrap

import numpy as np
import pandas as pd

from .figures import new_figure
from .plots import ordered_runs
from ..analysis.corruptions import (MCE_COLUMNS, accuracy_grid, cell_means, corruption_cells, mce_table)
from ..analysis.verdicts import comparisons, versus_comparisons
from ..evaluate.attack_config import CORRUPTIONS, FAMILIES

PNG = "corruptions.png"
CAPTION = ("Left, per group: accuracy (%) on the fixed test examples under each common corruption (rows) at each "
           "severity (columns; 0: the clean images), the mean over the group's seeds. Right: accuracy against "
           "severity, the mean over the corruptions (thick) and over each family's (thin); grey dashed: the plain "
           "group's mean of the same recipe. One corrupted copy per example, seeded per example "
           "(docs/corruptions.md).")
NOTES = ("Common corruptions (imagecorruptions, the ImageNet-C set; docs/corruptions.md) on the fixed test examples of "
         "attacks.csv, one corrupted copy per example and severity. clean: accuracy on those examples uncorrupted; "
         "mean: accuracy averaged over the corruptions and severities 1-5 (the cells the group and its plain group "
         "both have), per family the family's cells. mCE (Hendrycks and Dietterich 2019, the plain group of the same "
         "recipe in AlexNet's place): CE_c = Σ_s E_s,c(group) / Σ_s E_s,c(plain), E the error averaged over a "
         "group's seeds, mCE = the mean over corruptions c, in %; relative mCE subtracts each model's clean error "
         "first: Σ_s (E_s,c − E_clean)(group) / Σ_s (E_s,c − E_clean)(plain). Below 100: fewer errors than plain. "
         "The verdicts (above) test the mean and the family means over seeds.")


def corruption_pairs(collection, versus: list[str] | None = None) -> list[tuple[str, str]]:
    """(group id, its plain group's id) for every group with one (:func:`jrbench.analysis.verdicts.comparisons`);
    with ``versus``, every (group, named baseline) pair (:func:`jrbench.analysis.verdicts.versus_comparisons`)."""
    labels = dict(zip(collection.summary["group_id"], collection.summary["group_label"]))
    found, _ = (versus_comparisons(collection.runs, labels, versus) if versus
                else comparisons(collection.runs, labels))
    return [(c.group, c.baseline) for c in found]


def _groups(summary: pd.DataFrame) -> list[str]:
    """Group ids with corruption rows, in display order (plain first)."""
    have = set(corruption_cells(summary)["group_id"])
    return [g for g in dict.fromkeys(ordered_runs(summary)["group_id"]) if g in have]


def _pct(value: float) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def family_table(summary: pd.DataFrame, pairs: list[tuple[str, str]]) -> pd.DataFrame:
    """The section's main table, one row per group with corruption rows: group, plain group, runs,
    clean, mean and family accuracies (%), mCE and relative mCE (%)."""
    mce = mce_table(summary, pairs)
    cells = corruption_cells(summary)
    rows = []
    base_of = dict(pairs)
    for gid in _groups(summary):
        sel = cells[cells["group_id"] == gid]
        base = base_of.get(gid, gid)
        other = set(cells[cells["group_id"] == base][["corruption", "severity"]].itertuples(index=False, name=None))
        shared = [c for c in dict.fromkeys(sel[sel["severity"] >= 1][["corruption", "severity"]]
                                           .itertuples(index=False, name=None)) if c in other]
        grouped = sel.groupby(["corruption", "severity"])["value"].mean().reset_index().assign(key=gid)
        means = cell_means(grouped, shared, key="key").set_index("strength")["value"]
        m = mce[mce["group_id"] == gid]
        m = m[m["baseline"] == m["group"]] if base == gid else m[m["baseline"] != m["group"]]
        row = {"group": sel["group_label"].iloc[0], "baseline": m["baseline"].iloc[0] if len(m) else "",
               "runs": int(sel["run_id"].nunique()),
               "clean %": _pct(float(sel[sel["severity"] == 0]["value"].mean()) if (sel["severity"] == 0).any()
                               else math.nan),
               "mean %": _pct(float(means.get("mean", math.nan)))}
        for family in FAMILIES:
            row[f"{family} %"] = _pct(float(means.get(family, math.nan)))
        row["mCE %"] = f"{m['mCE'].iloc[0]:.1f}" if len(m) and np.isfinite(m["mCE"].iloc[0]) else ""
        row["relative mCE %"] = (f"{m['relative_mCE'].iloc[0]:.1f}" if len(m) and np.isfinite(m["relative_mCE"].iloc[0])
                                 else "")
        rows.append(row)
    return pd.DataFrame(rows)


def per_corruption_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Accuracy (%) per corruption (rows, with its family) and group (columns): the mean over
    severities 1-5 and over the group's seeds."""
    cells = corruption_cells(summary)
    cells = cells[cells["severity"] >= 1]
    if cells.empty:
        return pd.DataFrame()
    order = {c: i for i, c in enumerate(CORRUPTIONS)}
    names = sorted(cells["corruption"].unique(), key=lambda c: (order.get(c, len(order)), c))
    out = pd.DataFrame({"corruption": names, "family": [CORRUPTIONS.get(c, "") for c in names]})
    for gid in _groups(summary):
        sel = cells[cells["group_id"] == gid]
        means = sel.groupby("corruption")["value"].mean()
        out[sel["group_label"].iloc[0]] = [_pct(float(means[c])) if c in means else "" for c in names]
    return out


def cells_csv(summary: pd.DataFrame) -> pd.DataFrame:
    """corruptions.csv: per group, corruption and severity the accuracy's mean and std over the
    group's runs (shares) and the number of runs."""
    cells = corruption_cells(summary)
    if cells.empty:
        return pd.DataFrame(columns=["group_id", "group_label", "corruption", "family", "severity", "accuracy_mean",
                                     "accuracy_std", "n_runs", "n_examples"])
    out = (cells.groupby(["group_id", "group_label", "corruption", "severity"], sort=False)
           .agg(accuracy_mean=("value", "mean"), accuracy_std=("value", "std"), n_runs=("run_id", "nunique"),
                n_examples=("n", "max")).reset_index())
    return out.assign(family=out["corruption"].map(CORRUPTIONS))[
        ["group_id", "group_label", "corruption", "family", "severity", "accuracy_mean", "accuracy_std", "n_runs",
         "n_examples"]]


def corruptions_figure(summary: pd.DataFrame, pairs: list[tuple[str, str]]):
    """Per group with corruption rows (a row of panels): the heat map (corruption x severity,
    accuracy %) and accuracy against severity (mean over corruptions, each family, the plain
    group's mean dashed). None without corruption rows."""
    groups = _groups(summary)
    if not groups:
        return None
    cells = corruption_cells(summary)
    base_of = dict(pairs)
    n_rows = len(groups)
    grids = {g: accuracy_grid(summary, g) for g in groups}
    height = max(2.6, 0.22 * max(len(grid) for grid in grids.values()) + 1.0)
    fig, axes = new_figure(11.5, height * n_rows + 0.4, ncols=2, nrows=n_rows)
    axes = np.asarray(axes).reshape(n_rows, 2)
    image = None

    def severity_curve(gid: str, names=None) -> pd.Series:
        sel = cells[cells["group_id"] == gid]
        if names is not None:
            sel = sel[sel["corruption"].isin(names)]
        per = sel.groupby(["corruption", "severity"])["value"].mean().reset_index()
        return per.groupby("severity")["value"].mean()

    for (left, right), gid in zip(axes, groups):
        grid = grids[gid]
        label = cells[cells["group_id"] == gid]["group_label"].iloc[0]
        image = left.imshow(100 * grid.to_numpy(float), vmin=0, vmax=100, cmap="viridis", aspect="auto")
        left.set_xticks(range(grid.shape[1]), [str(int(s)) for s in grid.columns])
        left.set_yticks(range(grid.shape[0]), list(grid.index), fontsize=7)
        for (i, j), v in np.ndenumerate(100 * grid.to_numpy(float)):
            if np.isfinite(v):
                left.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=6,
                          color="white" if v < 55 else "black")
        left.set(xlabel="severity (0: clean)", title=textwrap.fill(label, 55))
        left.title.set_fontsize(9)
        mean = severity_curve(gid)
        right.plot(mean.index, 100 * mean.to_numpy(), marker="o", lw=2.2, color="black", label="mean over corruptions")
        for family, color in zip(FAMILIES, ("tab:blue", "tab:orange", "tab:green", "tab:red")):
            names = [c for c in grid.index if CORRUPTIONS.get(c) == family]
            if names:
                curve = severity_curve(gid, names)
                right.plot(curve.index, 100 * curve.to_numpy(), lw=1, color=color, label=f"{family} family")
        base = base_of.get(gid)
        if base is not None and base != gid and base in groups:
            plain = severity_curve(base)
            right.plot(plain.index, 100 * plain.to_numpy(), linestyle="--", color="0.5", lw=1.5,
                       label="plain group, mean")
        right.set(xlabel="severity (0: clean)", ylabel="accuracy (%)", ylim=(-2, 102))
        right.grid(alpha=0.3)
        right.legend(fontsize=7, loc="lower left")
    if image is not None:
        fig.colorbar(image, ax=list(axes[:, 0]), label="accuracy (%)", shrink=0.8)
    fig.suptitle("Common corruptions: accuracy per corruption and severity", fontsize=11)
    return fig


def corruption_section(summary: pd.DataFrame, pairs: list[tuple[str, str]], markdown_table) -> list[str]:
    """'## Common corruptions': the family table with mCE, accuracy per corruption, the notes;
    nothing when no run has corruption rows."""
    table = family_table(summary, pairs)
    if table.empty:
        return []
    lines = ["## Common corruptions", "", markdown_table(table), "", NOTES, "",
             "Accuracy (%) per corruption, the mean over severities 1-5 and over each group's seeds:", "",
             markdown_table(per_corruption_table(summary)), ""]
    mce = mce_table(summary, pairs)
    left = mce[mce["left_out"].astype(str) != ""]
    for r in left.itertuples(index=False):
        lines.append(f"- {r.group}: left out of the mCE (the plain group loses nothing to them): {r.left_out}")
    return lines + ([""] if len(left) else [])


__all__ = ["CAPTION", "MCE_COLUMNS", "NOTES", "PNG", "cells_csv", "corruption_pairs", "corruption_section",
           "corruptions_figure", "family_table", "per_corruption_table"]
