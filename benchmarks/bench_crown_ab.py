"""CROWN certification, this checkout against the code of another commit, interleaved in one process.

On a shared machine absolute timings drift with the other jobs' load; the ratio of two runs made
one right after the other on the same digits drifts much less. The certify modules of ``--ref``
(crown, crown_patches, crown_sparse, relaxations, rounding: those that exist there) are loaded from
git as temporary modules beside the current ones; each round certifies the next ``--examples``
digits with the old code, then with the new, and compares certified flags and smallest margin
bounds. The LeNet and the digits are those of benchmarks/bench_crown.py.

    .venv/bin/python benchmarks/bench_crown_ab.py --ref c490457 [--rounds 4] [--examples 100]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_certify import data_and_model  # noqa: E402
from jrbench.certify import crown  # noqa: E402
from jrbench.training.envinfo import cpu_model  # noqa: E402

MODULES = ("rounding", "relaxations", "crown_sparse", "crown_patches", "crown")


def load_ref(commit: str, folder: Path):
    """The crown module of ``commit``, its certify siblings renamed jrbench.certify.<name>_ref."""
    found = {}
    for name in MODULES:
        show = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:jrbench/certify/{name}.py"],
                              capture_output=True, text=True)
        if show.returncode == 0:
            found[name] = show.stdout
    for name, source in found.items():
        for other in found:
            source = re.sub(rf"from \.{other} import", f"from .{other}_ref import", source)
            source = re.sub(rf"from \. import {other}\b( as (\w+))?",
                            lambda m, o=other: f"from . import {o}_ref as {m.group(2) or o}", source)
        (folder / f"{name}_ref.py").write_text(source)
    for name in found:  # dependencies first (MODULES' order)
        full = f"jrbench.certify.{name}_ref"
        spec = importlib.util.spec_from_file_location(full, folder / f"{name}_ref.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        spec.loader.exec_module(module)
    return sys.modules["jrbench.certify.crown_ref"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", required=True, help="the commit to compare with (e.g. c490457)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--examples", type=int, default=100, help="digits per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eps-linf", type=float, default=0.01)
    parser.add_argument("--eps-l2", type=float, default=0.05)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, x, y, what = data_and_model(6)
    print(f"CPU {cpu_model()}, {args.threads} thread(s); LeNet {what}; ref {args.ref}", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        ref = load_ref(args.ref, Path(folder))
        for norm, eps in (("linf", args.eps_linf), ("l2", args.eps_l2)):
            ratios, old_s, new_s = [], [], []
            for r in range(args.rounds):
                sl = slice(r * args.examples, (r + 1) * args.examples)
                t0 = time.perf_counter()
                a = ref.certified(model, x[sl], y[sl], eps, norm, batch_size=100)
                t1 = time.perf_counter()
                b = crown.certified(model, x[sl], y[sl], eps, norm, batch_size=100)
                t2 = time.perf_counter()
                old_s.append(t1 - t0)
                new_s.append(t2 - t1)
                ratios.append(old_s[-1] / new_s[-1])
                diff = float(((b[1] - a[1]).abs() / a[1].abs().clamp_min(1.0)).max())
                print(f"{norm} round {r}: old {old_s[-1]:.1f} s, new {new_s[-1]:.1f} s ({ratios[-1]:.2f}x); certified "
                      f"flags {'equal' if bool((a[0] == b[0]).all()) else 'DIFFER'}; smallest margin bounds differ by "
                      f"{diff:.1e} (relative, absolute below 1); load average {os.getloadavg()[0]:.1f}", flush=True)
            per = 1000 / (args.examples * args.rounds)
            print(f"{norm} eps {eps:g}: the old code takes {statistics.median(ratios):.2f} times as long (median of "
                  f"{args.rounds} rounds); per 1,000 digits old {per * sum(old_s):.0f} s, new {per * sum(new_s):.0f} s",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
