"""Find and read result folders: run directories and outside models' result folders.

:func:`find_result_dirs` finds, under the given paths (each a run directory or a folder searched
recursively), the run directories (folders holding ``config.json`` and ``model.pt``) and the
outside models' result folders (``model.json``, see :mod:`jrbench.evaluate.outside`). :func:`read_run`
and :func:`read_model` read one into a :class:`RunRecord`: its config (or model.json), env.json
and whichever of metrics.csv, attacks.csv, attack_examples.csv, margins.csv, jacobian.csv,
certify.csv, certify_examples.csv and certify_bounds.csv are there (certificates are optional: no gap without them). Each missing or unreadable piece is a :class:`Gap` saying what to run;
:func:`jrbench.analysis.results.collect` turns the records into the tidy table.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..training import rundir
from ..config import RunConfig
from ..errors import UserError

ATTACKS, MARGINS, JACOBIAN = "attacks.csv", "margins.csv", "jacobian.csv"
ATTACK_EXAMPLES = "attack_examples.csv"
CERTIFY, CERTIFY_EXAMPLES = "certify.csv", "certify_examples.csv"  # jrbench.certify.api's tables (optional)
CERTIFY_BOUNDS = "certify_bounds.csv"  # jrbench.certify.tight's per example and eps (CROWN, alpha-CROWN, complete)
COUNTEREXAMPLES = "certify_counterexamples.pt"  # complete verification's counterexamples (re-checked by the report)
MODEL_JSON = "model.json"  # jrbench.evaluate.outside.MODEL_JSON: an outside model's result folder


@dataclass
class Gap:
    """Something a run lacks: ``item`` (a file or a quantity) and why, with what to run."""

    run_id: str
    item: str
    reason: str

    def __str__(self) -> str:
        return f"{self.run_id}: {self.item}: {self.reason}"


@dataclass
class RunRecord:
    """One run directory as read: its config, env.json (``{}`` if missing) and tables."""

    path: Path
    run_id: str
    config: RunConfig
    env: dict
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    outside: dict | None = None  # an outside model's model.json (then ``config`` is None)


# ----------------------------------------------------------------------------- finding runs
def _files_under(folder: Path, name: str) -> list[Path]:
    """Every file called ``name`` under ``folder``, following symbolic links to folders (a study
    may link in the run directories of another, benchmarks/corruptions.toml), each real folder once."""
    seen: set[str] = set()
    out: list[Path] = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        if name in files:
            out.append(Path(root) / name)
    return sorted(out)


def is_run_dir(path: Path) -> bool:
    return (path / rundir.CONFIG).is_file() and (path / rundir.MODEL).is_file()


def is_model_dir(path: Path) -> bool:
    """An outside model's result folder: model.json, and no config.json of a trained run."""
    return (path / MODEL_JSON).is_file() and not (path / rundir.CONFIG).exists()


def find_result_dirs(paths: list[str | Path], models: bool = True) -> tuple[list[Path], list[Path], list[Gap]]:
    """(run directories, outside models' result folders, gaps) under ``paths``; at least one
    of the two kinds must be found."""
    from ..evaluate.outside import is_model_source

    if not paths:
        raise UserError("give at least one run directory or folder of runs.")
    found: set[Path] = set()
    unfinished: set[Path] = set()
    outside: set[Path] = set()
    for p in map(Path, paths):
        if not p.is_dir() and is_model_source(p):
            raise UserError(f"{p} is an outside model: attack it first ('jrbench attack {p} --dataset NAME', "
                            "and 'jrbench margins' likewise), then report its result folder (results/models/NAME).")
        if not p.is_dir():
            raise UserError(f"{p} is not a folder: give run directories or folders of runs.")
        try:
            configs = [p / rundir.CONFIG] if (p / rundir.CONFIG).is_file() else _files_under(p, rundir.CONFIG)
        except OSError as e:
            raise UserError(f"{p} cannot be read ({e}).") from e
        for config_path in configs:
            run = config_path.parent.resolve()
            (found if is_run_dir(run) else unfinished).add(run)
        if models:
            model_jsons = [p / MODEL_JSON] if (p / MODEL_JSON).is_file() else _files_under(p, MODEL_JSON)
            outside.update(m.parent.resolve() for m in model_jsons if is_model_dir(m.parent))
    gaps = [Gap(run.name, rundir.MODEL, f"missing in {run}: the run has not finished an epoch; skipped "
                "(resume it with 'jrbench train ... --resume')") for run in sorted(unfinished)]
    if not found and not outside:
        where = ", ".join(str(p) for p in paths)
        note = f" ({len(unfinished)} unfinished: {rundir.CONFIG} without {rundir.MODEL})" if unfinished else ""
        raise UserError(f"no run directories (folders with {rundir.CONFIG} and {rundir.MODEL}) "
                        f"found in {where}{note}; train one with 'jrbench train'.")
    return sorted(found), sorted(outside), gaps


