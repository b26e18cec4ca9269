"""Time the common corruptions (``jrbench attack --corruptions``) on one thread: 1,000 digits and
1,000 32x32 colour images, every default corruption at severities 1-5, and the evaluation.

What it measures, wall-clock seconds on the CPU with one thread (torch, OpenCV):

- **corrupting**: :func:`jrbench.evaluate.corruptions.corrupt_batch` of each of the 15 common
  corruptions at each severity 1-5 on 1,000 images: the real MNIST test digits of
  ``--data-dir`` (the 8k/2k split's 2,000 test digits, the first 1,000 of ``jrbench attack``'s
  fixed examples) or, without them, synth-digits' (said in the output); and 1,000 generated 32x32
  colour images (smooth gradients with a coloured block; no CIFAR-10 on this machine: the
  library's cost depends on the image size and channels, not on the content, except frost's
  texture and the noises' clipping). Each corruption's seconds, the total, and the share of the three
  slowest are printed;
- **evaluating**: a LeNet's forward passes (float32, batches of 500, untrained: the cost does not
  depend on the weights) over the 75,000 corrupted images of each set, and one whole
  :func:`jrbench.evaluate.corruptions.run_corruptions` call (corrupt, classify, rows, per-example
  record) on the digits.

The first call of glass_blur compiles the library's numba kernel; a warm-up call of every corruption
runs first and is not timed. Usage: ``.venv/bin/python benchmarks/bench_corruptions.py [--n 1000]``
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

from jrbench.evaluate.attack_config import COMMON_CORRUPTIONS, SEVERITIES, build_attack_config  # noqa: E402
from jrbench.evaluate.corruptions import corrupt_batch, run_corruptions  # noqa: E402
from jrbench.models.architectures import build_model  # noqa: E402
from jrbench.training.envinfo import cpu_model  # noqa: E402


def digits(n: int, data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """uint8 (n, 1, 28, 28), labels, positions in the test split, and where they came from."""
    from jrbench.config import DataConfig
    from jrbench.data.datasets import load_data
    from jrbench.runtables.examples import fixed_examples

    if (data_dir / "t10k-images-idx3-ubyte.gz").is_file() or (data_dir / "t10k-images-idx3-ubyte").is_file():
        data, where = load_data(DataConfig("mnist", str(data_dir))), f"real MNIST test digits ({data_dir})"
    else:
        data, where = load_data(DataConfig("synth-digits")), "synth-digits (no real MNIST digits found)"
    images, labels, index = fixed_examples(data, min(n, len(data.test)), 0)
    return images.numpy(), labels.numpy(), index.numpy(), where


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


def time_corruptions(images: np.ndarray, index) -> dict[str, float]:
    seconds = {}
    for name in COMMON_CORRUPTIONS:
        corrupt_batch(images[:1], name, 1, 0, index[:1])  # warm-up (numba, imports, frost's textures)
        start = time.perf_counter()
        for severity in SEVERITIES:
            corrupt_batch(images, name, severity, 0, index)
        seconds[name] = time.perf_counter() - start
    return seconds


def time_forward(images: np.ndarray, shape, repeats: int) -> float:
    """Seconds of a LeNet's forward passes over ``repeats`` copies of ``images`` (batches of 500)."""
    model = build_model("lenet", shape, 10, [0.5] * shape[0], [0.25] * shape[0]).eval()
    x = torch.from_numpy(images).float() / 255
    with torch.no_grad():
        model(x[:10])
        start = time.perf_counter()
        for _ in range(repeats):
            for batch in x.split(500):
                model(batch).argmax(1)
    return time.perf_counter() - start


def report(label: str, seconds: dict[str, float], n: int) -> None:
    total = sum(seconds.values())
    print(f"\n{label}: {n} images x {len(seconds)} corruptions x {len(SEVERITIES)} severities: {total:.1f} s "
          f"({1e3 * total / (n * len(seconds) * len(SEVERITIES)):.2f} ms a corrupted image)")
    for name, s in sorted(seconds.items(), key=lambda kv: -kv[1]):
        print(f"  {name:18s} {s:7.2f} s  {100 * s / total:5.1f}%")
    top = sorted(seconds.values(), reverse=True)[:3]
    print(f"  the three slowest: {100 * sum(top) / total:.0f}% of the time; 10,000 images: "
          f"{10 * total / 60:.1f} min on one core, {5 * total / 60:.1f} min split over two")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="images per set")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data/mnist-8k-2k")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import cv2

    cv2.setNumThreads(1)
    print(f"CPU: {cpu_model()}; 1 thread (torch, OpenCV); load average before: {os.getloadavg()[0]:.2f}")
    grey, labels, index, where = digits(args.n, args.data_dir)
    colour = colour_images(args.n)
    print(f"digits: {len(grey)} {where}; colour: {len(colour)} generated 32x32 images")
    grey_s = time_corruptions(grey, index)
    report("digits 28x28 grey", grey_s, len(grey))
    colour_s = time_corruptions(colour, np.arange(len(colour)))
    report("colour 32x32", colour_s, len(colour))
    runs = len(COMMON_CORRUPTIONS) * len(SEVERITIES)
    for label, images in (("digits", grey), ("colour", colour)):
        s = time_forward(images, images.shape[1:], runs)
        print(f"\nevaluation, {label}: LeNet forward passes over {runs * len(images)} corrupted images: {s:.1f} s")
    model = build_model("lenet", (1, 28, 28), 10, [0.1307], [0.3081]).eval()
    config = build_attack_config(corruptions=True).filled("mnist")
    x, y = torch.from_numpy(grey).float() / 255, torch.from_numpy(labels)
    start = time.perf_counter()
    run_corruptions(model, x, y, config, example_index=torch.from_numpy(index))
    print(f"whole run_corruptions on the digits (corrupt + classify + rows): {time.perf_counter() - start:.1f} s")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
