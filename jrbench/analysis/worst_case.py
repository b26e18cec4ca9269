"""Robust accuracy as the worst case per example, from attack_examples.csv.

attack_examples.csv (written by ``jrbench attack``; columns :data:`EXAMPLE_COLUMNS`) has one row
per (example, attack, norm, strength, loss): ``clean_correct``, and ``robust``, 0 or 1 for an
adversarial attack, a share in [0, 1] for white noise. At each norm and strength (pixel units)
an example counts as robust only if it is robust under every adversarial attack run there (every
attack but ``noise`` and the common corruptions (``corruption``): PGD, FGSM, AutoAttack and its components, every loss), over the examples
every one of them covered.

:func:`jrbench.analysis.results.collect` turns it into tidy rows (attack :data:`WORST_CASE`, ``settings``
naming the attacks, ``attacks=pgd/ce64+fgsm/ce64+...``); :mod:`jrbench.analysis.verdicts` compares two
runs on it example by example.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import UserError
from ..evaluate.attack_config import RANDOM_ATTACKS  # noise and corruptions: not adversarial

EXAMPLE_COLUMNS = ["example", "attack", "norm", "strength", "loss", "clean_correct", "robust", "broken",
                   "example_seed"]
WORST_CASE = "worst-case"  # attack name of the worst case over every adversarial attack (tidy table)
ATTACK_ORDER = ["pgd", "fgsm", "autoattack", "aa-apgd-ce", "aa-apgd-t", "aa-fab-t", "aa-square"]


def check_attack_examples(table: pd.DataFrame, source: str = "attack_examples.csv") -> pd.DataFrame:
    """attack_examples.csv as read, checked: the columns of :data:`EXAMPLE_COLUMNS` (example_seed
    and broken may be absent), adversarial ``robust`` values 0 or 1, noise shares in [0, 1]."""
    need = set(EXAMPLE_COLUMNS) - {"example_seed", "broken"}
    if not need <= set(table.columns):
        raise UserError(f"{source} lacks the columns {sorted(need - set(table.columns))}.")
    table = table.assign(loss=table["loss"].fillna("none").astype(str), strength=table["strength"].astype(float))
    robust = pd.to_numeric(table["robust"], errors="coerce")
    adversarial = ~table["attack"].isin(RANDOM_ATTACKS)
    if robust.isna().any() or not robust.between(0, 1).all() or not robust[adversarial].isin([0, 1]).all():
        raise UserError(f"{source}: 'robust' must be 0 or 1 for attacks and a share in [0, 1] for noise.")
    return table.assign(robust=robust)


def _attack_key(name: str) -> tuple:
    attack = name.split("/")[0]
    return (ATTACK_ORDER.index(attack) if attack in ATTACK_ORDER else len(ATTACK_ORDER), name)


def worst_case_examples(table: pd.DataFrame) -> pd.DataFrame:
    """Per norm, strength and example: robust (0/1) only if robust under every adversarial
    attack (every attack but 'noise' and 'corruption', every loss) run at that norm and strength.

    ``table``: attack_examples.csv (:func:`check_attack_examples`). Only the examples that
    every one of those attacks covered are kept. Columns: norm, strength, example,
    clean_correct, robust, attacks (the attacks that went into it, 'pgd/ce64+fgsm/ce64+...'),
    n_attacks, n_left_out (examples some attack at that strength did not cover)."""
    columns = ["norm", "strength", "example", "clean_correct", "robust", "attacks", "n_attacks", "n_left_out"]
    adv = table[~table["attack"].isin(RANDOM_ATTACKS)]
    if adv.empty:
        return pd.DataFrame(columns=columns)
    adv = adv.assign(_name=np.where(adv["loss"] == "none", adv["attack"], adv["attack"] + "/" + adv["loss"]))
    out = []
    for (norm, strength), sel in adv.groupby(["norm", "strength"], sort=True):
        names = sorted(sel["_name"].unique(), key=_attack_key)
        per = sel.groupby("example").agg(clean_correct=("clean_correct", "min"), robust=("robust", "min"),
                                         _n=("_name", "nunique"))
        covered = per[per["_n"] == len(names)].drop(columns="_n")
        out.append(covered.reset_index().assign(norm=norm, strength=float(strength), attacks="+".join(names),
                                                n_attacks=len(names), n_left_out=len(per) - len(covered)))
    return pd.concat(out, ignore_index=True)[columns]

