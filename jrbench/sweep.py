"""Sweeps: a study described as a grid in TOML, run cell by cell, resumable.

A spec (see ``benchmarks/*.toml``)::

    name = "lambda-sweep"                 # runs go to <out>/<name>/<run-id>
    out = "results/sweeps"                # optional
    [base]                                # RunConfig fields shared by every cell
    dataset = "synth-digits"; model = "lenet"; epochs = 4; batch_size = 64; lr = 0.05
    [grid]                                # the product of these lists makes the cells
    regularizers = [["none"], ["jacobian"]]
    lambda_jr = [0.01, 0.05]
    seed = [0, 1]
    [attack]                              # jrbench attack options (omit the table: no attacks)
    n_examples = 500; steps = 20; sigmas = [0.0, 0.2, 0.4]
    [margins]                             # jrbench margins options (omit the table: no margins)
    n_examples = 300; directions = 10
    [resources]                           # optional: what one cell needs (default 1 CPU, 0 GPUs)
    num_cpus = 1; num_gpus = 0            # a cell's torch threads = its whole CPUs, in every engine
    [[block]]                             # optional: recipes; each block's keys override [base]
    name = "paper"; lr = 0.01; batch_size = 100; epochs = 15
    [[block]]                             # and the grid runs once per block
    name = "default"; lr = 0.05; batch_size = 64; epochs = 10
    [[variant]]                           # optional: named settings, crossed with the blocks
    name = "sub16"; regularizers = ["jacobian"]; jr_subsample = 16

Keys of ``[base]`` and ``[grid]`` are the ``jrbench train`` option names with ``_``:
dataset, data_dir, train_subset, test_subset, model, regularizers, lambda_jr, n_proj,
jr_subsample, weight_decay, dropout, lambda_ig, epochs, batch_size, lr, momentum,
schedule, step_epochs, gamma, seed. Cells that differ only in options of regularizers they
do not use (lambda_jr without jacobian) have the same run id and collapse into one. A finished step of a cell (trained, attacked, measured) is skipped, so
re-running a sweep resumes it.

:func:`run_cell` is the work of one cell; :func:`run_sweep` (the local engine) calls it cell
after cell in this process, and ``jrbench.sweep_ray`` (the Ray engine) calls it in one Ray task
per cell. Both set torch's thread count by :func:`cell_threads`, so a cell computes the same
numbers under either engine.
"""
from __future__ import annotations

import itertools
import tomllib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from .config import DataConfig, ModelConfig, RegConfig, RunConfig, TrainConfig
from .errors import UserError
from .validation import validate

FIELDS: dict[str, tuple[str, str]] = {
    "dataset": ("data", "dataset"), "data_dir": ("data", "data_dir"),
    "train_subset": ("data", "train_subset"), "test_subset": ("data", "test_subset"),
    "model": ("model", "name"), "regularizers": ("reg", "names"), "lambda_jr": ("reg", "lambda_jr"),
    "n_proj": ("reg", "n_proj"), "jr_subsample": ("reg", "jr_subsample"),
    "weight_decay": ("reg", "weight_decay"), "dropout": ("reg", "dropout"), "lambda_ig": ("reg", "lambda_ig"),
    "epochs": ("train", "epochs"), "batch_size": ("train", "batch_size"), "lr": ("train", "lr"),
    "momentum": ("train", "momentum"), "schedule": ("train", "schedule"),
    "step_epochs": ("train", "step_epochs"), "gamma": ("train", "gamma"), "seed": ("train", "seed"),
    "jr_backend": ("reg", "jr_backend"), "jr_estimator": ("reg", "jr_estimator"), "jr_every": ("reg", "jr_every"),
}
ATTACK_FIELDS = {"noise", "pgd", "fgsm", "autoattack", "aa_targets", "autoattack_eps_linf",
                 "autoattack_eps_l2", "n_examples", "example_seed", "sigmas", "draws", "norms",
                 "eps_linf", "eps_l2", "steps", "alpha", "restarts", "loss", "batch_size", "seed"}
