"""Where the time of a ``--reg ibp`` step goes, against a plain SGD step (the performance item of the
certified-training issue: "--reg ibp at most 2x plain per step on LeNet").

Interleaved, in one process, on one batch (uniform pixels, random labels: step times of these nets
do not depend on the values), ``--threads`` threads (1 by default), LeNet-5 at batch 64 on a
1x28x28 input; each timing is the mean of ``--repeat`` consecutive steps, ``--pairs`` rounds,
every case once a round; ratios are per round against that round's plain step, and the median and
quartiles of the ratios are printed and written (``--out``, CSV, with the CPU, torch and commit).

Cases (SGD, momentum 0.9):
- ``plain``: CE of the natural forward, backward, update;
- ``bound-only``: CE of IBP's worst-case logits at the full radius (the interval pass of
  jrbench.models.interval in float32 with the last-layer elision), backward, update: no natural
  forward at all. It is a lower bound on any IBP step's cost: whatever the mix, the step computes
  the interval pass (two network passes, centres through W and radii through |W|) and its backward;
- ``ibp``: what ``--reg ibp`` runs after its ramp (kappa 0.5: natural CE and bound CE), via
  jrbench.penalty.regularizers.step_loss, as ``jrbench overhead --ibp`` times it;
- ``ibp-kappa0-nograd``: the bound CE alone for the gradient, the natural forward under no_grad
  (the certified count needs its logits): what a kappa-0 schedule (CROWN-IBP's end point) could
  cost at best.

    .venv/bin/python benchmarks/bench_ibp_step.py [--threads 1] [--pairs 40] [--out results/ibp-step-parts.csv]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jrbench.config import RegConfig  # noqa: E402
from jrbench.models.architectures import build_model  # noqa: E402
from jrbench.penalty.certified_training import CertifiedTraining, worst_case_logits  # noqa: E402
from jrbench.penalty.regularizers import step_loss  # noqa: E402
from jrbench.training.envinfo import cpu_model  # noqa: E402


def commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cases(model, x, y):
    """name -> one SGD step of that case (module docstring)."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    reg = RegConfig(["ibp"])
    bound = CertifiedTraining(model, reg, steps_per_epoch=1)
    at = bound.steady()

    def plain():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def bound_only():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(worst_case_logits(bound.margins(x, y, at), y), y).backward()
        opt.step()

    def ibp():
        opt.zero_grad(set_to_none=True)
        step_loss(model, x, y, reg).total.backward()
        opt.step()

    def kappa0_nograd():
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            model(x)
        F.cross_entropy(worst_case_logits(bound.margins(x, y, at), y), y).backward()
        opt.step()

    return {"plain": plain, "bound-only": bound_only, "ibp": ibp, "ibp-kappa0-nograd": kappa0_nograd}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("lenet", (1, 28, 28), 10, (0.1307,), (0.3081,)).train()
    x, y = torch.rand(args.batch, 1, 28, 28), torch.randint(0, 10, (args.batch,))
    steps = cases(model, x, y)
    for f in steps.values():
        for _ in range(3):
            f()
    seconds: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.pairs):
        for name, f in steps.items():
            t = time.perf_counter()
            for _ in range(args.repeat):
                f()
            seconds[name].append((time.perf_counter() - t) / args.repeat)
    rows = []
    load = f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    for name, v in seconds.items():
        ratios = [a / b for a, b in zip(v, seconds["plain"])]
        q1, _, q3 = statistics.quantiles(ratios, n=4)
        rows.append({"case": name, "median_ms": statistics.median(v) * 1e3, "ratio_median": statistics.median(ratios),
                     "ratio_q25": q1, "ratio_q75": q3, "pairs": args.pairs, "batch": args.batch,
                     "threads": args.threads, "model": "lenet", "cpu": cpu_model(), "load_1min": load,
                     "torch": torch.__version__, "commit": commit()})
        print(f"{name:18s} {rows[-1]['median_ms']:7.2f} ms  x{rows[-1]['ratio_median']:.2f} plain "
              f"[IQR {q1:.2f}-{q3:.2f}]")
    print(f"cpu {cpu_model()}, {args.threads} thread(s), load average {load}, commit {rows[0]['commit']}")
    if args.out is not None:
        import pandas as pd

        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        pd.DataFrame(rows).to_csv(tmp, index=False)
        tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
