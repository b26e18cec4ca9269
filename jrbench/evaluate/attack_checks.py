"""Sanity checks of attack results: warnings, in the spirit of AutoAttack's, that an attack failed.

Reads the tables :func:`jrbench.evaluate.attacks.run_attacks` makes, never the model: the rows of
attacks.csv (:data:`jrbench.evaluate.attacks.ROW_COLUMNS`) and the per-example record
(:data:`jrbench.evaluate.attacks.EXAMPLE_COLUMNS`). Strengths are pixel units (sigma for noise, eps
for attacks), accuracies shares in [0, 1]. Each check returns plain sentences, one per
finding; :func:`sanity_warnings` runs them all:

- accuracy rising with the radius (:func:`_rising`);
- PGD weaker than FGSM (:func:`_pgd_vs_fgsm`) or than white noise (:func:`_pgd_vs_noise`);
- accuracy far above chance at a huge L-infinity eps (:func:`_huge_eps`);
- vanishing loss gradients at the clean point (:func:`_vanishing`);
- AutoAttack well below PGD (:func:`_aa_below_pgd`);
- a stronger attack missing what a weaker one finds, per example (:func:`_stronger_misses`).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .attack_config import CORRUPTION, huge_eps_linf
from .attacks import GRAD_VANISH_THRESHOLD

ATTACK_STRENGTH_ORDER = ("fgsm", "pgd", "autoattack")  # weaker to stronger, same norm
_GROUP = ["attack", "norm", "loss", "steps", "restarts", "draws"]


def _label(row) -> str:
    steps = f", {row.steps:g} steps" if row.attack == "pgd" else ""
    loss = f" ({row.loss}{steps})" if row.loss != "none" else ""
    return f"{row.attack}-{row.norm}{loss}"


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _rising(df: pd.DataFrame) -> list[str]:
    out = []
    for _, g in df.groupby(_GROUP, dropna=False, sort=False):
        rows, worst = list(g.sort_values("strength").itertuples()), None
        for j, b in enumerate(rows):
            for a in rows[:j]:
                rise = b.accuracy - a.ci_high
                if a.strength < b.strength and rise > 0 and (worst is None or rise > worst[0]):
                    worst = (rise, a, b)
        if worst:
            _, a, b = worst
            why = ("noise that grows should not help: check the model and data"
                   if a.attack == "noise" else "a larger radius can only help a working "
                   "attack: suspect gradient masking or too few steps")
            out.append(
                f"{_label(a)}: accuracy rises from {_pct(a.accuracy)} at {a.strength:.4g} to "
                f"{_pct(b.accuracy)} at {b.strength:.4g}, above the first's 95% interval "
                f"(up to {_pct(a.ci_high)}); {why}.")
    return out


def _weaker_than(what: str, pairs: dict[str, list]) -> list[str]:
    """One message per PGD group listing where PGD accuracy exceeds the other's interval."""
    out = []
    for label, found in pairs.items():
        eps = ", ".join(f"{p.strength:.4g}" for p, _ in found)
        p, o = max(found, key=lambda t: t[0].accuracy - t[1].ci_high)
        out.append(
            f"{label} is weaker than {what} at eps {eps}: e.g. {_pct(p.accuracy)} at eps "
            f"{p.strength:.4g} against {_pct(o.accuracy)} (95% interval up to "
            f"{_pct(o.ci_high)}) for {_label(o)} at {o.strength:.4g}; PGD should be at "
            "least as strong: suspect gradient masking, a too small step or too few steps.")
    return out


def _pgd_vs_fgsm(df: pd.DataFrame) -> list[str]:
    pgd = df[(df.attack == "pgd") & (df.norm == "linf") & (df.strength > 0)]
    fgsm = df[df.attack == "fgsm"]
    pairs: dict[str, list] = {}
    for p in pgd.itertuples():
        for f in fgsm[(fgsm.loss == p.loss) & np.isclose(fgsm.strength, p.strength)].itertuples():
            if p.accuracy > f.ci_high:
                pairs.setdefault(_label(p), []).append((p, f))
    return _weaker_than("FGSM", pairs)


