"""Certify a run directory or any model: lower bounds on robust accuracy -> certify.csv beside it.

An attack's robust accuracy is an upper bound on the truth; a certificate is a lower bound
that no attack can break. Seven certificates, on the same fixed test examples as
``jrbench attack`` (:func:`jrbench.evaluate.api.fixed_examples`), in pixel units, with the model's
normalization inside the map being bounded:

- ``lipschitz`` (Tsuzuku, Sato, Sugiyama 2018): a certified upper bound L on the L2 Lipschitz
  constant of x -> logits (:mod:`jrbench.models.lipschitz`); example x with label y is certified
  within L2 radius min_{j != y} (f_y - f_j) / L_yj, L_yj = ||W_y - W_j||_2 times the bound of
  the layers below the last. At L-inf eps through ||delta||_2 <= sqrt(d) ||delta||_inf: the
  L-inf radius is the L2 radius / sqrt(d) (d = C * H * W).
- ``one-lipschitz``: for a network built from layers 1-Lipschitz by construction (aol-mlp,
  aol-lenet; :func:`jrbench.models.lipschitz.construction_bound`), its constant L is that of its
  normalization, max 1/std, with no norm computed; each f_y - f_j is then sqrt(2) L-Lipschitz and
  the L2 radius is (f_y - max_{j != y} f_j) / (sqrt(2) L), in float64 rounded down (L-inf: / sqrt(d)).
  ``lipschitz`` on such a network bounds each AOL layer by the exact norm of its rescaled weight
  and the last layer by pairs, so its radius is at least this one up to the convolutions' 1e-6 slack.
- ``ibp`` (Gowal et al. 2018): interval bound propagation of the L-inf box (clipped to [0, 1])
  at each eps of the grid (:mod:`jrbench.certify.ibp`); the radius of an example is the largest eps of
  the grid it certifies (boxes grow with eps, so certification is monotone).
- ``crown`` (Zhang et al. 2018) and ``alpha-crown`` (Xu et al. 2021): linear-relaxation bounds
  of the margins over the L-inf or L2 ball ∩ [0, 1] (:mod:`jrbench.certify.crown`), at each eps of
  the grids; ``complete`` (Tjeng et al. 2019): a MILP solved by HiGHS decides each example at each
  L-inf eps as verified, falsified or unknown (:mod:`jrbench.certify.complete`). These skip what an
  attack broke or a cheaper certificate covers (:mod:`jrbench.certify.tight`, which also writes
  ``certify_bounds.csv``, per example and eps: status and the margin's lower bound, and
  ``certify_counterexamples.pt``). A network with MaxMin activations is certified through its
  ReLU form, the same function (:mod:`jrbench.certify.relu_form`).
- ``smoothing`` (Cohen, Rosenfeld, Kolter 2019): the smoothed classifier g and its certified L2
  radius sigma Phi^-1(p_A) (:mod:`jrbench.certify.smoothing`). It certifies g, not the model f: its rows
  are never mixed into f's bracket.

``certify.csv``: one row per method, norm, strength (and sigma): certified accuracy (share of
the examples certified with the true label at that radius), its Wilson interval, examples,
seconds, settings, and for ``lipschitz`` the bound itself (``lipschitz_bound``).
``certify_examples.csv``: one row per example and (method, norm, sigma): ``example`` (index in
the test split, as in attack_examples.csv), ``radius`` (pixel units; 0 when misclassified,
uncertified or abstained), ``predicted``, ``abstain``, ``label``, ``clean_correct``.
Both are written atomically; re-running replaces the rows of the same keys (an example's IBP
radius keeps the largest eps any call's grid certified: :func:`keep_larger_ibp_radius`).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..training import rundir
from ..data.datasets import Data, to_pixels
from ..errors import UserError
from .config import CertifyConfig
from .rows import NO_SIGMA, certify_row as _row
from ..device import resolve_device
from ..evaluate.api import Progress, prepare_model
from ..evaluate.attack_config import RANDOM_ATTACKS
from ..runtables.examples import default_examples, fixed_examples
from ..runtables.provenance import load_test_data, run_provenance
from ..runtables.tables import upsert_rows

CERTIFY_CSV, CERTIFY_EXAMPLES_CSV = "certify.csv", "certify_examples.csv"
METHODS = ("lipschitz", "one-lipschitz", "ibp", "smoothing", "crown", "alpha-crown", "complete")
DETERMINISTIC = ("lipschitz", "one-lipschitz", "ibp", "crown", "alpha-crown", "complete")  # certify the model itself
OPEN_BALL = ("lipschitz", "one-lipschitz")  # radius r: every eps < r
CLOSED_BALL = ("ibp", "crown", "alpha-crown", "complete")  # radius: the largest eps of a grid certified
ROW_KEYS = ["method", "norm", "strength", "sigma"]
EXAMPLE_KEYS = ["method", "norm", "sigma"]
EXAMPLE_COLUMNS = ["example", "method", "norm", "sigma", "radius", "predicted", "abstain", "label",
                   "clean_correct", "example_seed", "seed"]


@dataclass
class CertifyResult:
    table: pd.DataFrame               # this call's certify.csv rows
    examples: pd.DataFrame            # this call's per-example rows
    path: Path | None = None          # certify.csv (None: nothing written)
    examples_path: Path | None = None
    notes: list[str] = field(default_factory=list)
    bounds: pd.DataFrame | None = None      # this call's certify_bounds.csv rows (tight methods)
    bounds_path: Path | None = None


def unsupported(model: nn.Module, config: CertifyConfig) -> str | None:
    """None when the chosen deterministic certificates have a rule for every layer of ``model``,
    else the message naming the first layer without one (smoothing takes any model)."""
    from . import crown, ibp
    from ..models import lipschitz
    from .relu_form import model_for_crown

    def tight_check(model):
        try:
            return crown.supports(model_for_crown(model))
        except UserError as e:
            return str(e)

    tight = config.crown or config.alpha_crown or config.complete
    checks = [check for check, on in ((lipschitz.supports, config.lipschitz),
                                      (lipschitz.construction_problem, config.one_lipschitz),
                                      (ibp.supports, config.ibp), (tight_check, tight)) if on]
    return next((problem for problem in (check(model) for check in checks) if problem is not None), None)


def check_certify(run_dir: str | Path, config: CertifyConfig):
    """Before any work: a finished run directory and a model the chosen deterministic
    certificates have rules for (the settings were checked when ``config`` was built). Returns
    the run's configuration."""
    run_dir = rundir.check_run_dir(Path(run_dir))
    run_config = rundir.load_config(run_dir)
    if config.lipschitz or config.one_lipschitz or config.ibp:
        model, _ = rundir.load_run(run_dir, torch.device("cpu"))
        problem = unsupported(model, config)
        if problem is not None:
            raise UserError(f"{run_dir}: {problem}")
    return run_config


