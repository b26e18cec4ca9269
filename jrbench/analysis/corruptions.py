"""The common corruptions in the tidy table: accuracy per corruption and severity, means, mCE.

Reads the tidy table of :func:`jrbench.analysis.results.collect`: attacks.csv's corruption rows
(table ``attacks``, attack ``corruption``, ``norm`` the corruption's name, ``strength`` the
severity, 0 for the clean images of the same examples; :mod:`jrbench.evaluate.corruptions`) and,
for one-seed verdicts, attack_examples.csv's per-example rows. Plain functions returning
DataFrames, shared by the verdicts (:mod:`jrbench.analysis.verdicts`) and the report.

- **Corruption accuracy** of a run: its accuracy per corruption c and severity s >= 1;
  :func:`run_corruption_values` averages it over the cells (c, s) every run of a comparison has:
  the mean (strength ``mean``) and the mean over each family's cells (``noise``, ``blur``,
  ``weather``, ``digital``; :data:`jrbench.evaluate.attack_config.CORRUPTIONS`).
- **Corruption error** (Hendrycks and Dietterich 2019), the plain group of the same recipe standing
  where AlexNet stood: E_{s,c} = 1 - accuracy, averaged over a group's runs (its seeds);
  CE_c = sum_s E_{s,c}(group) / sum_s E_{s,c}(plain); mCE = mean over c of CE_c. Relative:
  rCE_c = sum_s (E_{s,c} - E_clean)(group) / sum_s (E_{s,c} - E_clean)(plain), E_clean the error on
  the same examples uncorrupted (the severity-0 rows); relative mCE = mean over c. Both over the
  cells both groups have; in percent, the plain group's 100. A corruption whose plain denominator is
  0 (or, relative, not positive: plain loses nothing to it) has no CE and is left out of the mean,
  named in ``left_out``.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..evaluate.attack_config import CORRUPTION, CORRUPTIONS, FAMILIES

METRIC = "corruption_acc"  # the verdicts' metric: mean corruption accuracy (strength: 'mean' or a family)
MEAN = "mean"
STRENGTHS = (MEAN, *FAMILIES)  # the verdicts' strengths, in display order
CELL_COLUMNS = ["run_id", "group_id", "group_label", "corruption", "severity", "value", "n"]
MCE_COLUMNS = ["group_id", "group", "baseline", "n_runs", "n_corruptions", "clean_acc", "mean_acc", "mCE",
               "relative_mCE", "left_out"]


def corruption_cells(summary: pd.DataFrame) -> pd.DataFrame:
    """The corruption rows of the tidy table, one per run, corruption and severity (0 included):
    :data:`CELL_COLUMNS` (value: accuracy, a share; severity an int)."""
    if summary.empty or "attack" not in summary:
        return pd.DataFrame(columns=CELL_COLUMNS)
    sel = summary[(summary["table"] == "attacks") & (summary["attack"] == CORRUPTION)
                  & (summary["quantity"] == "accuracy")]
    out = pd.DataFrame({"run_id": sel["run_id"], "group_id": sel["group_id"], "group_label": sel["group_label"],
                        "corruption": sel["norm"], "severity": sel["strength"].astype(float).round().astype(int),
                        "value": sel["value"].astype(float), "n": sel["n"]})
    return out.drop_duplicates(["run_id", "corruption", "severity"]).reset_index(drop=True)


def common_cells(cells: pd.DataFrame, run_ids) -> list[tuple[str, int]]:
    """The (corruption, severity >= 1) cells every run of ``run_ids`` has, in the library's order."""
    run_ids = list(run_ids)
    sel = cells[cells["run_id"].isin(run_ids) & (cells["severity"] >= 1)]
    if sel.empty:
        return []
    counts = sel.groupby(["corruption", "severity"])["run_id"].nunique()
    keep = [key for key, n in counts.items() if n == len(set(run_ids))]
    order = {c: i for i, c in enumerate(CORRUPTIONS)}
    return sorted(keep, key=lambda k: (order.get(k[0], len(order)), k[0], k[1]))


