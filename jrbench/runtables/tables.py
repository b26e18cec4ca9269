"""Run tables: rows upserted into a run's CSV files under a lock, written atomically."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

from ..atomic import locked
from ..errors import UserError
from ..training import rundir


def upsert_rows(path: Path, new: pd.DataFrame, keys: list[str],
                combine: Callable[[pd.DataFrame, pd.DataFrame], pd.DataFrame] | None = None) -> pd.DataFrame:
    """Replace the rows of ``path`` that share ``keys`` with ``new``'s; write atomically, the whole
    read-modify-write under the file's lock (:func:`jrbench.atomic.locked`): two commands writing
    to one run at once (two attacks, Ray cells on a shared folder) keep each other's rows.
    ``combine(old, new)``, when given, makes the rows that go in from the file's rows and ``new``."""
    with locked(path):
        return _upsert_rows(path, new, keys, combine)


def _upsert_rows(path: Path, new: pd.DataFrame, keys: list[str], combine=None) -> pd.DataFrame:
    if path.is_file():
        old = rundir.read_csv(path)
        if not set(keys) <= set(old.columns):
            raise UserError(f"{path} lacks the columns {keys}; move it away and run again.")
        if combine is not None:
            new = combine(old, new)
        merged = old.merge(new[keys].drop_duplicates(), on=keys, how="left", indicator=True)
        old = old[(merged["_merge"] == "left_only").to_numpy()]
        table = pd.concat([old, new], ignore_index=True) if len(old) else new
    else:
        table = new
    table = table.sort_values(keys, kind="stable").reset_index(drop=True)
    rundir.atomic_write_csv(path, table)
    return table
