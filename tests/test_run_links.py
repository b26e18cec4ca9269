"""A folder of runs may hold symbolic links to run directories of another study
(benchmarks/corruptions.toml links in the bracket study's runs): the report finds them, once each."""
import os

import pytest

from jrbench.analysis.run_records import find_result_dirs
from jrbench.errors import UserError
from jrbench.training import rundir


def _fake_run(path):
    path.mkdir(parents=True)
    (path / rundir.CONFIG).write_text("{}")
    (path / rundir.MODEL).write_bytes(b"")


def test_linked_run_directories_are_found_once(tmp_path):
    _fake_run(tmp_path / "bracket" / "run-a")
    _fake_run(tmp_path / "bracket" / "run-b")
    study = tmp_path / "corruptions"
    study.mkdir()
    for name in ("run-a", "run-b"):
        os.symlink(tmp_path / "bracket" / name, study / name)
    os.symlink(tmp_path / "bracket" / "run-a", study / "again")   # the same run twice
    os.symlink(study, study / "loop")                             # a cycle ends
    runs, outside, gaps = find_result_dirs([study])
    assert [r.name for r in runs] == ["run-a", "run-b"]
    assert outside == [] and gaps == []


def test_a_folder_with_only_broken_links_has_no_runs(tmp_path):
    study = tmp_path / "s"
    study.mkdir()
    os.symlink(tmp_path / "missing", study / "gone")
    with pytest.raises(UserError, match="no run directories"):
        find_result_dirs([study])
