"""Time the common corruptions (``jrbench attack --corruptions``): 10,000 digits at the 15 common
corruptions and severities 1-5 on the machine's cores, the library against jrbench's batched
re-implementation interleaved in one process, 32x32 colour images, and the evaluation.

What it measures (wall-clock and CPU seconds; the machine, its cores and its load are printed first,
since other jobs may share the cores and stretch the wall clock, never the CPU seconds much):

1. **10,000 digits, the command's path**: :func:`jrbench.evaluate.corruptions.corrupt_batch` in
   batches of 500 (``corruption_rows``' default) with ``--workers`` processes (default 2, this
   machine's cores), every common corruption at severities 1-5: 750,000 corrupted copies. The
   10,000 examples are the 2,000 real MNIST test digits of ``--data-dir`` (the 8k/2k split), each
   taken five times under different example indices, so each copy has its own seed and draws (the
   cost depends on the image size, not its content, except the noises' clipping); without them,
   synth-digits. Per corruption: wall seconds, CPU seconds of this process and its workers, share.
2. **old against new, interleaved** on ``--subset`` digits, one process, one thread: for each
   corruption and severity the library image by image (``reference=True``, the path before the
   batched one) and then the batched path, alternately, so that the machine's load hits both alike;
   the ratio of their seconds is the speed-up that load does not distort.
3. **colour**: ``--colour`` generated 32x32 colour images (smooth gradients and a block: no CIFAR-10
   here), the batched path with ``--workers`` processes.
4. **evaluation**: a LeNet's forward passes (float32, batches of 500, untrained: the cost does not
   depend on the weights) over the digits' 75,000 copies per 1,000 digits, and one whole
   :func:`jrbench.evaluate.corruptions.run_corruptions` (corrupt, classify, rows) on 1,000 digits.

A warm-up call of every corruption (numba compiles, frost's textures, the worker processes) is not
timed. Usage: ``.venv/bin/python benchmarks/bench_corruptions.py [--n 10000] [--workers 2]``
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jrbench.evaluate import corruption_batch  # noqa: E402
from jrbench.evaluate.attack_config import COMMON_CORRUPTIONS, SEVERITIES, build_attack_config  # noqa: E402
from jrbench.evaluate.corruptions import corrupt_batch, run_corruptions  # noqa: E402
from jrbench.models.architectures import build_model  # noqa: E402
from jrbench.training.envinfo import cpu_model  # noqa: E402

BATCH = 500  # corruption_rows' default batch size


def digits(n: int, data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """uint8 (n, 1, 28, 28), labels, example indices (distinct: each its own seeds), and their source:
    the real test digits, repeated under new indices when n exceeds them."""
    from jrbench.config import DataConfig
    from jrbench.data.datasets import load_data
    from jrbench.runtables.examples import fixed_examples

    if (data_dir / "t10k-images-idx3-ubyte.gz").is_file() or (data_dir / "t10k-images-idx3-ubyte").is_file():
        data, where = load_data(DataConfig("mnist", str(data_dir))), f"real MNIST test digits ({data_dir})"
    else:
        data, where = load_data(DataConfig("synth-digits")), "synth-digits (no real MNIST digits found)"
    k = min(n, len(data.test))
    images, labels, index = fixed_examples(data, k, 0)
    reps = -(-n // k)
    images, labels = images.numpy(), labels.numpy()
    index = np.concatenate([index.numpy() + r * len(data.test) for r in range(reps)])[:n]
    if reps > 1:
        where += f", the {k} taken {reps} times under distinct example indices"
    return np.tile(images, (reps, 1, 1, 1))[:n], np.tile(labels, reps)[:n], index, where


def colour_images(n: int) -> np.ndarray:
    """n generated 32x32 colour images, uint8 (n, 3, 32, 32)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32] / 31.0
    out = np.empty((n, 3, 32, 32), np.uint8)
    for i in range(n):
        a, b, c = rng.uniform(0.2, 0.8, 3)
        image = np.stack([a * xx + (1 - a) * yy, b * yy, c * (1 - xx * yy)]) * 0.7 + 0.15
        r, col = rng.integers(0, 16, 2)
        image[:, r:r + 14, col:col + 14] = rng.uniform(0, 1, 3)[:, None, None]
        out[i] = (image * 255).round().astype(np.uint8)
    return out


def cpu_seconds() -> float:
    """CPU seconds of this process and of the live worker processes of the corruption pool."""
    total = time.process_time()
    executor = corruption_batch._POOL.get("executor")
    tick = os.sysconf("SC_CLK_TCK")
    for pid in list(getattr(executor, "_processes", None) or {}):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def time_corruptions(images: np.ndarray, index: np.ndarray, workers: int) -> dict[str, tuple[float, float]]:
    """(wall, CPU) seconds per corruption of severities 1-5 over ``images`` in batches of 500."""
    seconds = {}
    for name in COMMON_CORRUPTIONS:
        corrupt_batch(images[:64], name, 1, 0, index[:64], workers=workers)  # warm-up
        wall, cpu = time.perf_counter(), cpu_seconds()
        for severity in SEVERITIES:
            for start in range(0, len(images), BATCH):
                corrupt_batch(images[start:start + BATCH], name, severity, 0, index[start:start + BATCH],
                              workers=workers)
        seconds[name] = (time.perf_counter() - wall, cpu_seconds() - cpu)
    return seconds


