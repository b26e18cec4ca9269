"""Verdicts: is a group of runs better or worse than the plain runs of the same recipe?

For every group of runs (runs differing only by seed, :func:`jrbench.analysis.provenance.group_id`) with
regularizers, the baseline is the plain group (``--reg none``) with the same data set, model
and recipe: the same training settings other than the regularizers and their options and
the seed (:func:`recipe_key`). A group without one gets no verdict, and a gap says so. With
``--versus`` (:func:`versus_comparisons`) the baselines are named instead (``none``, ``jacobian``,
``lenet:none``) and compared with every other group on the same data, whatever its model and
recipe: a certified-training model against the plain and the Jacobian LeNet.

Metrics (``metric``, ``strength``): ``clean_acc``; ``noise_acc`` at each sigma
("sigma 0.5"); ``worst_case_acc`` (the worst case per example over every adversarial attack,
:func:`jrbench.analysis.worst_case.worst_case_examples`), ``pgd_acc`` and ``autoattack_acc`` at each norm
and eps ("linf 0.1"); ``certified_acc`` at each norm and eps of the certificate grid and
``certified_radius`` per norm (its median over examples): verified robustness under the tightest
certificate per example, the best of every deterministic one that ran (Lipschitz, IBP, CROWN,
alpha-CROWN, complete verification; :func:`jrbench.certify.api.best_radii`); ``R_z`` (test_R_z of
metrics.csv, last epoch; smaller is better); the medians over examples of ``margin_random_median``
and ``margin_adv_l2`` (margins.csv, pixel L2); ``corruption_acc``, the accuracy under the common
corruptions averaged over the corruptions and severities 1-5 (strength ``mean``) and over each
family's (``noise``, ``blur``, ``weather``, ``digital``), on the cells every run of the comparison
has (:mod:`jrbench.analysis.corruptions`). ``diff`` is group minus baseline, in percentage
points for accuracies.

Methods (:mod:`jrbench.stats`), chosen by the seeds the two groups share:
- two or more seeds in common: runs paired by seed, paired t-test and t interval on the
  per-seed differences (per-seed medians for margins): covers training noise;
- one seed in common: tests over the test examples of that seed's two runs, paired by
  ``example`` (attack_examples.csv): exact McNemar for 0/1 outcomes (clean, attacks), an
  exact sign test for the noise shares and for each example's share of corrupted copies
  classified correctly; for margins a bootstrap interval of the difference of
  medians with a permutation test (two independent samples). These cover the choice of test
  examples only, not training noise: the method text says so. R_z has no per-example values
  in metrics.csv: one seed gets no verdict (a gap).

One verdict per distinct measurement: at strength 0 noise and every attack measure clean accuracy
(:mod:`jrbench.evaluate.attacks` returns the clean result at sigma 0 and eps 0) and a
certificate's certified accuracy at eps 0 is the clean correctness of its examples
(:func:`jrbench.certify.api.covers`). Such a strength-0 row (:data:`ZERO_IS_CLEAN`) is no verdict of
its own when its data are those of an earlier row of the same comparison (the clean row first):
over seeds, the same per-run values in every paired run and, in each run where both have
per-example records (attack_examples.csv, certify_examples.csv), the same outcome per example;
with one seed, the same per-example outcomes. The row it repeats stands for it (``stands_for``:
the repeats, "metric strength" joined by "; "). Strength-0 rows on other examples than the clean
row's (attacks on a fixed subset, clean accuracy on the whole test set) stay: a distinct
measurement, the clean accuracy of those examples, one verdict for all of them.

Multiplicity: the verdicts of one report, its distinct comparisons, are one family. ``p_adjusted``
is the p value adjusted over all of them (:func:`jrbench.stats.adjust_p_values`; ``correction``: ``bh``, Benjamini-Hochberg,
the default, controls the false discovery rate; ``holm`` the family-wise error; ``none``).
The intervals stay the per-comparison 95% ones.

``verdict``: ``better`` or ``worse`` when the adjusted p < 0.05 and the 95% interval excludes 0
(the same condition for the raw p and the paired t or McNemar; the sign test and the bootstrap
must agree with their intervals), in the metric's good direction; else ``no significant
difference``. Plain functions returning DataFrames; nothing prints.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from .. import stats
from ..certify.api import DETERMINISTIC, best_radii, covers
from ..errors import UserError
from .provenance import group_id, relevant_config
from .corruptions import METRIC as CORRUPTION_METRIC, STRENGTHS as CORRUPTION_STRENGTHS, example_corruption_values, run_corruption_values
from .run_records import ATTACK_EXAMPLES, CERTIFY, CERTIFY_EXAMPLES, RunRecord
from .worst_case import WORST_CASE, check_attack_examples, worst_case_examples

VERDICT_COLUMNS = ["metric", "strength", "group", "baseline", "diff", "ci_low", "ci_high", "p_value", "p_adjusted",
                   "correction", "n_seeds", "method", "verdict", "stands_for"]
BETTER, WORSE, SAME = "better", "worse", "no significant difference"
ALPHA = 1 - stats.CONFIDENCE
# metric -> (readable name, unit of diff, larger is better, scale of diff)
METRICS = {
    "clean_acc": ("clean accuracy", "points", True, 100.0),
    "noise_acc": ("noise", "points", True, 100.0),
    "worst_case_acc": ("worst case", "points", True, 100.0),
    "pgd_acc": ("PGD", "points", True, 100.0),
    "autoattack_acc": ("AutoAttack", "points", True, 100.0),
    "certified_acc": ("certified (best deterministic certificate)", "points", True, 100.0),
    "certified_radius": ("median certified radius (best deterministic certificate)", "pixel", True, 1.0),
    "corruption_acc": ("corruption accuracy", "points", True, 100.0),
    "R_z": ("R_z = ½ mean ‖J_z‖_F²", "", False, 1.0),
    "margin_random_median": ("median random-direction margin", "pixel L2", True, 1.0),
    "margin_adv_l2": ("median adversarial margin", "pixel L2", True, 1.0),
}
ATTACK_METRICS = {"noise": "noise_acc", WORST_CASE: "worst_case_acc", "pgd": "pgd_acc",
                  "autoattack": "autoattack_acc"}
MARGIN_METRICS = ("margin_random_median", "margin_adv_l2")
ONE_SEED = "examples only; 1 seed: training noise not covered"
# metrics that measure clean accuracy at strength 0 (noise σ 0, an attack or a certificate at ε 0)
ZERO_IS_CLEAN = ("noise_acc", "worst_case_acc", "pgd_acc", "autoattack_acc", "certified_acc")


# ----------------------------------------------------------------------------- who against whom
def recipe_key(config) -> str:
    """Data set, model and training settings without the regularizers (and their options),
    the seed, the device and the data folder: runs with the same key compare."""
    d = relevant_config(config)
    d.pop("reg")
    return json.dumps(d, sort_keys=True)


def is_plain(config) -> bool:
    return list(config.reg.names) == ["none"]


@dataclass
class Comparison:
    """A group of runs and its plain baseline; ``runs``/``baseline_runs``: seed -> run."""

    group: str
    baseline: str
    runs: dict[int, RunRecord] = field(default_factory=dict)
    baseline_runs: dict[int, RunRecord] = field(default_factory=dict)


def _groups(records: list[RunRecord]) -> dict[str, list[RunRecord]]:
    """The runs of each group (:func:`group_id`), by run id."""
    groups: dict[str, list[RunRecord]] = {}
    for r in sorted(records, key=lambda r: r.run_id):
        groups.setdefault(group_id(r.config), []).append(r)
    return groups


def _seed_index(groups: dict[str, list[RunRecord]], labels: dict[str, str],
                gaps: list[str]) -> Callable[[str], dict[int, RunRecord]]:
    """``by_seed(gid)``: seed -> run of a group, the first run by id where two share a seed;
    a gap names such a pair (once, however often the group is compared)."""
    cache: dict[str, dict[int, RunRecord]] = {}

    def by_seed(gid: str) -> dict[int, RunRecord]:
        if gid not in cache:
            out: dict[int, RunRecord] = {}
            for r in groups[gid]:
                seed = int(r.config.train.seed)
                if seed in out:
                    gaps.append(f"{labels[gid]}: verdicts: runs {out[seed].run_id} and {r.run_id} share seed "
                                f"{seed}; {out[seed].run_id} is used")
                else:
                    out[seed] = r
            cache[gid] = out
        return dict(cache[gid])
    return by_seed


def comparisons(records: list[RunRecord], labels: dict[str, str],
                is_baseline: Callable[[object], bool] | None = None) -> tuple[list[Comparison], list[str]]:
    """Every other group against the baseline group of its recipe (``is_baseline(config)``; by
    default the plain group); gaps for groups without one and for seeds that occur twice in a
    group (the first run by id is used)."""
    is_base = is_baseline or is_plain
    groups = _groups(records)
    gaps: list[str] = []
    by_seed = _seed_index(groups, labels, gaps)

    bases: dict[str, list[str]] = {}
    for gid, rs in groups.items():
        if is_base(rs[0].config):
            bases.setdefault(recipe_key(rs[0].config), []).append(gid)
    plain = {}
    for key, gids in bases.items():  # one baseline a recipe: the group with most runs, the others named
        gids = sorted(gids, key=lambda g: -len(groups[g]))
        plain[key] = gids[0]
        for other in gids[1:]:
            gaps.append(f"{labels[other]}: verdicts: a second baseline group of the recipe of {labels[gids[0]]} "
                        f"(their settings differ); the comparisons use {labels[gids[0]]} "
                        f"({len(groups[gids[0]])} runs), not these {len(groups[other])}")
    found = []
    for gid, rs in groups.items():
        if is_base(rs[0].config):
            continue
        base = plain.get(recipe_key(rs[0].config))
        if base is None:
            what = "plain ('--reg none')" if is_baseline is None else "baseline"
            gaps.append(f"{labels[gid]}: verdicts: no {what} group with the same data set, model "
                        "and recipe (training settings other than the regularizers and the seed); no verdict")
            continue
        found.append(Comparison(gid, base, by_seed(gid), by_seed(base)))
    return found, gaps


def _data_key(config) -> str:
    """The data a run was trained and tested on (its data settings without the folder)."""
    return json.dumps(relevant_config(config)["data"], sort_keys=True)


def _selects(selector: str, config) -> bool:
    """Whether ``selector`` (``REG[+REG...]`` or ``MODEL:REG[+REG...]``, as ``--versus`` takes
    it) names the group of ``config``: its regularizers in order, and its model where given."""
    model, _, regs = selector.rpartition(":")
    return "+".join(config.reg.names) == regs and (not model or config.model.name == model)


def versus_comparisons(records: list[RunRecord], labels: dict[str, str],
                       versus: list[str]) -> tuple[list[Comparison], list[str]]:
    """Every group against each chosen baseline on the same data, whatever its model and recipe
    (``--versus``): for the i-th selector, every group on the same data set that no selector up
    to the i-th names is compared with the group it names. Where a selector names several
    groups on one data set, the one with the compared group's recipe is used, else the one with
    most runs (a gap names the choice). A selector that names no group is a :class:`UserError`."""
    groups = _groups(records)
    first = {gid: rs[0].config for gid, rs in groups.items()}
    for selector in versus:
        if not any(_selects(selector, c) for c in first.values()):
            names = sorted({f"{c.model.name}:{'+'.join(c.reg.names)}" for c in first.values()})
            raise UserError(f"--versus {selector!r} names no group of these runs (MODEL:REG or REG, several "
                            f"regularizers joined by '+'); they have: {', '.join(names)}")
    gaps: list[str] = []
    by_seed = _seed_index(groups, labels, gaps)
    found: list[Comparison] = []
    for i, selector in enumerate(versus):
        earlier = versus[:i + 1]
        for gid, config in first.items():
            if any(_selects(s, config) for s in earlier):
                continue
            bases = [b for b, c in first.items() if _selects(selector, c) and _data_key(c) == _data_key(config)]
            if not bases:
                gaps.append(f"{labels[gid]}: verdicts: no {selector!r} group on the same data set (--versus); "
                            "no verdict against it")
                continue
            same = [b for b in bases if recipe_key(first[b]) == recipe_key(config)]
            base = same[0] if same else max(bases, key=lambda b: len(groups[b]))
            if len(bases) > 1 and not same:
                gaps.append(f"{labels[gid]}: verdicts: {len(bases)} {selector!r} groups on its data set (--versus); "
                            f"compared with {labels[base]}, the one with most runs")
            found.append(Comparison(gid, base, by_seed(gid), by_seed(base)))
    return found, gaps


# ----------------------------------------------------------------------------- per-run values
def strength_label(norm: str, strength: float) -> str:
    """'sigma 0.5' for noise, 'linf 0.1' / 'l2 1.5' for attacks (pixel units)."""
    return f"{'sigma' if norm == 'gaussian' else norm} {float(strength):g}"


def _prefer_ce64(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per ``keys``: the ce64 one where there are several losses."""
    rank = (rows["loss"].fillna("none") != "ce64").astype(int)
    return rows.assign(_rank=rank).sort_values("_rank", kind="stable").drop_duplicates(keys).drop(columns="_rank")


