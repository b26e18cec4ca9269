"""The overhead regression gate: this checkout against a baseline commit, interleaved in one process.

A ratio such as (Jacobian-regularized step) / (plain step) depends on the CPU's kernels (the
same code measured far apart on two x86 CPUs: docs/commands/overhead.md), so an absolute budget
tuned on one machine is no regression test. Like airspeed velocity's
``asv continuous``, the gate measures the code under test (the *candidate*) and a *baseline*
commit on the same machine, in the same job, interleaved step by step:

- the baseline's ``jrbench`` package is taken from git (``git archive``) into a temporary
  folder and imported beside this one under another name, so both run in this process;
- each round times one step of every case (plain first) for both, in alternating order
  (candidate first on even rounds, baseline first on odd ones), after warm-up rounds;
- per round and case, relative = (case / plain of the candidate) / (case / plain of the
  baseline); a value of 1.10 means the candidate's overhead ratio is 10% worse;
- rounds go on, in blocks, until the 95% interval of the median relative of every case
  (distribution-free, order statistics: ``scipy.stats.quantile_test``) is narrower than
  ``halfwidth`` on each side, or the time cap is reached;
- a case fails when the whole interval lies above 1 + ``tolerance``: worse than the baseline
  by more than the tolerance, beyond the measured noise.

Absolute bounds (``[[case]]`` tables, loose enough to hold on any x86 CPU) are checked on the
candidate's own ratios as well. The baseline is the commit named in the spec, or ``auto``:
the parent of the newest commit that changed the penalty's code (``penalty_paths``), i.e. the
penalty as it was before its latest change. Spec: ``benchmarks/overhead_gate.toml``.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Callable

import pandas as pd
import torch

from ..errors import UserError
from .budgets import Budget, parse_budgets
from ..specfile import read_spec

GATE_FIELDS = {"baseline", "penalty_paths", "cases", "tolerance", "halfwidth", "min_rounds", "max_rounds",
               "block", "warmup", "max_seconds", "model", "dataset", "batch_size", "case"}


@dataclass
class GateSpec:
    """What the gate times and how it decides. Ratios are per-round medians, unitless."""

    baseline: str = "auto"          # a commit, or auto: parent of the newest commit touching penalty_paths
    penalty_paths: list[str] = field(default_factory=lambda: ["jrbench/penalty/regularizers.py", "jrbench/penalty/jacobian.py",
                                                               "jrbench/penalty/vjp_tape.py"])
    cases: list[str] = field(default_factory=lambda: ["jacobian-n1", "jacobian-n1-sub16", "jacobian-exact"])
    tolerance: float = 0.10         # relative slowdown of an overhead ratio allowed beyond the noise
    halfwidth: float = 0.03         # stop when each 95% interval of the median is this narrow (each side)
    min_rounds: int = 20
    max_rounds: int = 400
    block: int = 10                 # rounds between checks of the intervals
    warmup: int = 3
    max_seconds: float = 240.0      # time cap of the timed rounds
    model: str = "lenet"
    dataset: str = "synth-digits"
    batch_size: int = 64
    bounds: list[Budget] = field(default_factory=list)  # loose absolute bounds on the candidate


def load_gate_spec(path: str | Path) -> GateSpec:
    """Read a gate spec (TOML); a bad field is named with its own line."""
    f = read_spec(path, "gate spec")
    unknown = [k for k in f.doc if k not in GATE_FIELDS]
    if unknown:
        raise f.error(f"unknown field(s) {sorted(unknown)}; known: {sorted(GATE_FIELDS - {'case'})}.", (), unknown[0])
    spec = GateSpec()
    for key, value in f.doc.items():
        if key == "case":
            continue
        default = getattr(spec, key)
        ok = (isinstance(value, list) and all(isinstance(v, str) for v in value) if isinstance(default, list)
              else isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
              if isinstance(default, (int, float)) else isinstance(value, str))
        if isinstance(default, int) and not isinstance(default, bool) and not isinstance(value, int):
            ok = False
        if not ok:
            raise f.error(f"field '{key}' must be like {default!r}, got {value!r}.", (), key)
        setattr(spec, key, value)
    if "case" in f.doc:
        spec.bounds = parse_budgets(f)
    return spec


# ----------------------------------------------------------------------------- the baseline
def repo_root() -> Path:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=here, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        raise UserError("the overhead gate compares against a baseline commit and needs jrbench's git "
                        f"checkout; {here} is not in one.") from e
    return Path(out)


def _git(root: Path, *args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()
    except subprocess.CalledProcessError as e:
        raise UserError(f"git {' '.join(args)} failed: {e.stderr.strip() or e}") from e


def _pure_moves(root: Path, parent: str, commit: str, paths: list[str]) -> dict[str, str] | None:
    """{new path: old path} when ``commit`` only moved the files of ``paths`` (renames with
    identical content, git's R100), else None: a move is not a change of the penalty's code."""
    out = _git(root, "diff", "-M", "--name-status", parent, commit)
    moves, touched = {}, False
    for line in out.splitlines():
        status, *names = line.split("\t")
        if names[-1] not in paths and names[0] not in paths:
            continue
        touched = True
        if status != "R100":
            return None
        moves[names[1]] = names[0]
    return moves if touched else None


def resolve_baseline(spec: GateSpec, root: Path) -> tuple[str, str]:
    """(commit sha, how it was chosen). ``auto``: the parent of the newest commit that changed
    ``penalty_paths``: the penalty as it was before its latest change. The paths follow the files
    back through commits that only moved them (the flat layout before the stage folders)."""
    if spec.baseline != "auto":
        sha = _git(root, "rev-parse", "--verify", "--quiet", f"{spec.baseline}^{{commit}}")
        return sha, f"named in the spec ({spec.baseline})"
    paths, rev = list(spec.penalty_paths), "HEAD"
    while True:
        last = _git(root, "log", "-1", "--format=%H", rev, "--", *paths)
        if not last:
            raise UserError(f"no commit changed {', '.join(paths)}: name a baseline commit.")
        try:
            parent = _git(root, "rev-parse", "--verify", "--quiet", f"{last}^")
        except UserError as e:
            raise UserError(f"the parent of {last[:10]} (the newest commit that changed the penalty's code) is "
                            "not in this clone (a shallow clone?): fetch more history or name a baseline "
                            "commit in the gate spec.") from e
        moves = _pure_moves(root, parent, last, paths)
        if moves is None:
            return parent, f"auto: parent of {last[:10]}, the newest commit that changed the penalty's code"
        paths, rev = [moves.get(p, p) for p in paths], parent


# Where each module the gate uses lives: the stage folders first, then the flat layout that
# baselines before the move (commit "stage folders") have.
STAGE_MODULES = {"config": ("config",), "models": ("models.architectures", "models"),
                 "overhead": ("cost.overhead", "overhead")}


def stage_module(package: ModuleType, role: str) -> ModuleType:
    """The ``role`` module ("config", "models", "overhead") of a jrbench package of either layout."""
    for name in STAGE_MODULES[role]:
        full = f"{package.__name__}.{name}"
        try:
            return importlib.import_module(full)
        except ModuleNotFoundError as e:
            if e.name is None or not full.startswith(e.name):
                raise  # a missing dependency inside the module, not a missing module
    raise ModuleNotFoundError(f"{package.__name__} has no {role} module (tried {STAGE_MODULES[role]})")


def load_baseline_package(root: Path, sha: str, folder: Path) -> ModuleType:
    """``jrbench/`` of commit ``sha`` extracted into ``folder`` and imported as ``jrbench_base_<sha>``."""
    archive = subprocess.run(["git", "archive", "--format=tar", sha, "jrbench"], cwd=root, capture_output=True,
                             timeout=60)
    if archive.returncode != 0:
        raise UserError(f"cannot read jrbench/ at {sha[:10]}: {archive.stderr.decode().strip()}")
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")
    name = f"jrbench_base_{sha[:10]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, folder / "jrbench" / "__init__.py",
                                                  submodule_search_locations=[str(folder / "jrbench")])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        for role in STAGE_MODULES:
            stage_module(module, role)
    except Exception as e:  # noqa: BLE001 - any failure of old code is reported, not raised raw
        sys.modules.pop(name, None)
        raise UserError(f"the baseline {sha[:10]} does not import here: {type(e).__name__}: {e}") from e
    return module


# ----------------------------------------------------------------------------- timing
@dataclass
class Arm:
    """One side of the comparison: a jrbench package (this one or a baseline's) and options
    put into every Jacobian case (e.g. ``{"jr_backend": "autograd"}``)."""

    label: str
    package: ModuleType
    reg_options: dict = field(default_factory=dict)


def _arm_cases(arm: Arm, names: list[str]) -> list:
    """plain + the named cases, built with the arm's own code."""
    ov = stage_module(arm.package, "overhead")
    cfg_mod = stage_module(arm.package, "config")
    fields = {f.name for f in dataclasses.fields(cfg_mod.RegConfig)}
    unknown = set(arm.reg_options) - fields
    if unknown:
        raise UserError(f"the {arm.label} code has no option {sorted(unknown)}.")
    every = ov.default_cases((1, 3, -1), (16, 32), True)
    by_name = {c.name: c for c in every}
    for name in names:
        if name not in by_name and name.startswith("jacobian-n1-sub"):
            by_name[name] = ov.default_cases((), (int(name.removeprefix("jacobian-n1-sub")),), False)[1]
    missing = [n for n in names if n not in by_name]
    if missing:
        raise UserError(f"the {arm.label} code has no overhead case {missing}; it has {sorted(by_name)}.")
    cases = [by_name["plain"]] + [by_name[n] for n in names]
    return [dataclasses.replace(c, reg=dataclasses.replace(c.reg, **arm.reg_options))
            if c.reg.names != ["none"] and not c.reference else c for c in cases]


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(median, low, high): the median and its distribution-free interval (:func:`jrbench.stats.median_ci`,
    the report's; NaN bounds below 6 values at 95%)."""
    from ..stats import median_ci

    low, high = median_ci(values, confidence)
    return float(pd.Series(values).median()), low, high


@dataclass
class GateResult:
    table: pd.DataFrame     # one row per case: medians, interval, verdict
    rounds: pd.DataFrame    # one row per (round, arm, case): seconds, ratio
    failures: list[str]
    notes: list[str]
    seconds: float


def compare_arms(candidate: Arm, baseline: Arm, x: torch.Tensor, y: torch.Tensor, spec: GateSpec,
                 info, on_round: Callable[[int, float], None] | None = None) -> GateResult:
    """Time both arms' cases interleaved until the intervals are narrow or the cap is hit; decide.

    ``x`` (B, C, H, W) pixels and ``y`` (B,) labels on the device to time on; ``info`` the data
    set's DatasetInfo (input shape, classes, mean and std of the model's normalization)."""
    from .overhead import _sync

    arms = []
    for arm in (candidate, baseline):
        models = stage_module(arm.package, "models")
        ov = stage_module(arm.package, "overhead")
        torch.manual_seed(0)
        model = models.build_model(spec.model, info.input_shape, info.num_classes, info.mean,
                                   info.std).to(x.device)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
        arms.append((arm, ov, model, params, opt, _arm_cases(arm, spec.cases)))

    def run_round(r: int, record: bool) -> None:
        order = arms if r % 2 == 0 else arms[::-1]
        for arm, ov, model, params, opt, cases in order:
            plain = None
            for case in cases:
                _sync(x.device)
                start = time.perf_counter()
                ov._step(model, opt, params, x, y, case)
                _sync(x.device)
                seconds = (time.perf_counter() - start) / getattr(case.reg, "jr_every", 1)
                plain = seconds if plain is None else plain
                if record:
                    rows.append({"round": r, "arm": arm.label, "case": case.name, "seconds": seconds,
                                 "ratio": seconds / plain})

    rows: list[dict] = []
    for r in range(spec.warmup):
        run_round(r, record=False)
    start = time.perf_counter()
    r = 0
    while True:
        run_round(r, record=True)
        r += 1
        elapsed = time.perf_counter() - start
        if on_round is not None:
            on_round(r, elapsed)
        if r >= spec.max_rounds or elapsed >= spec.max_seconds:
            break
        if r >= spec.min_rounds and r % spec.block == 0 and _narrow(_summary(rows, candidate, baseline, spec), spec):
            break
    table = _summary(rows, candidate, baseline, spec)
    failures, notes = _decide(table, spec, narrow=_narrow(table, spec))
    return GateResult(table, pd.DataFrame(rows), failures, notes, time.perf_counter() - start)


def _summary(rows: list[dict], candidate: Arm, baseline: Arm, spec: GateSpec) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    wide = df.pivot_table(index=["round", "case"], columns="arm", values="ratio").reset_index()
    out = []
    for case in spec.cases:
        part = wide[wide["case"] == case]
        rel = (part[candidate.label] / part[baseline.label]).tolist()
        med, low, high = median_interval(rel)
        out.append({"case": case, "ratio_candidate": float(part[candidate.label].median()),
                    "ratio_baseline": float(part[baseline.label].median()), "relative": med,
                    "ci_low": low, "ci_high": high, "rounds": len(rel)})
    return pd.DataFrame(out)


def _narrow(table: pd.DataFrame, spec: GateSpec) -> bool:
    half = (table["ci_high"] - table["ci_low"]) / 2 / table["relative"]
    return bool(half.notna().all() and (half <= spec.halfwidth).all())


def _decide(table: pd.DataFrame, spec: GateSpec, narrow: bool) -> tuple[list[str], list[str]]:
    failures, notes, verdicts = [], [], []
    for r in table.itertuples():
        interval = f"{r.relative:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]"
        if r.ci_low > 1 + spec.tolerance:
            verdicts.append("slower")
            failures.append(f"{r.case}: overhead ratio {r.ratio_candidate:.2f}x plain against the baseline's "
                            f"{r.ratio_baseline:.2f}x, relative {interval}: worse by more than the "
                            f"tolerance of {spec.tolerance:.0%} beyond the noise")
        elif r.ci_high < 1 - spec.tolerance:
            verdicts.append("faster")
            notes.append(f"{r.case}: faster than the baseline, relative {interval}")
        elif r.relative > 1 + spec.tolerance:
            verdicts.append("inconclusive")
            notes.append(f"{r.case}: relative {interval} is above 1 + tolerance but within the noise")
        else:
            verdicts.append("same")
    table["verdict"] = verdicts
    if not narrow:
        notes.append(f"the time cap ({spec.max_seconds:.0f} s) or round cap came before every interval was "
                     f"within +-{spec.halfwidth:.0%}")
    return failures, notes


def check_bounds(rounds: pd.DataFrame, label: str, bounds: list[Budget]) -> list[str]:
    """Loose absolute bounds on one arm's median ratios (``against`` plain or another case)."""
    mine = rounds[rounds["arm"] == label]
    medians = mine.groupby("case")["seconds"].median()
    ratios = mine.groupby("case")["ratio"].median()
    failures = []
    for b in bounds:
        if b.case not in medians or b.against not in medians:
            raise UserError(f"the bound on line {b.line} names a case the gate does not time "
                            f"(it times: {', '.join(sorted(medians.index))}).")
        ratio = ratios[b.case] if b.against == "plain" else medians[b.case] / medians[b.against]
        if ratio > b.max_ratio:
            failures.append(f"{b.case}: {ratio:.2f}x {b.against}, over its loose bound of {b.max_ratio:.2f}x")
    return failures


def run_gate(spec: GateSpec, *, baseline: str | None = None, reg_options: dict | None = None,
             device: str = "cpu", on_round: Callable[[int, float], None] | None = None) -> GateResult:
    """The gate as CI runs it: this checkout (with ``reg_options`` in every Jacobian case) against
    the baseline commit; loose bounds on this checkout. ``baseline`` overrides the spec's."""
    import jrbench

    from ..config import DataConfig
    from ..data.datasets import load_data, to_pixels
    from ..training.envinfo import cpu_model, device_name, git_commit
    from ..device import resolve_device

    spec = dataclasses.replace(spec, baseline=spec.baseline if baseline is None else baseline, cases=list(
        dict.fromkeys(spec.cases + [b.case for b in spec.bounds] + [b.against for b in spec.bounds
                                                                    if b.against != "plain"])))
    dev = resolve_device(device)
    try:  # a checkout without the history (a shallow clone, an unpacked archive) still gets the bounds
        root = repo_root()
        sha, why = resolve_baseline(spec, root)
        unavailable = None
    except UserError as e:
        if spec.baseline != "auto":
            raise
        root, sha, why, unavailable = None, "none", f"unavailable ({e})", str(e)
    data = load_data(DataConfig(spec.dataset, None, train_subset=spec.batch_size))
    x = to_pixels(data.train.images[:spec.batch_size], dev)
    y = data.train.labels[:spec.batch_size].to(dev)
    folder = Path(tempfile.mkdtemp(prefix="jrbench-gate-"))
    try:
        base_pkg = jrbench if unavailable else load_baseline_package(root, sha, folder)
        result = compare_arms(Arm("candidate", jrbench, dict(reg_options or {})), Arm("baseline", base_pkg),
                              x, y, spec, data.info, on_round)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if unavailable:
        result.notes.insert(0, f"no baseline commit ({unavailable}): this checkout was timed against itself, "
                               "so only the loose bounds were checked")
    result.failures += check_bounds(result.rounds, "candidate", spec.bounds)
    result.table = result.table.assign(
        baseline_commit=sha, baseline_rule=why, candidate_commit=git_commit(), tolerance=spec.tolerance,
        options=",".join(f"{k}={v}" for k, v in (reg_options or {}).items()), model=spec.model,
        batch_size=spec.batch_size, device=str(dev), device_name=device_name(dev), cpu=cpu_model(),
        threads=torch.get_num_threads(), torch=torch.__version__)
    return result
