"""Collect run directories into one tidy table: one measurement a row, with provenance.

``collect(paths)`` finds the run directories under ``paths`` (folders holding ``config.json``
and ``model.pt``, searched recursively; :mod:`jrbench.analysis.run_records`) and reads, per run, what is
there:

- ``metrics.csv``  the last epoch's numbers (table ``metrics``, statistic ``last_epoch``);
- ``attacks.csv``  accuracy under noise / PGD / FGSM / AutoAttack at each strength, with its
  95% CI (table ``attacks``, quantity ``accuracy``; strengths are sigma or eps in pixel units);
- ``attack_examples.csv`` one row per (example, attack, norm, strength, loss): the **worst
  case** per example, attack ``worst-case``: at each norm and strength an example counts as
  robust only if it is robust under every adversarial attack run there (every attack but
  ``noise``: PGD, FGSM, AutoAttack and its components, every loss), over the examples every
  one of them covered (:mod:`jrbench.analysis.worst_case`); ``settings`` names the attacks
  (``attacks=pgd/ce64+fgsm/ce64+...``).
  A run without the file (older runs) has no worst case, and a gap says so: the report falls
  back to attacks.csv's PGD accuracy, an upper bound on the worst case;
- ``margins.csv``  L2 margins in pixel units of the correctly classified examples:
  median (with a distribution-free 95% CI from order statistics), quartiles and mean;
  DeepFool success rates (table ``margins``);
- ``jacobian.csv`` per-example ||J||_F, spectral norm, stable rank and singular values,
  with respect to the normalized input z (suffix ``_z``) and to pixels (``_pixel``);
  ``R_z`` = 1/2 ||J_z||_F^2, the quantity the regularizer penalizes (table ``jacobian``);
- ``certify.csv`` / ``certify_examples.csv`` (``jrbench certify``; optional): certified accuracy, a
  lower bound, per method (``lipschitz``, ``one-lipschitz``, ``ibp``, ``crown``, ``alpha-crown``, ``complete``,
  ``smoothing σ=...``: the smoothed classifier g, not the model), norm and strength (table
  ``certify``, quantity ``accuracy``), and ``certified``: the best deterministic certificate per
  example (every method but smoothing: they certify the model itself), the lower end of the bracket
  whose upper end is the worst case over attacks; the median certified radius (quantity
  ``certified_radius``, pixel units, per norm; smoothing per sigma);
- the bracket (table ``bracket``, :func:`bracket_rows`, from the certificates, attack_examples.csv
  and certify_bounds.csv): per norm and eps of the certificate grid the share of the fixed examples
  known broken (``broken_share``: misclassified, broken by an attack, falsified by complete
  verification), the ``unknown_share`` (neither that nor certified), the ``gap`` (worst case minus
  certified) and, where nothing is unknown, the ``exact_accuracy`` and each attack's ``over_report``;
- soundness (``Collection.errors``, :func:`soundness_errors`): an example that a deterministic
  certificate covers at eps but an attack broke at eps or below, one that complete verification
  falsified while a certificate covers it, and a counterexample (certify_counterexamples.pt) that the
  run's model does not confirm are contradictions: one of the two sides is wrong;
- the training overhead: the run's seconds_per_step over the median of the plain runs'
  (``--reg none``) with the same data set, model, batch size and device (table ``overhead``;
  NaN, and a gap, when the collection holds no such plain run). seconds_per_step is the
  fastest epoch's median step time: load from other processes only ever slows an epoch
  down, and the first epoch carries the warm-up, so the minimum over epochs is the least
  disturbed estimate (interleaved timing in benchmarks/ is the better measurement).

Every row carries the provenance columns of its run (:mod:`jrbench.analysis.provenance`: group id and
label, data set, model, regularizers, seed, package versions, ...).

Outside models' result folders (``model.json``, see :mod:`jrbench.evaluate.outside`) are collected beside
the runs (``Collection.models``): their name is the group label, ``regularizers`` reads
``outside``, and the training columns are NaN, named in one gap.

Runs whose files are missing or unreadable are kept with what is there; each missing piece
is a :class:`Gap`. The library never prints: the CLI shows the gaps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..training import rundir
from ..certify.api import DETERMINISTIC, best_radii, covers, soundness_violations
from ..errors import UserError
from ..evaluate.attack_config import RANDOM_ATTACKS
from .provenance import PROVENANCE, device_label, group_id, group_labels, model_provenance, provenance
from .run_records import (ATTACK_EXAMPLES, ATTACKS, CERTIFY, CERTIFY_BOUNDS, CERTIFY_EXAMPLES, COUNTEREXAMPLES, JACOBIAN, MARGINS, Gap, RunRecord, find_result_dirs, read_model, read_run, run_ids)
from ..stats import mean_ci, median_ci, wilson_interval
from .worst_case import WORST_CASE, check_attack_examples, worst_case_examples

MEASURE = ["table", "quantity", "attack", "norm", "strength", "loss", "k", "statistic", "value",
           "ci_low", "ci_high", "n", "settings", "source"]
TIDY_COLUMNS = MEASURE + PROVENANCE
MARGIN_QUANTITIES = ["margin_random_median", "margin_random_min", "margin_adv_l2", "margin_first_order"]
RATE_QUANTITIES = ["adv_success", "adv_success_clipped", "margin_random_found_frac"]
JACOBIAN_QUANTITIES = ["frobenius_z", "R_z", "spectral_z", "stable_rank_z", "frobenius_pixel",
                       "spectral_pixel", "stable_rank_pixel", "radius_first_order_local"]


@dataclass
class Collection:
    """``summary``: the tidy table (:data:`TIDY_COLUMNS`); ``examples``: per-example margins
    (run_id, group_id, group_label, quantity, index, value; pixel L2 units), for ECDFs."""

    runs: list[RunRecord]
    summary: pd.DataFrame
    examples: pd.DataFrame
    gaps: list[Gap]
    paths: list[Path]
    models: list[RunRecord] = field(default_factory=list)  # outside models' result folders (model.json)
    errors: list[str] = field(default_factory=list)  # contradictions between certificates and attacks


def _row(table: str, quantity: str, value: float, **kw) -> dict:
    return {"table": table, "quantity": quantity, "value": float(value), **kw}


# ----------------------------------------------------------------------------- tidy rows
def metrics_rows(record: RunRecord) -> list[dict]:
    """Every numeric column of the last epoch of metrics.csv; seconds_per_step also as its
    minimum over epochs (statistic ``min_over_epochs``)."""
    last = record.tables[rundir.METRICS].iloc[-1]
    source = str(record.path / rundir.METRICS)
    rows = [_row("metrics", col, last[col], statistic="last_epoch", source=source)
            for col in last.index
            if pd.api.types.is_number(last[col]) and not isinstance(last[col], bool) and pd.notna(last[col])]
    spp = _seconds_per_step(record)
    if math.isfinite(spp):
        rows.append(_row("metrics", "seconds_per_step", spp, statistic="min_over_epochs", source=source))
    return rows


def _attack_settings(r) -> str:
    keys = ("draws",) if r.attack == "noise" else ("steps", "restarts", "alpha")
    parts = [f"{k}={getattr(r, k):g}" for k in keys if k in r._fields and pd.notna(getattr(r, k))]
    for k in ("seed", "example_seed"):
        if k in r._fields and pd.notna(getattr(r, k)):
            parts.append(f"{k}={int(getattr(r, k))}")
    return " ".join(parts)


def attacks_csv_rows(record: RunRecord) -> list[dict]:
    """Accuracy (95% CI) per attack, norm, strength (pixel units) and loss."""
    table, source = record.tables[ATTACKS], str(record.path / ATTACKS)
    need = {"attack", "norm", "strength", "accuracy"}
    if not need <= set(table.columns):
        raise UserError(f"{source} lacks the columns {sorted(need - set(table.columns))}.")
    rows = []
    for r in table.itertuples(index=False):
        rows.append(_row("attacks", "accuracy", r.accuracy, attack=r.attack, norm=r.norm,
                         strength=float(r.strength), loss=getattr(r, "loss", None), statistic="mean",
                         ci_low=getattr(r, "ci_low", math.nan), ci_high=getattr(r, "ci_high", math.nan),
                         n=getattr(r, "n_examples", math.nan), settings=_attack_settings(r), source=source))
    return rows


def worst_case_rows(record: RunRecord) -> list[dict]:
    """Worst-case robust accuracy (95% Wilson CI over examples) per norm and strength, attack
    ``worst-case``; ``settings`` names the attacks that went into it."""
    source = str(record.path / ATTACK_EXAMPLES)
    table = check_attack_examples(record.tables[ATTACK_EXAMPLES], source)
    worst = worst_case_examples(table)
    seeds = table["example_seed"].dropna().unique() if "example_seed" in table else []
    rows = []
    for (norm, strength), sel in worst.groupby(["norm", "strength"], sort=True):
        k, n = int(sel["robust"].sum()), len(sel)
        settings = f"attacks={sel['attacks'].iloc[0]}"
        if int(sel["n_left_out"].iloc[0]):
            settings += f" left_out={int(sel['n_left_out'].iloc[0])}"
        if len(seeds) == 1:
            settings += f" example_seed={int(seeds[0])}"
        lo, hi = wilson_interval(k, n)
        rows.append(_row("attacks", "accuracy", k / n if n else math.nan, attack=WORST_CASE, norm=norm,
                         strength=float(strength), loss="none", statistic="mean", ci_low=lo, ci_high=hi, n=n,
                         settings=settings, source=source))
    return rows


CERTIFIED = "certified"  # the best deterministic certificate per example (Lipschitz, IBP, CROWN, alpha-CROWN, complete)
BRACKET = "bracket"  # table of the bracket's rows: broken and unknown shares, gap, exact accuracy, over-reports


def _certify_method(r) -> str:
    return f"smoothing σ={r.sigma:g}" if r.method == "smoothing" else r.method


def certify_rows(record: RunRecord) -> list[dict]:
    """Certified accuracy (95% Wilson CI) per method, norm and strength (certify.csv); the best
    deterministic certificate per example at each strength of the grid (``certified``); median
    certified radii (95% order-statistics CI) of ``certified`` per norm and of smoothing per sigma."""
    table, source = record.tables[CERTIFY], str(record.path / CERTIFY)
    examples = record.tables[CERTIFY_EXAMPLES]
    ex_source = str(record.path / CERTIFY_EXAMPLES)
    rows = [_row("certify", "accuracy", r.certified_acc, attack=_certify_method(r), norm=r.norm,
                 strength=float(r.strength), loss="none", statistic="mean", ci_low=r.ci_low, ci_high=r.ci_high,
                 n=r.n_examples, settings=r.settings + (f" sigma={r.sigma:g}" if r.method == "smoothing" else ""),
                 source=source) for r in table.itertuples(index=False)]
    deterministic = table[table["method"].isin(DETERMINISTIC)]
    best = best_radii(examples)
    for norm, strengths in deterministic.groupby("norm")["strength"]:
        if not (best["norm"] == norm).any():
            continue
        radius = best.loc[best["norm"] == norm, "radius"].to_numpy(float)
        correct = best.loc[best["norm"] == norm, "clean_correct"].to_numpy(float)
        methods = "+".join(sorted(deterministic.loc[deterministic["norm"] == norm, "method"].unique()))
        for eps in sorted(set(strengths)):
            k, n = int(covers(radius, eps, correct).sum()), len(radius)
            lo, hi = wilson_interval(k, n)
            rows.append(_row("certify", "accuracy", k / n, attack=CERTIFIED, norm=norm, strength=float(eps),
                             loss="none", statistic="mean", ci_low=lo, ci_high=hi, n=n,
                             settings=f"certificates={methods}", source=ex_source))
        lo, hi = median_ci(radius)
        rows.append(_row("certify", "certified_radius", float(np.median(radius)), attack=CERTIFIED, norm=norm,
                         statistic="median", ci_low=lo, ci_high=hi, n=len(radius),
                         settings=f"certificates={methods}", source=ex_source))
    for sigma, sel in examples[examples["method"] == "smoothing"].groupby("sigma"):
        radius = sel["radius"].to_numpy(float)
        lo, hi = median_ci(radius)
        rows.append(_row("certify", "certified_radius", float(np.median(radius)), attack=f"smoothing σ={sigma:g}",
                         norm="l2", statistic="median", ci_low=lo, ci_high=hi, n=len(radius),
                         settings=f"sigma={sigma:g}", source=ex_source))
    return rows


def _attack_names(attacked: pd.DataFrame | None, norm: str) -> str:
    if attacked is None or attacked.empty:
        return "none"
    sel = attacked[~attacked["attack"].isin(RANDOM_ATTACKS) & (attacked["norm"] == norm)]
    return "+".join(sorted(sel["attack"].unique())) or "none"


def bracket_rows(record: RunRecord) -> list[dict]:
    """The bracket at each norm and eps of the certificate grid (table ``bracket``, fractions of
    the fixed examples of certify_examples.csv; :func:`jrbench.analysis.bracket.bracket_examples`):
    ``broken_share`` (misclassified, broken by an attack at <= eps or falsified by complete
    verification at <= eps) and ``unknown_share`` (neither that nor certified; 95% Wilson CIs);
    ``gap``, the worst case over attacks minus the certified accuracy (statistic ``difference``, a
    fraction: the report shows points; only where the worst case was measured at eps). Where no
    example is unknown the robust accuracy is exact: ``exact_accuracy`` (the certified share) and,
    per adversarial attack (``attack``, ``loss``; ``worst-case`` too), ``over_report``: its robust
    accuracy minus the exact one on the examples it covered."""
    from .bracket import attack_outcomes, bracket_examples, example_seeds, first_falsified

    table, certified = record.tables[CERTIFY], record.tables[CERTIFY_EXAMPLES]
    attacked = record.tables.get(ATTACK_EXAMPLES)
    if attacked is not None:
        attacked = check_attack_examples(attacked, str(record.path / ATTACK_EXAMPLES))
    bounds = record.tables.get(CERTIFY_BOUNDS)
    per = bracket_examples(certified, table, attacked, bounds)
    if per.empty:
        return []
    source = str(record.path / CERTIFY_EXAMPLES)
    worst = worst_case_examples(attacked) if attacked is not None else pd.DataFrame(columns=["norm", "strength"])
    outcomes = attack_outcomes(attacked, example_seeds(certified))
    attack_settings = {}
    if ATTACKS in record.tables and {"attack", "norm", "strength"} <= set(record.tables[ATTACKS].columns):
        for r in record.tables[ATTACKS].itertuples(index=False):
            attack_settings.setdefault((r.attack, r.norm, float(r.strength)), _attack_settings(r))
    deterministic = table[table["method"].isin(DETERMINISTIC)]
    rows = []
    for (norm, eps), sel in per.groupby(["norm", "strength"], sort=True):
        methods = "+".join(sorted(deterministic.loc[deterministic["norm"] == norm, "method"].unique()))
        falsified = "+complete verification" if len(first_falsified(bounds, norm)) else ""
        settings = f"certificates={methods} broken_by=misclassified+{_attack_names(attacked, norm)}{falsified}"
        n = len(sel)
        kw = dict(norm=norm, strength=float(eps), loss="none", n=n, settings=settings, source=source)
        for quantity, column in (("broken_share", "broken"), ("unknown_share", "unknown")):
            k = int(sel[column].sum())
            lo, hi = wilson_interval(k, n)
            rows.append(_row(BRACKET, quantity, k / n, statistic="mean", ci_low=lo, ci_high=hi, **kw))
        cert = float(sel["certified"].mean())
        at = worst[(worst["norm"] == norm) & np.isclose(worst["strength"].astype(float), eps, rtol=1e-9, atol=0)]
        if len(at):
            rows.append(_row(BRACKET, "gap", float(at["robust"].mean()) - cert, statistic="difference",
                             **{**kw, "n": len(at), "settings": f"worst-case minus certified; {settings}"}))
        if int(sel["unknown"].sum()):
            continue
        lo, hi = wilson_interval(int(sel["certified"].sum()), n)
        rows.append(_row(BRACKET, "exact_accuracy", cert, statistic="mean", ci_low=lo, ci_high=hi, **kw))
        here = outcomes[(outcomes["norm"] == norm) & np.isclose(outcomes["strength"].astype(float), eps,
                                                                 rtol=1e-9, atol=0)]
        for (attack, loss), o in here.groupby(["attack", "loss"], sort=False):
            both = sel.merge(o[["example", "robust"]], on="example")
            if both.empty:
                continue
            what = attack_settings.get((attack, norm, float(eps)), "")
            rows.append(_row(BRACKET, "over_report", float(both["robust"].mean() - both["certified"].mean()),
                             attack=attack, norm=norm, strength=float(eps), loss=loss, statistic="difference",
                             n=len(both), settings=f"{what} minus exact".strip(), source=source))
    return rows


def soundness_errors(record: RunRecord, gaps: list[Gap] | None = None) -> list[str]:
    """One line per contradiction between the run's certificates, complete verification and attacks:

    - an example a deterministic certificate (Lipschitz, IBP, CROWN, alpha-CROWN, complete
      verification) covers at eps that an attack broke at eps or below
      (:func:`jrbench.certify.api.soundness_violations`);
    - certify_bounds.csv: an example ``verified`` (or ``certified``) at eps that an attack broke at
      eps or below, or ``falsified`` at eps while a certificate covers eps
      (:func:`jrbench.analysis.bracket.bounds_violations`);
    - certify_counterexamples.pt: a counterexample that the run's model, loaded again, does not
      confirm (outside the ball, or classified correctly: :func:`jrbench.certify.tight.recheck_counterexamples`).
      A file that cannot be re-checked is a gap (appended to ``gaps``)."""
    from .bracket import bounds_violations

    errors = []
    certified, attacked = record.tables.get(CERTIFY_EXAMPLES), record.tables.get(ATTACK_EXAMPLES)
    seen = set()
    if certified is not None and attacked is not None:
        bad = soundness_violations(certified, attacked)
        seen = {(r.example, r.norm, r.method, r.attack, r.loss) for r in bad.itertuples()}
        errors += [f"{record.run_id}: example {int(r.example)}: {r.method} certifies it within {r.norm} radius "
                   f"{r.radius:.4g}, but {r.attack} ({r.loss}) broke it at eps {r.strength:g}: a certificate or an "
                   "attack is wrong" for r in bad.itertuples()]
    try:
        contradictions = bounds_violations(record.tables.get(CERTIFY_BOUNDS), certified, attacked)
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        if gaps is not None:
            gaps.append(Gap(record.run_id, CERTIFY_BOUNDS, f"not checked against the attacks and certificates "
                            f"(malformed: {type(e).__name__}: {e})"))
        contradictions = pd.DataFrame(columns=["status"])
    for r in contradictions.itertuples():
        if r.status == "falsified":
            errors.append(f"{record.run_id}: example {int(r.example)}: complete verification falsified it at {r.norm} "
                          f"eps {r.eps:g} (certify_bounds.csv), but {r.other} certifies it within radius "
                          f"{r.strength:.4g}: a certificate or the counterexample is wrong")
            continue
        attack, _, loss = str(r.other).partition(" (")
        if (r.example, r.norm, r.method, attack, loss.rstrip(")")) in seen:
            continue  # named above through the method's radius
        errors.append(f"{record.run_id}: example {int(r.example)}: {r.method} calls it {r.status} at {r.norm} eps "
                      f"{r.eps:g} (certify_bounds.csv), but {r.other} broke it at eps {r.strength:g}: a certificate "
                      "or an attack is wrong")
    errors += counterexample_errors(record, gaps if gaps is not None else [])
    return errors


def counterexample_errors(record: RunRecord, gaps: list[Gap]) -> list[str]:
    """The run's certify_counterexamples.pt (only when it exists) re-run through its model, loaded
    again on the CPU (:func:`jrbench.training.rundir.load_run`): one line per counterexample that is
    not confirmed. A file that cannot be re-checked (an outside model, an unreadable model or file)
    is a gap."""
    from ..certify.tight import recheck_counterexamples

    path = record.path / COUNTEREXAMPLES
    if not path.is_file():
        return []
    if record.outside is not None:
        gaps.append(Gap(record.run_id, COUNTEREXAMPLES, "an outside model's counterexamples are not re-checked "
                        "by the report (jrbench.certify.tight.recheck_counterexamples on the loaded model does)"))
        return []
    try:
        model, _ = rundir.load_run(record.path, "cpu")
        checked = recheck_counterexamples(model, path)
    except (UserError, OSError, RuntimeError, KeyError, ValueError, TypeError, AttributeError) as e:
        gaps.append(Gap(record.run_id, COUNTEREXAMPLES, f"not re-checked ({type(e).__name__}: {e})"))
        return []
    errors = []
    for r in checked[~checked["confirmed"].astype(bool)].itertuples():
        why = ("it lies outside the ball or [0, 1]" if not r.in_ball else
               f"the model classifies it as {int(r.predicted)}, its label")
        errors.append(f"{record.run_id}: example {int(r.example)}: the counterexample at L-inf eps {r.eps:g} of "
                      f"{COUNTEREXAMPLES} is not confirmed ({why}): complete verification's falsification is wrong")
    return errors


def margins_rows(record: RunRecord) -> tuple[list[dict], pd.DataFrame]:
    """Median (CI), quartiles and mean of each margin (pixel L2) over the correctly classified
    examples, DeepFool success rates; and the per-example margins."""
    table, source = record.tables[MARGINS], str(record.path / MARGINS)
    if "correct" in table:
        table = table[table["correct"].astype(bool)]
    settings = " ".join(f"{k}={int(table[k].iloc[0])}" for k in ("n_directions", "direction_seed")
                        if k in table and len(table))
    rows, examples = [], []
    for q in [c for c in MARGIN_QUANTITIES + ["logit_gap"] if c in table]:
        v = table[q].to_numpy(dtype=float)
        v = v[~np.isnan(v)]
        lo, hi = median_ci(v)
        kw = dict(n=len(v), settings=settings, source=source)
        rows.append(_row("margins", q, np.median(v) if len(v) else math.nan, statistic="median",
                         ci_low=lo, ci_high=hi, **kw))
        for name, p in (("q25", 25), ("q75", 75)):
            value = np.percentile(v, p, method="inverted_cdf") if len(v) else math.nan  # inf-safe
            rows.append(_row("margins", q, value, statistic=name, **kw))
        rows.append(_row("margins", q, np.mean(v) if len(v) else math.nan, statistic="mean", **kw))
        if q in MARGIN_QUANTITIES:
            index = table["index"] if "index" in table else pd.RangeIndex(len(table))
            examples.append(pd.DataFrame({"quantity": q, "index": np.asarray(index), "value": table[q].to_numpy(float)}))
    for q in [c for c in RATE_QUANTITIES if c in table]:
        v = table[q].astype(float).to_numpy()
        lo, hi = wilson_interval(v.sum(), len(v)) if q != "margin_random_found_frac" else (math.nan, math.nan)
        rows.append(_row("margins", q, v.mean() if len(v) else math.nan, statistic="mean", ci_low=lo,
                         ci_high=hi, n=len(v), settings=settings, source=source))
    return rows, (pd.concat(examples, ignore_index=True) if examples else pd.DataFrame())


def jacobian_rows(record: RunRecord) -> list[dict]:
    """Mean (CI) and median of ||J||_F, R_z = 1/2 ||J_z||_F^2, spectral norm, stable rank,
    local radius; mean singular value k (``k`` column) in each space."""
    table, source = record.tables[JACOBIAN].copy(), str(record.path / JACOBIAN)
    if "frobenius_z" in table:
        table["R_z"] = 0.5 * table["frobenius_z"] ** 2
    rows = []
    for q in [c for c in JACOBIAN_QUANTITIES if c in table]:
        v = table[q].to_numpy(dtype=float)
        v = v[~np.isnan(v)]
        mean, lo, hi = mean_ci(v)
        rows.append(_row("jacobian", q, mean, statistic="mean", ci_low=lo, ci_high=hi, n=len(v), source=source))
        rows.append(_row("jacobian", q, np.median(v) if len(v) else math.nan, statistic="median",
                         n=len(v), source=source))
    for space in ("z", "pixel"):
        ks = sorted(int(c.split("_")[1]) for c in table if c.startswith("sv_") and c.endswith(f"_{space}"))
        for k in ks:
            v = table[f"sv_{k}_{space}"].to_numpy(dtype=float)
            mean, lo, hi = mean_ci(v[~np.isnan(v)])
            rows.append(_row("jacobian", f"singular_value_{space}", mean, k=float(k), statistic="mean",
                             ci_low=lo, ci_high=hi, n=int((~np.isnan(v)).sum()), source=source))
    return rows


def _seconds_per_step(record: RunRecord) -> float:
    """The fastest epoch's median seconds per step (NaN when unknown)."""
    metrics = record.tables.get(rundir.METRICS)
    if metrics is None or "seconds_per_step" not in metrics or metrics["seconds_per_step"].isna().all():
        return math.nan
    return float(metrics["seconds_per_step"].min())