def run_ids(dirs: list[Path]) -> list[str]:
    """Folder names, or paths relative to the common parent where names repeat."""
    names = [d.name for d in dirs]
    if len(set(names)) == len(names):
        return names
    common = Path(os.path.commonpath([str(d) for d in dirs]))
    return [str(d.relative_to(common)) for d in dirs]


# ----------------------------------------------------------------------------- reading a run
def _read_table(path: Path, run_id: str, gaps: list[Gap], hint: str) -> pd.DataFrame | None:
    if not path.is_file():
        gaps.append(Gap(run_id, path.name, f"missing; {hint}"))
        return None
    try:
        table = rundir.read_csv(path)
    except UserError as e:
        gaps.append(Gap(run_id, path.name, f"unreadable ({e}); {hint}"))
        return None
    if table.empty:
        gaps.append(Gap(run_id, path.name, f"empty; {hint}"))
        return None
    return table


def read_run(path: Path, run_id: str) -> tuple[RunRecord | None, list[Gap]]:
    """A run's config, env and tables; None (with a gap) when its config is unreadable."""
    gaps: list[Gap] = []
    try:
        config = rundir.load_config(path)
    except UserError as e:
        return None, [Gap(run_id, rundir.CONFIG, f"{str(e).rstrip('.')}; run skipped")]
    env = _read_env(path, run_id, gaps, missing_is_gap=True)
    hints = {rundir.METRICS: "the run directory is incomplete",
             ATTACKS: f"run 'jrbench attack {path}'",
             MARGINS: f"run 'jrbench margins {path}'",
             JACOBIAN: f"run 'jrbench margins {path}'"}
    tables = {}
    for name, hint in hints.items():
        table = _read_table(path / name, run_id, gaps, hint)
        if table is not None:
            tables[name] = table
    if ATTACKS in tables or (path / ATTACK_EXAMPLES).exists():  # no attacks at all: one gap is enough
        table = _read_table(path / ATTACK_EXAMPLES, run_id, gaps,
                            "no per-example record: robust accuracy falls back to attacks.csv's PGD accuracy "
                            f"(not the worst case over attacks) and one-seed verdicts cannot be tested; "
                            f"re-run 'jrbench attack {path}'")
        if table is not None:
            tables[ATTACK_EXAMPLES] = table
    _read_certificates(path, run_id, gaps, tables, f"re-run 'jrbench certify {path}'")
    metrics = tables.get(rundir.METRICS)
    if metrics is not None and "epoch" in metrics and int(metrics["epoch"].max()) < config.train.epochs:
        gaps.append(Gap(run_id, rundir.METRICS, f"trained {int(metrics['epoch'].max())} of "
                        f"{config.train.epochs} epochs; numbers are of the last finished epoch"))
    return RunRecord(path, run_id, config, env, tables), gaps