MARGIN_FIELDS = {"n_examples", "example_seed", "directions", "seed", "batch_size"}
RESOURCE_FIELDS = ("num_cpus", "num_gpus")


@dataclass
class Resources:
    """What one cell needs. ``num_cpus`` (> 0) sets the cell's torch threads in every engine
    (:func:`cell_threads`) and is what the Ray engine asks for; ``num_gpus`` (>= 0, fractions
    share a GPU) is asked of Ray, and a cell granted one trains on it."""
    num_cpus: float = 1
    num_gpus: float = 0


@dataclass
class SweepSpec:
    name: str
    path: Path
    out: Path
    cells: list[RunConfig]
    attack: dict[str, Any] | None = None
    margins: dict[str, Any] | None = None
    description: str = ""
    report_options: dict[str, Any] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)

    @property
    def folder(self) -> Path:
        return self.out / self.name


def _line_of(text: str, key: str) -> str:
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith(key):
            return f"line {n}"
    return "somewhere"


_OPTIONAL_TYPES = {"data_dir": (str,), "train_subset": (int,), "test_subset": (int,), "jr_subsample": (int,)}


def _type_error(key: str, value: Any) -> str | None:
    """Why ``value`` cannot be the training option ``key`` (judged by the default's type), or None."""
    section, attr = FIELDS[key]
    default = getattr(getattr(RunConfig(), section), attr)
    if key == "regularizers":
        ok = isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
        return None if ok else f"must be a regularizer name or a list of names, got {value!r}."
    if default is None:
        expected = _OPTIONAL_TYPES.get(key, (str, int, float))
    elif isinstance(default, bool):
        expected = (bool,)
    elif isinstance(default, int):
        expected = (int,)
    elif isinstance(default, float):
        expected = (int, float)
    else:
        expected = (type(default),)
    if isinstance(value, bool) and bool not in expected or not isinstance(value, expected):
        names = " or ".join(t.__name__ for t in expected)
        return f"must be of type {names}, got {value!r}."
    return None


def _apply(config: RunConfig, key: str, value: Any) -> None:
    section, attr = FIELDS[key]
    if key == "regularizers" and isinstance(value, str):
        value = [value]
    setattr(getattr(config, section), attr, value)


