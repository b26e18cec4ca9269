"""Training overhead of Jacobian regularization against plain SGD, timed interleaved.

One model, one batch, one process: after a warm-up, each pair times one step of every
case back to back (plain first), so machine noise hits all cases alike. We report the
median seconds per step and the median of the per-pair ratios to the plain step.
A step is forward, loss, backward (weights only) and an SGD update, as in ``train/loop.py``.

Cases: plain SGD; jrbench's Jacobian penalty with ``n_proj`` = 1, 3, ... or -1 (exact) and
with ``jr_subsample`` K; and ``reference-exact``: a straightforward per-row autograd
implementation of the exact penalty (one ``autograd.grad`` of each logit row's sum, as the
authors' code does for n = -1), the reference point for the exact mode. Optionally the other
ways to buy robustness: ``lipschitz`` (the weights projected after each SGD step,
:mod:`jrbench.penalty.lipschitz_constraint`; its power-iteration vectors kept per model across steps,
the certified projection of each epoch's end not timed), ``noise`` (Gaussian augmentation),
``lipschitz-margin`` (the margin loss of a 1-Lipschitz model, :func:`jrbench.penalty.regularizers.margin_loss`),
and certified training, ``ibp`` and ``crown-ibp`` (:mod:`jrbench.penalty.certified_training`), each
at a step after the warm-up, at the full radius with the final kappa, CROWN-IBP with its backward
pass (beta 1, the cost of its ramp; after the ramp it costs what ``ibp`` costs).

Memory per case (``peak_mb``, ``saved_mb``, ``cuda_peak_mb``) is measured by
:mod:`jrbench.cost.memory` on the same step; budgets on the summary are checked by
:mod:`jrbench.cost.budgets`.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F

from ..config import RegConfig
from ..errors import UserError
from ..penalty.lipschitz_constraint import LipschitzConstraint, refuse_unsupported
from ..models.architectures import Classifier
from .memory import memory_per_case
from .overhead_config import OverheadConfig
from ..penalty.certified_training import CertifiedTraining, bound_name
from ..penalty.regularizers import BoundTerm, check_model, step_loss


@dataclass(frozen=True)
class OverheadCase:
    """One way to train a step. With ``reg.jr_every`` k a timing covers k steps (the penalty
    on the first only) and counts as their mean, the cost per step over a cycle."""

    name: str
    reg: RegConfig
    reference: bool = False  # time reference_exact_loss instead of jrbench's step_loss


def case_name(reg: RegConfig) -> str:
    """The overhead case that times a training step of ``reg``: 'plain', 'jacobian-n1',
    'jacobian-exact', 'jacobian-n1-sub16', 'jacobian-n1-every4', 'jacobian-jvp-n1', ... (the
    knobs in that order when several are set); 'lipschitz' and 'noise' joined with '+'
    ('jacobian-n1+noise') when they are in ``reg`` too, as are 'lipschitz-margin', 'gloro', 'ibp' and
    'crown-ibp'."""
    others = [n for n in ("lipschitz", "noise", "lipschitz-margin", "gloro", "ibp", "crown-ibp") if n in reg.names]
    if "jacobian" not in reg.names or reg.lambda_jr == 0:
        return "+".join(others) or "plain"
    name = "jacobian-" + ("jvp-" if reg.jr_estimator == "jvp" else "")
    name += "exact" if reg.n_proj == -1 else f"n{reg.n_proj}"
    if reg.jr_subsample is not None:
        name += f"-sub{reg.jr_subsample}"
    if reg.jr_every != 1:
        name += f"-every{reg.jr_every}"
    return "+".join([name, *others])


def default_cases(n_projs: tuple[int, ...] = (1, 3, -1), subsamples: tuple[int, ...] = (16, 32),
                  reference: bool = True, everys: tuple[int, ...] = (), jvp: bool = False,
                  lipschitz: bool = False, noise: bool = False, lipschitz_margin: bool = False,
                  ibp: bool = False, crown_ibp: bool = False, gloro: bool = False,
                  **reg_options) -> list[OverheadCase]:
    """plain, then n = ``n_projs`` (-1: exact), n=1 on ``subsamples`` rows, n=1 every k-th step
    for k in ``everys``, the forward-mode estimator n=1 (``jvp``), ``--reg lipschitz``
    (``lipschitz``), ``--reg noise`` (``noise``), ``--reg lipschitz-margin`` (``lipschitz_margin``),
    ``--reg gloro`` (``gloro``), ``--reg ibp`` (``ibp``) and ``--reg crown-ibp`` (``crown_ibp``) at their default settings, and
    the per-row reference. ``reg_options`` (e.g. ``jr_backend="autograd"``) go into every Jacobian case."""
    def jr(**kw) -> RegConfig:
        return RegConfig(["jacobian"], **{**kw, **reg_options})

    cases = [OverheadCase("plain", RegConfig(["none"]))]
    for n in n_projs:
        label = "exact" if n == -1 else f"n{n}"
        cases.append(OverheadCase(f"jacobian-{label}", jr(n_proj=n)))
    for k in subsamples:
        cases.append(OverheadCase(f"jacobian-n1-sub{k}", jr(n_proj=1, jr_subsample=k)))
    for k in everys:
        cases.append(OverheadCase(f"jacobian-n1-every{k}", jr(n_proj=1, jr_every=k)))
    if jvp:
        cases.append(OverheadCase("jacobian-jvp-n1", jr(n_proj=1, jr_estimator="jvp")))
    if lipschitz:
        cases.append(OverheadCase("lipschitz", RegConfig(["lipschitz"])))
    if noise:
        cases.append(OverheadCase("noise", RegConfig(["noise"])))
    if lipschitz_margin:
        cases.append(OverheadCase("lipschitz-margin", RegConfig(["lipschitz-margin"])))
    if gloro:
        cases.append(OverheadCase("gloro", RegConfig(["gloro"])))
    if ibp:
        cases.append(OverheadCase("ibp", RegConfig(["ibp"])))
    if crown_ibp:
        cases.append(OverheadCase("crown-ibp", RegConfig(["crown-ibp"])))
    if reference:
        cases.append(OverheadCase("reference-exact", RegConfig(["jacobian"], n_proj=-1), reference=True))
    return cases


def reference_exact_loss(model: Classifier, x: torch.Tensor, y: torch.Tensor, lambda_jr: float) -> torch.Tensor:
    """CE + lambda * 1/2 mean ||J_z||_F^2, straightforwardly: one autograd.grad per logit row."""
    z = model.normalize(x).detach().requires_grad_(True)
    logits = model.net(z)
    frob_sq = torch.zeros((), device=x.device, dtype=logits.dtype)
    for c in range(logits.shape[1]):
        (g,) = torch.autograd.grad(logits[:, c].sum(), z, create_graph=True)
        frob_sq = frob_sq + g.pow(2).sum()
    return F.cross_entropy(logits, y) + lambda_jr * 0.5 * frob_sq / x.shape[0]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _constraint(model: Classifier, bound: float) -> LipschitzConstraint:
    """The model's constraint to ``bound``, kept on the model (a plain attribute, gone with it) so
    that its power-iteration vectors persist across timed steps, as in training."""
    per_model = model.__dict__.setdefault("_overhead_lipschitz", {})
    if bound not in per_model:
        per_model[bound] = LipschitzConstraint(model, bound)
    return per_model[bound]


def _bound(model: Classifier, reg: RegConfig) -> BoundTerm | None:
    """``ibp`` / ``crown-ibp``: the model's certified-training state (its layer chain, checked once and
    kept on the model like :func:`_constraint`) at the schedule's steady step; else None."""
    if bound_name(reg) is None:
        return None
    per_model = model.__dict__.setdefault("_overhead_bound", {})
    key = (tuple(reg.names), reg.ibp_eps, reg.ibp_kappa)
    if key not in per_model:
        training = CertifiedTraining(model, reg)
        per_model[key] = BoundTerm(training, training.steady())
    return per_model[key]


