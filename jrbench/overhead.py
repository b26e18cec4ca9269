"""Training overhead of Jacobian regularization against plain SGD, timed interleaved.

One model, one batch, one process: after a warm-up, each pair times one step of every
case back to back (plain first), so machine noise hits all cases alike. We report the
median seconds per step and the median of the per-pair ratios to the plain step.
A step is forward, loss, backward (weights only) and an SGD update, as in ``training.py``.

Cases: plain SGD; jrbench's Jacobian penalty with ``n_proj`` = 1, 3, ... or -1 (exact) and
with ``jr_subsample`` K; and ``reference-exact``: a straightforward per-row autograd
implementation of the exact penalty (one ``autograd.grad`` of each logit row's sum, as the
authors' code does for n = -1), the reference point for the exact mode.

Memory: ``peak_mb`` is the peak of the tensor memory live during one step (parameters,
momentum, the batch, gradients, activations and temporaries), counted storage by storage
(:class:`_LiveTensorBytes`, on any device); ``saved_mb`` is the size of the tensors autograd saves for the backward
(the graph's activations); on CUDA ``cuda_peak_mb`` is the allocator's peak for the case.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from .config import RegConfig
from .errors import UserError
from .models import Classifier
from .regularizers import step_loss


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
    knobs in that order when several are set)."""
    if "jacobian" not in reg.names or reg.lambda_jr == 0:
        return "plain"
    name = "jacobian-" + ("jvp-" if reg.jr_estimator == "jvp" else "")
    name += "exact" if reg.n_proj == -1 else f"n{reg.n_proj}"
    if reg.jr_subsample is not None:
        name += f"-sub{reg.jr_subsample}"
    if reg.jr_every != 1:
        name += f"-every{reg.jr_every}"
    return name


def default_cases(n_projs: tuple[int, ...] = (1, 3, -1), subsamples: tuple[int, ...] = (16, 32),
                  reference: bool = True, everys: tuple[int, ...] = (), jvp: bool = False,
                  **reg_options) -> list[OverheadCase]:
    """plain, then n = ``n_projs`` (-1: exact), n=1 on ``subsamples`` rows, n=1 every k-th step
    for k in ``everys``, the forward-mode estimator n=1 (``jvp``), and the per-row reference.
    ``reg_options`` (e.g. ``jr_backend="autograd"``) go into every Jacobian case."""
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


def _step(model: Classifier, opt, params, x, y, case: OverheadCase) -> None:
    """One training step of ``case`` (``jr_every`` k: a cycle of k steps, the penalty on the first)."""
    for step in range(getattr(case.reg, "jr_every", 1)):
        opt.zero_grad(set_to_none=True)
        if case.reference:
            loss = reference_exact_loss(model, x, y, case.reg.lambda_jr)
        else:
            loss = step_loss(model, x, y, case.reg, step).total
        loss.backward(inputs=params)
        opt.step()


def steps_per_timing(case: OverheadCase) -> int:
    return getattr(case.reg, "jr_every", 1)


def _saved_mb(model, opt, params, x, y, case: OverheadCase) -> float:
    total = 0

    def pack(t: torch.Tensor):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _step(model, opt, params, x, y, case)
    return total / 2**20


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


class _LiveTensorBytes:
    """Bytes of tensor storage alive on one device type, and their peak, while active.

    A ``TorchDispatchMode`` sees every tensor an op returns (below autograd, so the graph's
    saved tensors, gradients and temporaries all count); each new storage is added once and
    taken off when it is freed. ``known`` tensors (parameters, optimizer state, the batch)
    count from the start.
    """

    def __init__(self, device_type: str, known: list[torch.Tensor]):
        from torch.utils.weak import WeakIdKeyDictionary

        self.device_type = device_type
        self.storages = WeakIdKeyDictionary()
        self.live = self.peak = 0
        for t in known:
            self._add(t)

    def _add(self, t: torch.Tensor) -> None:
        import weakref

        if t.device.type != self.device_type or t.is_meta:
            return
        st = t.untyped_storage()
        if st in self.storages:
            return
        self.storages[st] = st.nbytes()
        self.live += st.nbytes()
        self.peak = max(self.peak, self.live)
        weakref.finalize(st, self._free, st.nbytes())

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def mode(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor):
                        tracker._add(t)
                return out

        return Mode()