def _pgd_vs_noise(df: pd.DataFrame, input_dim: int) -> list[str]:
    """Noise of std sigma has an L2 norm that concentrates at sigma * sqrt(D) (within about
    sigma; clipping only shortens it); where that is <= eps the noise lies (up to that
    spread) in PGD's L2 ball, which sits inside the L-infinity ball of the same eps, so
    PGD of either norm should do at least as well. Noise measured on other examples than PGD
    (another ``n_examples``: by default noise covers the whole test set, PGD a subset) is
    compared by intervals: PGD's lower end above noise's upper end, so a subset's sampling
    error alone does not fire it."""
    noise = df[(df.attack == "noise") & (df.strength > 0)]
    pairs: dict[str, list] = {}
    for p in df[(df.attack == "pgd") & (df.strength > 0)].itertuples():
        inside = noise[noise.strength * math.sqrt(input_dim) <= p.strength]
        beaten = [o for o in inside.itertuples()
                  if (p.accuracy if _same_examples(p, o) else p.ci_low) > o.ci_high]
        if beaten:
            pairs.setdefault(_label(p), []).append((p, min(beaten, key=lambda o: o.ci_high)))
    return _weaker_than("white noise of smaller expected L2 norm", pairs)


def _same_examples(a, b) -> bool:
    """Whether two rows (of one example seed) were measured on the same number of examples;
    rows without ``n_examples`` count as the same."""
    na, nb = getattr(a, "n_examples", math.nan), getattr(b, "n_examples", math.nan)
    return pd.isna(na) or pd.isna(nb) or na == nb


def _huge_eps(df: pd.DataFrame, eps_huge: float, max_accuracy: float) -> list[str]:
    rows = df[(df.attack == "pgd") & (df.norm == "linf") & (df.strength >= eps_huge - 1e-12)
              & (df.accuracy > max_accuracy)]
    return [f"{_label(r)}: {_pct(r.accuracy)} accuracy at eps {r.strength:.4g}, where a working "
            f"attack leaves about chance (<= {_pct(max_accuracy)}): suspect gradient masking."
            for r in rows.itertuples()]


def _vanishing(df: pd.DataFrame, limit: float) -> list[str]:
    """Per loss, the largest share over the PGD and FGSM rows (each row's statistic is over the
    examples it attacked; NaN rows, at eps 0, are skipped)."""
    out = []
    attacked = df[df.attack.isin(["pgd", "fgsm"])]
    for loss, g in attacked.groupby("loss", sort=False):
        zero = float(g.get("grad_zero_frac", pd.Series([0.0])).max())
        vanish = float(g.grad_vanish_frac.max())
        if zero > limit:
            out.append(
                f"the {loss} loss gradient is exactly zero at the clean point for {_pct(zero)} of "
                "the attacked examples: gradient attacks cannot move them, so accuracy under "
                "attack overstates robustness (gradient masking or saturated softmax).")
        elif loss == "ce32" and vanish > limit:
            out.append(
                f"the float32 cross-entropy gradient is below {GRAD_VANISH_THRESHOLD:g} for "
                f"{_pct(vanish)} of the attacked examples (softmax rounds to 1): PGD-L2 barely "
                "moves them; rerun with loss 'ce64'.")
    return out


def _aa_below_pgd(df: pd.DataFrame, gap: float) -> list[str]:
    """AutoAttack more than ``gap`` below PGD at the same norm and eps: PGD overstates."""
    out = []
    aa, pgd = df[(df.attack == "autoattack") & (df.strength > 0)], df[df.attack == "pgd"]
    found: dict[tuple[str, str], list] = {}
    for a in aa.itertuples():
        same = pgd[(pgd.norm == a.norm) & np.isclose(pgd.strength, a.strength)]
        for p in same.itertuples():
            if p.accuracy - a.accuracy > gap:
                found.setdefault((_label(a), _label(p)), []).append((a, p))
    for (aa_label, pgd_label), pairs in found.items():
        a, p = max(pairs, key=lambda t: t[1].accuracy - t[0].accuracy)
        eps = ", ".join(f"{a.strength:.4g}" for a, _ in pairs)
        out.append(
            f"{aa_label} is more than {100 * gap:g} points below {pgd_label} at eps {eps}: e.g. "
            f"{_pct(a.accuracy)} against {_pct(p.accuracy)} at eps {a.strength:.4g} "
            f"({100 * (p.accuracy - a.accuracy):.1f} points): PGD under-reports what an attack "
            "finds, so its accuracy overstates robustness (gradient masking suspected); "
            "report AutoAttack.")
    return out


