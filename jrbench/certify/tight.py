"""The tight certificates of ``jrbench certify``: CROWN, alpha-CROWN and complete verification, run
example by example and radius by radius, spending the work where it matters.

For each norm and each eps of the grid (ascending), an example is one of (``status`` in
``certify_bounds.csv``):

- ``misclassified``: the model gets it wrong clean; nothing to certify.
- ``skipped-attacked``: an adversarial attack in the run's attack_examples.csv (same examples)
  broke it at this eps or a smaller one; no certificate can hold (CROWN, alpha-CROWN).
- ``skipped-certified``: a cheaper certificate (Lipschitz, IBP, and for alpha-CROWN CROWN, for
  complete verification both) already covers this eps; it counts as certified in the method's row.
- ``not-tried``: the method did not certify it at a smaller eps of the grid (its bound only
  loosens as the ball grows, up to rare exceptions), so the larger ball is not tried.
- ``certified`` / ``uncertified``: CROWN or alpha-CROWN ran; ``margin_lower`` is the smallest lower
  bound of f_y - f_j over the ball (pixels, ∩ [0, 1]).
- complete verification (L-inf): ``verified``, ``falsified`` (a counterexample, confirmed by a
  plain forward pass, is written to ``certify_counterexamples.pt``) or ``unknown`` (time budget
  spent); ``by`` says what decided it (a cheaper certificate, the attack of
  :func:`find_counterexamples`, the MILP, or a smaller/larger eps of the grid: a falsified ball
  stays falsified in every larger one).

``--no-skip`` (``skip=False``) runs every method on every correctly classified example at every eps.
A method's radius in certify_examples.csv is the largest eps of the grid it certifies (its closed
ball; certified balls contain the smaller ones, so the radius is sound for every smaller eps).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..evaluate.attack_config import RANDOM_ATTACKS

TIGHT_METHODS = ("crown", "alpha-crown", "complete")
BOUNDS_CSV = "certify_bounds.csv"
COUNTEREXAMPLES = "certify_counterexamples.pt"
BOUND_KEYS = ["method", "norm", "eps", "example"]
BOUND_COLUMNS = ["example", "method", "norm", "eps", "status", "by", "margin_lower", "seconds", "example_seed"]
CERTIFIED_STATUSES = ("certified", "skipped-certified", "verified")
BROKEN_STATUSES = ("falsified",)
PGD_STEPS, PGD_RESTARTS = 100, 3  # the complete verifier's own search for counterexamples


def method_norms(method: str) -> tuple[str, ...]:
    """The norms a tight method certifies: complete verification is L-inf only (an L2 ball is a
    quadratic constraint, which HiGHS's MILP does not take)."""
    return ("linf",) if method == "complete" else ("linf", "l2")


def attacked_radius(out: Path | None, index: torch.Tensor, example_seed: int, norm: str) -> np.ndarray:
    """(N,) per fixed example (test indices ``index``): the smallest strength at which an
    adversarial attack of the run's attack_examples.csv (same example seed; white noise is no
    attack) broke it, 0 when the attack's clean pass got it wrong, +inf when none did."""
    from ..evaluate.api import ATTACK_EXAMPLES_CSV
    from ..training import rundir

    result = np.full(len(index), math.inf)
    path = None if out is None else Path(out) / ATTACK_EXAMPLES_CSV
    if path is None or not path.is_file():
        return result
    table = rundir.read_csv(path)
    table = table[~table["attack"].isin(RANDOM_ATTACKS) & (table["norm"] == norm)]
    if "example_seed" in table:
        table = table[table["example_seed"] == example_seed]
    broken = table["broken"] if "broken" in table else table["clean_correct"] * (1 - table["robust"])
    hit = table[(broken > 0) | (table["clean_correct"] == 0)]
    strength = hit["strength"].where(hit["clean_correct"] > 0, 0.0)
    smallest = strength.groupby(hit["example"]).min()
    position = pd.Series(np.arange(len(index)), index=index.numpy())
    found = smallest[smallest.index.isin(position.index)]
    result[position[found.index].to_numpy()] = found.to_numpy()
    return result


def run_tight(method: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, clean_pred: torch.Tensor,
              config, cheaper: dict[str, np.ndarray], attacked: dict[str, np.ndarray], tick,
              seed_index: torch.Tensor):
    """One tight method on every norm and eps of ``config``'s grids.

    ``cheaper[norm]``: {"closed": (N,), "open": (N,)} the largest radius a cheaper certificate gives
    each example: a closed ball (IBP, CROWN: the largest eps of a grid; 0 also when none, so it
    covers only eps > 0) and an open one (Lipschitz: covers eps < radius);
    ``attacked[norm]`` (N,): :func:`attacked_radius`. Returns (certify.csv rows, certify_examples
    frames (one per norm, radius = the largest eps certified), certify_bounds rows, counterexamples
    {(position, norm, eps): (C, H, W) tensor})."""
    rows, examples, bounds, found = [], [], [], {}
    correct = (clean_pred == y).cpu().numpy()
    ticked = [0]

    def count(label: str, units: int = 1) -> None:
        ticked[0] += units
        tick(label, units)

    for norm in method_norms(method):
        grid = sorted(getattr(config, f"eps_{norm}"))
        radius = np.zeros(len(x))
        falsified_at = np.full(len(x), math.inf)
        failed = np.zeros(len(x), dtype=bool)  # not certified at a smaller eps (crown, alpha-crown)
        for eps in grid:
            start = time.perf_counter()
            status = np.where(correct, "", "misclassified").astype(object)
            by = np.full(len(x), "", dtype=object)
            margin = np.full(len(x), math.nan)
            seconds = np.zeros(len(x))
            if config.skip:
                closed, open_ = cheaper[norm]["closed"], cheaper[norm]["open"]
                covered = correct & (((closed >= eps) & (eps > 0)) | (open_ > eps))
                status[covered & (status == "")] = "skipped-certified"
                by[covered] = "cheaper certificate"
                if method != "complete":
                    hit = (status == "") & (attacked[norm] <= eps)
                    status[hit], by[hit] = "skipped-attacked", "attack"
                    tried_before = (status == "") & failed
                    status[tried_before], by[tried_before] = "not-tried", "smaller eps"
            if method == "complete":
                _complete_eps(model, x, y, eps, config, status, by, margin, seconds, falsified_at, radius,
                              found, seed_index, count)
            else:
                todo = np.flatnonzero(status == "")
                if len(todo):
                    ok, low, secs = _crown_eps(model, x, y, todo, eps, norm, config, method, count)
                    status[todo] = np.where(ok, "certified", "uncertified")
                    by[todo] = method
                    margin[todo], seconds[todo] = low, secs
                failed |= status == "uncertified"
            good = np.isin(status, CERTIFIED_STATUSES)
            radius = np.where(good, np.maximum(radius, eps), radius)
            elapsed = time.perf_counter() - start
            rows.append(_tight_row(method, norm, eps, good, status, elapsed, config))
            bounds.append(pd.DataFrame({"position": np.arange(len(x)), "method": method, "norm": norm,
                                        "eps": float(eps), "status": status.astype(str), "by": by.astype(str),
                                        "margin_lower": margin, "seconds": seconds}))
            tick(f"{method} {norm} eps {eps:g}", len(x) - ticked[0])
            ticked[0] = 0
        examples.append((norm, torch.as_tensor(radius)))
    return rows, examples, bounds, found


def _tight_row(method, norm, eps, good, status, seconds, config) -> dict:
    from .rows import certify_row as _row

    counts = {f"n_{name.replace('-', '_')}": int((status == name).sum())
              for name in ("skipped-attacked", "skipped-certified", "not-tried", "falsified", "unknown")}
    return _row(method, norm, eps, torch.as_tensor(good), seconds, config.settings(method), **counts)


def _crown_eps(model, x, y, todo, eps, norm, config, method, tick):
    """CROWN or alpha-CROWN on the examples ``todo`` at one eps: (certified, margin lower bound,
    seconds per example), each (len(todo),)."""
    from . import crown

    steps = config.alpha_steps if method == "alpha-crown" else 0
    batch = min(config.batch_size, 50 if steps else config.batch_size)
    oks, lows, secs = [], [], []
    for part in np.array_split(todo, max(1, math.ceil(len(todo) / batch))):
        start = time.perf_counter()
        idx = torch.as_tensor(part, device=x.device)
        ok, low = crown.certified(model, x[idx], y[idx], eps, norm, alpha_steps=steps, batch_size=batch)
        oks.append(ok.cpu().numpy())
        lows.append(low.cpu().numpy())
        secs.append(np.full(len(part), (time.perf_counter() - start) / len(part)))
        tick(f"{method} {norm} eps {eps:g}", len(part))
    return np.concatenate(oks), np.concatenate(lows), np.concatenate(secs)


def find_counterexamples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, seed_index: torch.Tensor,
                         seed: int = 0) -> torch.Tensor | None:
    """PGD (torchattacks, L-inf, 100 steps, 3 restarts, per-example random starts) on x (N, C, H, W)
    at ``eps``: (N, C, H, W) float points in the ball ∩ [0, 1], NaN where no restart changed the
    class (confirmed by a plain forward pass). The cheap first pass of complete verification."""
    from ..evaluate.attacks import make_attack, pgd_start_seed

    out = torch.full_like(x, math.nan)
    if eps == 0 or len(x) == 0:
        return out
    param = next(model.parameters(), None)
    atk = make_attack(model, "pgd", "linf", eps, steps=PGD_STEPS, device=x.device if param is None else param.device)
    alive = torch.ones(len(x), dtype=torch.bool, device=x.device)
    for restart in range(PGD_RESTARTS):
        idx = alive.nonzero().flatten()
        if len(idx) == 0:
            break
        seeds = [pgd_start_seed(seed, "linf-complete", restart, int(seed_index[i])) for i in idx.tolist()]
        with torch.enable_grad():
            adv = atk(x[idx], y[idx], start_seeds=seeds)
        adv = torch.minimum(torch.maximum(adv, (x[idx] - eps).clamp_min(0)), (x[idx] + eps).clamp_max(1))
        with torch.no_grad():
            broke = model(adv).argmax(1) != y[idx]
        out[idx[broke]] = adv[broke]
        alive[idx[broke]] = False
    return out