def _read_env(path: Path, run_id: str, gaps: list[Gap], missing_is_gap: bool) -> dict:
    """env.json of a run or model folder ({} when absent or unreadable, with a gap saying so)."""
    if not (path / rundir.ENV).is_file():
        if missing_is_gap:
            gaps.append(Gap(run_id, rundir.ENV, "missing; versions and device unknown"))
        return {}
    try:
        return rundir.read_json(path / rundir.ENV)
    except UserError as e:
        gaps.append(Gap(run_id, rundir.ENV, f"{e}; versions and device unknown"))
        return {}


def outside_args(info: dict, path: Path) -> str:
    """The arguments that give ``jrbench attack`` / ``margins`` the same outside model (model.json
    ``info``) and result folder ``path``: source, --weights, --dataset, --input-normalized, --out."""
    args = [str(info.get("file") or info.get("factory") or info.get("class") or "MODEL")]
    if info.get("weights"):
        args += ["--weights", str(info["weights"])]
    args += ["--dataset", str(info["dataset"])]
    norm = info.get("input_normalized")
    if isinstance(norm, dict) and norm.get("mean") and norm.get("std"):
        args += ["--input-normalized", ",".join(f"{v:g}" for v in [*norm["mean"], *norm["std"]])]
    return " ".join(args + ["--out", str(path)])


def read_model(path: Path, run_id: str) -> tuple[RunRecord | None, list[Gap]]:
    """An outside model's result folder: model.json, env.json and the tables of a run. Its
    metrics.csv (written by ``jrbench attack``) holds only the clean accuracy on the whole test
    set; no training, so no R_z, overhead or verdict (one gap says so)."""
    try:
        info = rundir.read_json(path / MODEL_JSON)
    except UserError as e:
        return None, [Gap(run_id, MODEL_JSON, f"{e}; model skipped")]
    if not isinstance(info, dict) or not info.get("dataset") or not info.get("name"):
        return None, [Gap(run_id, MODEL_JSON, "lacks the model's name or data set; model skipped")]
    gaps = [Gap(run_id, rundir.METRICS, "an outside model, not trained by jrbench: no training metrics "
                "(R_z, overhead) and no verdict")]
    env = _read_env(path, run_id, gaps, missing_is_gap=False)
    again = outside_args(info, path)
    tables = {}
    for name, hint in ((rundir.METRICS, f"run 'jrbench attack {again}' (it measures the clean accuracy)"),
                       (ATTACKS, f"run 'jrbench attack {again}'"), (MARGINS, f"run 'jrbench margins {again}'"),
                       (JACOBIAN, f"run 'jrbench margins {again}'")):
        table = _read_table(path / name, run_id, gaps, hint)
        if table is not None:
            tables[name] = table
    if ATTACKS in tables or (path / ATTACK_EXAMPLES).exists():
        table = _read_table(path / ATTACK_EXAMPLES, run_id, gaps, f"re-run 'jrbench attack {again}'")
        if table is not None:
            tables[ATTACK_EXAMPLES] = table
    _read_certificates(path, run_id, gaps, tables, f"re-run 'jrbench certify {again}'")
    return RunRecord(path, run_id, None, env, tables, outside=info), gaps


def _read_certificates(path: Path, run_id: str, gaps: list[Gap], tables: dict, hint: str) -> None:
    """certify.csv and certify_examples.csv into ``tables`` where present (a gap only when one is
    there and unreadable, or one is there without the other); certify_bounds.csv too where present."""
    present = [name for name in (CERTIFY, CERTIFY_EXAMPLES) if (path / name).exists()]
    if not present:
        return
    for name in (CERTIFY, CERTIFY_EXAMPLES):
        table = _read_table(path / name, run_id, gaps, hint)
        if table is not None:
            tables[name] = table
    if (path / CERTIFY_BOUNDS).exists():  # the tight certificates' statuses: optional beside the two
        table = _read_table(path / CERTIFY_BOUNDS, run_id, gaps, hint)
        if table is not None:
            tables[CERTIFY_BOUNDS] = table