def certify_run(run_dir: str | Path, config: CertifyConfig, *, n_examples: int | None = None, example_seed: int = 0,
                device: str = "auto", data_dir: str | None = None,
                on_progress: Progress | None = None) -> CertifyResult:
    """Certify the model of ``run_dir`` on ``n_examples`` fixed test examples (None: the data set's
    ``Defaults.attack_examples``, as ``jrbench attack``; ``example_seed``: the examples ``jrbench
    attack`` attacks with the same two numbers); upsert certify.csv and certify_examples.csv (the
    per-example file first)."""
    run_config = check_certify(run_dir, config)
    run_dir = Path(run_dir)
    dev = resolve_device(device)
    model, _ = rundir.load_run(run_dir, dev)
    data = load_test_data(run_config, data_dir)
    return _certify(model, data, config, run_provenance(run_config, run_dir), run_dir, n_examples=n_examples,
                    example_seed=example_seed, device=dev, on_progress=on_progress)


def certify_model(model: nn.Module, dataset: str, config: CertifyConfig, *, n_examples: int | None = None,
                  example_seed: int = 0, device: str = "auto", data_dir: str | None = None,
                  out: str | Path | None = None, name: str | None = None, source: dict | None = None,
                  on_progress: Progress | None = None) -> CertifyResult:
    """Certify any image classifier (pixels (N, C, H, W) in [0, 1] in, logits out), as
    :func:`certify_run` does a run; ``out``: a result folder for the two tables (None: nothing
    written). Lipschitz and IBP need a chain of layers they have rules for (UserError otherwise)."""
    problem = unsupported(model, config)
    if problem is not None:
        raise UserError(problem)
    model, data, dev, prov, out = prepare_model(model, dataset, device, data_dir, name, out, source)
    return _certify(model, data, config, prov, out, n_examples=n_examples, example_seed=example_seed,
                    device=dev, on_progress=on_progress)