def _complete_eps(model, x, y, eps, config, status, by, margin, seconds, falsified_at, radius, found, seed_index,
                  tick) -> None:
    """Complete verification at one L-inf eps: the smaller/larger eps of the grid first (falsified
    stays falsified, verified stays verified), then PGD, then the MILP with ``config.timeout``."""
    from . import complete

    carried = (status == "") & (falsified_at <= eps)
    status[carried], by[carried] = "falsified", "smaller eps"
    status[status == "skipped-certified"] = "verified"
    todo = np.flatnonzero(status == "")
    if len(todo):
        start = time.perf_counter()
        idx = torch.as_tensor(todo, device=x.device)
        adv = find_counterexamples(model, x[idx], y[idx], eps, seed_index[idx.cpu()], seed=config.seed)
        hit = ~torch.isnan(adv.flatten(1)[:, 0]).cpu().numpy()
        per = (time.perf_counter() - start) / len(todo)
        for k, pos in enumerate(todo):
            seconds[pos] = per
            if hit[k]:
                status[pos], by[pos] = "falsified", "pgd"
                found[(int(pos), "linf", float(eps))] = adv[k].detach().float().cpu()
                with torch.no_grad():
                    f = model(adv[k:k + 1]).double()[0]
                margin[pos] = float((f[y[pos]] - f.scatter(0, y[pos].view(1), -math.inf).max()).item())
    for pos in np.flatnonzero(status == ""):
        outcome = complete.verify(model, x[pos], int(y[pos]), eps, timeout_s=config.timeout)
        status[pos], by[pos] = outcome.status, "milp"
        margin[pos], seconds[pos] = outcome.margin_lower, outcome.seconds
        if outcome.status == "falsified" and outcome.counterexample is not None:
            found[(int(pos), "linf", float(eps))] = outcome.counterexample.detach().float().cpu()
        tick(f"complete linf eps {eps:g}", 1)
    falsified_at[status == "falsified"] = np.minimum(falsified_at[status == "falsified"], eps)