def load_spec(path: str | Path, out: str | Path | None = None) -> SweepSpec:
    """Read, parse and validate a sweep spec file; every error names the line and the field."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise UserError(f"cannot read the sweep spec {path}: {e}") from e
    return parse_spec(text, path, out)


def parse_spec(text: str, path: Path, out: str | Path | None = None) -> SweepSpec:
    """Parse and validate the TOML ``text`` of a spec (``path`` names it in messages)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path} is not valid TOML: {e}") from e

    def bad(key: str, why: str) -> UserError:
        return UserError(f"{path}, {_line_of(text, key)}: field '{key}' {why}")

    name = doc.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        raise bad("name", "must be a non-empty name without '/'.")
    unknown_top = set(doc) - {"name", "description", "out", "base", "grid", "attack", "margins", "report", "block",
                              "variant", "resources"}
    if unknown_top:
        key = sorted(unknown_top)[0]
        raise bad(key, f"is not a sweep field (expected name, description, out, base, grid, block, attack, margins, "
                       f"report, resources).")
    base, grid = doc.get("base", {}), doc.get("grid", {})
    axes = []  # [[block]] (recipes, data sets) x [[variant]] (named settings): each a list of overrides
    for axis in ("block", "variant"):
        tables = doc.get(axis, [{}])
        if not isinstance(tables, list) or not tables or not all(isinstance(b, dict) for b in tables):
            raise bad(f"[[{axis}]]", f"must be one or more [[{axis}]] tables of training options.")
        axes.append([{k: v for k, v in b.items() if k != "name"} for b in tables])
    blocks = [{**b, **v} for b, v in itertools.product(*axes)]
    for section, table in [("base", base), ("grid", grid)] + [("block", b) for b in blocks]:
        if not isinstance(table, dict):
            raise bad(section, "must be a table.")
        for key in table:
            if key not in FIELDS:
                from .registry import did_you_mean

                raise bad(key, f"is not a training option.{did_you_mean(key, list(FIELDS))}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise bad(key, "in [grid] must be a non-empty list of values.")
    for key, value in (list(base.items()) + [(k, v) for k, vs in grid.items() for v in vs]
                       + [item for b in blocks for item in b.items()]):
        why = _type_error(key, value)
        if why:
            raise bad(key, why)
    cells, seen = [], set()
    keys = list(grid)
    for block, combo in itertools.product(blocks, itertools.product(*(grid[k] for k in keys))):
        config = RunConfig(DataConfig(), ModelConfig(), RegConfig(), TrainConfig())
        try:
            for key, value in list(base.items()) + list(block.items()) + list(zip(keys, combo)):
                _apply(config, key, value)
            validate(config)
        except UserError as e:
            culprit = next((k for k in keys + list(base) if f"--{k.replace('_', '-')}" in str(e)), keys[0] if keys else "base")
            raise bad(culprit, f"gives an invalid cell: {e}") from e
        except (TypeError, ValueError) as e:
            raise UserError(f"{path}: a value of the wrong type in [base] or [grid]: {e}") from e
        if config.run_id() not in seen:
            seen.add(config.run_id())
            cells.append(config)
    attack, margins = doc.get("attack"), doc.get("margins")
    for section, table, allowed in (("attack", attack, ATTACK_FIELDS), ("margins", margins, MARGIN_FIELDS)):
        if table is not None:
            if not isinstance(table, dict):
                raise bad(section, "must be a table.")
            for key in table:
                if key not in allowed:
                    raise bad(key, f"is not a {section} option (expected one of {sorted(allowed)}).")
    if attack is not None:
        try:
            attack_config(attack)
        except (UserError, TypeError, ValueError) as e:
            culprit = next((k for k in attack if k.rstrip("s") in str(e)), "attack")
            raise bad(culprit, f"gives invalid attack settings: {e}") from e
    resources = _parse_resources(doc.get("resources", {}), bad)
    out_dir = Path(out) if out is not None else Path(doc.get("out", "results/sweeps"))
    return SweepSpec(name, path, out_dir, cells, attack, margins, str(doc.get("description", "")),
                     _report_options(doc.get("report", {}), bad), resources)


def _parse_resources(table: Any, bad: Callable[[str, str], UserError]) -> Resources:
    """The ``[resources]`` table: num_cpus > 0, num_gpus >= 0, numbers only."""
    if not isinstance(table, dict):
        raise bad("resources", "must be a table.")
    for key, value in table.items():
        if key not in RESOURCE_FIELDS:
            from .registry import did_you_mean

            raise bad(key, f"is not a resource (expected num_cpus or num_gpus).{did_you_mean(key, list(RESOURCE_FIELDS))}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad(key, f"must be a number, got {value!r}.")
    resources = Resources(**table)
    if not resources.num_cpus > 0:
        raise bad("num_cpus", f"must be > 0 (a cell needs a CPU), got {resources.num_cpus!r}.")
    if not resources.num_gpus >= 0:
        raise bad("num_gpus", f"must be >= 0, got {resources.num_gpus!r}.")
    return resources


REPORT_FIELDS = {"sigma": (int, float), "eps_linf": (int, float), "eps_l2": (int, float), "per_run": (bool,),
                 "cells": (bool,), "cell_radius": (int, float), "cell_grid": (int,), "cell_seed": (int,),
                 "cell_index": (int,), "cell_panels": (int,)}


def _report_options(table: Any, bad: Callable[[str, str], UserError]) -> dict[str, Any]:
    """The ``[report]`` table: ``jrbench report`` options (with ``_``), type-checked; others refused."""
    if not isinstance(table, dict):
        raise bad("report", "must be a table of jrbench report options.")
    for key, value in table.items():
        if key not in REPORT_FIELDS:
            from .registry import did_you_mean

            raise bad(key, f"is not a report option.{did_you_mean(key, list(REPORT_FIELDS))} "
                           f"Report options: {', '.join(sorted(REPORT_FIELDS))}.")
        types = REPORT_FIELDS[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise bad(key, f"must be of type {' or '.join(t.__name__ for t in types)}, got {value!r}.")
    return dict(table)


def attack_config(options: dict[str, Any]):
    from .attacks import AttackConfig

    kwargs = {k: v for k, v in options.items() if k not in ("n_examples", "example_seed")}
    if "norms" in kwargs:
        kwargs["norms"] = tuple(kwargs["norms"])
    config = AttackConfig(**kwargs)
    config.validate()
    return config


def attack_done(run_dir: str | Path, options: dict[str, Any] | None = None) -> bool:
    """Whether a cell's attack step is finished: attacks.csv and the per-example record
    attack_examples.csv exist (attacks.csv is written last) and, given the study's ``[attack]``
    table, attacks.csv has rows of every attack it asks for (noise, pgd, fgsm, autoattack), so a
    study that adds AutoAttack attacks its finished cells again."""
    from . import rundir

    run_dir = Path(run_dir)
    if not ((run_dir / "attacks.csv").is_file() and (run_dir / "attack_examples.csv").is_file()):
        return False
    if options is None:
        return True
    config = attack_config(options)
    wanted = {name for name in ("noise", "pgd", "fgsm", "autoattack") if getattr(config, name)}
    try:
        done = set(rundir.read_csv(run_dir / "attacks.csv")["attack"])
    except (UserError, KeyError):
        return False
    return wanted <= done


@dataclass
class CellStatus:
    run_dir: Path
    trained: bool
    attacked: bool
    measured: bool
    error: str | None = None      # why the cell failed (its message), None when it did not
    traceback: str | None = None  # for a failure that is not a user error: where it happened


def status_at(run_dir: str | Path, config: RunConfig) -> CellStatus:
    """What is done of the cell ``config`` in ``run_dir``: trained (model.pt, the last file an
    epoch writes, holds the last epoch), attacked, measured (their tables exist; after changing
    a study's [attack] grid, run `jrbench attack` on its runs)."""
    from . import rundir

    run_dir = Path(run_dir)
    trained = False
    if (run_dir / rundir.MODEL).is_file():
        try:
            trained = int(rundir.torch_load(run_dir / rundir.MODEL).get("epoch", 0)) >= config.train.epochs
        except (UserError, TypeError, ValueError):
            trained = False
    return CellStatus(run_dir, trained, attack_done(run_dir),
                      (run_dir / "margins.csv").is_file() and (run_dir / "jacobian.csv").is_file())


def cell_status(spec: SweepSpec, config: RunConfig) -> CellStatus:
    """What is done of a cell in its run directory of the study (see :func:`status_at`)."""
    return status_at(spec.folder / config.run_id(), config)


def is_done(spec: SweepSpec, status: CellStatus) -> bool:
    """Whether a cell has every step its study asks for."""
    return (status.trained and (spec.attack is None or attack_done(status.run_dir, spec.attack))
            and (spec.margins is None or status.measured))


def cell_threads(num_cpus: float) -> int:
    """torch's intra-op threads for a cell granted ``num_cpus`` CPUs: its whole CPUs, at least 1.

    The one rule of every engine: the thread count changes float rounding (lenet, one epoch:
    train CE 2.3495273 on 1 thread, 2.3495271 on 2), so a cell gives the same numbers locally
    and on Ray only with the same count; and concurrent cells do not fight over cores."""
    return max(1, int(num_cpus))


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run on ``n`` torch intra-op threads, then restore the caller's count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def failure_message(error: BaseException) -> str:
    """What a failed cell reports: a user error's own message, else the exception's type and text."""
    from .errors import NonFiniteLoss

    if isinstance(error, (UserError, NonFiniteLoss)):
        return str(error)
    return f"{type(error).__name__}: {error}"


def run_cell(spec: SweepSpec, config: RunConfig, run_dir: str | Path, device: str = "auto", *,
             train_cell: Callable[[RunConfig, Path], Any] | None = None,
             on_step: Callable[[str], None] | None = None,
             on_progress: Callable[[int, int, str], None] | None = None) -> CellStatus:
    """Train, attack and measure one cell in ``run_dir``, skipping the steps done there; return its status.

    Runs on :func:`cell_threads` of the spec's ``num_cpus`` torch threads (the caller's count is
    restored). ``train_cell(config, run_dir)`` trains (default: ``train(..., resume=True)``, so a
    cell stopped mid-training resumes from its last finished epoch); ``on_step(step)`` is called
    with ``"train"``, ``"attack"`` or ``"margins"`` before each step that runs, and
    ``on_progress(done, total, label)`` within the attack and margins steps. Raises what the
    steps raise (:class:`UserError` for bad input); files already finished stay whole.
    """
    from .evaluate import attack_run, margins_run
    from .training import train

    run_dir = Path(run_dir)
    config.train.device = device
    attack = attack_config(spec.attack) if spec.attack is not None else None
    train_cell = train_cell or (lambda config, run_dir: train(config, run_dir, resume=True))
    report = on_step or (lambda step: None)
    status = status_at(run_dir, config)
    with torch_threads(cell_threads(spec.resources.num_cpus)):
        if not status.trained:
            report("train")
            train_cell(config, run_dir)
        if attack is not None and not attack_done(run_dir, spec.attack):
            report("attack")
            attack_run(run_dir, attack, n_examples=spec.attack.get("n_examples", 1000),
                       example_seed=spec.attack.get("example_seed", 0), device=device, on_progress=on_progress)
        if spec.margins is not None and not status.measured:
            report("margins")
            m = spec.margins
            example_seed = m.get("example_seed", (spec.attack or {}).get("example_seed", 0))
            margins_run(run_dir, n_examples=m.get("n_examples", 500), n_directions=m.get("directions", 10),
                        seed=m.get("seed", 0), example_seed=example_seed, device=device,
                        batch_size=m.get("batch_size", 500), on_progress=on_progress)
    return status_at(run_dir, config)


def run_sweep(spec: SweepSpec, *, device: str = "auto",
              train_cell: Callable[[RunConfig, Path], Any] | None = None,
              on_cell: Callable[[int, int, str, str], None] | None = None,
              keep_going: bool = False,
              on_progress: Callable[[int, int, str], None] | None = None) -> list[CellStatus]:
    """The local engine: :func:`run_cell` on every cell in turn, in this process; return the statuses.

    ``train_cell(config, run_dir)`` trains one cell (the CLI passes one with a progress bar);
    ``on_cell(i, n, run_id, step)`` reports overall progress (``step``: train, attack, margins,
    done, failed); ``on_progress`` is :func:`run_cell`'s. With ``keep_going`` a failing cell is recorded in its status's ``error`` and
    the other cells run; without it, the first failure is raised.
    """
    import traceback

    from .errors import NonFiniteLoss

    statuses = []
    for i, config in enumerate(spec.cells, 1):
        run_dir = spec.folder / config.run_id()
        report = (lambda step: on_cell(i, len(spec.cells), config.run_id(), step)) if on_cell else (lambda step: None)
        try:
            status = run_cell(spec, config, run_dir, device, train_cell=train_cell, on_step=report,
                              on_progress=on_progress)
        except Exception as e:
            if not keep_going:
                raise
            report("failed")
            status = status_at(run_dir, config)
            status.error = failure_message(e)
            if not isinstance(e, (UserError, NonFiniteLoss)):
                status.traceback = traceback.format_exc()
        else:
            report("done")
        statuses.append(status)
    return statuses
