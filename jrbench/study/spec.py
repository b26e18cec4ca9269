"""Sweep specs: a study described as a grid in TOML, parsed and checked into a :class:`SweepSpec`.

A spec (see ``benchmarks/*.toml``); every key is the flag of the command it feeds, with ``_``
(``--lambda-jr`` -> ``lambda_jr``)::

    name = "lambda-sweep"                 # runs go to <out>/<name>/<run-id>
    out = "results/sweeps"                # optional
    [base]                                # jrbench train options shared by every cell
    dataset = "synth-digits"; model = "lenet"; epochs = 4; batch_size = 64; lr = 0.05
    [grid]                                # the product of these lists makes the cells
    reg = [["none"], ["jacobian"]]
    lambda_jr = [0.01, 0.05]
    seed = [0, 1]
    [attack]                              # jrbench attack options (omit the table: no attacks)
    n_examples = 500; steps = 20; sigma = [0.0, 0.2, 0.4]
    fgsm = false                          # as the flags: none true -> noise, PGD, FGSM less the false
    [margins]                             # jrbench margins options (omit the table: no margins)
    n_examples = 300; directions = 10     # example_seed: default [attack]'s, so both see the same examples
    [certify]                             # jrbench certify options (omit the table: no certificates)
    lipschitz = true; ibp = true; smoothing = true; sigma = [0.25]; n = 1000
    [report]                              # optional: jrbench report options for the report at the end
    sigma = 0.25                          # or a list: eps_linf = [0.05, 0.1], a table column each
    [resources]                           # optional: what one cell needs (default 1 CPU, 0 GPUs)
    num_cpus = 1; num_gpus = 0            # a cell's torch threads = its whole CPUs, in every engine
    [[block]]                             # optional: recipes; each block's keys override [base]
    name = "paper"; lr = 0.01; batch_size = 100; epochs = 15
    [[block]]                             # and the grid runs once per block
    name = "default"; lr = 0.05; batch_size = 64; epochs = 10
    [[variant]]                           # optional: named settings, crossed with the blocks
    name = "sub16"; reg = ["jacobian"]; jr_subsample = 16

Keys of ``[base]``, ``[grid]``, ``[[block]]`` and ``[[variant]]`` are the ``jrbench train``
options (:data:`FIELDS`); ``[attack]``, ``[margins]``, ``[certify]`` and ``[report]`` take those
of ``jrbench attack``, ``margins``, ``certify`` and ``report`` (:data:`ATTACK_FIELDS`,
:data:`MARGIN_FIELDS`, :data:`CERTIFY_FIELDS`, :data:`REPORT_FIELDS`). A key renamed to its flag (``regularizers`` -> ``reg``) is refused with
the new name (:data:`RENAMED`). Cells that differ only in options of regularizers they do not
use (lambda_jr without jacobian) have the same run id and collapse into one.

What a study is, not how it runs: this module imports no running code. :mod:`jrbench.study.sweep`
(the local engine) and :mod:`jrbench.study.ray_engine` (the Ray engine) run its cells.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import DataConfig, ModelConfig, RegConfig, RunConfig, TrainConfig
from ..errors import UserError
from ..penalty.lipschitz_constraint import check_model
from ..specfile import SpecFile, Table, parse_spec_text, read_spec
from ..training.validation import validate

# jrbench train's options (flag --foo-bar -> key foo_bar) -> (RunConfig section, attribute)
FIELDS: dict[str, tuple[str, str]] = {
    "dataset": ("data", "dataset"), "data_dir": ("data", "data_dir"),
    "train_subset": ("data", "train_subset"), "test_subset": ("data", "test_subset"),
    "model": ("model", "name"), "reg": ("reg", "names"), "lambda_jr": ("reg", "lambda_jr"),
    "n_proj": ("reg", "n_proj"), "jr_subsample": ("reg", "jr_subsample"),
    "weight_decay": ("reg", "weight_decay"), "dropout": ("reg", "dropout"), "lambda_ig": ("reg", "lambda_ig"),
    "epochs": ("train", "epochs"), "batch_size": ("train", "batch_size"), "lr": ("train", "lr"),
    "momentum": ("train", "momentum"), "schedule": ("train", "schedule"),
    "step_epochs": ("train", "step_epochs"), "gamma": ("train", "gamma"), "seed": ("train", "seed"),
    "jr_backend": ("reg", "jr_backend"), "jr_estimator": ("reg", "jr_estimator"), "jr_every": ("reg", "jr_every"),
    "lipschitz_bound": ("reg", "lipschitz_bound"), "noise_sigma": ("reg", "noise_sigma"),
}
# jrbench attack's options; sigma and norm fill AttackConfig's sigmas and norms
ATTACK_FIELDS = {"noise", "pgd", "fgsm", "autoattack", "aa_targets", "autoattack_eps_linf",
                 "autoattack_eps_l2", "n_examples", "example_seed", "noise_examples", "sigma", "draws", "norm",
                 "eps_linf", "eps_l2", "steps", "alpha", "restarts", "loss", "batch_size", "seed"}
_ATTACK_LISTS = {"sigma", "norm", "eps_linf", "eps_l2", "autoattack_eps_linf", "autoattack_eps_l2"}  # repeatable flags
MARGIN_FIELDS = {"n_examples", "example_seed", "directions", "seed", "batch_size"}  # all integers
REPORT_FIELDS = {"sigma": (int, float, list), "eps_linf": (int, float, list), "eps_l2": (int, float, list),
                 "per_run": (bool,), "cells": (bool,), "cell_radius": (int, float), "cell_grid": (int,),
                 "cell_seed": (int,), "cell_index": (int,), "cell_panels": (int,), "correction": (str,)}
_REPORT_LISTS = {"sigma", "eps_linf", "eps_l2"}  # repeatable flags: a number or a list of numbers
RESOURCE_FIELDS = ("num_cpus", "num_gpus")
# keys renamed to their command's flag (issue 10): command -> {old key: new key}; old ones are refused
RENAMED: dict[str, dict[str, str]] = {"train": {"regularizers": "reg"},
                                      "attack": {"sigmas": "sigma", "norms": "norm"}}
# [certify]: jrbench certify's options; unlike the command, a certificate not named is off
CERTIFY_FIELDS = {"lipschitz", "ibp", "smoothing", "sigma", "n0", "n", "alpha", "eps_linf", "eps_l2", "seed",
                  "batch_size", "smoothing_batch_size", "n_examples", "example_seed", "crown", "alpha_crown",
                  "complete", "timeout", "alpha_steps", "skip"}
_CERTIFY_LISTS = {"sigma", "eps_linf", "eps_l2"}
TOP_FIELDS = ("name", "description", "out", "base", "grid", "block", "variant", "attack", "margins", "certify",
              "report", "resources")


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
    certify: dict[str, Any] | None = None

    @property
    def folder(self) -> Path:
        return self.out / self.name


_OPTIONAL_TYPES = {"data_dir": (str,), "train_subset": (int,), "test_subset": (int,), "jr_subsample": (int,)}


def _type_error(key: str, value: Any) -> str | None:
    """Why ``value`` cannot be the training option ``key`` (judged by the default's type), or None."""
    section, attr = FIELDS[key]
    default = getattr(getattr(RunConfig(), section), attr)
    if key == "reg":
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
    if key == "reg" and isinstance(value, str):
        value = [value]
    setattr(getattr(config, section), attr, value)


# the words by which a validation message names a training option (else its flag)
_MENTIONS = {"reg": ("--reg ", "regularizer"), "dataset": ("unknown dataset",), "model": ("unknown model",),
             "schedule": ("unknown schedule",)}


def _mentions(key: str, message: str) -> bool:
    return any(w in message for w in _MENTIONS.get(key, (f"--{key.replace('_', '-')}",)))


def load_spec(path: str | Path, out: str | Path | None = None) -> SweepSpec:
    """Read, parse and validate a sweep spec file; every error names the line and the field."""
    return spec_from_file(read_spec(path, "sweep spec"), out)


def parse_spec(text: str, path: Path, out: str | Path | None = None) -> SweepSpec:
    """Parse and validate the TOML ``text`` of a spec (``path`` names it in messages)."""
    return spec_from_file(parse_spec_text(text, path), out)


def _check_key(f: SpecFile, table: Table, key: str, command: str, allowed, what: str) -> None:
    """Refuse ``key`` of ``table`` unless ``allowed``: a renamed key with its new name."""
    new = RENAMED.get(command, {}).get(key)
    if new is not None:
        raise f.error(f"key '{key}' was renamed: use '{new}' (the --{new.replace('_', '-')} flag of "
                      f"jrbench {command}).", table, key)
    if command == "attack" and key == "eps" and key not in allowed:  # --eps needs one --norm; a spec names both grids
        raise f.error("field 'eps' is not an attack option: a spec names each grid, 'eps_linf' and 'eps_l2' "
                      "(the --eps-linf and --eps-l2 flags).", table, key)
    if key not in allowed:
        from ..registry import did_you_mean

        raise f.error(f"field '{key}' is not {what}.{did_you_mean(key, sorted(allowed))} "
                      f"Expected one of: {', '.join(sorted(allowed))}.", table, key)


def spec_from_file(f: SpecFile, out: str | Path | None = None) -> SweepSpec:
    """The validated study of a parsed spec file; a bad field is named with its own line."""
    doc = f.doc
    name = doc.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        raise f.error("field 'name' must be a non-empty name without '/'.", (), "name")
    for key in doc:
        if key not in TOP_FIELDS:
            from ..registry import did_you_mean

            header = isinstance(doc[key], dict)  # a [table]: its header's line
            raise f.error(f"field '{key}' is not a sweep field.{did_you_mean(key, list(TOP_FIELDS))} "
                          f"Expected one of: {', '.join(TOP_FIELDS)}.", (key,) if header else (),
                          None if header else key)
    cells = _cells(f, *_train_tables(f))
    attack, margins = _attack_table(doc.get("attack"), f), _margins_table(doc.get("margins"), f)
    resources = _parse_resources(doc.get("resources", {}), f)
    out_dir = Path(out) if out is not None else Path(doc.get("out", "results/sweeps"))
    return SweepSpec(name, f.path, out_dir, cells, attack, margins, str(doc.get("description", "")),
                     _report_options(doc.get("report", {}), f), resources, _certify_table(doc.get("certify"), f))


Overrides = list[tuple[Table, dict[str, Any]]]  # (where a table is written, its training options)


def _train_tables(f: SpecFile) -> tuple[dict[str, Any], dict[str, list], Overrides, Overrides]:
    """[base], [grid], the [[block]] and the [[variant]] tables (without their names), each key
    and value checked: a training option of the right type; [grid]'s values non-empty lists."""
    base, grid = f.doc.get("base", {}), f.doc.get("grid", {})
    for section, table in (("base", base), ("grid", grid)):
        if not isinstance(table, dict):
            raise f.error(f"field '{section}' must be a table.", (), section)
    axes = []  # [[block]] (recipes, data sets) x [[variant]] (named settings)
    for axis in ("block", "variant"):
        tables = f.doc.get(axis, [{}])
        if not isinstance(tables, list) or not tables or not all(isinstance(b, dict) for b in tables):
            raise f.error(f"field '{axis}' must be one or more [[{axis}]] tables of training options.", (), axis)
        axes.append([((axis, i), {k: v for k, v in b.items() if k != "name"}) for i, b in enumerate(tables)])
    every = [(("base",), base), (("grid",), grid)] + axes[0] + axes[1]
    for where, table in every:
        for key in table:
            _check_key(f, where, key, "train", FIELDS, "a training option")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise f.error(f"field '{key}' in [grid] must be a non-empty list of values.", ("grid",), key)
    for where, table in every:
        items = [(k, v) for k, vs in table.items() for v in vs] if where == ("grid",) else table.items()
        for key, value in items:
            why = _type_error(key, value)
            if why:
                raise f.error(f"field '{key}' {why}", where, key)
    return base, grid, axes[0], axes[1]


def _cells(f: SpecFile, base: dict[str, Any], grid: dict[str, list], blocks: Overrides,
           variants: Overrides) -> list[RunConfig]:
    """Every block x variant x grid point, validated; cells with the same run id collapse into one.
    Later tables override earlier ones: [base], [[block]], [[variant]], [grid]."""
    cells, seen = [], set()
    keys = list(grid)
    for (b_where, block), (v_where, variant), combo in itertools.product(
            blocks, variants, itertools.product(*(grid[k] for k in keys))):
        settings = ([(("base",), k, v) for k, v in base.items()] + [(b_where, k, v) for k, v in block.items()]
                    + [(v_where, k, v) for k, v in variant.items()] + [(("grid",), k, v) for k, v in zip(keys, combo)])
        config = RunConfig(DataConfig(), ModelConfig(), RegConfig(), TrainConfig())
        try:
            for _, key, value in settings:
                _apply(config, key, value)
            validate(config)
            if "lipschitz" in config.reg.names:  # a model the bound has no rule for fails here, not in training
                check_model(config.model.name, config.data.dataset)
        except UserError as e:  # blame the last setting the message names (later ones override)
            where, culprit, _ = next((s for s in reversed(settings) if _mentions(s[1], str(e))),
                                     settings[-1] if settings else (("base",), "base", None))
            raise f.error(f"field '{culprit}' gives an invalid cell: {e}", where, culprit) from e
        except (TypeError, ValueError) as e:
            raise UserError(f"{f.path}: a value of the wrong type in [base] or [grid]: {e}") from e
        if config.run_id() not in seen:
            seen.add(config.run_id())
            cells.append(config)
    return cells


def _attack_table(table: Any, f: SpecFile) -> dict[str, Any] | None:
    """The ``[attack]`` table (None when absent): jrbench attack's options, checked as one config."""
    if table is None:
        return None
    if not isinstance(table, dict):
        raise f.error("field 'attack' must be a table of jrbench attack options.", (), "attack")
    for key in table:
        _check_key(f, ("attack",), key, "attack", ATTACK_FIELDS, "an attack option")
    try:
        attack_config(table)
    except (UserError, TypeError, ValueError) as e:
        named = [k for k in table if k in str(e)]
        culprit = max(named, key=len) if named else None  # eps_linf inside autoattack_eps_linf: the longest
        what = f"field '{culprit}' gives" if culprit else "gives"
        raise f.error(f"{what} invalid attack settings: {e}", ("attack",), culprit) from e
    return table


def _margins_table(table: Any, f: SpecFile) -> dict[str, Any] | None:
    """The ``[margins]`` table (None when absent): jrbench margins' options, integers each."""
    if table is None:
        return None
    if not isinstance(table, dict):
        raise f.error("field 'margins' must be a table of jrbench margins options.", (), "margins")
    for key, value in table.items():
        _check_key(f, ("margins",), key, "margins", MARGIN_FIELDS, "a margins option")
        if isinstance(value, bool) or not isinstance(value, int):
            raise f.error(f"field '{key}' must be an integer, got {value!r}.", ("margins",), key)
        if key in ("n_examples", "directions", "batch_size") and value < 1:  # as jrbench margins checks them
            raise f.error(f"field '{key}' must be at least 1, got {value}.", ("margins",), key)
    return table


def _certify_table(table: Any, f: SpecFile) -> dict[str, Any] | None:
    """The ``[certify]`` table (None when absent): jrbench certify's options, checked as one config."""
    if table is None:
        return None
    if not isinstance(table, dict):
        raise f.error("field 'certify' must be a table of jrbench certify options.", (), "certify")
    for key, value in table.items():
        _check_key(f, ("certify",), key, "certify", CERTIFY_FIELDS, "a certify option")
        if key in ("n_examples", "example_seed") and (isinstance(value, bool) or not isinstance(value, int)
                                                      or value < (1 if key == "n_examples" else 0)):
            raise f.error(f"field '{key}' must be an integer >= {1 if key == 'n_examples' else 0}, got {value!r}.",
                          ("certify",), key)
    try:
        certify_config(table)
    except (UserError, TypeError, ValueError) as e:
        named = [k for k in table if k.replace("_", "-") in str(e) or k in str(e)]
        culprit = max(named, key=len) if named else None
        raise f.error(f"invalid certify settings: {e}", ("certify",), culprit) from e
    return table


def certify_config(options: dict[str, Any]):
    """The validated :class:`~jrbench.certify.api.CertifyConfig` of a ``[certify]`` table (flag names:
    ``sigma`` fills ``sigmas``; a single value of a repeatable flag is a list of one). Unlike the
    command, which runs Lipschitz and IBP when no certificate is named, a certificate not set to
    true is off (a study says what it certifies)."""
    from ..certify.api import CertifyConfig

    kwargs: dict[str, Any] = {"lipschitz": False, "ibp": False, "smoothing": False, "crown": False,
                              "alpha_crown": False, "complete": False}
    for key, value in options.items():
        if key in ("n_examples", "example_seed"):
            continue
        if key in _CERTIFY_LISTS and not isinstance(value, list):
            value = [value]
        kwargs["sigmas" if key == "sigma" else key] = value
    for key in ("lipschitz", "ibp", "smoothing", "crown", "alpha_crown", "complete", "skip"):
        if key in kwargs and not isinstance(kwargs[key], bool):
            raise UserError(f"{key} must be true or false, got {kwargs[key]!r}.")
    return CertifyConfig(**kwargs)  # validated as it is built


def _parse_resources(table: Any, f: SpecFile) -> Resources:
    """The ``[resources]`` table: num_cpus > 0, num_gpus >= 0, numbers only."""
    def bad(key: str, why: str) -> UserError:
        return f.error(f"field '{key}' {why}", ("resources",), key)

    if not isinstance(table, dict):
        raise f.error("field 'resources' must be a table.", (), "resources")
    for key, value in table.items():
        if key not in RESOURCE_FIELDS:
            from ..registry import did_you_mean

            raise bad(key, f"is not a resource (expected num_cpus or num_gpus).{did_you_mean(key, list(RESOURCE_FIELDS))}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad(key, f"must be a number, got {value!r}.")
    resources = Resources(**table)
    if not resources.num_cpus > 0:
        raise bad("num_cpus", f"must be > 0 (a cell needs a CPU), got {resources.num_cpus!r}.")
    if not resources.num_gpus >= 0:
        raise bad("num_gpus", f"must be >= 0, got {resources.num_gpus!r}.")
    return resources


def _report_options(table: Any, f: SpecFile) -> dict[str, Any]:
    """The ``[report]`` table: ``jrbench report`` options (with ``_``), type-checked; others refused.
    A repeatable flag's value (``sigma``, ``eps_linf``, ``eps_l2``: strengths, pixel units) is a
    number or a non-empty list of them, returned as a list."""
    if not isinstance(table, dict):
        raise f.error("field 'report' must be a table of jrbench report options.", (), "report")
    for key, value in table.items():
        if key not in REPORT_FIELDS:
            from ..registry import did_you_mean

            raise f.error(f"field '{key}' is not a report option.{did_you_mean(key, list(REPORT_FIELDS))} "
                          f"Report options: {', '.join(sorted(REPORT_FIELDS))}.", ("report",), key)
        if key in _REPORT_LISTS:
            values = value if isinstance(value, list) else [value]
            if not values or not all(_is_strength(v) for v in values):
                raise f.error(f"field '{key}' must be a strength (a number >= 0, pixel units) or a non-empty list "
                              f"of them, got {value!r}.", ("report",), key)
            continue
        types = REPORT_FIELDS[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise f.error(f"field '{key}' must be of type {' or '.join(t.__name__ for t in types)}, got {value!r}.",
                          ("report",), key)
        if key == "correction":
            from ..stats import CORRECTIONS  # here: scipy only when a spec names a correction

            if value not in CORRECTIONS:
                raise f.error(f"field 'correction' must be one of {', '.join(CORRECTIONS)} (--correction), "
                              f"got {value!r}.", ("report",), key)
    return {k: (v if k not in _REPORT_LISTS or isinstance(v, list) else [v]) for k, v in table.items()}


def _is_strength(value: Any) -> bool:
    """A number >= 0 and finite (not a bool)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value >= 0


def attack_config(options: dict[str, Any]):
    """The validated :class:`~jrbench.evaluate.attack_config.AttackConfig` of an ``[attack]`` table (flag
    names: ``sigma`` and ``norm`` fill ``sigmas`` and ``norms``; a single value of a repeatable
    flag is a list of one), built as ``jrbench attack`` builds its own
    (:func:`~jrbench.evaluate.attack_config.build_attack_config`). The attacks are chosen by the
    command's rule (:func:`~jrbench.evaluate.attack_config.select_attacks`): those set to true run,
    an AutoAttack grid naming AutoAttack; with none set to true, noise, PGD and FGSM less those set
    to false. Without ``sigma`` the noise grid is each cell's data set's (filled per cell)."""
    from ..evaluate.attack_config import build_attack_config

    kwargs: dict[str, Any] = {}
    for key, value in options.items():
        if key in ("n_examples", "example_seed"):
            continue
        if key in _ATTACK_LISTS and not isinstance(value, list):
            value = [value]
        kwargs[{"sigma": "sigmas", "norm": "norms"}.get(key, key)] = value
    if "norms" in kwargs:
        kwargs["norms"] = tuple(kwargs["norms"])
    return build_attack_config(**kwargs)
