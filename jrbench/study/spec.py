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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..certify.config import METHOD_FLAGS, CertifyConfig
from ..config import DataConfig, ModelConfig, RegConfig, RunConfig, TrainConfig
from ..errors import UserError
from ..evaluate.attack_config import AttackConfig
from ..evaluate.margins_config import MARGIN_EXAMPLES, MarginsConfig
from ..penalty.lipschitz_constraint import check_model
from ..penalty.regularizers import check_model_name
from ..report.options import ReportConfig
from ..runtables.examples import ExampleSet
from ..schema import FieldError, check_value, field_error, from_table, option, spec_keys
from ..specfile import SpecFile, Table, parse_spec_text, read_spec
from ..training.validation import validate

# The sections of a training run and their config classes; every key below is derived from the
# classes' schema (jrbench.schema): a field is a spec key unless its Opt says spec=False.
TRAIN_SECTIONS = {"data": DataConfig, "model": ModelConfig, "reg": RegConfig, "train": TrainConfig}
# jrbench train's options (flag --foo-bar -> key foo_bar) -> (RunConfig section, attribute)
FIELDS: dict[str, tuple[str, str]] = {key: (section, f.name) for section, cls in TRAIN_SECTIONS.items()
                                      for key, f in spec_keys(cls).items()}
ATTACK_CLASSES, MARGIN_CLASSES, CERTIFY_CLASSES = ((AttackConfig, ExampleSet), (ExampleSet, MarginsConfig),
                                                   (CertifyConfig, ExampleSet))
ATTACK_FIELDS = set(spec_keys(*ATTACK_CLASSES))
MARGIN_FIELDS = set(spec_keys(*MARGIN_CLASSES))
CERTIFY_FIELDS = set(spec_keys(*CERTIFY_CLASSES))
REPORT_FIELDS = set(spec_keys(ReportConfig))
# keys renamed to their command's flag (issue 10): command -> {old key: new key}; old ones are refused
RENAMED: dict[str, dict[str, str]] = {"train": {"regularizers": "reg"},
                                      "attack": {"sigmas": "sigma", "norms": "norm"}}
TOP_FIELDS = ("name", "description", "out", "base", "grid", "block", "variant", "attack", "margins", "certify",
              "report", "resources")


@dataclass
class Resources:
    """What one cell needs. ``num_cpus`` (> 0) sets the cell's torch threads in every engine
    (:func:`cell_threads`) and is what the Ray engine asks for; ``num_gpus`` (>= 0, fractions
    share a GPU) is asked of Ray, and a cell granted one trains on it."""
    num_cpus: float = option(1, low=0, open_low=True, help="CPUs one cell needs (its torch threads).")
    num_gpus: float = option(0, low=0, help="GPUs one cell needs (fractions share a GPU).")


@dataclass
class SweepSpec:
    """A study, parsed once into typed configs: the cells (:class:`RunConfig`), what each cell is
    attacked, measured and certified with (None: that step is not part of the study), each
    step's example set (the margins' and certificates' example seed is the attack's unless their
    table names one; margins default to 500 examples, certificates to the attack's), the
    report's options and what one cell needs."""

    name: str
    path: Path
    out: Path
    cells: list[RunConfig]
    attack: AttackConfig | None = None
    margins: MarginsConfig | None = None
    description: str = ""
    report: ReportConfig = field(default_factory=ReportConfig)
    resources: Resources = field(default_factory=Resources)
    certify: CertifyConfig | None = None
    attack_examples: ExampleSet = field(default_factory=ExampleSet)
    margins_examples: ExampleSet = field(default_factory=lambda: ExampleSet(MARGIN_EXAMPLES))
    certify_examples: ExampleSet = field(default_factory=ExampleSet)

    @property
    def folder(self) -> Path:
        return self.out / self.name


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
    attack, attack_examples = _attack_table(doc.get("attack"), f)
    margins, margins_examples = _margins_table(doc.get("margins"), f, attack_examples)
    certify, certify_examples = _certify_table(doc.get("certify"), f, attack_examples)
    out_dir = Path(out) if out is not None else Path(doc.get("out", "results/sweeps"))
    return SweepSpec(name, f.path, out_dir, cells, attack, margins, str(doc.get("description", "")),
                     _report_table(doc.get("report", {}), f), _resources_table(doc.get("resources", {}), f),
                     certify, attack_examples, margins_examples, certify_examples)


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
    fields_by_key = {key: f_ for cls in TRAIN_SECTIONS.values() for key, f_ in spec_keys(cls).items()}
    for where, table in every:
        items = [(k, v) for k, vs in table.items() for v in vs] if where == ("grid",) else table.items()
        for key, value in items:
            field_ = fields_by_key[key]
            try:
                check_value(field_, [value] if field_.opt.repeat and isinstance(value, str) else value)
            except FieldError as e:
                raise f.error(f"field '{key}' {e.reason}", where, key) from e
    return base, grid, axes[0], axes[1]