def save_counterexamples(out: Path, found: dict, index: torch.Tensor, x: torch.Tensor, labels: torch.Tensor,
                         model: nn.Module, example_seed: int) -> None:
    """Add this call's counterexamples to ``certify_counterexamples.pt`` (a dict of tensors: example,
    eps, label, predicted, x (K, C, H, W) float32 pixels, clean (K, C, H, W) the test images; L-inf),
    replacing those of the same (example, eps); written atomically under the file's lock."""
    from ..atomic import atomic_torch_save, locked
    from ..training import rundir

    if not found:
        return
    keys = sorted(found)
    xs = torch.stack([found[k] for k in keys])
    param = next(model.parameters(), None)
    with torch.no_grad():
        predicted = model(xs.to(param.device if param is not None else "cpu")).argmax(1).cpu()
    new = {"example": torch.tensor([int(index[p]) for p, _, _ in keys]),
           "eps": torch.tensor([e for _, _, e in keys], dtype=torch.float64),
           "label": torch.tensor([int(labels[p]) for p, _, _ in keys]), "predicted": predicted, "x": xs,
           "clean": torch.stack([x[p].detach().float().cpu() for p, _, _ in keys]),
           "example_seed": torch.full((len(keys),), example_seed)}
    path = Path(out) / COUNTEREXAMPLES
    with locked(path):
        if path.is_file():
            old = rundir.torch_load(path)
            mine = set(zip(new["example"].tolist(), new["eps"].tolist()))
            keep = torch.tensor([(e, s) not in mine for e, s in zip(old["example"].tolist(), old["eps"].tolist())],
                                dtype=torch.bool)
            new = {k: torch.cat([old[k][keep], new[k]]) for k in new}
        atomic_torch_save(path, new)


def recheck_counterexamples(model: nn.Module, path: Path) -> pd.DataFrame:
    """Every counterexample of ``certify_counterexamples.pt`` run through the model again: rows of
    example, eps, label, predicted, ``in_ball`` (within eps of its clean test image, L-inf, up to
    float32 rounding, and in [0, 1]) and ``confirmed`` (in the ball and predicted != label)."""
    from ..training import rundir

    saved = rundir.torch_load(path)
    param = next(model.parameters(), None)
    with torch.no_grad():
        predicted = model(saved["x"].to(param.device if param is not None else "cpu")).argmax(1).cpu()
    x, clean, eps = saved["x"].double(), saved["clean"].double(), saved["eps"].double()
    distance = (x - clean).flatten(1).abs().amax(1)
    in_ball = (distance <= eps * (1 + 1e-6) + 1e-6) & (x.flatten(1).amin(1) >= 0) & (x.flatten(1).amax(1) <= 1)
    return pd.DataFrame({"example": saved["example"].numpy(), "eps": eps.numpy(),
                         "label": saved["label"].numpy(), "predicted": predicted.numpy(),
                         "in_ball": in_ball.numpy(), "confirmed": (in_ball & (predicted != saved["label"])).numpy()})