def _certify(model: nn.Module, data: Data, config: CertifyConfig, prov: dict, out: Path | None, *,
             n_examples: int | None, example_seed: int, device: torch.device,
             on_progress: Progress | None = None) -> CertifyResult:
    from ..models.architectures import eval_mode

    config = config.filled(data.info)
    n_examples = default_examples(data, n_examples)  # None: the attacks' default
    images, labels, index = fixed_examples(data, n_examples, example_seed)
    x, y = to_pixels(images, device), labels.to(device)
    steps = _work_units(config, len(x))
    done = [0]

    def tick(label: str, units: int = 1) -> None:
        done[0] += units
        if on_progress is not None:
            on_progress(min(done[0], steps), steps, label)

    rows, examples, bounds, found = [], [], [], {}
    with eval_mode(model):
        clean_pred = _predict(model, x, config.batch_size)
        if config.lipschitz:
            r, e = _lipschitz(model, x, y, clean_pred, config, tick)
            rows += r
            examples += e
        if config.one_lipschitz:
            r, e = _one_lipschitz(model, x, y, clean_pred, config, tick)
            rows += r
            examples += e
        if config.ibp:
            r, e = _ibp(model, x, y, clean_pred, config, tick)
            rows += r
            examples += e
        tight_model = None
        for method, on in (("crown", config.crown), ("alpha-crown", config.alpha_crown),
                           ("complete", config.complete)):
            if on:
                if tight_model is None:
                    from .relu_form import model_for_crown

                    tight_model = model_for_crown(model)  # MaxMin rewritten with ReLU: the same function
                r, e, b, f = _tight(method, tight_model, x, y, index, clean_pred, config, examples, out,
                                    example_seed, tick)
                rows += r
                examples += e
                bounds += b
                found.update(f)
        if config.smoothing:
            r, e = _smoothing(model, x, y, index, clean_pred, config, tick)
            rows += r
            examples += e
    table = pd.DataFrame(rows)
    for key, value in prov.items():
        table[key] = value
    table["example_seed"] = example_seed
    ex = pd.concat(examples, ignore_index=True)
    ex["example"] = index.numpy()[ex.pop("position").to_numpy()]
    ex["example_seed"], ex["seed"] = example_seed, config.seed
    ex = ex[EXAMPLE_COLUMNS]
    bound_rows = None
    if bounds:
        from .tight import BOUND_COLUMNS

        bound_rows = pd.concat(bounds, ignore_index=True)
        bound_rows["example"] = index.numpy()[bound_rows.pop("position").to_numpy()]
        bound_rows["example_seed"] = example_seed
        bound_rows = bound_rows[BOUND_COLUMNS]
    if out is None:
        return CertifyResult(table, ex, bounds=bound_rows)
    from .tight import BOUND_KEYS, BOUNDS_CSV, save_counterexamples

    notes = _keep_one_example_set(out, example_seed, n_examples)
    upsert_rows(out / CERTIFY_EXAMPLES_CSV, ex, EXAMPLE_KEYS + ["example"], combine=keep_larger_ibp_radius)
    if bound_rows is not None:
        upsert_rows(out / BOUNDS_CSV, bound_rows, BOUND_KEYS)
        save_counterexamples(out, found, index, x, y, model, example_seed)
    upsert_rows(out / CERTIFY_CSV, table, ROW_KEYS)
    return CertifyResult(table, ex, out / CERTIFY_CSV, out / CERTIFY_EXAMPLES_CSV, notes, bound_rows,
                         out / BOUNDS_CSV if bound_rows is not None else None)


