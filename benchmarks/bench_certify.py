"""Time the certificates of jrbench certify on a LeNet; exit 1 if one is over its budget.

What it measures (the targets of the certify issue, on this machine's CPU):
- the certified Lipschitz bound of the whole LeNet (once per model), then the certified L2 radii
  of 1,000 examples from it (target: under 1 s after the bound);
- interval bound propagation of 1,000 examples at one L-inf eps (target: under 5 s);
- randomized smoothing, n0 = 100, n = 10,000, of ``--smoothing-examples`` examples (target: 500
  examples within 10 minutes; with fewer examples the time for 500 is projected linearly, and
  the output says so: every example costs the same n0 + n forward passes).

The LeNet-5 (jrbench.models.architectures "lenet") is trained for ``--epochs`` epochs (SGD lr 0.05, momentum 0.9,
batch 64, seed 0) on the first 8,000 digits of the real MNIST test set in
../shared/data/mnist-t10k and certified on the other 2,000 (the first 1,000 of them). Without the
data it keeps its random initialization on uniform-noise images (the timings hardly depend on
the weights). One warm-up, then ``--repeats`` timed runs of the cheap parts; medians reported.

    .venv/bin/python benchmarks/bench_certify.py [--threads 1] [--smoothing-examples 500]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_margins import MNIST, read_idx_gz  # noqa: E402
from jrbench.training.envinfo import cpu_model  # noqa: E402
from jrbench.certify.ibp import certified_linf  # noqa: E402
from jrbench.models.lipschitz import certified_radius_l2, lipschitz_bound  # noqa: E402
from jrbench.models.architectures import build_model  # noqa: E402
from jrbench.certify.smoothing import certify_smoothed  # noqa: E402


def data_and_model(epochs: int):
    torch.manual_seed(0)
    model = build_model("lenet", (1, 28, 28), 10, [0.1307], [0.3081])
    if not (MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        x = torch.rand(1000, 1, 28, 28)
        with torch.no_grad():
            return model.eval(), x, model(x).argmax(1), "random init, uniform-noise images"
    x = torch.tensor(read_idx_gz(MNIST / "t10k-images-idx3-ubyte.gz"), dtype=torch.float32).unsqueeze(1) / 255
    y = torch.tensor(read_idx_gz(MNIST / "t10k-labels-idx1-ubyte.gz"), dtype=torch.long)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for idx in torch.randperm(8000, generator=gen).split(64):
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), x[8000:9000], y[8000:9000], f"trained {epochs} epochs on 8,000 real MNIST digits"


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--eps-linf", type=float, default=0.1)
    parser.add_argument("--smoothing-examples", type=int, default=500)
    parser.add_argument("--sigma", type=float, default=0.25)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, x, y, what = data_and_model(args.epochs)
    print(f"CPU {cpu_model() or platform.processor()}, torch {torch.__version__}, {args.threads} thread(s); "
          f"LeNet {what}; {len(x)} examples")
    bound_s = timed(lambda: lipschitz_bound(model), args.repeats)
    bound = lipschitz_bound(model)

    def radii():
        with torch.no_grad():
            return certified_radius_l2(bound, model(x).double(), y)

    radii_s = timed(radii, args.repeats)
    ibp_s = timed(lambda: certified_linf(model, x, y, args.eps_linf), args.repeats)
    k = args.smoothing_examples
    start = time.perf_counter()
    result = certify_smoothed(model, x[:k], sigma=args.sigma, n0=100, n=10_000, alpha=0.001)
    smooth_s = time.perf_counter() - start
    per_500 = smooth_s * 500 / k
    r = radii()
    print(f"Lipschitz bound {bound.total:.4g}: {bound_s:.3f} s; radii of {len(x)} examples: {radii_s:.3f} s "
          f"(target < 1 s; median radius {float(r.median()):.3g})")
    print(f"IBP at L-inf {args.eps_linf:g}, {len(x)} examples: {ibp_s:.3f} s (target < 5 s; "
          f"certified {float(certified_linf(model, x, y, args.eps_linf).double().mean()):.3f})")
    print(f"smoothing sigma {args.sigma:g}, n0 100, n 10,000, {k} examples: {smooth_s:.1f} s "
          f"({(k * 10_100) / smooth_s:.0f} images/s); for 500 examples: {per_500:.0f} s"
          f"{'' if k == 500 else ' (projected linearly)'} (target < 600 s; "
          f"abstained {float(result.abstain.double().mean()):.3f})")
    over = [name for name, value, budget in (("radii", radii_s, 1.0), ("ibp", ibp_s, 5.0),
                                             ("smoothing", per_500, 600.0)) if value > budget]
    if over:
        print(f"over budget: {', '.join(over)}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
