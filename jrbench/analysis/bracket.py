"""The bracket per example: at each radius, is an example certified, broken, or still unknown?

The true robust accuracy of a model at radius eps lies between two measured bounds: the
**certified** share (the best deterministic certificate per example, :func:`jrbench.certify.api.best_radii`:
Lipschitz, IBP, CROWN, alpha-CROWN, complete verification) and the **attacked** share (the worst case
over every adversarial attack run at eps, :func:`jrbench.analysis.worst_case.worst_case_examples`).
Per fixed example (the examples of certify_examples.csv) and eps of a norm's certificate grid:

- ``certified``: a deterministic certificate covers eps (:func:`jrbench.certify.api.covers`);
- ``broken``: known not robust at eps: misclassified clean, broken by an adversarial attack of
  attack_examples.csv (same example seed; white noise is no attack) at a strength <= eps (a point
  of the smaller ball lies in the larger one), or ``falsified`` by complete verification
  (certify_bounds.csv) at an eps' <= eps;
- ``unknown``: neither. Where no example is unknown, the robust accuracy on these examples is
  exact: the certified share, and each attack's robust accuracy minus it is how much the attack
  over-reported it (:func:`attack_outcomes`).

Norms are kept apart (an L-inf counterexample says nothing about the L2 ball of the same radius).
:mod:`jrbench.analysis.results` turns these into tidy rows (table ``bracket``); this module also
checks certify_bounds.csv against the attacks and the certificates (:func:`bounds_violations`).
Plain functions on DataFrames; nothing prints.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..certify.api import CLOSED_BALL, DETERMINISTIC, SOUNDNESS_TOLERANCE, best_radii, covers
from ..certify.tight import BROKEN_STATUSES
from ..evaluate.attack_config import RANDOM_ATTACKS

TOLERANCE = 1e-9  # relative: grids written by two commands may differ in the last bit
BRACKET_COLUMNS = ["norm", "strength", "example", "clean_correct", "certified", "attacked_broken", "falsified",
                   "broken", "unknown"]


def _at_most(strength, eps):
    return np.asarray(strength, dtype=float) <= float(eps) * (1 + TOLERANCE) + 1e-15


def same_examples(table: pd.DataFrame | None, seeds: set) -> pd.DataFrame | None:
    """``table``'s rows of the example seeds ``seeds`` (all rows when either has none)."""
    if table is None or not seeds or "example_seed" not in table:
        return table
    return table[table["example_seed"].isin(seeds)]


def example_seeds(certified: pd.DataFrame) -> set:
    """The example seeds of certify_examples.csv's deterministic rows (one set a run)."""
    if "example_seed" not in certified:
        return set()
    return set(certified.loc[certified["method"].isin(DETERMINISTIC), "example_seed"].dropna().unique())


def adversarial(attacked: pd.DataFrame | None) -> pd.DataFrame:
    """attack_examples.csv's rows of adversarial attacks (not white noise), with ``broken`` (older
    files without it: clean_correct and not robust)."""
    if attacked is None or attacked.empty:
        return pd.DataFrame(columns=["example", "attack", "norm", "strength", "loss", "clean_correct", "robust",
                                     "broken"])
    adv = attacked[~attacked["attack"].isin(RANDOM_ATTACKS)]
    broken = adv["broken"] if "broken" in adv else adv["clean_correct"] * (1 - adv["robust"])
    return adv.assign(broken=broken.astype(float), strength=adv["strength"].astype(float),
                      loss=adv["loss"].fillna("none").astype(str) if "loss" in adv else "none")


def first_broken(attacked: pd.DataFrame | None, norm: str) -> pd.Series:
    """example -> the smallest strength at which an adversarial attack broke it at ``norm`` (0 when
    an attack's clean pass got it wrong)."""
    adv = adversarial(attacked)
    adv = adv[adv["norm"] == norm]
    hit = adv[(adv["broken"] > 0) | (adv["clean_correct"] == 0)]
    if hit.empty:
        return pd.Series(dtype=float)
    return hit["strength"].where(hit["clean_correct"] > 0, 0.0).groupby(hit["example"]).min()


def first_falsified(bounds: pd.DataFrame | None, norm: str) -> pd.Series:
    """example -> the smallest eps at which complete verification falsified it (certify_bounds.csv)."""
    if bounds is None or bounds.empty:
        return pd.Series(dtype=float)
    hit = bounds[(bounds["norm"] == norm) & bounds["status"].isin(BROKEN_STATUSES)]
    return hit["eps"].astype(float).groupby(hit["example"]).min()


def certificate_grid(table: pd.DataFrame) -> pd.DataFrame:
    """(norm, strength) of certify.csv's deterministic rows: where the bracket is computed."""
    return (table[table["method"].isin(DETERMINISTIC)][["norm", "strength"]].astype({"strength": float})
            .drop_duplicates().sort_values(["norm", "strength"]).reset_index(drop=True))