def _apply(config: RunConfig, key: str, value: Any) -> None:
    section, attr = FIELDS[key]
    if key == "reg" and isinstance(value, str):
        value = [value]
    setattr(getattr(config, section), attr, value)


def _cells(f: SpecFile, base: dict[str, Any], grid: dict[str, list], blocks: Overrides,
           variants: Overrides) -> list[RunConfig]:
    """Every block x variant x grid point, validated; cells with the same run id collapse into one.
    Later tables override earlier ones: [base], [[block]], [[variant]], [grid]. A bad cell is
    blamed on the last setting of the field its error carries (:class:`~jrbench.schema.FieldError`)."""
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
            try:  # a model the regularizers cannot train fails here, not in training
                if "lipschitz" in config.reg.names:
                    check_model(config.model.name, config.data.dataset)
                check_model_name(config.model.name, config.data.dataset, config.reg)
            except UserError as e:
                raise field_error(RegConfig, "names", str(e), whole=True) from e
        except FieldError as e:  # the last table that sets the field (later ones override)
            where, culprit, _ = next((s for s in reversed(settings) if s[1] == e.key),
                                     settings[-1] if settings else (("base",), e.key, None))
            raise f.error(f"field '{culprit}' gives an invalid cell: {e.for_spec()}", where, culprit) from e
        if config.run_id() not in seen:
            seen.add(config.run_id())
            cells.append(config)
    return cells


def _table(f: SpecFile, name: str, table: Any, classes, command: str, what: str) -> dict[str, dict[str, Any]]:
    """A command's table sorted onto its config classes ({class name: {field: value}}), every key
    and value checked by the schema; a bad one is named with its line."""
    if not isinstance(table, dict):
        raise f.error(f"field '{name}' must be a table of jrbench {command} options.", (), name)
    for key in table:
        _check_key(f, (name,), key, command, spec_keys(*classes), what)
    try:
        return from_table(classes, table, where=what)
    except FieldError as e:
        raise f.error(f"field '{e.key}' {e.reason}", (name,), e.key) from e


def _build(f: SpecFile, name: str, build, what: str):
    """``build()`` a table's config; its error is named with the line of the field it carries."""
    try:
        return build()
    except FieldError as e:
        raise f.error(f"field '{e.key}' gives invalid {what} settings: {e.for_spec()}", (name,), e.key) from e
    except UserError as e:
        raise f.error(f"invalid {what} settings: {e}", (name,)) from e


def _attack_table(table: Any, f: SpecFile) -> tuple[AttackConfig | None, ExampleSet]:
    """The ``[attack]`` table: jrbench attack's options as an :class:`AttackConfig` (None when the
    table is absent) and its example set."""
    if table is None:
        return None, ExampleSet()
    parts = _table(f, "attack", table, ATTACK_CLASSES, "attack", "an attack option")
    config = _build(f, "attack", lambda: _attack_config(parts["AttackConfig"]), "attack")
    return config, ExampleSet(**parts["ExampleSet"])


