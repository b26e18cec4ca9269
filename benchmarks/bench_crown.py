"""Time CROWN and complete verification on a LeNet of the certified study's recipe; exit 1 over budget.

What it measures (the targets of the bracket issue, on this machine's CPU, one thread by default):
- CROWN (jrbench.certify.crown.certified) on ``--examples`` (1,000) real test digits at one L-inf
  eps (0.01) and one L2 eps (0.05): seconds and certified share; target under 60 s each (the
  process's CPU time and the load average are printed too: on a shared machine the wall clock
  stretches); and the process's peak resident memory (ru_maxrss, torch and the training
  included): target under 2 GB;
- complete verification (jrbench.certify.complete.verify, the MILP) of ``--complete-examples``
  digits at L-inf ``--complete-eps`` that CROWN leaves undecided and a PGD does not break:
  median and 90th-percentile seconds per example, and the verified / falsified / unknown counts.

The LeNet-5 (jrbench.models.architectures "lenet") is trained as benchmarks/certified.toml trains
it (6 epochs, SGD lr 0.05, momentum 0.9, batch 64, seed 0) on the first 8,000 digits of the real
MNIST test set in ../shared/data/mnist-t10k, and certified on the other 2,000 (the first
``--examples`` of them). Without the data it keeps its random initialization on uniform-noise
images, and says so (the timings then mean little: nearly every ReLU is unstable).

    .venv/bin/python benchmarks/bench_crown.py [--threads 1] [--examples 1000] [--complete-examples 50]
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_certify import data_and_model  # noqa: E402
from jrbench.certify import crown  # noqa: E402
from jrbench.training.envinfo import cpu_model  # noqa: E402


def load() -> str:
    """The 1-minute load average: other processes on the cores stretch the wall-clock times."""
    return f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores" if hasattr(os, "getloadavg") else "unknown"


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--eps-linf", type=float, default=0.01)
    parser.add_argument("--eps-l2", type=float, default=0.05)
    parser.add_argument("--complete-examples", type=int, default=50)
    parser.add_argument("--complete-eps", type=float, default=0.02)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, x, y, what = data_and_model(args.epochs)
    x, y = x[:args.examples], y[:args.examples]
    print(f"CPU {cpu_model() or platform.processor()}, torch {torch.__version__}, {args.threads} thread(s); "
          f"LeNet {what}; {len(x)} examples", flush=True)
    over = []
    for norm, eps in (("linf", args.eps_linf), ("l2", args.eps_l2)):
        start, cpu = time.perf_counter(), time.process_time()
        ok, _ = crown.certified(model, x, y, eps, norm, batch_size=100)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        print(f"CROWN {norm} eps {eps:g}: {seconds:.1f} s for {len(x)} examples (target < 60 s; CPU time {cpu:.1f} s, "
              f"load average {load()}), certified {float(ok.double().mean()):.3f}; peak memory so far "
              f"{peak_mb():.0f} MB (target < 2048)", flush=True)
        if seconds > 60:
            over.append(f"crown {norm}")
    if peak_mb() > 2048:
        over.append("memory")
    if args.complete_examples > 0:
        over += complete_part(model, x[:args.complete_examples], y[:args.complete_examples], args)
    if over:
        print(f"over budget: {', '.join(over)}")
    return 1 if over else 0


def complete_part(model, x, y, args) -> list[str]:
    """Complete verification of the examples CROWN does not certify and PGD does not break."""
    from jrbench.certify.complete import verify
    from jrbench.certify.tight import find_counterexamples

    ok, _ = crown.certified(model, x, y, args.complete_eps, "linf")
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    adv = find_counterexamples(model, x, y, args.complete_eps, torch.arange(len(x)))
    broken = ~torch.isnan(adv.flatten(1)[:, 0])
    todo = (correct & ~ok & ~broken).nonzero().flatten().tolist()
    times, counts = [], {}
    for i in todo:
        outcome = verify(model, x[i], int(y[i]), args.complete_eps, timeout_s=args.timeout)
        times.append(outcome.seconds)
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    if not times:
        print(f"complete L-inf {args.complete_eps:g}: CROWN and PGD decided all {len(x)} examples")
        return []
    times.sort()
    p90 = times[min(len(times) - 1, int(0.9 * len(times)))]
    print(f"complete L-inf {args.complete_eps:g}, {len(x)} examples: CROWN certified {int(ok.sum())}, PGD broke "
          f"{int(broken.sum())}, misclassified {int((~correct).sum())}; the MILP on the other {len(todo)}: "
          f"{counts}; seconds per example median {statistics.median(times):.2f}, 90th percentile {p90:.2f} "
          f"(timeout {args.timeout:g} s)", flush=True)
    return []


if __name__ == "__main__":
    sys.exit(main())