def run_values(summary: pd.DataFrame) -> pd.DataFrame:
    """One value per run, metric and strength (run_id, metric, strength, value), from the
    tidy table: accuracies as fractions, R_z, per-run medians of the margins."""
    parts = []
    m = summary[(summary["table"] == "metrics") & (summary["statistic"] == "last_epoch")]
    for quantity, metric in (("test_acc", "clean_acc"), ("test_R_z", "R_z")):
        sel = m[m["quantity"] == quantity]
        parts.append(pd.DataFrame({"run_id": sel["run_id"], "metric": metric, "strength": "", "value": sel["value"]}))
    a = summary[(summary["table"] == "attacks") & summary["attack"].isin(list(ATTACK_METRICS))]
    a = _prefer_ce64(a, ["run_id", "attack", "norm", "strength"])
    parts.append(pd.DataFrame({"run_id": a["run_id"], "metric": a["attack"].map(ATTACK_METRICS),
                               "strength": [strength_label(n, s) for n, s in zip(a["norm"], a["strength"])],
                               "value": a["value"]}))
    c = summary[(summary["table"] == "certify") & (summary["attack"] == "certified")]
    acc, radius = c[c["quantity"] == "accuracy"], c[c["quantity"] == "certified_radius"]
    parts.append(pd.DataFrame({"run_id": acc["run_id"], "metric": "certified_acc",
                               "strength": [strength_label(n, s) for n, s in zip(acc["norm"], acc["strength"])],
                               "value": acc["value"]}))
    parts.append(pd.DataFrame({"run_id": radius["run_id"], "metric": "certified_radius", "strength": radius["norm"],
                               "value": radius["value"]}))
    g = summary[(summary["table"] == "margins") & (summary["statistic"] == "median")
                & summary["quantity"].isin(list(MARGIN_METRICS))]
    parts.append(pd.DataFrame({"run_id": g["run_id"], "metric": g["quantity"], "strength": "", "value": g["value"]}))
    out = pd.concat(parts, ignore_index=True)
    return out[out["value"].notna()].reset_index(drop=True)