def cell_means(values: pd.DataFrame, cells: list[tuple[str, int]], key: str = "run_id") -> pd.DataFrame:
    """Means of ``values`` (columns ``key``, corruption, severity, value) over ``cells``: per
    ``key``, strength ``mean`` (every cell) and each family with a cell (its cells)."""
    if not cells:
        return pd.DataFrame(columns=[key, "strength", "value"])
    wanted = pd.DataFrame(cells, columns=["corruption", "severity"])
    sel = values.merge(wanted, on=["corruption", "severity"])
    sel = sel.assign(family=sel["corruption"].map(CORRUPTIONS))
    parts = [sel.groupby(key)["value"].mean().rename(MEAN).reset_index().rename(columns={MEAN: "value"})
             .assign(strength=MEAN)]
    for family in FAMILIES:
        fam = sel[sel["family"] == family]
        if len(fam):
            parts.append(fam.groupby(key)["value"].mean().reset_index().assign(strength=family))
    return pd.concat(parts, ignore_index=True)[[key, "strength", "value"]]


def run_corruption_values(summary: pd.DataFrame, run_ids) -> tuple[pd.DataFrame, list[tuple[str, int]], int]:
    """The verdicts' per-run values of ``run_ids`` (one comparison's runs): run_id, metric
    (:data:`METRIC`), strength (``mean`` or a family), value (a share), over the cells every one of
    them has (:func:`common_cells`); also those cells and how many other cells some run had (left
    out so that every run is averaged over the same corruptions and severities)."""
    cells = corruption_cells(summary)
    cells = cells[cells["run_id"].isin(list(run_ids))]
    common = common_cells(cells, run_ids)
    extra = len(cells[cells["severity"] >= 1][["corruption", "severity"]].drop_duplicates()) - len(common)
    means = cell_means(cells, common)
    return means.assign(metric=METRIC)[["run_id", "metric", "strength", "value"]], common, extra


def example_corruption_values(tables: list[pd.DataFrame]) -> tuple[list[pd.DataFrame], list[tuple[str, int]]]:
    """Per example, the share of the common (corruption, severity >= 1) cells of ``tables`` (the
    attack_examples.csv of two runs, checked) whose corrupted copy it gets right, overall
    (``mean``) and per family: for each table a frame (metric, strength, example, value); and the
    cells. Empty frames where a table has no corruption rows."""
    rows = [t[(t["attack"] == CORRUPTION) & (t["strength"] >= 1)] for t in tables]
    empty = pd.DataFrame(columns=["metric", "strength", "example", "value"])
    if any(r.empty for r in rows):
        return [empty for _ in tables], []
    keyed = [r.assign(run_id=i, severity=r["strength"].round().astype(int), corruption=r["norm"])
             for i, r in enumerate(rows)]
    cells = common_cells(pd.concat(keyed), range(len(tables)))
    out = []
    for r in keyed:
        per = r.assign(value=r["robust"].astype(float))[["example", "corruption", "severity", "value"]]
        means = cell_means(per, cells, key="example")
        out.append(means.assign(metric=METRIC)[["metric", "strength", "example", "value"]])
    return out, cells


def group_errors(cells: pd.DataFrame, group_id: str) -> pd.DataFrame:
    """A group's error per corruption and severity (0 included), 1 - accuracy averaged over its runs:
    corruption, severity, error, n_runs."""
    sel = cells[cells["group_id"] == group_id]
    return (sel.groupby(["corruption", "severity"]).agg(accuracy=("value", "mean"), n_runs=("run_id", "nunique"))
            .reset_index().assign(error=lambda d: 1 - d["accuracy"]).drop(columns="accuracy"))


