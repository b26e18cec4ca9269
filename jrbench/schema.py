"""One schema for every option: config dataclass fields that carry their own flag, help and bounds.

Each command's options are declared once, as fields of a config dataclass built with
:func:`option`, whose metadata (:class:`Opt`) says the help text, the command-line flag, the
spec key, whether the flag repeats (a list), the bounds and choices, and which regularizer the
field belongs to. Everything else is derived from it:

- the Typer options of the commands (:mod:`jrbench.cli.options`);
- the keys a sweep spec's tables accept and their types (:func:`from_table`);
- the range checks, raising :class:`FieldError`, which carries the field: the command line
  names its flag, a spec file its line and key (not by searching the message's words);
- the run id's relevance rules (:func:`run_id_irrelevant`: options of unused regularizers, and
  defaults that earlier run ids did not carry).

Dataclasses rather than pydantic models: the configs are written to ``config.json`` and into
``model.pt`` with :func:`dataclasses.asdict` and rebuilt field by field, and run ids hash that
dict, so committed runs load, resume and keep their ids unchanged; and no new dependency.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from dataclasses import dataclass
from typing import Any

from .errors import UserError

MISSING = dataclasses.MISSING
_NONE = type("_NoIdDefault", (), {"__repr__": lambda self: "<none>"})()  # Opt.id_default not given


@dataclass(frozen=True)
class Opt:
    """What a config field is to the user. ``flag`` is the Typer declaration (default
    ``--name-with-dashes``; ``"--skip/--no-skip"`` for an on/off pair); ``key`` the spec key
    (default the field name); ``repeat``: the flag repeats and the field is a list (a spec takes
    one value or a list); ``low``/``high``: bounds (``open_low``/``open_high``: strict);
    ``choices``: the allowed strings; ``owner``: the regularizer whose option it is, or a tuple of
    regularizers that share it (the run id ignores it when none of them is used); ``id_default``:
    a value the run id leaves out (ids of runs made before the field existed stay);
    ``cli``/``spec``: whether the field is a
    flag / a spec key (False for internal fields, or where the two differ on purpose, with the
    reason in ``note``); ``tristate``: a bool said as true, false or not at all (None)."""

    help: str
    flag: str | None = None
    key: str | None = None
    repeat: bool = False
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple[str, ...] | None = None
    owner: str | tuple[str, ...] | None = None
    id_default: Any = _NONE
    cli: bool = True
    spec: bool = True
    note: str = ""
    tristate: bool = False
    metavar: str | None = None
    unit: str | None = None       # named in range messages: "(pixel units)"
    empty_ok: bool = False        # a repeated field may be an empty list


def option(default: Any = MISSING, *, default_factory: Any = MISSING, help: str, **meta: Any):
    """A dataclass field with its :class:`Opt` (``help`` and the keywords of :class:`Opt`)."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"opt": Opt(help, **meta)})


@dataclass(frozen=True)
class Field:
    """One option of a config class: its field ``name``, ``kind`` (bool, int, float, str),
    whether it may be None (``optional``), its ``default`` and its :class:`Opt`."""

    name: str
    kind: type
    optional: bool
    default: Any
    opt: Opt

    @property
    def flag(self) -> str:
        """The first spelling of the flag: '--lambda-jr' ('--skip' of '--skip/--no-skip')."""
        return (self.opt.flag or "--" + self.name.replace("_", "-")).split("/")[0]

    @property
    def key(self) -> str:
        return self.opt.key or self.name

    def default_value(self) -> Any:
        return self.default() if callable(self.default) else self.default


def fields(cls) -> list[Field]:
    """The options of the config class ``cls`` (instances too), in declaration order; fields
    without :class:`Opt` metadata are not options."""
    hints = typing.get_type_hints(cls if isinstance(cls, type) else type(cls))
    out = []
    for f in dataclasses.fields(cls):
        opt = f.metadata.get("opt")
        if opt is None:
            continue
        kind, optional = _kind(hints[f.name])
        default = f.default if f.default is not MISSING else f.default_factory
        out.append(Field(f.name, kind, optional, default, opt))
    return out


def _kind(hint: Any) -> tuple[type, bool]:
    """(element type, optional) of an annotation: ``list[float] | None`` -> (float, True)."""
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    optional = False
    if origin in (typing.Union, types.UnionType):
        optional = type(None) in args
        rest = [a for a in args if a is not type(None)]
        hint = rest[0]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (list, tuple):
        hint = args[0]
    return hint, optional


def field_of(cls, name: str) -> Field:
    for f in fields(cls):
        if f.name == name:
            return f
    raise KeyError(name)


def spec_keys(*classes) -> dict[str, Field]:
    """Spec key -> field over ``classes`` (the keys a spec table of these options accepts)."""
    return {f.key: f for cls in classes for f in fields(cls) if f.opt.spec}


# Command-line options that are no spec key of their command's table, on purpose (the reason):
# tests/test_schema.py holds every command's options against its table's keys with these exceptions.
COMMAND_ONLY: dict[str, str] = {
    "device": "a study's cells run on the sweep command's --device",
    "data_dir": "a study's runs read their data where they were trained",
    "quiet": "a study's progress is the sweep command's --quiet",
    "out": "a study writes into its own folder (the spec's out and name)",
    "resume": "a study resumes every cell by itself",
    "eps": "the single-norm shorthand for --eps-linf / --eps-l2; a spec names both grids",
    "dataset": "an outside model's data set (attack, margins, certify); a study trains its models",
    "weights": "an outside model's state dict; a study trains its models",
    "input_normalized": "an outside model's normalization; a study trains its models",
}