def example_values(record: RunRecord) -> pd.DataFrame:
    """Per-example outcomes of one run from attack_examples.csv (metric, strength, example,
    value): clean_correct (0/1), the share of noise draws classified correctly, robust (0/1)
    under the worst case, PGD and AutoAttack (ce64 where there are several losses)."""
    table = check_attack_examples(record.tables[ATTACK_EXAMPLES], str(record.path / ATTACK_EXAMPLES))

    def part(metric: str, rows: pd.DataFrame, value: str) -> pd.DataFrame:
        strength = ([""] * len(rows) if metric == "clean_acc"
                    else [strength_label(n, s) for n, s in zip(rows["norm"], rows["strength"])])
        return pd.DataFrame({"metric": metric, "strength": pd.Series(strength, dtype=object),
                             "example": rows["example"].to_numpy(), "value": rows[value].to_numpy(float)})

    parts = [part("clean_acc", table.drop_duplicates("example"), "clean_correct"),
             part("noise_acc", table[table["attack"] == "noise"], "robust"),
             part("worst_case_acc", worst_case_examples(table), "robust")]
    for attack in ("pgd", "autoattack"):
        sel = _prefer_ce64(table[table["attack"] == attack], ["example", "norm", "strength"])
        parts.append(part(ATTACK_METRICS[attack], sel, "robust"))
    certified = certified_examples(record)
    if certified is not None:
        parts.append(part("certified_acc", certified, "certified"))
    return pd.concat(parts, ignore_index=True)


