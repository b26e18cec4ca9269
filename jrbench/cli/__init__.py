"""The command line: one module per command, thin Typer commands over the library's plain functions.

Each command parses its options into configs (their flags come from the configs' schema,
:mod:`jrbench.cli.options`), calls the library and prints. :mod:`jrbench.cli.common` holds what
they share: the app, the error wrapper (user mistakes: one message, exit code 2), progress bars
and the loop over runs and outside models. Commands never call one another's Typer functions.
"""
from __future__ import annotations

from . import train, attack, margins, certify, report, sweep, demo, frontier, overhead, gate, listing  # noqa: F401,I001 (registers the commands in this order)
from .common import app


def main() -> None:  # pragma: no cover
    app()
