"""TOML spec files (sweep studies, the overhead gate, budgets): read once, errors with lines.

``tomllib`` gives the values but not where they are written. :class:`SpecFile` keeps the text
beside the parsed document and finds the line of a key within its own table, so a bad
``batch_size`` of ``[attack]`` is blamed on that line, not on ``[base]``'s. A table is named
by its path: ``()`` the top level, ``("attack",)`` the ``[attack]`` table, ``("case", 1)`` the
second ``[[case]]`` table (0-based, as in the list ``tomllib`` returns). A syntax error
becomes a :class:`UserError` naming its line.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError

Table = tuple  # ("attack",), ("case", 1), (): names of tables, indexes of [[array]] entries


@dataclass
class SpecFile:
    """A parsed TOML file: its ``path`` (for messages), ``text``, ``doc`` and key lines."""

    path: Path
    text: str
    doc: dict[str, Any]
    lines: dict[tuple[Table, str | None], int] = field(default_factory=dict)  # (table, key) -> line

    def line(self, table: Table = (), key: str | None = None) -> int | None:
        """The 1-based line of ``key`` in ``table`` (``key`` None: the table's header), else the
        line of the nearest enclosing thing that is written (an inline table's key, the
        header); None when nothing is."""
        while True:
            if (table, key) in self.lines:
                return self.lines[(table, key)]
            if key is not None:
                key = None
            elif not table:
                return None
            elif isinstance(table[-1], int):
                table = table[:-1]
            else:
                table, key = table[:-1], table[-1]

    def where(self, table: Table = (), key: str | None = None) -> str:
        """'PATH, line N' of ``key`` in ``table``, or 'PATH' when it has no line."""
        n = self.line(table, key)
        return f"{self.path}, line {n}" if n else str(self.path)

    def error(self, message: str, table: Table = (), key: str | None = None) -> UserError:
        """A :class:`UserError` 'PATH, line N: message' for ``key`` in ``table``."""
        return UserError(f"{self.where(table, key)}: {message}")


def read_spec(path: str | Path, what: str = "spec file") -> SpecFile:
    """Read and parse the TOML file ``path``; ``what`` names it when it cannot be read."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise UserError(f"cannot read the {what} {path}: {e}") from e
    return parse_spec_text(text, path)


def parse_spec_text(text: str, path: str | Path) -> SpecFile:
    """Parse TOML ``text`` (``path`` names it in messages); a syntax error names its line."""
    path = Path(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        at = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
        if at:
            where = f"{path}, line {at[1]}, column {at[2]}"
            message = message[:at.start()]
        elif message.endswith("(at end of document)"):
            where = f"{path}, line {max(1, len(text.splitlines()))} (the end)"
            message = message.removesuffix("(at end of document)").rstrip()
        else:
            where = str(path)
        raise UserError(f"{where}: not valid TOML: {message}.") from e
    return SpecFile(path, text, doc, _key_lines(text))


# ----------------------------------------------------------------------------- where keys are
def _key_lines(text: str) -> dict[tuple[Table, str | None], int]:
    """(table, key) -> line for every key and every table header of valid TOML ``text``.

    Lines that continue a value (a multi-line array, inline table or string) are skipped; the
    ``[[x]]`` entries are numbered from 0 per array, nested ones within their parent entry."""
    lines: dict[tuple[Table, str | None], int] = {}
    counts: dict[Table, int] = {}  # path of an array of tables -> index of its current entry
    table: Table = ()
    state = _ValueState()
    for n, raw in enumerate(text.splitlines(), 1):
        if state.open:  # inside a value started on an earlier line
            state.scan(raw, 0)
            continue
        s = raw.lstrip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("["):
            array = s.startswith("[[")
            names, _ = _read_key(s, 2 if array else 1, "]")
            parent = _resolve(tuple(names[:-1]), counts)
            table = parent + (names[-1],)
            if array:
                counts[table] = counts.get(table, -1) + 1
                table = table + (counts[table],)
            lines.setdefault((table, None), n)
            continue
        names, end = _read_key(s, 0, "=")
        for i in range(len(names)):  # a.b.c = 1: a and a.b are written here too
            lines.setdefault((table + tuple(names[:i]), names[i]), n)
        state.scan(s, end + 1)
    return lines


def _resolve(names: Table, counts: dict[Table, int]) -> Table:
    """The path of a header's parent names, with the current index after each array of tables."""
    path: Table = ()
    for name in names:
        path = path + (name,)
        if path in counts:
            path = path + (counts[path],)
    return path


def _read_key(s: str, pos: int, stop: str) -> tuple[list[str], int]:
    """The dotted key in ``s`` from ``pos`` up to ``stop`` (outside quotes): its parts, and
    the position of ``stop``."""
    parts, current, i = [], "", pos
    while i < len(s) and s[i] != stop:
        c = s[i]
        if c in "\"'":
            j = i + 1
            while j < len(s) and s[j] != c:
                j += 2 if c == '"' and s[j] == "\\" else 1
            current += s[i + 1:j]
            i = j + 1
            continue
        if c == ".":
            parts.append(current.strip())
            current = ""
        else:
            current += c
        i += 1
    parts.append(current.strip())
    return parts, i


class _ValueState:
    """Whether a value is still open at the end of a line: brackets or a multi-line string."""

    def __init__(self) -> None:
        self.depth = 0          # [ and { not yet closed
        self.string = ""        # the delimiter of an open multi-line string ('"""' or "'''")

    @property
    def open(self) -> bool:
        return self.depth > 0 or bool(self.string)

    def scan(self, s: str, i: int) -> None:
        while i < len(s):
            if self.string:
                end = s.find(self.string, i)
                while end > 0 and self.string == '"""' and _escaped(s, end):
                    end = s.find(self.string, end + 1)
                if end < 0:
                    return
                i, self.string = end + 3, ""
                continue
            c = s[i]
            if c == "#":
                return
            if s.startswith('"""', i) or s.startswith("'''", i):
                self.string, i = s[i:i + 3], i + 3
            elif c in "\"'":
                j = i + 1
                while j < len(s) and s[j] != c:
                    j += 2 if c == '"' and s[j] == "\\" else 1
                i = j + 1
            else:
                self.depth += (c in "[{") - (c in "]}")
                i += 1


def _escaped(s: str, i: int) -> bool:
    """Whether ``s[i]`` follows an odd number of backslashes."""
    k = i
    while k > 0 and s[k - 1] == "\\":
        k -= 1
    return (i - k) % 2 == 1