def run_best_radii(record: RunRecord) -> pd.DataFrame | None:
    """:func:`jrbench.certify.api.best_radii` of the run's certify_examples.csv; None without it."""
    ex = record.tables.get(CERTIFY_EXAMPLES)
    return None if ex is None else best_radii(ex)


def certified_examples(record: RunRecord) -> pd.DataFrame | None:
    """Per example, norm and strength of the run's certify.csv grid whether the best deterministic
    certificate covers it (:func:`jrbench.certify.api.covers`): columns norm, strength, example, certified."""
    best, table = run_best_radii(record), record.tables.get(CERTIFY)
    if best is None or table is None:
        return None
    grid = table[table["method"].isin(DETERMINISTIC)][["norm", "strength"]].drop_duplicates()
    rows = best.merge(grid, on="norm")
    return rows.assign(certified=covers(rows["radius"], rows["strength"], rows["clean_correct"]).astype(float))


# ----------------------------------------------------------------------------- one verdict per measurement
def _is_zero(strength: str) -> bool:
    _, _, value = strength.partition(" ")
    try:
        return float(value) == 0
    except ValueError:
        return False


def is_strength_zero(metric: str, strength: str) -> bool:
    """A row of noise, an attack or a certificate at strength 0: a measurement of clean accuracy."""
    return metric in ZERO_IS_CLEAN and _is_zero(strength)


def _same_values(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """The same paired values (columns: a seed or an example, value_g, value_b), to 1e-12 (far
    below one example's share of any accuracy)."""
    a, b = (t.sort_values(t.columns[0]).to_numpy(float) for t in (a, b))
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=0.0, atol=1e-12))


def drop_repeats(rows: list[dict], data: dict[tuple[str, str], pd.DataFrame],
                 same_examples: Callable[[tuple[str, str], tuple[str, str]], bool] | None = None) -> list[dict]:
    """``rows`` (one comparison, in display order) without the strength-0 rows that repeat an
    earlier measurement: a row of :func:`is_strength_zero` whose test data ``data[(metric,
    strength)]`` (the paired values, a row per seed or example) are those of an earlier kept clean
    or strength-0 row and, where ``same_examples`` is given, whose per-example outcomes agree with
    it (``same_examples(key, earlier_key)``). The earlier row stands for it: its ``stands_for``
    names the repeats ("metric strength", joined by "; ")."""
    kept: list[dict] = []
    for r in rows:
        key = (r["metric"], r["strength"])
        if is_strength_zero(*key) and key in data:
            for k in kept:
                other = (k["metric"], k["strength"])
                if ((other[0] == "clean_acc" or is_strength_zero(*other)) and other in data
                        and _same_values(data[key], data[other])
                        and (same_examples is None or same_examples(key, other))):
                    k["stands_for"] = "; ".join(filter(None, [k["stands_for"], _what(*key)]))
                    break
            else:
                kept.append(r)
            continue
        kept.append(r)
    return kept


def strength_zero_examples(record: RunRecord) -> pd.DataFrame:
    """A run's per-example outcomes at strength 0 (metric, strength, example, value) of noise,
    attacks (attack_examples.csv) and the best certificate (certify_examples.csv); empty where it
    has no such record."""
    parts = []
    if ATTACK_EXAMPLES in record.tables:
        try:
            parts.append(example_values(record))
        except UserError:
            pass  # an unreadable record: the verdicts name it elsewhere
    else:
        certified = certified_examples(record)
        if certified is not None:
            parts.append(pd.DataFrame({"metric": "certified_acc",
                                       "strength": [strength_label(n, s) for n, s in
                                                    zip(certified["norm"], certified["strength"])],
                                       "example": certified["example"].to_numpy(),
                                       "value": certified["certified"].to_numpy(float)}))
    if not parts:
        return pd.DataFrame(columns=["metric", "strength", "example", "value"])
    out = pd.concat(parts, ignore_index=True)
    return out[[is_strength_zero(m, s) for m, s in zip(out["metric"], out["strength"])]]


def same_per_example(runs: list[RunRecord], cache: dict[str, pd.DataFrame]) -> Callable:
    """``same_examples`` for :func:`drop_repeats` over seeds: in every run of ``runs`` where both
    measurements have per-example records, the same examples with the same outcomes (the clean
    row, metrics.csv's test accuracy, has none: there the per-run values decide)."""
    def table(r: RunRecord) -> pd.DataFrame:
        if r.run_id not in cache:
            cache[r.run_id] = strength_zero_examples(r)
        return cache[r.run_id]

    def same(a: tuple[str, str], b: tuple[str, str]) -> bool:
        for r in runs:
            t = table(r)
            x, y = ((t[(t["metric"] == m) & (t["strength"] == s)][["example", "value"]]) for m, s in (a, b))
            if x.empty or y.empty:
                continue
            x, y = (v.sort_values("example").to_numpy(float) for v in (x, y))
            if x.shape != y.shape or not np.array_equal(x, y):
                return False
        return True

    return same