def _timing_key(record: RunRecord) -> tuple:
    c = record.config
    return c.data.dataset, c.model.name, c.train.batch_size, device_label(record.env)


def overhead_rows(records: list[RunRecord]) -> tuple[list[tuple[RunRecord, dict]], list[Gap]]:
    """seconds_per_step (fastest epoch) of each run over the median of the plain runs' with the
    same data set, model, batch size and device; NaN (and a gap) where there is none."""
    plain: dict[tuple, list[tuple[str, float]]] = {}
    for r in records:
        spp = _seconds_per_step(r)
        if r.config.reg.names == ["none"] and math.isfinite(spp) and r.env:
            plain.setdefault(_timing_key(r), []).append((r.run_id, spp))
    rows, gaps = [], []
    for r in records:
        spp = _seconds_per_step(r)
        if not math.isfinite(spp):
            continue
        matches = plain.get(_timing_key(r), [])
        value = spp / float(np.median([s for _, s in matches])) if matches else math.nan
        if not matches:
            gaps.append(Gap(r.run_id, "overhead", "no plain ('--reg none') run with the same data set, "
                            "model, batch size and device in the collection; overhead is NaN"))
        rows.append((r, _row("overhead", "seconds_per_step_ratio", value, statistic="min_over_epochs",
                             n=len(matches), settings="vs plain: " + " ".join(i for i, _ in matches),
                             source=str(r.path / rundir.METRICS))))
    return rows, gaps