def _step(model: Classifier, opt, params, x, y, case: OverheadCase) -> None:
    """One training step of ``case`` (``jr_every`` k: a cycle of k steps, the penalty on the first;
    ``lipschitz``: the projection after the SGD update)."""
    project = _constraint(model, case.reg.lipschitz_bound).project if "lipschitz" in case.reg.names else None
    bound = _bound(model, case.reg)
    for step in range(getattr(case.reg, "jr_every", 1)):
        opt.zero_grad(set_to_none=True)
        if case.reference:
            loss = reference_exact_loss(model, x, y, case.reg.lambda_jr)
        else:
            loss = step_loss(model, x, y, case.reg, step, bound).total
        loss.backward(inputs=params)
        opt.step()
        if project is not None:
            project()


def steps_per_timing(case: OverheadCase) -> int:
    return getattr(case.reg, "jr_every", 1)


def time_steps(model: Classifier, x: torch.Tensor, y: torch.Tensor, cases: list[OverheadCase],
               pairs: int = 20, warmup: int = 3, lr: float = 1e-3, on_progress=None,
               same_span: bool | None = None) -> pd.DataFrame:
    """Per-pair step times: one row per (pair, case) with ``seconds`` and ``ratio`` to plain.

    ``x`` (B, C, H, W) pixels and ``y`` (B,) labels on the model's device. The first case is
    the baseline and must be plain SGD. ``on_progress(done, total, label)`` is called after each pair.

    Each timing runs one cycle of the case (``jr_every`` k: k steps) between synchronizations.
    With ``same_span`` (default: on CUDA) every case instead runs the same number of steps, the
    least common multiple of the cases' k, per timing: a CUDA synchronize costs a launch-bound
    step a share of its time that a training loop, which never waits, does not pay, and timing
    k steps against one would charge plain SGD that cost k times as often.
    """
    if not cases or cases[0].reg.names != ["none"]:
        raise UserError("the first overhead case must be plain SGD (the baseline).")
    if pairs < 1 or warmup < 0:
        raise UserError(f"--pairs must be at least 1 and --warmup not negative (got {pairs}, {warmup}).")
    device = x.device
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    for case in cases:  # a constraint's set-up (certified bounds, warm-up iterations) is not a step
        if "lipschitz" in case.reg.names:
            _constraint(model, case.reg.lipschitz_bound)
        _bound(model, case.reg)
    for _ in range(warmup):
        for case in cases:
            _step(model, opt, params, x, y, case)
    if same_span is None:
        same_span = device.type == "cuda"
    span = math.lcm(*(steps_per_timing(case) for case in cases))
    rows = []
    for pair in range(pairs):
        baseline = None
        for case in cases:
            cycles = span // steps_per_timing(case) if same_span else 1
            _sync(device)
            start = time.perf_counter()
            for _ in range(cycles):
                _step(model, opt, params, x, y, case)
            _sync(device)
            seconds = (time.perf_counter() - start) / (cycles * steps_per_timing(case))
            baseline = seconds if baseline is None else baseline
            rows.append({"pair": pair, "case": case.name, "seconds": seconds, "ratio": seconds / baseline,
                         "steps_timed": cycles * steps_per_timing(case)})
        if on_progress is not None:
            on_progress(pair + 1, pairs, f"pair {pair + 1}/{pairs}")
    return pd.DataFrame(rows)


