"""Wall time of a study under the local engine and under the Ray engine, on this machine.

Runs the quick study (jrbench/quick.toml: 6 cells of lenet on synth-digits, each trained,
attacked and measured) into temporary folders, once per engine, one after the other:

- ``local``: ``run_sweep``, cell after cell in this process, on cell_threads(num_cpus) threads;
- ``ray``: ``run_sweep_ray`` on a Ray instance started here on every core (its start-up and
  shut-down are counted: a user waits for them), each cell one task asking num_cpus CPUs.

Both use the same thread rule (num_cpus = 1 by default: one torch thread per cell), so they
compute the same numbers; the script checks that metrics.csv and attacks.csv agree. With
``--also-local-threads N`` it also times the local engine with N threads per cell (the local
engine's setting before the Ray engine, torch's default of one thread per core), for reference.
The synth-digits data are generated once before timing. Prints the wall times and
ratio = local / ray (above 1: Ray is faster).

    .venv/bin/python benchmarks/bench_sweep_engines.py [--shrink] [--also-local-threads 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from jrbench.training.envinfo import cpu_model  # noqa: E402
from jrbench.study.sweep import run_sweep  # noqa: E402
from jrbench.study.spec import Resources, parse_spec  # noqa: E402

SHRINK = {"train_subset = 10000": "train_subset = 3000", "epochs = 4": "epochs = 2",
          "n_examples = 500": "n_examples = 200", "n_examples = 300": "n_examples = 100"}


def quick_spec(out: Path, shrink: bool, num_cpus: float):
    text = resources.files("jrbench").joinpath("quick.toml").read_text()
    if shrink:
        for old, new in SHRINK.items():
            text = text.replace(old, new)
    spec = parse_spec(text, Path("jrbench/quick.toml"), out)
    spec.resources = Resources(num_cpus=num_cpus)
    return spec


def values(spec, name: str) -> pd.DataFrame:
    frames = []
    for config in spec.cells:
        df = pd.read_csv(spec.folder / config.run_id() / name)
        frames.append(df.drop(columns=[c for c in df.columns if "seconds" in c]))
    return pd.concat(frames, ignore_index=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shrink", action="store_true", help="3,000 training digits, 2 epochs, fewer examples")
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs (threads) per cell, both engines")
    parser.add_argument("--also-local-threads", type=int, default=0, help="also time local with N threads per cell")
    args = parser.parse_args()
    from jrbench.study.ray_engine import run_sweep_ray

    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("JRBENCH_DATA", str(Path(tmp) / "data"))
        from jrbench.data.datasets import load_data  # generate the data once, outside the timings

        load_data(quick_spec(Path(tmp), args.shrink, 1).cells[0].data)
        times = {}
        specs = {}
        runs = [("local", args.num_cpus), ("ray", args.num_cpus)]
        if args.also_local_threads:
            runs.append((f"local, {args.also_local_threads} threads", args.also_local_threads))
        for name, num_cpus in runs:
            spec = specs[name] = quick_spec(Path(tmp) / name.replace(" ", "").replace(",", "-"), args.shrink, num_cpus)
            start = time.perf_counter()
            if name == "ray":
                run_sweep_ray(spec, device="cpu")
            else:
                run_sweep(spec, device="cpu")
            times[name] = time.perf_counter() - start
            print(f"{name:>20}: {times[name]:7.1f} s ({len(spec.cells)} cells)", flush=True)
        same = all(values(specs["local"], f).equals(values(specs["ray"], f)) for f in ("metrics.csv", "attacks.csv"))
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; study: quick{' (shrunk)' if args.shrink else ''}, "
          f"{args.num_cpus:g} CPU per cell")
    print(f"ratio local / ray = {times['local'] / times['ray']:.2f} (above 1: Ray is faster)")
    if args.also_local_threads:
        key = f"local, {args.also_local_threads} threads"
        print(f"ratio {key} / ray = {times[key] / times['ray']:.2f}")
    print(f"same metrics.csv and attacks.csv values under both engines: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