def example_sets_gap(record: RunRecord) -> Gap | None:
    """A gap when the run's attacks.csv rows were measured on more than one example set
    (``example_seed``, ``n_examples``): accuracies of different sets sit side by side in the
    report but are not comparable, and the worst case per example covers one set only. White noise
    runs on its own set (by default the whole test set) and the common corruptions may run on theirs
    (neither is in the worst case): each is judged apart from the attacks."""
    table = record.tables.get(ATTACKS)
    if table is None or not {"example_seed", "n_examples"} <= set(table.columns):
        return None
    noise, corrupted = table["attack"].eq("noise"), table["attack"].eq("corruption")
    if all(len(part[["example_seed", "n_examples"]].dropna().drop_duplicates()) < 2
           for part in (table[noise], table[corrupted], table[~(noise | corrupted)])):
        return None
    sets = table[["example_seed", "n_examples"]].dropna().drop_duplicates()
    by = table.groupby(["example_seed", "n_examples"])["attack"].apply(lambda a: "+".join(sorted(set(a))))
    detail = "; ".join(f"example seed {int(s)}, {int(n)} examples: {attacks}" for (s, n), attacks in by.items())
    return Gap(record.run_id, ATTACKS, f"rows on {len(sets)} example sets ({detail}): their accuracies are "
               "not comparable; attack again with one --n-examples and --example-seed for every attack")


