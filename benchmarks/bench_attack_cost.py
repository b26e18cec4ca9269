"""Time ``jrbench attack``'s defaults on real MNIST digits: white noise on the whole 10,000-digit
test set, PGD-40 on the default 1,000 examples.

What it measures, on the CPU with one torch thread by default (``--threads``), for a plain LeNet
trained for 2 epochs on the first 8,000 digits of ../shared/data/mnist-t10k (the model of
``benchmarks/bench_autoattack.py``, made once and not timed):

- white noise as ``jrbench attack`` runs it by default (``AttackConfig()``: the 11 sigmas 0, 0.1,
  ..., 1.0, 5 draws per image, batches of 500 images per forward pass, each example's noise
  seeded by its index) on all 10,000 t10k digits (8,000 of them the model's training digits:
  the cost does not depend on which), one ``run_attacks`` call;
- PGD-40 (float64 loss, 1 restart) on the 1,000 examples ``jrbench attack`` picks by default
  (``--n-examples`` None = ``Defaults.attack_examples``, ``--example-seed 0``) of the 2,000
  test digits of the 8k/2k split, on the default grids (L-inf 0, 0.05, 0.1, 0.15, 0.2, 0.3 and
  L2 0, 0.5, 1, 1.5, 2, 3), one ``run_attacks`` call; the seconds of each radius are printed.

Wall-clock seconds; the load average is printed before and after (other jobs on the machine slow
it down). Usage: ``.venv/bin/python benchmarks/bench_attack_cost.py [--threads N]``
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_autoattack import ensure_run  # noqa: E402
from jrbench.evaluate.attack_config import AttackConfig  # noqa: E402
from jrbench.evaluate.attacks import run_attacks  # noqa: E402
from jrbench.data.datasets import load_data, read_idx_split, to_pixels  # noqa: E402
from jrbench.evaluate.api import example_counts, fixed_examples  # noqa: E402
from jrbench.training.rundir import load_run  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "results/runs/bench-autoattack-lenet")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data/mnist-8k-2k")
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared/data/mnist-t10k")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ensure_run(args.run, args.data_dir, args.source)
    model, config = load_run(args.run, "cpu")
    config.data.data_dir = str(args.data_dir)
    data = load_data(config.data)
    print(f"{args.run.name}: plain lenet, {torch.get_num_threads()} torch threads, "
          f"load average before {os.getloadavg()[0]:.2f}")

    t10k = read_idx_split(args.source, train=False)
    noise = AttackConfig(pgd=False, fgsm=False)  # the defaults: 11 sigmas, 5 draws, batch 500
    start = time.perf_counter()
    out = run_attacks(model, to_pixels(t10k.images), t10k.labels, noise,
                      example_index=torch.arange(len(t10k)))
    seconds = time.perf_counter() - start
    at = out.table.set_index("strength").accuracy
    print(f"noise on {len(t10k)} digits, {len(noise.sigmas)} sigmas x {noise.draws} draws: {seconds:.1f} s "
          f"(accuracy {at[0.0]:.3f} clean, {at[0.5]:.3f} at sigma 0.5)")

    n_examples, _ = example_counts(data, noise, None)
    images, labels, index = fixed_examples(data, n_examples, 0)
    pgd = AttackConfig.for_dataset("mnist", noise=False, fgsm=False)  # PGD-40, both norms, default grids
    start = time.perf_counter()
    out = run_attacks(model, to_pixels(images), labels, pgd, example_index=index, example_seed=0)
    seconds = time.perf_counter() - start
    for r in out.table.itertuples():
        print(f"  pgd-{r.norm} eps {r.strength:g}: accuracy {r.accuracy:.3f}, {r.seconds:.1f} s")
    print(f"PGD-40 on {n_examples} digits, {len(out.table)} radii (2 at eps 0): {seconds:.1f} s; "
          f"load average after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