def report(label: str, seconds: dict[str, tuple[float, float]], n: int, workers: int) -> float:
    wall = sum(w for w, _ in seconds.values())
    cpu = sum(c for _, c in seconds.values())
    copies = n * len(seconds) * len(SEVERITIES)
    print(f"\n{label}: {n} images x {len(seconds)} corruptions x {len(SEVERITIES)} severities = {copies} copies, "
          f"{workers} process(es): {wall:.1f} s wall, {cpu:.1f} CPU s ({1e6 * cpu / copies:.0f} CPU us a copy)")
    for name, (w, c) in sorted(seconds.items(), key=lambda kv: -kv[1][1]):
        print(f"  {name:18s} {w:7.2f} s wall {c:7.2f} CPU s  {100 * c / cpu:5.1f}% of the CPU time")
    return wall


def interleaved(images: np.ndarray, index: np.ndarray) -> None:
    """The library image by image against the batched path, alternately, one process and thread."""
    old, new = {}, {}
    for name in COMMON_CORRUPTIONS:
        corrupt_batch(images[:2], name, 1, 0, index[:2], reference=True)
        corrupt_batch(images[:2], name, 1, 0, index[:2])
        old[name], new[name] = [0.0, 0.0], [0.0, 0.0]
        for severity in SEVERITIES:
            for store, reference in ((old, True), (new, False)):
                wall, cpu = time.perf_counter(), time.process_time()
                corrupt_batch(images, name, severity, 0, index, reference=reference)
                store[name][0] += time.perf_counter() - wall
                store[name][1] += time.process_time() - cpu
    copies = len(images) * len(SEVERITIES)
    print(f"\nold (the library image by image) against new (batched), interleaved, {len(images)} digits, "
          "one process, one thread; CPU microseconds a copy and the speed-up (old / new CPU seconds):")
    for name in sorted(COMMON_CORRUPTIONS, key=lambda k: -old[k][1]):
        print(f"  {name:18s} old {1e6 * old[name][1] / copies:7.0f}  new {1e6 * new[name][1] / copies:6.0f}  "
              f"x{old[name][1] / max(new[name][1], 1e-9):6.1f}")
    o_wall, o_cpu = sum(v[0] for v in old.values()), sum(v[1] for v in old.values())
    n_wall, n_cpu = sum(v[0] for v in new.values()), sum(v[1] for v in new.values())
    print(f"  all 15: old {o_cpu:.1f} CPU s ({o_wall:.1f} s wall), new {n_cpu:.2f} CPU s ({n_wall:.2f} s wall): "
          f"speed-up x{o_cpu / n_cpu:.1f} in CPU seconds, x{o_wall / n_wall:.1f} in wall seconds")


def time_forward(images: np.ndarray, shape, repeats: int) -> float:
    """Seconds of a LeNet's forward passes over ``repeats`` copies of ``images`` (batches of 500)."""
    model = build_model("lenet", shape, 10, [0.5] * shape[0], [0.25] * shape[0]).eval()
    x = torch.from_numpy(images).float() / 255
    with torch.no_grad():
        model(x[:10])
        start = time.perf_counter()
        for _ in range(repeats):
            for batch in x.split(BATCH):
                model(batch).argmax(1)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000, help="digits corrupted by the command's path")
    parser.add_argument("--workers", type=int, default=2, help="processes (the command uses torch's thread count)")
    parser.add_argument("--subset", type=int, default=100, help="digits of the interleaved old-against-new timing")
    parser.add_argument("--colour", type=int, default=1000, help="32x32 colour images")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data/mnist-8k-2k")
    args = parser.parse_args()
    torch.set_num_threads(args.workers)
    import cv2

    cv2.setNumThreads(1)
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; load average before: "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())} (1, 5, 15 min)")
    grey, labels, index, where = digits(args.n, args.data_dir)
    print(f"digits: {len(grey)} examples: {where}")
    wall = report("digits 28x28 grey, the command's path", time_corruptions(grey, index, args.workers), len(grey),
                  args.workers)
    print(f"  -> {len(grey)} digits at 5 severities: {wall:.0f} s here (target: 120 s on 2 cores); "
          f"load average now {os.getloadavg()[0]:.2f}")
    corruption_batch.shutdown_pool()
    torch.set_num_threads(1)
    interleaved(grey[:args.subset], index[:args.subset])
    torch.set_num_threads(args.workers)
    if args.colour:
        colour = colour_images(args.colour)
        report("colour 32x32, the command's path", time_corruptions(colour, np.arange(len(colour)), args.workers),
               len(colour), args.workers)
    corruption_batch.shutdown_pool()
    runs = len(COMMON_CORRUPTIONS) * len(SEVERITIES)
    few = grey[:1000]
    s = time_forward(few, few.shape[1:], runs)
    print(f"\nevaluation: LeNet forward passes ({args.workers} torch threads) over {runs * len(few)} corrupted "
          f"digits: {s:.1f} s")
    model = build_model("lenet", (1, 28, 28), 10, [0.1307], [0.3081]).eval()
    config = build_attack_config(corruptions=True).filled("mnist")
    x, y = torch.from_numpy(few).float() / 255, torch.from_numpy(labels[:1000])
    start = time.perf_counter()
    run_corruptions(model, x, y, config, example_index=torch.from_numpy(index[:1000]))
    print(f"whole run_corruptions on {len(few)} digits (corrupt on {args.workers} processes + classify + rows): "
          f"{time.perf_counter() - start:.1f} s")
    corruption_batch.shutdown_pool()
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