def _run_rows(record: RunRecord, gaps: list[Gap]) -> tuple[list[dict], pd.DataFrame]:
    rows, examples = [], pd.DataFrame()
    mixed = example_sets_gap(record)
    if mixed is not None:
        gaps.append(mixed)
    readers = {rundir.METRICS: metrics_rows, ATTACKS: attacks_csv_rows, ATTACK_EXAMPLES: worst_case_rows,
               JACOBIAN: jacobian_rows, CERTIFY: certify_rows, BRACKET: bracket_rows}
    for name in (rundir.METRICS, ATTACKS, ATTACK_EXAMPLES, MARGINS, JACOBIAN, CERTIFY, BRACKET):
        table = CERTIFY if name == BRACKET else name  # the bracket: from the certificates (and the attacks)
        if table not in record.tables or (table == CERTIFY and CERTIFY_EXAMPLES not in record.tables):
            continue
        try:
            if name == MARGINS:
                new, examples = margins_rows(record)
            else:
                new = readers[name](record)
        except (UserError, KeyError, ValueError, TypeError, AttributeError) as e:
            gaps.append(Gap(record.run_id, name, f"malformed ({type(e).__name__}: {e}); left out"))
            continue
        rows += new
    return rows, examples


def collect(paths: list[str | Path]) -> Collection:
    """Every run directory under ``paths`` -> one tidy table, per-example margins and gaps.

    Raises :class:`UserError` when no run directory is found or none can be read.
    """
    dirs, model_dirs, gaps = find_result_dirs(paths)
    records, models = [], []
    ids = run_ids(dirs + model_dirs)
    for path, run_id in zip(dirs + model_dirs, ids):
        record, run_gaps = (read_run if path in dirs else read_model)(path, run_id)
        gaps += run_gaps
        if record is not None:
            (records if record.outside is None else models).append(record)
    if not records and not models:
        raise UserError("none of the run directories could be read: " + "; ".join(map(str, gaps)))
    labels = group_labels(records) if records else {}
    prov = {r.run_id: provenance(r, labels[group_id(r.config)]) for r in records}
    prov.update({m.run_id: model_provenance(m) for m in models})
    rows, examples, errors = [], [], []
    for record in records + models:
        errors += soundness_errors(record, gaps)
        run_rows, run_examples = _run_rows(record, gaps)
        rows += [{**row, **prov[record.run_id]} for row in run_rows]
        if len(run_examples):
            p = prov[record.run_id]
            examples.append(run_examples.assign(run_id=record.run_id, group_id=p["group_id"],
                                                group_label=p["group_label"]))
    overhead, overhead_gaps = overhead_rows(records)
    rows += [{**row, **prov[r.run_id]} for r, row in overhead]
    gaps += overhead_gaps
    summary = pd.DataFrame(rows).reindex(columns=TIDY_COLUMNS)
    example_cols = ["run_id", "group_id", "group_label", "quantity", "index", "value"]
    examples_table = (pd.concat(examples, ignore_index=True)[example_cols] if examples
                      else pd.DataFrame(columns=example_cols))
    return Collection(records, summary, examples_table, gaps, [Path(p) for p in paths], models, errors)
