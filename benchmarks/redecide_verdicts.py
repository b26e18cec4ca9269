"""Re-decide a committed verdicts.csv under "one verdict per distinct measurement", without its runs.

For a report whose runs are not on this machine (``jrbench report`` needs them): per comparison,
drop a strength-0 row of noise whose difference, interval and p equal the clean row's, and a
strength-0 row of an attack (PGD, worst case, AutoAttack) whose numbers equal an earlier
attack's strength-0 row (the attacks of one run share their examples); certified accuracy at
eps 0 stays, because whether it equals the clean accuracy per example needs certify_examples.csv.
Then adjust the p values again over the remaining rows. A conservative reading of what
``jrbench report`` would do (it can also merge certificates, per example); it rewrites nothing
and prints the family sizes and the verdicts that move.

    python benchmarks/redecide_verdicts.py results/certified/report/verdicts.csv
"""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from jrbench.analysis.verdicts import apply_correction, is_strength_zero

NUMBERS = ["diff", "ci_low", "ci_high", "p_value"]
ATTACKS = ("pgd_acc", "worst_case_acc", "autoattack_acc")


def redecide(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.Index]:
    """(the re-decided table, the index of the rows dropped as repeats)."""
    dropped = []
    for _, rows in table.groupby(["group", "baseline"], sort=False):
        clean = rows[rows["metric"] == "clean_acc"]
        kept_attacks = []
        for i, r in rows.iterrows():
            if not is_strength_zero(r["metric"], r["strength"]):
                continue
            numbers = r[NUMBERS].to_numpy(float)

            def same(other) -> bool:
                return bool(np.allclose(numbers, other[NUMBERS].to_numpy(float), rtol=0, atol=1e-12))

            if r["metric"] == "noise_acc" and len(clean) and same(clean.iloc[0]):
                dropped.append(i)
            elif r["metric"] in ATTACKS:
                if any(same(k) for k in kept_attacks):
                    dropped.append(i)
                else:
                    kept_attacks.append(r)
    kept = table.drop(index=dropped)
    return apply_correction(kept, str(table["correction"].iloc[0])), pd.Index(dropped)


def main(path: str) -> None:
    old = pd.read_csv(path, keep_default_na=False)
    new, dropped = redecide(old)
    print(f"{path}: family {len(old)} -> {len(new)} ({len(dropped)} strength-0 repeats dropped)")
    both = old.loc[new.index]
    for i in new.index:
        o, n = both.loc[i], new.loc[i]
        if o["verdict"] != n["verdict"]:
            print(f"  moved: {o['group']} vs {o['baseline']}, {o['metric']} {o['strength']}: {o['diff']:+.1f} "
                  f"[{o['ci_low']:+.1f}, {o['ci_high']:+.1f}], adjusted p {o['p_adjusted']:.4f} -> {n['p_adjusted']:.4f}: "
                  f"{o['verdict']} -> {n['verdict']}")


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        main(arg)