def _peak_mb(model, opt, params, x, y, case: OverheadCase) -> float:
    """Peak MB of tensor memory during one training step of ``case`` (parameters included)."""
    _step(model, opt, params, x, y, case)  # optimizer state exists before the measured step
    opt.zero_grad(set_to_none=True)
    state = [v for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
    tracker = _LiveTensorBytes(x.device.type, [*params, *state, x, y])
    with tracker.mode():
        _step(model, opt, params, x, y, case)
    return tracker.peak / 2**20


def memory_per_case(model: Classifier, x: torch.Tensor, y: torch.Tensor, cases: list[OverheadCase]) -> pd.DataFrame:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.0, momentum=0.9)
    rows = []
    for case in cases:
        row = {"case": case.name, "peak_mb": _peak_mb(model, opt, params, x, y, case),
               "saved_mb": _saved_mb(model, opt, params, x, y, case)}
        if x.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(x.device)
            _step(model, opt, params, x, y, case)
            row["cuda_peak_mb"] = torch.cuda.max_memory_allocated(x.device) / 2**20
        rows.append(row)
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
@dataclass
class OverheadConfig:
    dataset: str = "synth-digits"
    model: str = "lenet"
    batch_size: int = 64
    n_projs: tuple[int, ...] = (1, 3, -1)
    subsamples: tuple[int, ...] = (16, 32)
    everys: tuple[int, ...] = ()     # n=1 on every k-th step (--jr-every)
    jvp: bool = False                # also the forward-mode estimator (--jr-estimator jvp)
    jr_backend: str = "auto"         # the penalty's path in every Jacobian case
    random_batch: bool = False       # uniform pixels and labels of the data set's shape (no data files)
    reference: bool = True
    pairs: int = 20
    warmup: int = 3
    seed: int = 0
    device: str = "auto"
    data_dir: str | None = None


def cases_of(cfg: OverheadConfig) -> list[OverheadCase]:
    return default_cases(cfg.n_projs, cfg.subsamples, cfg.reference, cfg.everys, cfg.jvp,
                         jr_backend=cfg.jr_backend)


def run_overhead(cfg: OverheadConfig, on_progress=None) -> pd.DataFrame:
    """Time every case on one real training batch; one summary row per case with provenance.
    ``on_progress(done, total, label)`` is called after each timing pair."""
    from .config import DataConfig, RunConfig
    from .validation import validate
    from .data import load_data, to_pixels
    from .envinfo import cpu_model, device_name, package_versions
    from .models import build_model
    from .training import resolve_device

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
        from .data import DATASETS

        info = DATASETS.get(cfg.dataset).info
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
    cases = cases_of(cfg)
    summary = summarize(time_steps(model, x, y, cases, cfg.pairs, cfg.warmup, on_progress=on_progress),
                        memory_per_case(model, x, y, cases))
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


# ----------------------------------------------------------------------------- budgets
@dataclass(frozen=True)
class Budget:
    case: str
    max_ratio: float
    against: str  # "plain" or another case, e.g. "reference-exact"
    line: int


def load_budget(path: str | Path) -> list[Budget]:
    """Read a budget file: ``[[case]]`` tables with ``name``, ``max_ratio`` and optional ``against``."""
    import tomllib

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise UserError(f"cannot read the budget file {path}: {e}") from e
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path} is not valid TOML: {e}") from e
    return parse_budgets(doc.get("case"), text, path)


def parse_budgets(entries, text: str, path: Path) -> list[Budget]:
    """``[[case]]`` tables (already parsed) -> budgets; a bad field is named with its line."""
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{path}: expected one or more [[case]] tables with fields name and max_ratio.")
    lines = text.splitlines()
    budgets = []
    for i, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, dict) else None
        line = next((n + 1 for n, s in enumerate(lines) if name and f'"{name}"' in s), 0)
        where = f"{path}, line {line}" if line else f"{path}, [[case]] number {i + 1}"
        if not isinstance(name, str):
            raise UserError(f"{where}: field 'name' must be a case name such as \"jacobian-n1\".")
        ratio = entry.get("max_ratio")
        if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or ratio <= 0:
            raise UserError(f"{where}: field 'max_ratio' of case '{name}' must be a positive number, got {ratio!r}.")
        against = entry.get("against", "plain")
        if not isinstance(against, str):
            raise UserError(f"{where}: field 'against' of case '{name}' must be a case name.")
        unknown = set(entry) - {"name", "max_ratio", "against", "measured", "note"}
        if unknown:
            raise UserError(f"{where}: unknown field(s) {sorted(unknown)} in case '{name}'.")
        budgets.append(Budget(name, float(ratio), against, line))
    return budgets


def check_budget_cases(budgets: list[Budget], cases: list[OverheadCase]) -> None:
    """Fail before any timing when a budget names a case this run will not time."""
    names = {c.name for c in cases} | {"plain"}
    for b in budgets:
        for name in (b.case, b.against):
            if name not in names:
                raise UserError(f"the budget on line {b.line} names case '{name}', which this overhead run "
                                f"does not time (it times: {', '.join(sorted(names))}).")


def check_budget(summary: pd.DataFrame, budgets: list[Budget]) -> list[str]:
    """Messages for every budget exceeded (empty when all hold)."""
    medians = dict(zip(summary["case"], summary["median_seconds"]))
    ratios = dict(zip(summary["case"], summary["ratio_median"]))
    failures = []
    for b in budgets:
        if b.case not in medians or b.against not in medians:
            missing = b.case if b.case not in medians else b.against
            raise UserError(f"the budget names case '{missing}', which this overhead run did not time.")
        ratio = ratios[b.case] if b.against == "plain" else medians[b.case] / medians[b.against]
        if ratio > b.max_ratio:
            failures.append(f"{b.case}: {ratio:.2f}x {b.against}, over its budget of {b.max_ratio:.2f}x")
    return failures