def summarize(times: pd.DataFrame, memory: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per case: median seconds per step, median per-pair ratio and its spread."""
    order = list(dict.fromkeys(times["case"]))
    grouped = times.groupby("case")
    out = pd.DataFrame({
        "case": order,
        "median_seconds": [statistics.median(grouped.get_group(c)["seconds"]) for c in order],
        "ratio_median": [statistics.median(grouped.get_group(c)["ratio"]) for c in order],
        "ratio_q25": [grouped.get_group(c)["ratio"].quantile(0.25) for c in order],
        "ratio_q75": [grouped.get_group(c)["ratio"].quantile(0.75) for c in order],
        "pairs": [len(grouped.get_group(c)) for c in order],
    })
    if "steps_timed" in times:  # training steps between two clock reads (and CUDA synchronizes)
        out["steps_timed"] = [int(grouped.get_group(c)["steps_timed"].iloc[0]) for c in order]
    if memory is not None:
        out = out.merge(memory, on="case", how="left")
    return out


# ----------------------------------------------------------------------------- whole runs
def cases_of(cfg: OverheadConfig) -> list[OverheadCase]:
    return default_cases(cfg.n_projs, cfg.subsamples, cfg.reference, cfg.everys, cfg.jvp,
                         cfg.lipschitz, cfg.noise, cfg.lipschitz_margin, cfg.ibp, cfg.crown_ibp, cfg.gloro,
                         jr_backend=cfg.jr_backend)


def run_overhead(cfg: OverheadConfig, on_progress=None) -> pd.DataFrame:
    """Time every case on one real training batch; one summary row per case with provenance.
    ``on_progress(done, total, label)`` is called after each timing pair."""
    from ..config import DataConfig, RunConfig
    from ..training.validation import validate
    from ..data.datasets import load_data, to_pixels
    from ..training.envinfo import cpu_model, device_name, package_versions
    from ..models.architectures import build_model
    from ..device import resolve_device

    probe = RunConfig()
    probe.data.dataset, probe.model.name = cfg.dataset, cfg.model
    probe.train.batch_size = cfg.batch_size
    validate(probe)
    for n in cfg.n_projs:
        validate(RunConfig(reg=RegConfig(["jacobian"], n_proj=n)))
    for k in cfg.subsamples:
        validate(RunConfig(reg=RegConfig(["jacobian"], jr_subsample=k)))
    for k in cfg.everys:
        validate(RunConfig(reg=RegConfig(["jacobian"], jr_every=k)))
    validate(RunConfig(reg=RegConfig(["jacobian"], jr_backend=cfg.jr_backend)))
    device = resolve_device(cfg.device)
    if cfg.random_batch:  # step times do not depend on the pixel values of these nets
        from ..data.datasets import dataset_info

        info = dataset_info(DataConfig(cfg.dataset, cfg.data_dir))  # folder / npz: described from the data
        g = torch.Generator().manual_seed(cfg.seed)
        x = torch.rand((cfg.batch_size, *info.input_shape), generator=g).to(device)
        y = torch.randint(0, info.num_classes, (cfg.batch_size,), generator=g).to(device)
    else:
        data = load_data(DataConfig(cfg.dataset, cfg.data_dir, train_subset=cfg.batch_size))
        info = data.info
        x = to_pixels(data.train.images[:cfg.batch_size], device)
        y = data.train.labels[:cfg.batch_size].to(device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, info.input_shape, info.num_classes, info.mean, info.std).to(device)
    if cfg.lipschitz:
        refuse_unsupported(model)
    if cfg.lipschitz_margin:
        check_model(model, RegConfig(["lipschitz-margin"]))
    if cfg.gloro:
        check_model(model, RegConfig(["gloro"]))
    cases = cases_of(cfg)
    summary = summarize(time_steps(model, x, y, cases, cfg.pairs, cfg.warmup, on_progress=on_progress),
                        memory_per_case(model, x, y, cases, _step))
    summary["ratio_to_reference"] = float("nan")
    if cfg.reference and -1 in cfg.n_projs:
        ref = summary.loc[summary["case"] == "reference-exact", "median_seconds"].iloc[0]
        summary.loc[summary["case"] == "jacobian-exact", "ratio_to_reference"] = (
            summary.loc[summary["case"] == "jacobian-exact", "median_seconds"] / ref)
    versions = package_versions()
    summary = summary.assign(dataset=cfg.dataset, batch="random" if cfg.random_batch else "data",
                             model=cfg.model, batch_size=cfg.batch_size,
                             device=str(device), device_name=device_name(device), cpu=cpu_model(),
                             jr_backend=cfg.jr_backend, threads=torch.get_num_threads(),
                             torch=versions["torch"], jrbench=versions["jrbench"])
    return summary
