"""Benchmark: peak memory of lenet training on the full Fashion-MNIST stays under 2 GB.

Trains one epoch (60,000 images, Jacobian regularization n=1, batch 64) in a child process
and reads its peak resident set size (ru_maxrss). Needs Fashion-MNIST: on Debian
`apt-get install dataset-fashion-mnist`, found by itself, or --data-dir.
Run: .venv/bin/python benchmarks/bench_memory.py
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

LIMIT_GB = 2.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--reg", default="jacobian")
    args = parser.parse_args()
    jrbench = Path(sys.executable).with_name("jrbench")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(jrbench), "train", "--dataset", "fashion-mnist", "--model", "lenet", "--reg", args.reg,
               "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--out", f"{tmp}/run"]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        print(" ".join(cmd))
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stdout[-2000:], done.stderr[-2000:])
            return 2
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
    ok = peak_gb < LIMIT_GB
    print(f"peak resident memory of lenet training on full Fashion-MNIST ({args.reg}): "
          f"{peak_gb:.2f} GiB (limit {LIMIT_GB} GB): {'ok' if ok else 'TOO MUCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
