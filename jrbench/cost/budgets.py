"""Overhead budgets: ``[[case]]`` tables of the most a case may cost, checked on a timing's summary.

A budget file (``jrbench overhead --check FILE``) and the gate spec's loose bounds hold
``[[case]]`` tables: ``name`` (an overhead case, e.g. "jacobian-n1"), ``max_ratio`` (the most
its median step time may be, as a multiple of ``against``) and optional ``against`` (default
"plain"; or another case, e.g. "reference-exact"); ``measured`` and ``note`` are free text.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import UserError
from ..specfile import SpecFile, read_spec

BUDGET_FIELDS = ("name", "max_ratio", "against", "measured", "note")


@dataclass(frozen=True)
class Budget:
    case: str
    max_ratio: float
    against: str  # "plain" or another case, e.g. "reference-exact"
    line: int     # of the case's name in its file (0: not from a file)


def load_budget(path: str | Path) -> list[Budget]:
    """Read a budget file: ``[[case]]`` tables with ``name``, ``max_ratio`` and optional ``against``."""
    return parse_budgets(read_spec(path, "budget file"))


def parse_budgets(f: SpecFile) -> list[Budget]:
    """The ``[[case]]`` tables of a parsed file -> budgets; a bad field is named with its own line."""
    entries = f.doc.get("case")
    if not isinstance(entries, list) or not entries:
        raise f.error("expected one or more [[case]] tables with fields name and max_ratio.", (), "case")
    budgets = []
    for i, entry in enumerate(entries):
        table = ("case", i)
        if not isinstance(entry, dict):
            raise f.error(f"[[case]] number {i + 1} must be a table with fields name and max_ratio.", table)
        name = entry.get("name")
        if not isinstance(name, str):
            raise f.error("field 'name' must be a case name such as \"jacobian-n1\".", table, "name")
        ratio = entry.get("max_ratio")
        if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or ratio <= 0:
            raise f.error(f"field 'max_ratio' of case '{name}' must be a positive number, got {ratio!r}.",
                          table, "max_ratio")
        against = entry.get("against", "plain")
        if not isinstance(against, str):
            raise f.error(f"field 'against' of case '{name}' must be a case name.", table, "against")
        unknown = [k for k in entry if k not in BUDGET_FIELDS]
        if unknown:
            raise f.error(f"unknown field(s) {sorted(unknown)} in case '{name}' (known: {', '.join(BUDGET_FIELDS)}).",
                          table, unknown[0])
        budgets.append(Budget(name, float(ratio), against, f.line(table, "name") or 0))
    return budgets


def check_budget_cases(budgets: list[Budget], cases: list) -> None:
    """Fail before any timing when a budget names a case this run will not time (``cases``:
    the run's OverheadCases)."""
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
