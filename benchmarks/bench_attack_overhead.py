"""Overhead of jrbench's PGD over calling torchattacks directly.

Same LeNet, same 200 examples (test digits the model classifies correctly, so both sides
attack all of them), PGD-Linf eps 0.1, 40 steps, alpha 2.5 * eps / steps, one batch.
"direct" is torchattacks.PGD on the model plus one forward pass for the accuracy;
"jrbench" is ``run_attacks`` (clean pass, gradient statistics, seeded batches, ball check,
accuracy, row). Warm-up once each, then interleaved repetitions (alternating order).
Prints, for loss 'ce64' (the default) and 'ce32', the ratio of median times and the
median of the per-repetition ratios (each run over the direct run beside it, which
cancels slow drifts of a shared machine's load); exits 1 if the default's per-repetition
median exceeds --max-ratio (1.10).

Data: the real MNIST test set in ../shared/data/mnist-t10k (first 4,000 digits train the
LeNet for one epoch, the examples come from the last 2,000); synthetic digits if absent.

    .venv/bin/python benchmarks/bench_attack_overhead.py [--reps 5] [--threads 1]
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

from jrbench.evaluate.attacks import AttackConfig, run_attacks  # noqa: E402
from jrbench.models.architectures import build_model  # noqa: E402

EPS, STEPS, N = 0.1, 40, 200


def read_idx(path: Path) -> np.ndarray:
    data = gzip.open(path).read()
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(data[3])]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * len(dims)).reshape(dims)


def load_digits(folder: Path) -> tuple[torch.Tensor, torch.Tensor, str]:
    images, labels = folder / "t10k-images-idx3-ubyte.gz", folder / "t10k-labels-idx1-ubyte.gz"
    if images.exists() and labels.exists():
        x = torch.tensor(read_idx(images)).float().div(255).unsqueeze(1)
        return x, torch.tensor(read_idx(labels)).long(), "MNIST t10k"
    gen = torch.Generator().manual_seed(0)
    templates = (torch.rand(10, 1, 28, 28, generator=gen) > 0.7).float()
    y = torch.arange(10000) % 10
    x = (templates[y] + 0.3 * torch.randn(10000, 1, 28, 28, generator=gen)).clamp(0, 1)
    return x, y, "synthetic digits"


def train_lenet(x: torch.Tensor, y: torch.Tensor) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("lenet", (1, 28, 28), 10, [0.1307], [0.3081])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for idx in torch.randperm(len(x)).split(64):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval()


def direct(model, x, y) -> float:
    import torchattacks

    atk = torchattacks.PGD(model, eps=EPS, alpha=2.5 * EPS / STEPS, steps=STEPS, random_start=True)
    adv = atk(x, y)
    with torch.no_grad():
        return float((model(adv).argmax(1) == y).double().mean())


def via_jrbench(model, x, y, loss: str) -> float:
    cfg = AttackConfig(noise=False, fgsm=False, norms=("linf",), eps_linf=[EPS], steps=STEPS,
                       loss=loss, batch_size=N)
    return float(run_attacks(model, x, y, cfg).table.accuracy.iloc[0])


def timed(fn, *args) -> tuple[float, float]:
    start = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - start, value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--max-ratio", type=float, default=1.10)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/mnist-t10k")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is least disturbed by other jobs on the machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    x, y, source = load_digits(args.data)
    model = train_lenet(x[:4000], y[:4000])
    with torch.no_grad():
        pool_x, pool_y = x[8000:], y[8000:]
        right = model(pool_x).argmax(1) == pool_y
    ex, ey = pool_x[right][:N], pool_y[right][:N]
    print(f"{source}: LeNet clean accuracy {float(right.double().mean()):.3f} on 2,000; "
          f"{N} correctly classified examples, PGD-Linf eps {EPS}, {STEPS} steps, "
          f"{torch.get_num_threads()} threads")

    runs = {"direct": lambda: direct(model, ex, ey),
            "ce64": lambda: via_jrbench(model, ex, ey, "ce64"),
            "ce32": lambda: via_jrbench(model, ex, ey, "ce32")}
    for fn in runs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    accuracy: dict[str, float] = {}
    for rep in range(args.reps):
        order = list(runs) if rep % 2 == 0 else list(reversed(runs))
        for name in order:
            seconds, accuracy[name] = timed(runs[name])
            times[name].append(seconds)

    base = statistics.median(times["direct"])
    print(f"{'':8}{'median s':>10}{'min s':>8}{'ratio':>8}{'paired':>8}{'accuracy':>10}")
    for name, ts in times.items():
        paired = statistics.median(t / d for t, d in zip(ts, times["direct"]))
        print(f"{name:8}{statistics.median(ts):10.3f}{min(ts):8.3f}"
              f"{statistics.median(ts) / base:8.3f}{paired:8.3f}{accuracy[name]:10.3f}")
    print("seconds per repetition:", {k: [round(t, 2) for t in v] for k, v in times.items()})
    ratio = statistics.median(t / d for t, d in zip(times["ce64"], times["direct"]))
    print(f"jrbench (ce64, default) / torchattacks, median per repetition: {ratio:.3f} "
          f"(limit {args.max_ratio})")
    return 0 if ratio <= args.max_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