def _tight(method, model, x, y, index, clean_pred, config, examples, out, example_seed, tick):
    """CROWN, alpha-CROWN or complete verification (:mod:`jrbench.certify.tight`), told which
    examples an attack in the run folder already broke and which a cheaper certificate (this call's
    or the folder's earlier rows) already covers."""
    from .tight import attacked_radius, run_tight

    cheaper_methods = {"crown": ("ibp",), "alpha-crown": ("ibp", "crown"),
                       "complete": ("ibp", "crown", "alpha-crown")}[method]  # and OPEN_BALL's
    parts = [e.assign(example=index.numpy()[e["position"].to_numpy()]) for e in examples]
    earlier = out / CERTIFY_EXAMPLES_CSV if out is not None else None
    if earlier is not None and earlier.is_file():
        old = rundir.read_csv(earlier)
        parts.append(old[old["example_seed"] == example_seed])
    cheaper, attacked = {}, {}
    for norm in ("linf", "l2"):
        radii = {}
        for kind, methods in (("closed", [m for m in cheaper_methods if m in CLOSED_BALL]), ("open", list(OPEN_BALL))):
            radius = pd.Series(0.0, index=index.numpy())
            for part in parts:
                sel = part[part["method"].isin(methods) & (part["norm"] == norm)]
                if len(sel):
                    best = sel.groupby("example")["radius"].max()
                    best = best[best.index.isin(radius.index)]
                    radius[best.index] = np.maximum(radius[best.index].to_numpy(), best.to_numpy())
            radii[kind] = radius.to_numpy()
        cheaper[norm] = radii
        attacked[norm] = attacked_radius(out, index, example_seed, norm)
    rows, radii, bounds, found = run_tight(method, model, x, y, clean_pred, config, cheaper, attacked, tick, index)
    frames = [_examples(method, norm, radius, clean_pred, y, clean_pred) for norm, radius in radii]
    return rows, frames, bounds, found


