"""Time jrbench.evaluate.margins on 500 examples x 10 directions of a LeNet; exit 1 if over the budget.

The LeNet-5 (jrbench.models.architectures "lenet") is trained for ``--epochs`` epochs (SGD lr 0.05,
momentum 0.9, batch 64, seed 0) on the first 8,000 digits of the real MNIST test set in
../shared/data/mnist-t10k, and the margins are measured on the first 500 correctly
classified digits among the other 2,000. Training is not timed. Without the data (or with
``--random-init``) the LeNet keeps its random initialization and measures uniform-noise
images labelled with its own predictions. One warm-up on 20 examples, then ``--repeats``
timed runs of each part in turn (interleaved); the medians are reported.

    .venv/bin/python benchmarks/bench_margins.py [--device cuda] [--budget-seconds 60]
"""
from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jrbench.evaluate.margins import (adversarial_margins, first_correct, first_order_margins,  # noqa: E402
                             predict, random_direction_margins)
from jrbench.models.architectures import build_model  # noqa: E402

MNIST = ROOT.parent / "shared" / "data" / "mnist-t10k"


def read_idx_gz(path: Path) -> np.ndarray:
    """An IDX file (gzip): big-endian dims after a 4-byte magic whose last byte is the rank."""
    raw = gzip.open(path, "rb").read()
    rank = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=rank, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank).reshape(dims)


def trained_lenet(device: torch.device, epochs: int):
    images = read_idx_gz(MNIST / "t10k-images-idx3-ubyte.gz")
    labels = read_idx_gz(MNIST / "t10k-labels-idx1-ubyte.gz")
    x = torch.tensor(images, dtype=torch.float32, device=device).unsqueeze(1) / 255.0
    y = torch.tensor(labels, dtype=torch.long, device=device)
    torch.manual_seed(0)
    model = build_model("lenet", (1, 28, 28), 10, [0.1307], [0.3081]).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator(device="cpu").manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(8000, generator=gen).to(device)
        for s in range(0, 8000, 64):
            idx = order[s:s + 64]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    x_test, y_test = x[8000:], y[8000:]
    accuracy = (predict(model, x_test) == y_test).float().mean().item()
    return model, x_test, y_test, f"LeNet trained {epochs} epochs on 8,000 MNIST digits, " \
                                  f"test accuracy {accuracy:.1%} on 2,000"


def random_lenet(device: torch.device):
    torch.manual_seed(0)
    model = build_model("lenet", (1, 28, 28), 10, [0.1307], [0.3081]).to(device).eval()
    x = torch.rand(2000, 1, 28, 28, device=device)
    return model, x, predict(model, x), "random-init LeNet, uniform-noise images, labels = its predictions"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parts(model, x, y, n_directions):
    return {
        "random_direction": lambda: random_direction_margins(model, x, y, n_directions, seed=0),
        "adversarial": lambda: adversarial_margins(model, x, y),
        "first_order": lambda: first_order_margins(model, x),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--examples", type=int, default=500)
    p.add_argument("--directions", type=int, default=10)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--budget-seconds", type=float, default=60.0)
    p.add_argument("--random-init", action="store_true")
    args = p.parse_args()
    device = torch.device(args.device)
    have_data = (MNIST / "t10k-images-idx3-ubyte.gz").exists()
    model, x, y, what = (random_lenet(device) if args.random_init or not have_data
                         else trained_lenet(device, args.epochs))
    idx = first_correct(model, x, y, args.examples)
    x, y = x[idx], y[idx]
    print(f"{what}; {len(idx)} examples x {args.directions} directions on {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    for run in parts(model, x[:20], y[:20], args.directions).values():  # warm-up
        run()
    seconds = {name: [] for name in parts(model, x, y, args.directions)}
    results = {}
    for _ in range(args.repeats):
        for name, run in parts(model, x, y, args.directions).items():
            sync(device)
            start = time.perf_counter()
            results[name] = run()
            sync(device)
            seconds[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    for name, s in medians.items():
        print(f"{name:>17}: {s:7.2f} s (median of {args.repeats})")
    total = sum(medians.values())
    t, adv = results["random_direction"], results["adversarial"]
    print(f"{'total':>17}: {total:7.2f} s, budget {args.budget_seconds:.0f} s")
    print(f"median over examples: random-direction min {t.min(1).values.median():.3f}, "
          f"adversarial {adv.norm_l2.nanmedian():.3f}, first-order "
          f"{results['first_order'][0].median():.3f} (pixel L2); DeepFool success "
          f"{adv.success.float().mean():.1%} ({adv.success_clipped.float().mean():.1%} clipped), "
          f"directions with a change {torch.isfinite(t).float().mean():.1%}")
    return 0 if total <= args.budget_seconds else 1


if __name__ == "__main__":
    sys.exit(main())
