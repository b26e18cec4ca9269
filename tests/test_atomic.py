"""Writes that are never lost: atomic files with the usual mode, and a lock around every
read-modify-write of a run's tables (two processes writing one table keep each other's rows)."""
import multiprocessing
import os
import stat
from pathlib import Path

import pandas as pd
import pytest

from jrbench.atomic import atomic_write_text, locked
from jrbench.evaluate.api import ATTACK_KEYS, upsert_rows

ROWS = 25


def _writer(path: str, attack: str) -> None:
    for i in range(ROWS):
        upsert_rows(Path(path), pd.DataFrame({"attack": [attack], "norm": ["linf"], "strength": [float(i)],
                                              "loss": ["ce64"], "accuracy": [0.5]}), ATTACK_KEYS)


@pytest.mark.slow
def test_two_processes_writing_one_table_at_once_lose_no_row(tmp_path):
    path = tmp_path / "attacks.csv"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), attack)) for attack in ("pgd", "fgsm")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    table = pd.read_csv(path)
    assert len(table) == 2 * ROWS
    assert table.groupby("attack").size().to_dict() == {"fgsm": ROWS, "pgd": ROWS}
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary file left


def test_atomic_files_get_the_usual_mode_and_the_umask_is_left_alone(tmp_path):
    before = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
        assert os.umask(0o027) == 0o027  # unchanged by the write
    finally:
        os.umask(before)


def test_the_lock_is_a_hidden_file_beside_the_table(tmp_path):
    with locked(tmp_path / "run" / "attacks.csv"):
        assert (tmp_path / "run" / ".attacks.csv.lock").exists()