def keep_larger_ibp_radius(earlier: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """``new``'s certify_examples rows with each radius of a grid method (IBP, CROWN, alpha-CROWN,
    complete) the larger of its own and the run's earlier one of the same method. Such a radius is
    the largest eps of a call's grid that the method certifies, so a call with another grid (same
    examples: a run keeps one example set) must not lower what an earlier grid certified; the
    best-of certificate is computed from these radii."""
    old = earlier[earlier["method"].isin(CLOSED_BALL)][["example", "method", "norm", "radius"]]
    if old.empty or not new["method"].isin(CLOSED_BALL).any():
        return new
    merged = new.merge(old.rename(columns={"radius": "_earlier"}), on=["example", "method", "norm"], how="left")
    is_ibp = merged["method"].isin(CLOSED_BALL).to_numpy()
    larger = merged["radius"].where(merged["radius"] >= merged["_earlier"].fillna(0), merged["_earlier"])
    merged.loc[is_ibp, "radius"] = larger[is_ibp]
    return merged.drop(columns="_earlier")[list(new.columns)]


def _keep_one_example_set(out: Path, example_seed: int, n_examples: int) -> list[str]:
    """A run's certificates cover one example set: rows of another (``example_seed``,
    ``n_examples``) are removed from both tables before this call's rows go in (a note says so)."""
    from ..atomic import locked

    path, ex_path = out / CERTIFY_CSV, out / CERTIFY_EXAMPLES_CSV
    with locked(path), locked(ex_path):
        return _drop_other_sets(path, ex_path, example_seed, n_examples)


def _drop_other_sets(path: Path, ex_path: Path, example_seed: int, n_examples: int) -> list[str]:
    if not path.is_file():
        return []
    old = rundir.read_csv(path)
    same = (old["example_seed"] == example_seed) & (old["n_examples"] == n_examples)
    if same.all():
        return []
    rundir.atomic_write_csv(path, old[same])
    from .tight import BOUNDS_CSV, COUNTEREXAMPLES

    for table_path in (ex_path, path.parent / BOUNDS_CSV):
        if table_path.is_file():
            old_ex = rundir.read_csv(table_path)
            keep = old_ex["example_seed"] == example_seed if same.any() else old_ex["example"].isna()
            rundir.atomic_write_csv(table_path, old_ex[keep])
    (path.parent / COUNTEREXAMPLES).unlink(missing_ok=True)
    return [f"the certificates of another example set ({len(old) - int(same.sum())} rows of certify.csv) were "
            f"replaced: a run's certificates cover one set (now --example-seed {example_seed}, {n_examples} examples)"]


def covers(radius, eps, correct):
    """Whether certified radii (tensors, arrays or Series, pixel units) of examples that are
    ``correct`` (clean) cover radius ``eps``: correct and radius >= eps (at eps 0: correct). One
    rule for every certificate: IBP's radius is the largest eps of its grid it certifies (its
    closed box; 0 when it certifies only eps 0), and a Lipschitz radius r certifies the open ball
    of radius r (equality is a measure-zero tie)."""
    return (radius >= eps) & (correct > 0)


def best_radii(examples: pd.DataFrame) -> pd.DataFrame:
    """The best deterministic certificate per example and norm, from certify_examples.csv rows:
    columns norm, example, radius (the largest of Lipschitz's and IBP's), clean_correct. These
    certify the model itself; smoothing (another classifier) is left out."""
    sel = examples[examples["method"].isin(DETERMINISTIC)]
    return sel.groupby(["norm", "example"], as_index=False).agg(radius=("radius", "max"),
                                                              clean_correct=("clean_correct", "max"))


def _work_units(config: CertifyConfig, n: int) -> int:
    batches = max(1, math.ceil(n / config.batch_size))
    tight = n * (len(config.eps_linf) + len(config.eps_l2)) * (config.crown + config.alpha_crown)
    return ((1 + batches) * (config.lipschitz + config.one_lipschitz) + batches * len(config.eps_linf) * config.ibp
            + n * len(config.sigmas) * config.smoothing + tight + n * len(config.eps_linf) * config.complete)


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def _examples(method: str, norm: str, radius: torch.Tensor, predicted: torch.Tensor, y: torch.Tensor,
              clean_pred: torch.Tensor, abstain: torch.Tensor | None = None,
              sigma: float = NO_SIGMA) -> pd.DataFrame:
    """Per-example rows; ``position`` in the call's examples (mapped to the test index later);
    ``clean_correct`` is the model f's own clean correctness (also on smoothing rows)."""
    n = len(radius)
    return pd.DataFrame({
        "position": range(n), "method": method, "norm": norm, "sigma": float(sigma),
        "radius": radius.detach().cpu().double().numpy(), "predicted": predicted.cpu().numpy(),
        "abstain": (abstain.cpu().numpy() if abstain is not None else False),
        "label": y.cpu().numpy(), "clean_correct": (clean_pred.cpu() == y.cpu()).numpy().astype(int),
    })


def _lipschitz(model, x, y, clean_pred, config: CertifyConfig, tick) -> tuple[list[dict], list[pd.DataFrame]]:
    """L2 radii from the certified Lipschitz bound; L-inf radii as L2 / sqrt(d), rounded down."""
    from ..models.lipschitz import certified_radius_l2, lipschitz_bound

    start = time.perf_counter()
    exact = copy.deepcopy(model).double()  # the logit gaps in float64: rounding cannot inflate a radius
    bound = lipschitz_bound(exact)  # AOL layers: their rescaled weights in float64, as the logits use them
    bound_seconds = time.perf_counter() - start
    tick("Lipschitz bound")
    start = time.perf_counter()
    radius_l2 = _radii_l2(exact, x, y, config.batch_size, lambda f, t: certified_radius_l2(bound, f, t),
                          lambda: tick("Lipschitz radii"))
    seconds = time.perf_counter() - start
    radius = {"l2": radius_l2, "linf": _down_div(radius_l2, math.sqrt(x[0].numel()))}
    extra = {"lipschitz_bound": bound.total, "bound_seconds": bound_seconds}
    correct = (clean_pred == y).cpu()
    rows = [_row("lipschitz", norm, eps, covers(radius[norm], eps, correct), seconds,
                 config.settings("lipschitz"), **extra)
            for norm in ("linf", "l2") for eps in getattr(config, f"eps_{norm}")]
    examples = [_examples("lipschitz", norm, radius[norm], clean_pred, y, clean_pred) for norm in ("linf", "l2")]
    return rows, examples


def one_lipschitz_radius_l2(bound: float, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N,) float64 CPU certified L2 radii (pixels) of a network whose constant ``bound`` L is known:
    (f_y - max_{j != y} f_j) / (sqrt(2) L) rounded down, for correctly classified examples (strictly
    largest logit), 0 for the others; +inf with one class."""
    from ..models.lipschitz import strictly_correct
    from .rounding import down, up

    f, y = logits.detach().double().cpu(), labels.detach().long().cpu().view(-1)
    if f.dim() != 2 or f.shape[0] != y.shape[0]:
        raise UserError(f"one_lipschitz_radius_l2 needs logits (N, C) and N labels; got logits {tuple(f.shape)} "
                        f"and {y.shape[0]} labels.")
    own = f.gather(1, y[:, None])[:, 0]
    others = f.scatter(1, y[:, None], -math.inf).amax(1)
    slope = up(up(torch.tensor(math.sqrt(2), dtype=torch.float64)) * bound)  # sqrt(2) L, rounded up
    radius = down(down(own - others) / slope)
    return torch.where(strictly_correct(f, y), radius, torch.zeros_like(radius))


def _one_lipschitz(model, x, y, clean_pred, config: CertifyConfig, tick) -> tuple[list[dict], list[pd.DataFrame]]:
    """L2 radii from the construction's constant (no layer's norm computed); L-inf as L2 / sqrt(d)."""
    from ..models.lipschitz import construction_bound

    start = time.perf_counter()
    bound = construction_bound(model)
    tick("1-Lipschitz constant")
    exact = copy.deepcopy(model).double()  # the logit gaps in float64
    radius_l2 = _radii_l2(exact, x, y, config.batch_size, lambda f, t: one_lipschitz_radius_l2(bound, f, t),
                          lambda: tick("1-Lipschitz radii"))
    seconds = time.perf_counter() - start
    radius = {"l2": radius_l2, "linf": _down_div(radius_l2, math.sqrt(x[0].numel()))}
    correct = (clean_pred == y).cpu()
    rows = [_row("one-lipschitz", norm, eps, covers(radius[norm], eps, correct), seconds,
                 config.settings("one-lipschitz"), lipschitz_bound=bound)
            for norm in ("linf", "l2") for eps in getattr(config, f"eps_{norm}")]
    examples = [_examples("one-lipschitz", norm, radius[norm], clean_pred, y, clean_pred) for norm in ("linf", "l2")]
    return rows, examples


def _radii_l2(exact, x, y, batch: int, radius_fn, tick) -> torch.Tensor:
    """(N,) float64 CPU L2 radii: ``radius_fn(logits, labels)`` on the float64 model ``exact``'s
    logits, batch by batch (``tick`` after each)."""
    radii = []
    for i in range(0, len(x), batch):
        with torch.no_grad():
            logits = exact(x[i:i + batch].double())
        radii.append(radius_fn(logits, y[i:i + batch]))
        tick()
    return torch.cat(radii).cpu().double()


def _down_div(radius: torch.Tensor, divisor: float) -> torch.Tensor:
    """radius / divisor rounded down (float64), the divisor rounded up first; never below 0 (a radius
    of 0 stays 0: rounding down must not make it negative)."""
    from .rounding import down, up

    return down(radius / up(torch.tensor(divisor, dtype=torch.float64))).clamp_min(0)


def _ibp(model, x, y, clean_pred, config: CertifyConfig, tick) -> tuple[list[dict], list[pd.DataFrame]]:
    """IBP at each L-inf eps of the grid; an example's radius is the largest eps it certifies."""
    from .ibp import certified_linf

    radius = torch.zeros(len(x), dtype=torch.float64)
    rows = []
    for eps in config.eps_linf:
        start = time.perf_counter()
        parts = []
        for i in range(0, len(x), config.batch_size):
            parts.append(certified_linf(model, x[i:i + config.batch_size], y[i:i + config.batch_size], eps,
                                        batch_size=config.batch_size).cpu())
            tick(f"IBP eps {eps:g}")
        certified = torch.cat(parts)
        radius = torch.where(certified, torch.maximum(radius, torch.tensor(float(eps), dtype=torch.float64)),
                             radius)
        rows.append(_row("ibp", "linf", eps, certified, time.perf_counter() - start, config.settings("ibp")))
    return rows, [_examples("ibp", "linf", radius, clean_pred, y, clean_pred)]