def bracket_examples(certified: pd.DataFrame, table: pd.DataFrame, attacked: pd.DataFrame | None = None,
                     bounds: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per norm, strength of the certificate grid and example (columns :data:`BRACKET_COLUMNS`, 0/1):
    ``certified`` by the best deterministic certificate, ``attacked_broken`` (misclassified, or an
    attack broke it at a strength <= eps), ``falsified`` (complete verification, at an eps' <= eps),
    ``broken`` (either), ``unknown`` (neither certified nor broken).

    ``certified``: certify_examples.csv; ``table``: certify.csv; ``attacked``: attack_examples.csv
    (None: no attacks); ``bounds``: certify_bounds.csv (None: no tight certificates). The attacks'
    and bounds' rows of other example seeds are left out."""
    seeds = example_seeds(certified)
    attacked, bounds = same_examples(attacked, seeds), same_examples(bounds, seeds)
    best = best_radii(certified)
    grid = certificate_grid(table)
    out = []
    for norm, strengths in grid.groupby("norm")["strength"]:
        sel = best[best["norm"] == norm]
        if sel.empty:
            continue
        examples = sel["example"].to_numpy()
        radius, correct = sel["radius"].to_numpy(float), sel["clean_correct"].to_numpy(float)
        attack_at = first_broken(attacked, norm).reindex(examples).to_numpy(float)  # NaN: never broken
        false_at = first_falsified(bounds, norm).reindex(examples).to_numpy(float)
        for eps in sorted(set(strengths)):
            cert = covers(radius, eps, correct)
            hit = (correct == 0) | (~np.isnan(attack_at) & _at_most(np.nan_to_num(attack_at, nan=np.inf), eps))
            falsified = ~np.isnan(false_at) & _at_most(np.nan_to_num(false_at, nan=np.inf), eps)
            broken = hit | falsified
            out.append(pd.DataFrame({"norm": norm, "strength": float(eps), "example": examples,
                                     "clean_correct": correct.astype(int), "certified": cert.astype(int),
                                     "attacked_broken": hit.astype(int), "falsified": falsified.astype(int),
                                     "broken": broken.astype(int), "unknown": (~cert & ~broken).astype(int)}))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=BRACKET_COLUMNS)


def attack_outcomes(attacked: pd.DataFrame | None, seeds: set = frozenset()) -> pd.DataFrame:
    """Per adversarial attack (its ce64 loss where it has several; else its one loss), norm, strength
    and example: ``robust`` (0/1) from attack_examples.csv; and attack ``worst-case`` (robust under every
    adversarial attack run there, :func:`jrbench.analysis.worst_case.worst_case_examples`). Columns
    attack, loss, norm, strength, example, robust."""
    from .worst_case import WORST_CASE, check_attack_examples, worst_case_examples

    columns = ["attack", "loss", "norm", "strength", "example", "robust"]
    adv = adversarial(same_examples(attacked, set(seeds)))
    if adv.empty:
        return pd.DataFrame(columns=columns)
    loss = adv.groupby("attack")["loss"].agg(lambda s: "ce64" if (s == "ce64").any() else sorted(set(s))[0])
    per = adv[adv["loss"] == adv["attack"].map(loss)].drop_duplicates(["attack", "norm", "strength", "example"])
    worst = worst_case_examples(check_attack_examples(same_examples(attacked, set(seeds))))
    worst = worst.assign(attack=WORST_CASE, loss="none")
    return pd.concat([per[columns], worst[columns]], ignore_index=True).astype({"robust": float})


# ----------------------------------------------------------------------------- soundness
def bounds_violations(bounds: pd.DataFrame | None, certified: pd.DataFrame | None,
                      attacked: pd.DataFrame | None) -> pd.DataFrame:
    """certify_bounds.csv against the attacks and the certificates: one row per contradiction
    (columns example, norm, eps, method, status, other, strength).

    - ``verified`` (complete verification) or ``certified`` (CROWN, alpha-CROWN) at eps, but an
      adversarial attack broke the example at a strength <= eps (``other``: the attack and loss);
    - ``falsified`` at eps while a deterministic certificate covers eps (``other``: the method; IBP,
      CROWN, alpha-CROWN and complete verification their closed ball at the radius, Lipschitz its open
      ball); one row per example and certificate, at the smallest such eps."""
    columns = ["example", "norm", "eps", "method", "status", "other", "strength"]
    if bounds is None or bounds.empty:
        return pd.DataFrame(columns=columns)
    seeds = example_seeds(certified) if certified is not None else set()
    bounds = same_examples(bounds, seeds)
    rows = []
    good = bounds[bounds["status"].isin(["verified", "certified"])]
    adv = adversarial(same_examples(attacked, seeds))
    hit = adv[(adv["broken"] > 0) | (adv["clean_correct"] == 0)]
    hit = hit.assign(strength=hit["strength"].where(hit["clean_correct"] > 0, 0.0))
    if len(good) and len(hit):
        pairs = good[["example", "norm", "eps", "method", "status"]].merge(
            hit[["example", "norm", "attack", "loss", "strength"]], on=["example", "norm"])
        bad = pairs[pairs["strength"] <= pairs["eps"].astype(float) * (1 + TOLERANCE) + 1e-15]
        bad = bad.sort_values(["example", "norm", "method", "attack", "loss", "strength", "eps"])
        bad = bad.drop_duplicates(["example", "norm", "method", "attack", "loss"])  # the smallest eps contradicted
        rows.append(bad.assign(other=bad["attack"] + " (" + bad["loss"] + ")")[columns])
    false = bounds[bounds["status"].isin(BROKEN_STATUSES)]
    if certified is not None and len(false):
        cert = certified[certified["method"].isin(DETERMINISTIC) & (certified["radius"] > 0)]
        pairs = false[["example", "norm", "eps", "method", "status"]].merge(
            cert[["example", "norm", "method", "radius"]].rename(columns={"method": "other"}), on=["example", "norm"])
        closed = pairs["other"].isin(CLOSED_BALL)
        eps = pairs["eps"].astype(float)
        bad = pairs[(closed & (pairs["radius"] >= eps)) | (~closed & (pairs["radius"] > eps * (1 + SOUNDNESS_TOLERANCE)))]
        bad = bad.sort_values(["example", "norm", "other", "eps"]).drop_duplicates(["example", "norm", "method", "other"])
        rows.append(bad.assign(strength=bad["radius"])[columns])
    rows = [r for r in rows if len(r)]
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=columns)