def _stronger_misses(examples: pd.DataFrame) -> list[str]:
    """From the per-example record: a weaker attack (FGSM < PGD < AutoAttack, same norm)
    breaks examples that a stronger one leaves robust at an equal or larger eps."""
    rank = {name: i for i, name in enumerate(ATTACK_STRENGTH_ORDER)}
    ex = examples[examples.attack.isin(rank)]
    groups = {key: g for key, g in ex.groupby(["attack", "loss", "norm"], sort=True)}
    out = []
    for (weak, weak_loss, norm), wg in groups.items():
        broken = wg.pivot_table(index="example", columns="strength", values="broken",
                                aggfunc="max")
        for (strong, strong_loss, strong_norm), sg in groups.items():
            if strong_norm != norm or rank[strong] <= rank[weak]:
                continue
            robust = sg.pivot_table(index="example", columns="strength", values="robust",
                                    aggfunc="min")
            common = broken.index.intersection(robust.index)
            found = []
            for eps in sorted(e for e in broken.columns if e > 0):
                larger = [e for e in robust.columns if e >= eps * (1 - 1e-9)]
                if not larger:
                    continue
                missed = ((broken.loc[common, eps] > 0)
                          & (robust.loc[common, larger] > 0).any(axis=1))
                if missed.any():
                    found.append((eps, int(missed.sum()), int(missed[missed].index[0])))
            if found:
                counts = ", ".join(f"{k} at eps {eps:.4g}" for eps, k, _ in found)
                eps, _, example = found[0]
                out.append(
                    f"{weak}-{norm} ({weak_loss}) breaks examples that the stronger "
                    f"{strong}-{norm} ({strong_loss}) leaves robust at an equal or larger eps: "
                    f"{counts} (e.g. example {example} at eps {eps:.4g}); a stronger attack "
                    "should find what a weaker one finds: suspect gradient masking or too few "
                    "iterations, and count the worst case per example.")
    return out


def sanity_warnings(df: pd.DataFrame, *, input_dim: int | None = None,
                    dataset=None, vanish_limit: float = 0.05,
                    huge_eps_max_accuracy: float = 0.10,
                    examples: pd.DataFrame | None = None,
                    aa_pgd_gap: float = 0.02) -> list[str]:
    """Warnings, in the spirit of AutoAttack's checks, that an attack failed (often a sign
    of gradient masking) from a table of :data:`jrbench.evaluate.attacks.ROW_COLUMNS` rows:

    - accuracy rises with the radius beyond the smaller radius's 95% interval;
    - PGD-linf is weaker than FGSM at the same eps and loss (beyond FGSM's interval);
    - PGD (either norm) is weaker than white noise whose expected L2 norm sigma * sqrt(D)
      is <= eps (needs ``input_dim`` D = C * H * W); beyond noise's interval, and with its own
      interval when noise ran on other examples (another ``n_examples``);
    - PGD-linf leaves more than ``huge_eps_max_accuracy`` at eps >=
      :func:`jrbench.evaluate.attack_config.huge_eps_linf`;
    - more than ``vanish_limit`` of the examples a PGD or FGSM row attacked (its
      ``grad_zero_frac`` / ``grad_vanish_frac``) have an exactly zero loss gradient, or
      (loss 'ce32') one below 1e-10. With 'ce64' the PGD steps are scale-free, so small but
      non-zero gradients do not stall them and are not reported (``grad_vanish_frac`` of
      a plain MNIST LeNet is about 0.2 without any masking);
    - AutoAttack's accuracy is more than ``aa_pgd_gap`` (2 points) below PGD's at the same
      norm and eps: PGD under-reports (gradient masking suspected);
    - with ``examples`` (the per-example record, :data:`jrbench.evaluate.attacks.EXAMPLE_COLUMNS`, of
      the same examples): a weaker attack (FGSM < PGD < AutoAttack, same norm) breaks an
      example that a stronger one leaves robust at an equal or larger eps; it names both
      attacks, the eps and the number of examples.

    The common corruptions' rows (attack ``corruption``) are left out: a severity is no radius (the
    library's severities need not hurt a model in order: snow's level 2 changes more pixels than its
    level 3 on small images), and no attack is compared with them."""
    df = df[df["attack"] != CORRUPTION] if "attack" in df else df
    if examples is not None and "attack" in examples:
        examples = examples[examples["attack"] != CORRUPTION]
    out = _rising(df) + _pgd_vs_fgsm(df)
    if input_dim is not None:
        out += _pgd_vs_noise(df, input_dim)
    out += _huge_eps(df, huge_eps_linf(dataset), huge_eps_max_accuracy)
    out += _vanishing(df, vanish_limit) + _aa_below_pgd(df, aa_pgd_gap)
    if examples is not None and len(examples):
        out += _stronger_misses(examples)
    return out