def _smoothing(model, x, y, index, clean_pred, config: CertifyConfig, tick) -> tuple[list[dict], list[pd.DataFrame]]:
    """Cohen et al.'s CERTIFY per sigma; certified accuracy of g at each L2 eps."""
    from .smoothing import certify_smoothed

    rows, examples = [], []
    for sigma in config.sigmas:
        start = time.perf_counter()
        last = [0]

        def progress(done: int, total: int, label: str, sigma=sigma) -> None:
            tick(f"smoothing sigma {sigma:g}", done - last[0])
            last[0] = done

        result = certify_smoothed(model, x, sigma=sigma, n0=config.n0, n=config.n, alpha=config.alpha,
                                  seed=config.seed, example_index=index, batch_size=config.smoothing_batch_size,
                                  on_progress=progress)
        seconds = time.perf_counter() - start
        correct = result.predicted == y.cpu()
        for eps in config.eps_l2:
            certified = correct & ~result.abstain & (result.radius >= eps if eps > 0 else True)
            rows.append(_row("smoothing", "l2", eps, certified, seconds, config.settings("smoothing"), sigma=sigma,
                             abstain_rate=float(result.abstain.double().mean())))
        radius = torch.where(correct & ~result.abstain, result.radius, torch.zeros_like(result.radius))
        examples.append(_examples("smoothing", "l2", radius, result.predicted, y, clean_pred,
                                  abstain=result.abstain, sigma=sigma))
    return rows, examples