# ----------------------------------------------------------------------------- the verdicts
def _decide(p: float, ci_low: float, ci_high: float, larger_is_better: bool) -> str:
    if not (math.isfinite(p) and p < ALPHA) or math.isnan(ci_low) or math.isnan(ci_high):
        return SAME
    if ci_low > 0:
        return BETTER if larger_is_better else WORSE
    if ci_high < 0:
        return WORSE if larger_is_better else BETTER
    return SAME


def decide(d: stats.Difference, larger_is_better: bool, p_value: float | None = None) -> str:
    """better / worse when the interval excludes 0 and p < 0.05 (``p_value``: an adjusted p
    instead of ``d.p_value``), in the metric's direction."""
    return _decide(d.p_value if p_value is None else p_value, d.ci_low, d.ci_high, larger_is_better)


def apply_correction(table: pd.DataFrame, correction: str = "bh") -> pd.DataFrame:
    """The table with ``p_adjusted`` (``p_value`` adjusted over all its rows, one family:
    :func:`jrbench.stats.adjust_p_values`), ``correction`` (the method's name) and ``verdict``
    decided by the adjusted p and the (unadjusted, per-comparison) 95% interval."""
    if correction not in stats.CORRECTIONS:
        raise UserError(f"--correction must be one of {', '.join(stats.CORRECTIONS)}, got {correction!r}.")
    out = table.copy()
    if out.empty:
        return out
    out["p_adjusted"] = stats.adjust_p_values(out["p_value"].to_numpy(float), correction)
    out["correction"] = correction
    out["verdict"] = [_decide(p, lo, hi, METRICS[m][2])
                      for p, lo, hi, m in zip(out["p_adjusted"], out["ci_low"], out["ci_high"], out["metric"])]
    return out


def raw_verdicts(table: pd.DataFrame) -> list[str]:
    """Each row's verdict from its raw p (no correction), for counting what a correction changed."""
    return [_decide(p, lo, hi, METRICS[m][2])
            for p, lo, hi, m in zip(table["p_value"], table["ci_low"], table["ci_high"], table["metric"])]


def n_repeats(table: pd.DataFrame) -> int:
    """How many strength-0 repeats the rows stand for (their ``stands_for``; 0 in a table without it)."""
    if "stands_for" not in table.columns:
        return 0
    return sum(len([x for x in str(v).split("; ") if x]) for v in table["stands_for"].fillna(""))


def correction_note(table: pd.DataFrame) -> str:
    """What the family is, which correction was made and how many verdicts it changed."""
    if table.empty:
        return ""
    correction = str(table["correction"].iloc[0])
    n, raw = len(table), raw_verdicts(table)
    claims = sum(v != SAME for v in raw)
    kept = sum(v != SAME for v in table["verdict"])
    repeats = n_repeats(table)
    family = (f"The family is the report's {n} distinct comparisons, the rows of verdicts.csv ({claims} better or "
              "worse by their raw p)" + (
                  f"; {repeats} strength-0 row{'s' if repeats != 1 else ''} with the same data as another row of "
                  f"{'their' if repeats != 1 else 'its'} comparison (noise σ 0, attacks or certificates at ε 0: the "
                  f"clean accuracy again) {'are' if repeats != 1 else 'is'} no verdict of {'their' if repeats != 1 else 'its'} "
                  "own and not in the family: the row repeated stands for them (its stands_for)"
                  if repeats else "") + ".")
    if correction == "none":
        return (family + " No correction for testing many comparisons was made (--correction none): "
                "p_adjusted = p; read a lone better or worse among many rows with care.")
    what = ("Benjamini-Hochberg (the expected share of false claims among the better / worse verdicts is at "
            "most 5%, for independent or positively dependent tests)" if correction == "bh" else
            "Holm (the chance of any false better / worse verdict in the family is at most 5%, under any "
            "dependence)")
    return (f"{family} Verdicts use p adjusted over the family by {what}; the intervals stay the per-comparison "
            f"95% ones (not adjusted), so an interval excluding 0 can come with an adjusted p above 0.05. The "
            f"correction changed {claims - kept} of the {claims} raw better / worse verdicts to no significant "
            f"difference ({kept} remain).")


def verdict_row(metric: str, strength: str, group: str, baseline: str, d: stats.Difference, n_seeds: int,
                method: str) -> dict:
    _, _, larger, scale = METRICS[metric]
    return {"metric": metric, "strength": strength, "group": group, "baseline": baseline,
            "diff": scale * d.diff, "ci_low": scale * d.ci_low, "ci_high": scale * d.ci_high,
            "p_value": d.p_value, "p_adjusted": d.p_value, "correction": "none", "n_seeds": n_seeds,
            "method": method, "verdict": decide(d, larger), "stands_for": ""}


def _keys(values: pd.DataFrame) -> list[tuple[str, str]]:
    """(metric, strength) pairs in display order: metrics as in METRICS, strengths ascending."""
    pairs = values[["metric", "strength"]].drop_duplicates()
    order = {m: i for i, m in enumerate(METRICS)}

    def key(p):
        metric, strength = p
        if metric == CORRUPTION_METRIC:  # the mean first, then the families
            return order[metric], f"{CORRUPTION_STRENGTHS.index(strength):03d}", 0.0
        norm, _, value = strength.partition(" ")
        return order.get(metric, len(order)), norm, float(value) if value else 0.0

    return sorted(map(tuple, pairs.to_numpy()), key=key)


def _what(metric: str, strength: str) -> str:
    return f"{metric} {strength}".strip()


