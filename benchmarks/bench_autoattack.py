"""Time standard AutoAttack on 1,000 real MNIST test digits against a plain LeNet, L-inf 0.1.

What it measures: the wall-clock time of one ``jrbench.evaluate.attacks.run_attacks`` call with only
AutoAttack on (``AttackConfig(autoattack=True)``: the clean pass, the gradient statistics, then
APGD-CE, APGD-T, FAB-T and Square, each in batches of 500 over the examples still unbroken,
every adversarial batch checked in its ball, and the rows), at one radius, L-inf eps 0.1, on
the 1,000 test examples ``jrbench attack`` uses by default (``--n-examples 1000
--example-seed 0``) of the 8k/2k split of ../shared/data/mnist-t10k, on the CPU with one
torch thread by default (``--threads 2`` for both cores: on this shared 2-core machine two
threads were several times slower whenever other jobs ran, as the OpenMP threads wait for
each other at every small operation). It prints each component's seconds and the
accuracy after it, the total, the process's CPU seconds and the load average (other jobs on
the machine slow it down), and exits 1 when the total exceeds ``--max-seconds`` (300, the
target of issue 8). PGD-40 (float64 loss) on the same examples is timed apart for reference.

The model is a plain LeNet trained for 2 epochs, made once (not timed) as

    python benchmarks/make_mnist_t10k_split.py ../shared/data/mnist-t10k data/mnist-8k-2k
    jrbench train --dataset mnist --data-dir data/mnist-8k-2k --reg none --epochs 2 \\
        --device cpu --out results/runs/bench-autoattack-lenet

Usage: ``.venv/bin/python benchmarks/bench_autoattack.py [--run DIR] [--threads N]``
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jrbench.evaluate.attack_checks import sanity_warnings  # noqa: E402
from jrbench.evaluate.attacks import AttackConfig, run_attacks  # noqa: E402
from jrbench.config import DataConfig, ModelConfig, RegConfig, RunConfig, TrainConfig  # noqa: E402
from jrbench.data.datasets import load_data, split_test_set, to_pixels  # noqa: E402
from jrbench.evaluate.api import fixed_examples  # noqa: E402
from jrbench.training.rundir import load_run  # noqa: E402

EPS, N_EXAMPLES = 0.1, 1000


def ensure_run(run_dir: Path, data_dir: Path, source: Path) -> None:
    """The 8k/2k split and the 2-epoch plain LeNet, made if missing (not timed)."""
    if not (data_dir / "t10k-labels-idx1-ubyte").exists() and not (data_dir / "t10k-labels-idx1-ubyte.gz").exists():
        split_test_set(source, data_dir, 8000)
    if not (run_dir / "model.pt").is_file():
        from jrbench.training.loop import train

        config = RunConfig(DataConfig("mnist", data_dir=str(data_dir)), ModelConfig("lenet"),
                           RegConfig(["none"]), TrainConfig(epochs=2, seed=0, device="cpu"))
        train(config, run_dir)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "results/runs/bench-autoattack-lenet")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data/mnist-8k-2k")
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared/data/mnist-t10k")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--no-pgd", action="store_true", help="skip the PGD reference")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    ensure_run(args.run, args.data_dir, args.source)
    model, config = load_run(args.run, "cpu")
    config.data.data_dir = str(args.data_dir)
    data = load_data(config.data)
    images, labels, index = fixed_examples(data, N_EXAMPLES, 0)
    x, y = to_pixels(images), labels
    print(f"{args.run.name}: plain lenet, {N_EXAMPLES} MNIST test digits (8k/2k split), "
          f"AutoAttack L-inf eps {EPS}, batch 500, {torch.get_num_threads()} torch threads, "
          f"load average before {os.getloadavg()[0]:.2f}")

    cfg = AttackConfig(noise=False, pgd=False, fgsm=False, autoattack=True, norms=("linf",),
                       eps_linf=[EPS], batch_size=500)
    wall, cpu = time.perf_counter(), time.process_time()
    result = run_attacks(model, x, y, cfg, num_classes=data.info.num_classes,
                         example_index=index, example_seed=0)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    table = result.table.set_index("attack")
    clean = float(result.examples.groupby("example").clean_correct.first().mean())
    print(f"clean accuracy {clean:.3f}")
    print(f"{'component':12}{'seconds':>10}{'accuracy after':>16}")
    for name in ("aa-apgd-ce", "aa-apgd-t", "aa-fab-t", "aa-square"):
        print(f"{name:12}{table.seconds[name]:10.1f}{table.accuracy[name]:16.3f}")
    print(f"AutoAttack total: {wall:.1f} s wall (components {table.seconds['autoattack']:.1f} s), "
          f"{cpu:.1f} s CPU, robust accuracy {table.accuracy['autoattack']:.3f}; "
          f"load average after {os.getloadavg()[0]:.2f}")

    if not args.no_pgd:
        pgd_cfg = AttackConfig(noise=False, pgd=True, fgsm=False, norms=("linf",), eps_linf=[EPS],
                               steps=40, batch_size=500)
        start = time.perf_counter()
        pgd = run_attacks(model, x, y, pgd_cfg, example_index=index, example_seed=0)
        print(f"reference PGD-40 (ce64): accuracy {pgd.table.accuracy.iloc[0]:.3f} in "
              f"{time.perf_counter() - start:.1f} s")
        rows = pd.concat([result.table, pgd.table], ignore_index=True)
        examples = pd.concat([result.examples, pgd.examples], ignore_index=True)
        for warning in sanity_warnings(rows, examples=examples):
            print("warning:", warning)
    ok = wall <= args.max_seconds
    print(f"AutoAttack on {N_EXAMPLES} examples: {wall:.1f} s (target <= {args.max_seconds:g} s): "
          f"{'ok' if ok else 'over'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