SOUNDNESS_TOLERANCE = 1e-6  # relative: a certificate exactly at the attacked radius is not contradicted


def soundness_violations(certified: pd.DataFrame, attacked: pd.DataFrame) -> pd.DataFrame:
    """Examples that a deterministic certificate covers at eps but an attack breaks at eps or below.

    ``certified``: certify_examples.csv rows; ``attacked``: attack_examples.csv rows of the same
    model and examples. An adversarial attack's row (noise and the corruptions are no attack here) with ``broken`` == 1
    at (norm, strength) contradicts every deterministic certificate (Lipschitz, IBP) whose radius
    at that norm covers the strength (IBP: radius >= strength, its closed box; Lipschitz: radius >
    strength, its open ball, with a relative tolerance for rounding): one of the two is wrong. Also contradicted: a certificate
    with a positive radius on an example the attack's own clean pass got wrong. Returns one row per
    contradiction: example, norm, method, radius, attack, strength, loss.
    """
    columns = ["example", "norm", "method", "radius", "attack", "strength", "loss"]
    cert = certified[certified["method"].isin(DETERMINISTIC) & (certified["radius"] > 0)]
    if cert.empty or attacked.empty:
        return pd.DataFrame(columns=columns)
    adv = attacked[~attacked["attack"].isin(RANDOM_ATTACKS)]
    # older attack_examples.csv files have no broken column: it is clean_correct and not robust
    was_broken = adv["broken"] if "broken" in adv else adv["clean_correct"] * (1 - adv["robust"])
    broken = adv[(was_broken > 0) | (adv["clean_correct"] == 0)]
    pairs = cert[["example", "norm", "method", "radius"]].merge(
        broken[["example", "norm", "attack", "strength", "loss"]], on=["example", "norm"])
    closed = pairs["method"].isin(CLOSED_BALL)  # IBP, CROWN, complete: the closed ball at the radius; Lipschitz the open one
    bad = pairs[(closed & (pairs["radius"] >= pairs["strength"]))
                | (~closed & (pairs["radius"] > pairs["strength"] * (1 + SOUNDNESS_TOLERANCE)))]
    return bad[columns].reset_index(drop=True)