def seed_verdicts(c: Comparison, labels: dict[str, str], values: pd.DataFrame, seeds: list[int],
                  cache: dict[str, pd.DataFrame] | None = None) -> tuple[list[dict], list[str]]:
    """Paired t over the seeds both groups have, for every metric both have at two of them; a
    strength-0 row that repeats another measurement is none (:func:`drop_repeats`; ``cache``: run
    id -> :func:`strength_zero_examples`, shared by the comparisons of a report)."""
    group, base = labels[c.group], labels[c.baseline]
    run_seed = {c.runs[s].run_id: s for s in seeds}
    base_seed = {c.baseline_runs[s].run_id: s for s in seeds}
    g = values[values["run_id"].isin(list(run_seed))].assign(seed=lambda v: v["run_id"].map(run_seed))
    b = values[values["run_id"].isin(list(base_seed))].assign(seed=lambda v: v["run_id"].map(base_seed))
    both = g.merge(b, on=["metric", "strength", "seed"], suffixes=("_g", "_b"))
    rows, gaps, data = [], [], {}
    for metric, strength in _keys(pd.concat([g, b])):
        sel = both[(both["metric"] == metric) & (both["strength"] == strength)].sort_values("seed")
        data[(metric, strength)] = sel[["seed", "value_g", "value_b"]]
        if len(sel) < 2:
            gaps.append(f"{group}: verdicts: {_what(metric, strength)}: values at {len(sel)} of the {len(seeds)} "
                        f"seeds both groups have; a paired test needs 2")
            continue
        d = stats.paired_t(sel["value_g"].to_numpy(float), sel["value_b"].to_numpy(float))
        method = "paired t over seeds" + (" (per-seed medians)" if metric in MARGIN_METRICS + ("certified_radius",)
                                          else "")
        rows.append(verdict_row(metric, strength, group, base, d, len(sel), method))
    runs = [c.runs[s] for s in seeds] + [c.baseline_runs[s] for s in seeds]
    return drop_repeats(rows, data, same_per_example(runs, {} if cache is None else cache)), gaps


def example_verdicts(c: Comparison, labels: dict[str, str], values: pd.DataFrame, examples: pd.DataFrame,
                     seed: int) -> tuple[list[dict], list[str]]:
    """One seed in common: per-example tests on that seed's two runs; a strength-0 row with the
    per-example outcomes of an earlier row is none (:func:`drop_repeats`)."""
    group, base = labels[c.group], labels[c.baseline]
    rg, rb = c.runs[seed], c.baseline_runs[seed]
    rows, gaps, data = [], [], {}
    wanted = values[values["run_id"].isin([rg.run_id, rb.run_id])]
    per_example: list[pd.DataFrame] = []
    for r in (rg, rb):
        if ATTACK_EXAMPLES not in r.tables:
            gaps.append(f"{group}: verdicts: one seed ({seed}) and run {r.run_id} has no per-example record "
                        f"({ATTACK_EXAMPLES}): no accuracy verdicts; re-run 'jrbench attack {r.path}'")
            break
        try:
            per_example.append(example_values(r))
        except UserError as e:
            gaps.append(f"{group}: verdicts: {r.run_id}: {e}")
            break
    if len(per_example) == 2:  # the corruptions: per example, the share of the cells both runs have
        tables = [check_attack_examples(r.tables[ATTACK_EXAMPLES], str(r.path / ATTACK_EXAMPLES)) for r in (rg, rb)]
        corrupted, _ = example_corruption_values(tables)
        per_example = [pd.concat([p, c], ignore_index=True) if len(c) else p for p, c in zip(per_example, corrupted)]
    keys = _keys(pd.concat([wanted[["metric", "strength"]]] + [p[["metric", "strength"]] for p in per_example]))
    for metric, strength in keys:
        what = _what(metric, strength)
        if metric == "R_z":
            gaps.append(f"{group}: verdicts: R_z: one seed in common with the baseline and metrics.csv has no "
                        "per-example values; a verdict needs 2 seeds")
            continue
        if metric in MARGIN_METRICS or metric == "certified_radius":
            if metric == "certified_radius":  # strength: the norm
                radii = [run_best_radii(r) for r in (rg, rb)]
                sample = [v[v["norm"] == strength]["radius"].to_numpy(float) if v is not None else np.array([])
                          for v in radii]
            else:
                sample = [examples[(examples["run_id"] == r.run_id) & (examples["quantity"] == metric)]["value"]
                          .to_numpy(float) for r in (rg, rb)]
            sample = [v[~np.isnan(v)] for v in sample]
            if min(len(v) for v in sample) < 2:
                gaps.append(f"{group}: verdicts: {what}: fewer than 2 per-example margins in a run")
                continue
            d = stats.median_difference(sample[0], sample[1])
            method = (f"bootstrap of the difference of medians (percentile, {stats.BOOTSTRAP_RESAMPLES} resamples, "
                      f"seed 0) and permutation test ({d.note}; {ONE_SEED})")
            rows.append(verdict_row(metric, strength, group, base, d, 1, method))
            continue
        if len(per_example) < 2:
            continue  # named above
        pg, pb = (p[(p["metric"] == metric) & (p["strength"] == strength)] for p in per_example)
        paired = pg.merge(pb, on="example", suffixes=("_g", "_b"))
        data[(metric, strength)] = paired[["example", "value_g", "value_b"]]
        if paired.empty:
            gaps.append(f"{group}: verdicts: {what}: no test example in the per-example records of both "
                        f"{rg.run_id} and {rb.run_id}")
            continue
        if metric in ("noise_acc", CORRUPTION_METRIC):
            d = stats.sign_test(paired["value_g"], paired["value_b"])
            shares = "correct noise draws" if metric == "noise_acc" else "corrupted copies classified correctly"
            method = (f"sign test exact on examples whose shares of {shares} differ ({d.note}); "
                      f"t interval over {d.n} examples ({ONE_SEED})")
        else:
            d = stats.mcnemar_exact(paired["value_g"], paired["value_b"])
            method = f"McNemar exact ({d.n} examples, {d.note}; {ONE_SEED})"
        rows.append(verdict_row(metric, strength, group, base, d, 1, method))
    return drop_repeats(rows, data), gaps


