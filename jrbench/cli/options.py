"""Typer options derived from the schema (:mod:`jrbench.schema`): a command's options are its configs' fields.

:func:`with_options` adds one Typer option per command-line field of the config classes it
is given (flag, help, type, default, repeatability and choices from the field's
:class:`~jrbench.schema.Opt`) and hands the command the values, one dict per class, keyed by
field name: a repeated flag not given and a tri-state flag not said are left out, so the
config's own default (or its builder's rule) applies.
"""
from __future__ import annotations

import functools
import inspect
from enum import Enum
from typing import Annotated, Any, Callable, Optional

import typer

from ..schema import Field, fields
from .common import check_device, choice_enum

def parameter(f: Field, default: Any = inspect.Parameter.empty) -> inspect.Parameter:
    """The Typer option of field ``f`` as a keyword parameter named by its spec key."""
    o = f.opt
    kind: Any = choice_enum(f.key, o.choices) if o.choices else f.kind
    if default is not inspect.Parameter.empty:
        value = default
    elif o.repeat or o.tristate:
        value = None  # not given (and no default factory runs at import: --help stays instant)
    else:
        value = f.default_value()
    extra: dict[str, Any] = {"help": o.help}
    if o.metavar:
        extra["metavar"] = o.metavar
    if f.name == "device":
        extra["callback"] = check_device
    decl = o.flag or "--" + f.key.replace("_", "-")
    if f.kind is bool and not o.repeat:
        if o.tristate:
            hint, value = Optional[bool], None
        else:
            hint = bool
            if "/" not in decl:
                value = False  # a flag alone can only switch on; the command's rule says what none means
    elif o.repeat:
        hint, value = Optional[list[kind]], None
    elif f.optional:
        hint = Optional[kind]
    else:
        hint = kind
    if o.choices and value is not None and not o.repeat:
        value = kind(value)
    return inspect.Parameter(f.key, inspect.Parameter.KEYWORD_ONLY, default=value,
                             annotation=Annotated[hint, typer.Option(decl, **extra)])


def _plain(f: Field, value: Any) -> Any:
    """A Typer value as the config field holds it: Enum members as strings, a tuple field's list as a tuple."""
    if isinstance(value, list):
        value = [v.value if isinstance(v, Enum) else v for v in value]
        if isinstance(f.default_value(), tuple):
            value = tuple(value)
    elif isinstance(value, Enum):
        value = value.value
    return value


def with_options(defaults: dict[str, Any] | None = None, **groups: type) -> Callable:
    """Decorator: the command's parameters named in ``groups`` (name -> config class) become
    the class's command-line options; the command receives, for each, {field: value}.
    ``defaults``: a different command-line default for a field (by spec key)."""
    defaults = defaults or {}

    def decorate(command: Callable) -> Callable:
        own = [p for name, p in inspect.signature(command, eval_str=True).parameters.items() if name not in groups]
        added: dict[str, tuple[str, Field]] = {}
        params = []
        for group, cls in groups.items():
            for f in fields(cls):
                if not f.opt.cli:
                    continue
                if f.key in added or f.key in {p.name for p in own}:
                    raise TypeError(f"option {f.key} declared twice in {command.__name__}")
                added[f.key] = (group, f)
                params.append(parameter(f, defaults.get(f.key, inspect.Parameter.empty)))

        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            values: dict[str, dict[str, Any]] = {group: {} for group in groups}
            for key, (group, f) in added.items():
                value = kwargs.pop(key)
                if value is None and (f.opt.repeat or f.opt.tristate) and not f.optional:
                    continue  # not given: the config's default, or its builder's rule
                if value is None and f.opt.tristate:
                    values[group][f.name] = None
                    continue
                values[group][f.name] = _plain(f, value)
            return command(*args, **kwargs, **values)

        positional = [p for p in own if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
        rest = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if p not in positional]
        wrapper.__signature__ = inspect.Signature(positional + params + rest)
        wrapper.__annotations__ = {p.name: p.annotation for p in wrapper.__signature__.parameters.values()}
        wrapper.schema_groups = dict(groups)
        return wrapper

    return decorate