def _margins_table(table: Any, f: SpecFile, attack: ExampleSet) -> tuple[MarginsConfig | None, ExampleSet]:
    """The ``[margins]`` table as a :class:`MarginsConfig` (None when absent) and its example set
    (500 examples unless it says; the attack's example seed unless it names one)."""
    if table is None:
        return None, ExampleSet(MARGIN_EXAMPLES, attack.example_seed)
    parts = _table(f, "margins", table, MARGIN_CLASSES, "margins", "a margins option")
    examples = {"n_examples": MARGIN_EXAMPLES, "example_seed": attack.example_seed, **parts["ExampleSet"]}
    return MarginsConfig(**parts["MarginsConfig"]), ExampleSet(**examples)


def _certify_table(table: Any, f: SpecFile, attack: ExampleSet) -> tuple[CertifyConfig | None, ExampleSet]:
    """The ``[certify]`` table as a :class:`CertifyConfig` (None when absent) and its example set (the
    attack's unless it says). Unlike the command, which runs Lipschitz and IBP when no certificate is
    named, a certificate not set to true is off (a study says what it certifies)."""
    if table is None:
        return None, attack
    parts = _table(f, "certify", table, CERTIFY_CLASSES, "certify", "a certify option")
    config = _build(f, "certify", lambda: _certify_config(parts["CertifyConfig"]), "certify")
    return config, ExampleSet(**{"n_examples": attack.n_examples, "example_seed": attack.example_seed,
                                 **parts["ExampleSet"]})


def _resources_table(table: Any, f: SpecFile) -> Resources:
    """The ``[resources]`` table: num_cpus > 0, num_gpus >= 0, numbers only."""
    if not isinstance(table, dict):
        raise f.error("field 'resources' must be a table.", (), "resources")
    try:
        return Resources(**from_table([Resources], table, where="a resource (num_cpus or num_gpus)")["Resources"])
    except FieldError as e:
        raise f.error(f"field '{e.key}' {e.reason}", ("resources",), e.key) from e


def _report_table(table: Any, f: SpecFile) -> ReportConfig:
    """The ``[report]`` table: ``jrbench report``'s options as a :class:`ReportConfig`. A repeatable
    flag's value (``sigma``, ``eps_linf``, ``eps_l2``: strengths, pixel units) is a number or a
    non-empty list of them."""
    if not isinstance(table, dict):
        raise f.error("field 'report' must be a table of jrbench report options.", (), "report")
    try:
        return ReportConfig(**from_table([ReportConfig], table, where="a report option")["ReportConfig"])
    except FieldError as e:
        raise f.error(f"field '{e.key}' {e.reason}", ("report",), e.key) from e


def _attack_config(fields_: dict[str, Any]) -> AttackConfig:
    from ..evaluate.attack_config import build_attack_config

    return build_attack_config(**fields_)


def _certify_config(fields_: dict[str, Any]) -> CertifyConfig:
    return CertifyConfig(**{**{name: False for name in METHOD_FLAGS}, **fields_})


def attack_config(table: dict[str, Any]) -> AttackConfig:
    """The :class:`AttackConfig` of a raw ``[attack]`` table (as ``jrbench attack`` builds its own,
    :func:`~jrbench.evaluate.attack_config.build_attack_config`: naming selects); ``n_examples``
    and ``example_seed`` belong to the example set and are left out. Raises :class:`UserError`."""
    return _attack_config(from_table(ATTACK_CLASSES, table, where="an attack option")["AttackConfig"])


def certify_config(table: dict[str, Any]) -> CertifyConfig:
    """The :class:`CertifyConfig` of a raw ``[certify]`` table (a certificate not set to true is off)."""
    return _certify_config(from_table(CERTIFY_CLASSES, table, where="a certify option")["CertifyConfig"])
