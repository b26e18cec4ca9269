"""Benchmark: whole-epoch time of the training loop with a host read every step against one per
logged interval (issue 17, item 6).

``jrbench.training.loop.train_epoch`` keeps its running sums, correct count and finiteness check
on the device and reads them once every ``LOG_EVERY`` (50) steps. Setting ``LOG_EVERY = 1`` makes
it read them after every step, one device synchronization a step: the loop before item 6 synchronized
at least that often (five or more host reads a step), so the ratio here is a lower bound on what
item 6 saves. On CPU an op has finished when it returns, so the ratio should be about 1 there; on a
GPU, where a lenet step takes a few milliseconds, it measures the cost of waiting on the device.

Every pair times one epoch of each mode back to back (alternating which goes first) for each
case (plain SGD and Jacobian n=1), after one warm-up epoch of each; the table gives the median
epoch seconds of each mode and the median and quartiles of the per-pair ratios
(every step / every 50), with the device named. Same data, seeds and model in both modes: the
losses agree (checked, to 1e-4 relative), only the waiting differs.

Run: .venv/bin/python benchmarks/bench_epoch_sync.py [--device cuda] [--pairs 10] [--train 6400]
     [--out epoch-sync.csv]
"""
from __future__ import annotations

import argparse
import copy
import math
import statistics
import time

import pandas as pd
import torch

from jrbench.config import DataConfig, ModelConfig, RegConfig, RunConfig, TrainConfig
from jrbench.data.datasets import load_data
from jrbench.device import resolve_device
from jrbench.models.architectures import build_model
from jrbench.training import loop
from jrbench.training.envinfo import cpu_model, device_name, package_versions

MODES = {"every step": 1, "every 50 steps": 50}


def timed_epoch(model, data, config: RunConfig, device: torch.device, log_every: int) -> tuple[float, float]:
    """Seconds of one ``train_epoch`` with host reads every ``log_every`` steps, and its train_ce."""
    opt, _ = loop._make_optimizer(model, config)
    saved = loop.LOG_EVERY
    loop.LOG_EVERY = log_every
    try:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        row = loop.train_epoch(model, data, config, 0, opt, device)  # ends in a host read: finished
        return time.perf_counter() - start, row["train_ce"]
    finally:
        loop.LOG_EVERY = saved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="lenet")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train", type=int, default=6400, help="training examples (epoch = train / batch steps)")
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--out", default=None, help="write the table here (CSV)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    data = load_data(DataConfig("synth-digits", train_subset=args.train, test_subset=64))
    info = data.info
    rows = []
    for reg in (RegConfig(["none"]), RegConfig(["jacobian"], n_proj=1)):
        config = RunConfig(DataConfig("synth-digits"), ModelConfig(args.model), reg,
                           TrainConfig(epochs=1, batch_size=args.batch_size, lr=0.01, seed=0, device=args.device))
        torch.manual_seed(0)
        start = build_model(args.model, info.input_shape, info.num_classes, info.mean, info.std).to(device)
        seconds = {mode: [] for mode in MODES}
        losses = []  # train_ce of every timed epoch: one start, one seed, so all agree
        for pair in range(-1, args.pairs):  # pair -1: warm-up, not counted
            order = list(MODES) if pair % 2 else list(reversed(MODES))
            for mode in order:
                s, ce = timed_epoch(copy.deepcopy(start), data, config, device, MODES[mode])
                if pair >= 0:
                    seconds[mode].append(s)
                    losses.append(ce)
        ratios = [a / b for a, b in zip(seconds["every step"], seconds["every 50 steps"])]
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        steps = math.ceil(args.train / args.batch_size)
        rows.append({"case": "plain" if reg.names == ["none"] else "jacobian-n1", "model": args.model,
                     "batch_size": args.batch_size, "steps_per_epoch": steps,
                     "epoch_seconds_every_step": statistics.median(seconds["every step"]),
                     "epoch_seconds_every_50": statistics.median(seconds["every 50 steps"]),
                     "ratio_median": statistics.median(ratios), "ratio_q25": q[0], "ratio_q75": q[2],
                     "pairs": args.pairs, "same_losses": max(losses) - min(losses) <= 1e-4 * max(losses),
                     "device": str(device), "device_name": device_name(device), "cpu": cpu_model(),
                     "threads": torch.get_num_threads(), "torch": package_versions()["torch"]})
    table = pd.DataFrame(rows)
    print(f"whole-epoch time, host read every step / every 50 steps, on {table['device_name'].iloc[0]}:")
    print(table[["case", "steps_per_epoch", "epoch_seconds_every_step", "epoch_seconds_every_50", "ratio_median",
                 "ratio_q25", "ratio_q75", "same_losses"]].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if args.out:
        table.to_csv(args.out, index=False)
    return 0 if table["same_losses"].all() else 1


if __name__ == "__main__":
    raise SystemExit(main())
