#!/usr/bin/env python
"""Were any skips of the bracket runs (results/bracket) decided by the rule a review corrected at efa957b
(a Lipschitz radius equal to eps; a closed-ball radius 0 at eps 0)? Prints the count per run."""
import glob
import pandas as pd
total = 0
for run in sorted(glob.glob("results/bracket/mnist-*")):
    try:
        b = pd.read_csv(f"{run}/certify_bounds.csv"); ex = pd.read_csv(f"{run}/certify_examples.csv")
    except FileNotFoundError:
        continue
    rad = ex.pivot_table(index=["example", "norm"], columns="method", values="radius", aggfunc="max")
    s = b[(b["status"].isin(["skipped-certified"])) | ((b["method"] == "complete") & (b["by"] == "cheaper certificate"))]
    bad = 0
    for r in s.itertuples():
        row = rad.loc[(r.example, r.norm)]
        closed = [m for m in ("ibp", "crown", "alpha-crown") if m in row.index and (r.method != "crown" or m == "ibp")]
        ok = (r.eps > 0 and any(row[m] >= r.eps for m in closed)) or ("lipschitz" in row.index and row["lipschitz"] > r.eps)
        bad += not ok
    total += bad
    print(run.split("/")[-1], "skips", len(s), "not covered by the corrected rule", bad)
print("total", total)
