"""Benchmark: the training-step overhead of Jacobian regularization against plain SGD.

Targets (issues 3 and 5; lenet, batch 64, this 2-core CPU): n=1 at most 2.2x plain,
``--jr-subsample 16`` at most 1.5x plain, exact (C=10) no slower than the per-row autograd
reference. The timing is ``jrbench overhead``'s (jrbench/cost/overhead.py): one real synth-digits
batch, every case interleaved with plain SGD in one process after warm-up, medians of the
per-pair ratios. Prints the table and the verdicts; exits 1 when a target is missed.
Run: .venv/bin/python benchmarks/bench_train_overhead.py [--pairs 30]
"""
from __future__ import annotations

import argparse
import sys

from jrbench.cost.overhead import OverheadConfig, run_overhead

TARGETS = [("jacobian-n1", "ratio_median", 2.2, "x plain"),
           ("jacobian-n1-sub16", "ratio_median", 1.5, "x plain"),
           ("jacobian-exact", "ratio_to_reference", 1.0, "x per-row reference")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--model", default="lenet")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    table = run_overhead(OverheadConfig(model=args.model, batch_size=args.batch_size, pairs=args.pairs,
                                        device="cpu"))
    print(table[["case", "median_seconds", "ratio_median", "ratio_q25", "ratio_q75", "saved_mb",
                 "ratio_to_reference", "threads"]].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    failed = 0
    for case, column, target, unit in TARGETS:
        value = float(table.loc[table["case"] == case, column].iloc[0])
        verdict = "ok" if value <= target else "MISSED"
        failed += value > target
        print(f"{case}: {value:.2f} {unit} (target <= {target}): {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
