"""Benchmark: a Jacobian step (n=1) of lenet at batch 64 costs at most 2.2x a plain step.

Interleaved in one process after warm-up, medians of per-pair ratios (jrbench/overhead.py).
Prints the table and exits 1 when the n=1 ratio exceeds the target.
Run: .venv/bin/python benchmarks/bench_train_overhead.py [--pairs 30]
"""
from __future__ import annotations

import argparse
import sys

import torch

from jrbench.data import DATASETS
from jrbench.models import build_model
from jrbench.overhead import default_cases, memory_per_case, summarize, time_steps

TARGET_N1 = 2.2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--model", default="lenet")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    info = DATASETS.get("mnist").info
    model = build_model(args.model, info.input_shape, info.num_classes, info.mean, info.std)
    x = torch.rand(args.batch_size, *info.input_shape)
    y = torch.randint(0, info.num_classes, (args.batch_size,))
    cases = default_cases(n_projs=(1, -1), subsamples=(16,))
    table = summarize(time_steps(model, x, y, cases, pairs=args.pairs), memory_per_case(model, x, y, cases))
    print(f"{args.model}, batch {args.batch_size}, {torch.get_num_threads()} threads, {args.pairs} pairs")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    ratio = float(table.loc[table["case"] == "jacobian-n1", "ratio_median"].iloc[0])
    verdict = "ok" if ratio <= TARGET_N1 else "TOO SLOW"
    print(f"jacobian n=1 / plain = {ratio:.2f} (target <= {TARGET_N1}): {verdict}")
    return 0 if ratio <= TARGET_N1 else 1


if __name__ == "__main__":
    sys.exit(main())