def corruption_errors(group: pd.DataFrame, baseline: pd.DataFrame) -> pd.DataFrame:
    """Per corruption both have: CE and relative CE of ``group`` against ``baseline`` (their
    :func:`group_errors`), over the severities >= 1 both have: corruption, ce, relative_ce,
    n_severities (NaN where the baseline's denominator is 0, or for the relative CE not positive or
    without a severity-0 row in both)."""
    both = group.merge(baseline, on=["corruption", "severity"], suffixes=("_g", "_b"))
    out = []
    for corruption, sel in both.groupby("corruption", sort=False):
        corrupted, clean = sel[sel["severity"] >= 1], sel[sel["severity"] == 0]
        if corrupted.empty:
            continue
        num, den = corrupted["error_g"].sum(), corrupted["error_b"].sum()
        ce = num / den if den > 0 else math.nan
        relative = math.nan
        if len(clean):
            k = len(corrupted)
            rnum = num - k * float(clean["error_g"].iloc[0])
            rden = den - k * float(clean["error_b"].iloc[0])
            relative = rnum / rden if rden > 0 else math.nan
        out.append({"corruption": corruption, "ce": ce, "relative_ce": relative, "n_severities": len(corrupted)})
    order = {c: i for i, c in enumerate(CORRUPTIONS)}
    table = pd.DataFrame(out, columns=["corruption", "ce", "relative_ce", "n_severities"])
    return table.sort_values("corruption", key=lambda s: s.map(lambda c: order.get(c, len(order))),
                             kind="stable").reset_index(drop=True)


def mce_table(summary: pd.DataFrame, pairs: list[tuple[str, str]]) -> pd.DataFrame:
    """One row per group of ``pairs`` ((group id, its plain group's id); a plain group gets its
    own row, against itself: 100%): clean accuracy of the corrupted examples (severity 0) and mean
    corruption accuracy (severities >= 1, the cells both groups have), mCE and relative mCE in
    percent (:func:`corruption_errors`), the number of corruptions in them and those ``left_out``.
    Columns :data:`MCE_COLUMNS`; shares as fractions."""
    cells = corruption_cells(summary)
    if cells.empty:
        return pd.DataFrame(columns=MCE_COLUMNS)
    labels = dict(zip(cells["group_id"], cells["group_label"]))
    rows, seen = [], set()
    for gid, base in [(b, b) for _, b in pairs] + list(pairs):
        if (gid, base) in seen or gid not in labels or base not in labels:
            continue
        seen.add((gid, base))
        g, b = group_errors(cells, gid), group_errors(cells, base)
        errors = corruption_errors(g, b)
        shared = g.merge(b[["corruption", "severity"]], on=["corruption", "severity"])
        corrupted, clean = shared[shared["severity"] >= 1], shared[shared["severity"] == 0]
        finite = errors[np.isfinite(errors["ce"])]
        rel = errors[np.isfinite(errors["relative_ce"])]
        left = sorted(set(errors["corruption"]) - set(finite["corruption"]))
        left_rel = sorted(set(errors["corruption"]) - set(rel["corruption"]) - set(left))
        note = "; ".join(filter(None, [f"CE: {', '.join(left)}" if left else "",
                                       f"relative CE: {', '.join(left_rel)}" if left_rel else ""]))
        rows.append({"group_id": gid, "group": labels[gid], "baseline": labels[base],
                     "n_runs": int(cells[cells["group_id"] == gid]["run_id"].nunique()),
                     "n_corruptions": len(finite),
                     "clean_acc": 1 - float(clean["error"].mean()) if len(clean) else math.nan,
                     "mean_acc": 1 - float(corrupted["error"].mean()) if len(corrupted) else math.nan,
                     "mCE": 100 * float(finite["ce"].mean()) if len(finite) else math.nan,
                     "relative_mCE": 100 * float(rel["relative_ce"].mean()) if len(rel) else math.nan,
                     "left_out": note})
    return pd.DataFrame(rows, columns=MCE_COLUMNS)


def accuracy_grid(summary: pd.DataFrame, group_id: str) -> pd.DataFrame:
    """A group's accuracy (mean over its runs) as corruption x severity: rows the corruptions (the
    library's order), columns the severities (0 first), values shares."""
    cells = corruption_cells(summary)
    sel = cells[cells["group_id"] == group_id]
    if sel.empty:
        return pd.DataFrame()
    grid = sel.pivot_table(index="corruption", columns="severity", values="value", aggfunc="mean")
    order = {c: i for i, c in enumerate(CORRUPTIONS)}
    return grid.loc[sorted(grid.index, key=lambda c: (order.get(c, len(order)), c))]