# ----------------------------------------------------------------------------- errors by field
class FieldError(UserError):
    """A bad option value; it carries the field (``key``, the spec key, and ``flag``) and the
    ``reason``, so the command line names the flag and a spec file the key and its line.
    ``str()`` names the flag (what a command-line user typed)."""

    def __init__(self, key: str, reason: str, flag: str | None = None, *, whole: bool = False) -> None:
        self.key, self.reason, self.whole = key, reason, whole
        self.flag = flag or "--" + key.replace("_", "-")
        super().__init__(reason if whole else f"{self.flag} {reason}")

    def for_spec(self) -> str:
        """The message as a spec file says it: 'lambda_jr must be ...' (a ``whole`` message as is)."""
        return self.reason if self.whole else f"{self.key} {self.reason}"


def field_error(cls, name: str, reason: str, whole: bool = False) -> FieldError:
    """A :class:`FieldError` for the field ``name`` of ``cls``, with its key and flag
    (``whole``: ``reason`` is the whole message, e.g. an unknown name with its choices)."""
    f = field_of(cls, name)
    return FieldError(f.key, reason, f.flag, whole=whole)


# ----------------------------------------------------------------------------- checks
def _type_ok(f: Field, value: Any) -> bool:
    if value is None:
        return f.optional or f.opt.tristate
    if f.kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if f.kind is int:
        return isinstance(value, numbers.Integral)
    if f.kind is float:
        return isinstance(value, numbers.Real)
    return isinstance(value, f.kind)


def _type_name(f: Field) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(f.kind, f.kind.__name__)


def check_value(f: Field, value: Any) -> None:
    """Raise :class:`FieldError` unless ``value`` (a list for a repeated field) has ``f``'s type,
    lies in its bounds and is one of its choices."""
    values = value if f.opt.repeat and isinstance(value, (list, tuple)) else [value]
    if f.opt.repeat and value is not None and not isinstance(value, (list, tuple)):
        raise FieldError(f.key, f"must be a list of values, got {value!r}.", f.flag)
    if f.opt.repeat and value is not None and len(values) == 0 and not f.opt.empty_ok:
        raise FieldError(f.key, "is empty: give at least one value.", f.flag)
    for v in values:
        if not _type_ok(f, v):
            raise FieldError(f.key, f"must be {_type_name(f)}, got {v!r}.", f.flag)
        if v is None:
            continue
        o = f.opt
        if o.choices is not None and v not in o.choices:
            from .registry import did_you_mean

            raise FieldError(f.key, f"must be one of {', '.join(o.choices)}, got {v!r}.{did_you_mean(str(v), list(o.choices))}",
                             f.flag)
        if f.kind in (int, float) and (o.low is not None or o.high is not None):
            bad = (isinstance(v, float) and not math.isfinite(v)
                   or (o.low is not None and (v <= o.low if o.open_low else v < o.low))
                   or (o.high is not None and (v >= o.high if o.open_high else v > o.high)))
            if bad:
                unit = f" ({o.unit})" if o.unit else ""
                raise FieldError(f.key, f"must be {_range(o, f.kind)}{unit}, got {v!r}.", f.flag)


def _range(o: Opt, kind: type = float) -> str:
    """The bounds in words: 'positive', 'zero or positive', 'at least 1', 'in [0, 1)', '>= 0.5'."""
    if o.low is not None and o.high is not None:
        return f"in {'(' if o.open_low else '['}{o.low:g}, {o.high:g}{')' if o.open_high else ']'}"
    if o.low == 0:
        if not o.open_low:
            return "zero or positive"
        return "positive" if kind is int else "a positive finite number"
    if o.low is not None:
        if kind is int and not o.open_low:
            return f"at least {o.low:g}"
        return f"{'>' if o.open_low else '>='} {o.low:g}"
    return f"{'<' if o.open_high else '<='} {o.high:g}"


def check(obj) -> None:
    """Check every option field of the config ``obj`` (:func:`check_value`)."""
    for f in fields(obj):
        check_value(f, getattr(obj, f.name))


# ----------------------------------------------------------------------------- specs
def from_table(classes, table: dict[str, Any], *, where: str = "a table") -> dict[str, dict[str, Any]]:
    """Sort a spec table's keys onto the config classes: {class name: {field name: value}};
    a single value of a repeated field becomes a list of one; every value type- and
    range-checked (:func:`check_value`). Raises :class:`FieldError` for a key no class
    declares (with the keys it accepts) or a bad value."""
    keys = {}
    for cls in classes:
        for f in fields(cls):
            if f.opt.spec:
                keys[f.key] = (cls, f)
    out: dict[str, dict[str, Any]] = {cls.__name__: {} for cls in classes}
    for key, value in table.items():
        if key not in keys:
            from .registry import did_you_mean

            raise FieldError(key, f"is not {where}.{did_you_mean(key, sorted(keys))} "
                                  f"Expected one of: {', '.join(sorted(keys))}.")
        cls, f = keys[key]
        if f.opt.repeat and not isinstance(value, list):
            value = [value]
        check_value(f, value)
        if f.opt.repeat and isinstance(f.default_value(), tuple):
            value = tuple(value)  # the field holds a tuple (AttackConfig.norms)
        out[cls.__name__][f.name] = value
    return out


# ----------------------------------------------------------------------------- run ids
def run_id_irrelevant(obj, used: set[str]) -> set[str]:
    """Field names of ``obj`` that a run id leaves out: options of a regularizer not in
    ``used``, and fields whose value equals their ``id_default``."""
    out = set()
    for f in fields(obj):
        value = getattr(obj, f.name)
        owners = (f.opt.owner,) if isinstance(f.opt.owner, str) else f.opt.owner
        if owners is not None and not set(owners) & used:
            out.add(f.name)
        elif f.opt.id_default is not _NONE and value == f.opt.id_default:
            out.add(f.name)
    return out