def verdicts(collection, is_baseline: Callable[[object], bool] | None = None,
             correction: str = "bh", versus: list[str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """The verdicts of a :class:`jrbench.analysis.results.Collection` (columns :data:`VERDICT_COLUMNS`)
    and the gaps: comparisons or metrics that could not be decided, and why. ``is_baseline``
    picks the baseline group of each recipe (default: the plain one); ``versus``: instead, the
    groups named to compare every other group with on the same data (:func:`versus_comparisons`);
    ``correction``: the
    multiplicity correction over all the verdicts, the report's distinct comparisons (strength-0
    repeats dropped: :func:`drop_repeats`; :func:`apply_correction`)."""
    if correction not in stats.CORRECTIONS:
        raise UserError(f"--correction must be one of {', '.join(stats.CORRECTIONS)}, got {correction!r}.")
    labels = dict(zip(collection.summary["group_id"], collection.summary["group_label"]))
    for r in collection.runs:
        labels.setdefault(group_id(r.config), r.run_id)
    found, gaps = (versus_comparisons(collection.runs, labels, versus) if versus
                   else comparisons(collection.runs, labels, is_baseline))
    values = run_values(collection.summary) if len(collection.summary) else pd.DataFrame(
        columns=["run_id", "metric", "strength", "value"])
    rows, cache = [], {}
    for c in found:
        common = sorted(set(c.runs) & set(c.baseline_runs))
        if not common:
            gaps.append(f"{labels[c.group]}: verdicts: no seed in common with {labels[c.baseline]} (seeds "
                        f"{sorted(c.runs)} against {sorted(c.baseline_runs)}); runs are paired by seed")
            continue
        if len(common) >= 2:
            run_ids = [c.runs[s].run_id for s in common] + [c.baseline_runs[s].run_id for s in common]
            corrupted, cells, extra = run_corruption_values(collection.summary, run_ids)
            if extra:
                gaps.append(f"{labels[c.group]}: verdicts: corruption accuracy over the {len(cells)} corruption and "
                            f"severity cells every run of the comparison with {labels[c.baseline]} has; {extra} "
                            "other cells (in some runs only) left out")
            new, new_gaps = seed_verdicts(c, labels, pd.concat([values, corrupted], ignore_index=True), common,
                                          cache)
        else:
            new, new_gaps = example_verdicts(c, labels, values, collection.examples, common[0])
        rows += new
        gaps += new_gaps
    return apply_correction(pd.DataFrame(rows, columns=VERDICT_COLUMNS), correction), gaps


# ----------------------------------------------------------------------------- sentences
def _measure(metric: str, strength: str) -> str:
    name = METRICS[metric][0]
    norm, _, value = strength.partition(" ")
    sym = {"linf": "L∞", "l2": "L2"}.get(norm, norm)
    if metric == "noise_acc":
        return f"noise σ {value}"
    if metric in ("pgd_acc", "autoattack_acc"):
        return f"{name}-{sym} {value}"
    if metric == "worst_case_acc":
        return f"{sym} {value} worst case"
    if metric == "certified_acc":
        return f"{sym} {value} certified"
    if metric == "certified_radius":
        return f"median certified {sym} radius"
    if metric == CORRUPTION_METRIC:
        return ("corruptions, mean over corruptions and severities" if strength == "mean"
                else f"corruptions, {strength} family")
    return name


def _number(value: float, unit: str) -> str:
    return f"{value:+.1f}" if unit == "points" else f"{value:+.3g}"


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


ADJUSTED = {"bh": "BH-adjusted", "holm": "Holm-adjusted"}


def _p_text(r) -> str:
    """'p = 0.026, BH-adjusted p = 0.035' (the raw p alone without a correction)."""
    correction = getattr(r, "correction", "none")
    if correction not in ADJUSTED:
        return _p(r.p_value)
    return f"{_p(r.p_value)}, {ADJUSTED[correction]} {_p(r.p_adjusted)}"


def verdict_lines(table: pd.DataFrame) -> list[str]:
    """One sentence per verdict, e.g. 'lenet jacobian λ_JR=0.01 n_proj=1 vs lenet none, L∞ 0.1
    worst case: +5.8 points [2.1, 9.5], p = 0.01, BH-adjusted p = 0.03, 5 seeds, paired t over
    seeds: better'."""
    lines = []
    for r in table.itertuples(index=False):
        unit = METRICS[r.metric][1]
        lo, hi = (f"{v:.1f}" if unit == "points" else f"{v:.3g}" for v in (r.ci_low, r.ci_high))
        amount = _number(r.diff, unit) + (f" {unit}" if unit else "")
        seeds = f"{r.n_seeds} seed" + ("s" if r.n_seeds != 1 else "")
        also = [x for x in str(getattr(r, "stands_for", "") or "").split("; ") if x]
        also_text = (" (also " + ", ".join(_measure(*x.split(" ", 1)) if " " in x else _measure(x, "")
                                           for x in also) + ": the same data)") if also else ""
        lines.append(f"{r.group} vs {r.baseline}, {_measure(r.metric, r.strength)}{also_text}: {amount} [{lo}, {hi}], "
                     f"{_p_text(r)}, {seeds}, {r.method}: {r.verdict}")
    return lines


COMPACT_COLUMNS = ["metric", "strength", "difference [95% CI]", "adjusted p", "verdict"]
SHORT_NAMES = {"clean_acc": "clean", "R_z": "R_z", "margin_random_median": "margin, random",
               "margin_adv_l2": "margin, adversarial"}  # the rest: METRICS' names
SHORT_VERDICTS = {SAME: "n.s."}


def compact_tables(table: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """The verdicts for a terminal: one table per comparison (group, baseline, rows with
    :data:`COMPACT_COLUMNS`, strings; accuracies in points, 'n.s.' for no significant
    difference). Left out, as repeats: a row at strength 0 of noise, an attack or a certificate
    whose difference, interval and p are those of the clean row or of an earlier strength-0 row
    (a table written before :func:`drop_repeats`; the strength-0 rows that remain are the clean
    accuracy of other examples and read 'worst case = clean' and the like), and a worst case whose
    difference, interval and p are PGD's at the same strength (the PGD row then reads 'PGD = worst
    case'). report.md keeps every line and verdicts.csv every number."""
    out = []
    numbers = ["diff", "ci_low", "ci_high", "p_value"]

    def same_numbers(a, b) -> bool:
        return bool(np.allclose(a[numbers].to_numpy(float), b[numbers].to_numpy(float), rtol=1e-12, atol=1e-12,
                                equal_nan=True))

    for (group, baseline), rows in table.groupby(["group", "baseline"], sort=False):
        keep, seen = rows, []
        for i, r in rows.iterrows():
            if r["metric"] == "clean_acc" or is_strength_zero(r["metric"], r["strength"]):
                if is_strength_zero(r["metric"], r["strength"]) and any(same_numbers(r, s) for s in seen):
                    keep = keep.drop(index=i)
                else:
                    seen.append(r)
        pgd = keep[keep["metric"] == "pgd_acc"].set_index("strength")
        same = set()
        for i, r in keep[keep["metric"] == "worst_case_acc"].iterrows():
            if r["strength"] in pgd.index and np.allclose(pgd.loc[r["strength"], numbers].to_numpy(float),
                                                          r[numbers].to_numpy(float), rtol=1e-12, atol=1e-12,
                                                          equal_nan=True):
                same.add(r["strength"])
                keep = keep.drop(index=i)
        lines = []
        for r in keep.itertuples(index=False):
            name, unit = SHORT_NAMES.get(r.metric, METRICS[r.metric][0]), METRICS[r.metric][1]
            if r.metric == "pgd_acc" and r.strength in same:
                name += " = worst case"
            if is_strength_zero(r.metric, r.strength):
                name += " = clean"
            if unit not in ("", "points"):
                name += f" ({unit})"
            lo, hi = (f"{v:+.1f}" if unit == "points" else f"{v:+.3g}" for v in (r.ci_low, r.ci_high))
            norm, _, value = r.strength.partition(" ")
            strength = f"{ {'sigma': 'σ', 'linf': 'L∞', 'l2': 'L2'}.get(norm, norm)} {value}".strip()
            p = r.p_adjusted if r.correction in ADJUSTED else r.p_value
            lines.append({"metric": name, "strength": strength,
                          "difference [95% CI]": f"{_number(r.diff, unit)} [{lo}, {hi}]",
                          "adjusted p": "< 0.001" if p < 0.001 else f"{p:.2g}",
                          "verdict": SHORT_VERDICTS.get(r.verdict, r.verdict)})
        out.append((group, baseline, pd.DataFrame(lines, columns=COMPACT_COLUMNS)))
    return out


VERDICT_NOTES = (
    "Each regularized group against the plain (--reg none) group of the same data set, model and training "
    "recipe; difference = group minus plain (accuracies in percentage points), with its 95% interval and "
    "two-sided p. With 2 or more seeds in common: runs paired by seed, paired t-test and t interval on the "
    "per-seed differences (covers training noise). With 1 seed: tests over the test examples of the two runs "
    "(attack_examples.csv, paired by example): exact McNemar on the discordant examples, interval "
    "Clopper-Pearson on them, conditional on their number; for noise, an exact sign test on the examples whose "
    "shares of correct draws differ, t interval over examples (the same for the corruptions, on each example's share "
    "of corrupted copies classified correctly); for margins, a percentile bootstrap of the "
    "difference of medians (two independent samples) and a permutation test. One-seed verdicts cover the choice "
    "of test examples only, not training noise. Worst case: an example counts as robust only if robust under "
    "every adversarial attack run at that norm and strength. Corruption accuracy: the mean over the common "
    "corruptions and severities 1-5 that every run of the comparison has, and over each family's (noise, blur, "
    "weather, digital). At strength 0 noise, attacks and certificates measure "
    "clean accuracy: a strength-0 row with the same data as the clean row or another strength-0 row of its "
    "comparison (per run over seeds, per example where both have records) is no verdict of its own; the row it "
    "repeats stands for it (stands_for in verdicts.csv). A strength-0 row that remains is the clean accuracy of "
    "the examples the attacks ran on, when they are not the whole test set. "
    "better / worse: the multiplicity-adjusted p < 0.05 "
    "and the interval excludes 0 (for R_z smaller is better); p_value in verdicts.csv is the raw p, p_adjusted "
    "the adjusted one. verdicts.csv has every number."
)
