"""Collect run directories into one tidy table: one measurement a row, with provenance.

``collect(paths)`` finds the run directories under ``paths`` (folders holding ``config.json``
and ``model.pt``, searched recursively) and reads, per run, what is there:

- ``metrics.csv``  the last epoch's numbers (table ``metrics``, statistic ``last_epoch``);
- ``attacks.csv``  accuracy under noise / PGD / FGSM / AutoAttack at each strength, with its
  95% CI (table ``attacks``, quantity ``accuracy``; strengths are sigma or eps in pixel units);
- ``attack_examples.csv`` one row per (example, attack, norm, strength, loss): the **worst
  case** per example, attack ``worst-case``: at each norm and strength an example counts as
  robust only if it is robust under every adversarial attack run there (every attack but
  ``noise``: PGD, FGSM, AutoAttack and its components, every loss), over the examples every
  one of them covered; ``settings`` names the attacks (``attacks=pgd/ce64+fgsm/ce64+...``).
  A run without the file (older runs) has no worst case, and a gap says so: the report falls
  back to attacks.csv's PGD accuracy, an upper bound on the worst case;
- ``margins.csv``  L2 margins in pixel units of the correctly classified examples:
  median (with a distribution-free 95% CI from order statistics), quartiles and mean;
  DeepFool success rates (table ``margins``);
- ``jacobian.csv`` per-example ||J||_F, spectral norm, stable rank and singular values,
  with respect to the normalized input z (suffix ``_z``) and to pixels (``_pixel``);
  ``R_z`` = 1/2 ||J_z||_F^2, the quantity the regularizer penalizes (table ``jacobian``);
- the training overhead: the run's seconds_per_step over the median of the plain runs'
  (``--reg none``) with the same data set, model, batch size and device (table ``overhead``;
  NaN, and a gap, when the collection holds no such plain run). seconds_per_step is the
  fastest epoch's median step time: load from other processes only ever slows an epoch
  down, and the first epoch carries the warm-up, so the minimum over epochs is the least
  disturbed estimate (interleaved timing in benchmarks/ is the better measurement).

Outside models' result folders (``model.json``, see :mod:`jrbench.outside`) are collected beside
the runs (``Collection.models``): their name is the group label, ``regularizers`` reads
``outside``, and the training columns are NaN, named in one gap.

Runs whose files are missing or unreadable are kept with what is there; each missing piece
is a :class:`Gap`. The library never prints: the CLI shows the gaps.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import rundir
from .config import DataConfig, RunConfig, TrainConfig
from .errors import UserError
from .stats import mean_ci, median_ci, wilson_interval  # noqa: F401  (re-exported)

ATTACKS, MARGINS, JACOBIAN = "attacks.csv", "margins.csv", "jacobian.csv"
ATTACK_EXAMPLES = "attack_examples.csv"
MODEL_JSON = "model.json"  # jrbench.outside.MODEL_JSON: an outside model's result folder
EXAMPLE_COLUMNS = ["example", "attack", "norm", "strength", "loss", "clean_correct", "robust", "broken",
                   "example_seed"]
WORST_CASE = "worst-case"  # attack name of the worst case over every adversarial attack (tidy table)
ATTACK_ORDER = ["pgd", "fgsm", "autoattack", "aa-apgd-ce", "aa-apgd-t", "aa-fab-t", "aa-square"]
PROVENANCE = ["run_id", "group_id", "group_label", "dataset", "model", "regularizers", "lambda_jr",
              "n_proj", "jr_subsample", "seed", "batch_size", "epochs", "device", "torch_version",
              "torchvision_version", "torchattacks_version", "jrbench_version", "git_commit", "run_dir"]
MEASURE = ["table", "quantity", "attack", "norm", "strength", "loss", "k", "statistic", "value",
           "ci_low", "ci_high", "n", "settings", "source"]
TIDY_COLUMNS = MEASURE + PROVENANCE
MARGIN_QUANTITIES = ["margin_random_median", "margin_random_min", "margin_adv_l2", "margin_first_order"]
RATE_QUANTITIES = ["adv_success", "adv_success_clipped", "margin_random_found_frac"]
JACOBIAN_QUANTITIES = ["frobenius_z", "R_z", "spectral_z", "stable_rank_z", "frobenius_pixel",
                       "spectral_pixel", "stable_rank_pixel", "radius_first_order_local"]


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


@dataclass
class Collection:
    """``summary``: the tidy table (:data:`TIDY_COLUMNS`); ``examples``: per-example margins
    (run_id, group_id, group_label, quantity, index, value; pixel L2 units), for ECDFs."""

    runs: list[RunRecord]
    summary: pd.DataFrame
    examples: pd.DataFrame
    gaps: list[Gap]
    paths: list[Path]
    models: list[RunRecord] = field(default_factory=list)  # outside models' result folders (model.json)


# ----------------------------------------------------------------------------- finding runs
def is_run_dir(path: Path) -> bool:
    return (path / rundir.CONFIG).is_file() and (path / rundir.MODEL).is_file()


def find_run_dirs(paths: list[str | Path]) -> tuple[list[Path], list[Gap]]:
    """Run directories named by ``paths`` (each a run directory or a folder searched
    recursively), sorted and without repeats; gaps for unfinished runs (no model.pt)."""
    runs, _, gaps = find_result_dirs(paths, models=False)
    return runs, gaps


def is_model_dir(path: Path) -> bool:
    """An outside model's result folder: model.json, and no config.json of a trained run."""
    return (path / MODEL_JSON).is_file() and not (path / rundir.CONFIG).exists()


def find_result_dirs(paths: list[str | Path], models: bool = True) -> tuple[list[Path], list[Path], list[Gap]]:
    """(run directories, outside models' result folders, gaps) under ``paths``; at least one
    of the two kinds must be found."""
    from .outside import is_model_source

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
            configs = [p / rundir.CONFIG] if (p / rundir.CONFIG).is_file() else sorted(p.rglob(rundir.CONFIG))
        except OSError as e:
            raise UserError(f"{p} cannot be read ({e}).") from e
        for config_path in configs:
            run = config_path.parent.resolve()
            (found if is_run_dir(run) else unfinished).add(run)
        if models:
            model_jsons = [p / MODEL_JSON] if (p / MODEL_JSON).is_file() else sorted(p.rglob(MODEL_JSON))
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
        return None, [Gap(run_id, rundir.CONFIG, f"{e}; run skipped")]
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


def read_model(path: Path, run_id: str) -> tuple[RunRecord | None, list[Gap]]:
    """An outside model's result folder: model.json, env.json and the tables of a run; no
    training, so no metrics.csv (one gap says so)."""
    try:
        info = rundir.read_json(path / MODEL_JSON)
    except UserError as e:
        return None, [Gap(run_id, MODEL_JSON, f"{e}; model skipped")]
    if not isinstance(info, dict) or not info.get("dataset") or not info.get("name"):
        return None, [Gap(run_id, MODEL_JSON, "lacks the model's name or data set; model skipped")]
    gaps = [Gap(run_id, rundir.METRICS, "an outside model, not trained by jrbench: no training metrics "
                "(clean test accuracy, R_z, overhead) and no verdict")]
    env = _read_env(path, run_id, gaps, missing_is_gap=False)
    source = info.get("file") or info.get("factory") or info.get("class") or "MODEL"
    again = f"{source} --dataset {info['dataset']} --out {path}"
    tables = {}
    for name, hint in ((ATTACKS, f"run 'jrbench attack {again}'"), (MARGINS, f"run 'jrbench margins {again}'"),
                       (JACOBIAN, f"run 'jrbench margins {again}'")):
        table = _read_table(path / name, run_id, gaps, hint)
        if table is not None:
            tables[name] = table
    if ATTACKS in tables or (path / ATTACK_EXAMPLES).exists():
        table = _read_table(path / ATTACK_EXAMPLES, run_id, gaps, f"re-run 'jrbench attack {again}'")
        if table is not None:
            tables[ATTACK_EXAMPLES] = table
    return RunRecord(path, run_id, None, env, tables, outside=info), gaps


def model_group_id(info: dict) -> str:
    """One group per outside model: its data set, name and a digest of its identity."""
    from .outside import IDENTITY

    digest = hashlib.sha1(json.dumps({k: info.get(k) for k in IDENTITY}, sort_keys=True,
                                     default=str).encode()).hexdigest()[:6]
    return f"{info['dataset']}-model-{info['name']}-{digest}"


def model_provenance(record: RunRecord) -> dict:
    """The provenance columns of an outside model: its name as model and group label; training
    columns (regularizers' weights, seed, batch size, epochs) NaN."""
    info, packages = record.outside, record.env.get("packages", {}) or {}
    return {
        "run_id": record.run_id, "group_id": model_group_id(info), "group_label": info["name"],
        "dataset": info["dataset"], "model": info["name"], "regularizers": "outside",
        "lambda_jr": math.nan, "n_proj": math.nan, "jr_subsample": math.nan, "seed": math.nan,
        "batch_size": math.nan, "epochs": math.nan, "device": device_label(record.env),
        "torch_version": packages.get("torch"), "torchvision_version": packages.get("torchvision"),
        "torchattacks_version": packages.get("torchattacks"), "jrbench_version": packages.get("jrbench"),
        "git_commit": record.env.get("git_commit"), "run_dir": str(record.path),
    }


# ----------------------------------------------------------------------------- provenance
def relevant_config(config: RunConfig) -> dict:
    """The config without what does not change the result: seed, device, data folder, and the
    settings of regularizers the run does not use."""
    d = config.to_dict()
    d["data"].pop("data_dir")
    d["train"].pop("device")
    d["train"].pop("seed")
    names = set(config.reg.names)
    unused = {"jacobian": ("lambda_jr", "n_proj", "jr_subsample"), "l2": ("weight_decay",),
              "dropout": ("dropout",), "input-grad": ("lambda_ig",)}
    for reg, keys in unused.items():
        if reg not in names:
            for key in keys:
                d["reg"].pop(key)
    return d


def group_id(config: RunConfig) -> str:
    """Runs with the same group id differ at most by seed (and device / data folder)."""
    digest = hashlib.sha1(json.dumps(relevant_config(config), sort_keys=True).encode()).hexdigest()[:6]
    return f"{config.data.dataset}-{config.model.name}-{'+'.join(config.reg.names)}-{digest}"


def short_label(config: RunConfig) -> str:
    """A readable label: model, regularizers and their weights."""
    r = config.reg
    parts = [config.model.name, "+".join(r.names)]
    if "jacobian" in r.names:
        parts.append(f"λ_JR={r.lambda_jr:g}")
        parts.append("exact" if r.n_proj == -1 else f"n_proj={r.n_proj}")
        if r.jr_subsample is not None:
            parts.append(f"sub={r.jr_subsample}")
    if "l2" in r.names:
        parts.append(f"wd={r.weight_decay:g}")
    if "dropout" in r.names:
        parts.append(f"p={r.dropout:g}")
    if "input-grad" in r.names:
        parts.append(f"λ_IG={r.lambda_ig:g}")
    return " ".join(parts)


def group_labels(records: list[RunRecord]) -> dict[str, str]:
    """group_id -> label; the data set is added when there are several, the id's digest
    when two groups would otherwise read the same."""
    groups = {group_id(r.config): r.config for r in records}
    several = len({c.data.dataset for c in groups.values()}) > 1
    labels = {g: (f"{c.data.dataset} " if several else "") + short_label(c) for g, c in groups.items()}
    counts = pd.Series(list(labels.values())).value_counts()
    return {g: (f"{lab} [{g.rsplit('-', 1)[1]}]" if counts[lab] > 1 else lab) for g, lab in labels.items()}


def device_label(env: dict) -> str | None:
    """'cpu (x86_64)', 'cuda:0 (NVIDIA H100 ...)' from env.json; None when unknown."""
    device, name = env.get("device"), env.get("device_name")
    if device and name:
        return f"{device} ({name})"
    return device or name


def provenance(record: RunRecord, label: str) -> dict:
    c, packages = record.config, record.env.get("packages", {}) or {}
    jac = "jacobian" in c.reg.names
    return {
        "run_id": record.run_id, "group_id": group_id(c), "group_label": label,
        "dataset": c.data.dataset, "model": c.model.name, "regularizers": "+".join(c.reg.names),
        "lambda_jr": c.reg.lambda_jr if jac else 0.0,
        "n_proj": float(c.reg.n_proj) if jac else math.nan,
        "jr_subsample": float(c.reg.jr_subsample) if jac and c.reg.jr_subsample else math.nan,
        "seed": c.train.seed, "batch_size": c.train.batch_size, "epochs": c.train.epochs,
        "device": device_label(record.env),
        "torch_version": packages.get("torch"), "torchvision_version": packages.get("torchvision"),
        "torchattacks_version": packages.get("torchattacks"), "jrbench_version": packages.get("jrbench"),
        "git_commit": record.env.get("git_commit"), "run_dir": str(record.path),
    }


def _num(value: float) -> str:
    """The shortest text that reads back as the same float."""
    return repr(float(value))


def train_command(config: RunConfig, out: str | Path | None = None) -> str:
    """The ``jrbench train ...`` command line that makes ``config`` (run ids match).

    Settings the CLI cannot set (subset_seed, jacobian_eval_examples, eval_batch_size) are
    added as a trailing comment when they differ from the defaults.
    """
    c, r, t = config.data, config.reg, config.train
    args = ["jrbench", "train", "--dataset", c.dataset, "--model", config.model.name]
    for name in r.names:
        args += ["--reg", name]
    if "jacobian" in r.names:
        args += ["--lambda-jr", _num(r.lambda_jr), "--n-proj", str(r.n_proj)]
        if r.jr_subsample is not None:
            args += ["--jr-subsample", str(r.jr_subsample)]
        for flag, value, default in (("--jr-estimator", r.jr_estimator, "vjp"), ("--jr-every", r.jr_every, 1),
                                     ("--jr-backend", r.jr_backend, "auto")):
            if value != default:
                args += [flag, str(value)]
    if "l2" in r.names:
        args += ["--weight-decay", _num(r.weight_decay)]
    if "dropout" in r.names:
        args += ["--dropout", _num(r.dropout)]
    if "input-grad" in r.names:
        args += ["--lambda-ig", _num(r.lambda_ig)]
    args += ["--epochs", str(t.epochs), "--batch-size", str(t.batch_size), "--lr", _num(t.lr),
             "--momentum", _num(t.momentum), "--schedule", t.schedule]
    if t.schedule == "step":
        args += ["--step-epochs", str(t.step_epochs), "--gamma", _num(t.gamma)]
    args += ["--seed", str(t.seed), "--device", t.device]
    for flag, value in (("--data-dir", c.data_dir), ("--train-subset", c.train_subset),
                        ("--test-subset", c.test_subset), ("--out", out)):
        if value is not None:
            args += [flag, str(value)]
    command = shlex.join(args)
    defaults = {"subset_seed": DataConfig().subset_seed,
                "jacobian_eval_examples": TrainConfig().jacobian_eval_examples,
                "eval_batch_size": TrainConfig().eval_batch_size}
    values = {"subset_seed": c.subset_seed, "jacobian_eval_examples": t.jacobian_eval_examples,
              "eval_batch_size": t.eval_batch_size}
    extra = [f"{k}={v}" for k, v in values.items() if v != defaults[k]]
    if extra:
        command += "  # Python API only: " + ", ".join(extra)
    return command


def _row(table: str, quantity: str, value: float, **kw) -> dict:
    return {"table": table, "quantity": quantity, "value": float(value), **kw}


# ----------------------------------------------------------------------------- tidy rows
def metrics_rows(record: RunRecord) -> list[dict]:
    """Every numeric column of the last epoch of metrics.csv; seconds_per_step also as its
    minimum over epochs (statistic ``min_over_epochs``)."""
    last = record.tables[rundir.METRICS].iloc[-1]
    source = str(record.path / rundir.METRICS)
    rows = [_row("metrics", col, last[col], statistic="last_epoch", source=source)
            for col in last.index
            if pd.api.types.is_number(last[col]) and not isinstance(last[col], bool) and pd.notna(last[col])]
    spp = _seconds_per_step(record)
    if math.isfinite(spp):
        rows.append(_row("metrics", "seconds_per_step", spp, statistic="min_over_epochs", source=source))
    return rows


def _attack_settings(r) -> str:
    keys = ("draws",) if r.attack == "noise" else ("steps", "restarts", "alpha")
    parts = [f"{k}={getattr(r, k):g}" for k in keys if k in r._fields and pd.notna(getattr(r, k))]
    for k in ("seed", "example_seed"):
        if k in r._fields and pd.notna(getattr(r, k)):
            parts.append(f"{k}={int(getattr(r, k))}")
    return " ".join(parts)


def attack_rows(record: RunRecord) -> list[dict]:
    """Accuracy (95% CI) per attack, norm, strength (pixel units) and loss."""
    table, source = record.tables[ATTACKS], str(record.path / ATTACKS)
    need = {"attack", "norm", "strength", "accuracy"}
    if not need <= set(table.columns):
        raise UserError(f"{source} lacks the columns {sorted(need - set(table.columns))}.")
    rows = []
    for r in table.itertuples(index=False):
        rows.append(_row("attacks", "accuracy", r.accuracy, attack=r.attack, norm=r.norm,
                         strength=float(r.strength), loss=getattr(r, "loss", None), statistic="mean",
                         ci_low=getattr(r, "ci_low", math.nan), ci_high=getattr(r, "ci_high", math.nan),
                         n=getattr(r, "n_examples", math.nan), settings=_attack_settings(r), source=source))
    return rows


def check_attack_examples(table: pd.DataFrame, source: str = ATTACK_EXAMPLES) -> pd.DataFrame:
    """attack_examples.csv as read, checked: the columns of :data:`EXAMPLE_COLUMNS` (example_seed
    and broken may be absent), adversarial ``robust`` values 0 or 1, noise shares in [0, 1]."""
    need = set(EXAMPLE_COLUMNS) - {"example_seed", "broken"}
    if not need <= set(table.columns):
        raise UserError(f"{source} lacks the columns {sorted(need - set(table.columns))}.")
    table = table.assign(loss=table["loss"].fillna("none").astype(str), strength=table["strength"].astype(float))
    robust = pd.to_numeric(table["robust"], errors="coerce")
    adversarial = table["attack"] != "noise"
    if robust.isna().any() or not robust.between(0, 1).all() or not robust[adversarial].isin([0, 1]).all():
        raise UserError(f"{source}: 'robust' must be 0 or 1 for attacks and a share in [0, 1] for noise.")
    return table.assign(robust=robust)


def _attack_key(name: str) -> tuple:
    attack = name.split("/")[0]
    return (ATTACK_ORDER.index(attack) if attack in ATTACK_ORDER else len(ATTACK_ORDER), name)


def worst_case_examples(table: pd.DataFrame) -> pd.DataFrame:
    """Per norm, strength and example: robust (0/1) only if robust under every adversarial
    attack (every attack but 'noise', every loss) run at that norm and strength.

    ``table``: attack_examples.csv (:func:`check_attack_examples`). Only the examples that
    every one of those attacks covered are kept. Columns: norm, strength, example,
    clean_correct, robust, attacks (the attacks that went into it, 'pgd/ce64+fgsm/ce64+...'),
    n_attacks, n_left_out (examples some attack at that strength did not cover)."""
    columns = ["norm", "strength", "example", "clean_correct", "robust", "attacks", "n_attacks", "n_left_out"]
    adv = table[table["attack"] != "noise"]
    if adv.empty:
        return pd.DataFrame(columns=columns)
    adv = adv.assign(_name=np.where(adv["loss"] == "none", adv["attack"], adv["attack"] + "/" + adv["loss"]))
    out = []
    for (norm, strength), sel in adv.groupby(["norm", "strength"], sort=True):
        names = sorted(sel["_name"].unique(), key=_attack_key)
        per = sel.groupby("example").agg(clean_correct=("clean_correct", "min"), robust=("robust", "min"),
                                         _n=("_name", "nunique"))
        covered = per[per["_n"] == len(names)].drop(columns="_n")
        out.append(covered.reset_index().assign(norm=norm, strength=float(strength), attacks="+".join(names),
                                                n_attacks=len(names), n_left_out=len(per) - len(covered)))
    return pd.concat(out, ignore_index=True)[columns]


def worst_case_rows(record: RunRecord) -> list[dict]:
    """Worst-case robust accuracy (95% Wilson CI over examples) per norm and strength, attack
    ``worst-case``; ``settings`` names the attacks that went into it."""
    source = str(record.path / ATTACK_EXAMPLES)
    table = check_attack_examples(record.tables[ATTACK_EXAMPLES], source)
    worst = worst_case_examples(table)
    seeds = table["example_seed"].dropna().unique() if "example_seed" in table else []
    rows = []
    for (norm, strength), sel in worst.groupby(["norm", "strength"], sort=True):
        k, n = int(sel["robust"].sum()), len(sel)
        settings = f"attacks={sel['attacks'].iloc[0]}"
        if int(sel["n_left_out"].iloc[0]):
            settings += f" left_out={int(sel['n_left_out'].iloc[0])}"
        if len(seeds) == 1:
            settings += f" example_seed={int(seeds[0])}"
        lo, hi = wilson_interval(k, n)
        rows.append(_row("attacks", "accuracy", k / n if n else math.nan, attack=WORST_CASE, norm=norm,
                         strength=float(strength), loss="none", statistic="mean", ci_low=lo, ci_high=hi, n=n,
                         settings=settings, source=source))
    return rows


def margins_rows(record: RunRecord) -> tuple[list[dict], pd.DataFrame]:
    """Median (CI), quartiles and mean of each margin (pixel L2) over the correctly classified
    examples, DeepFool success rates; and the per-example margins."""
    table, source = record.tables[MARGINS], str(record.path / MARGINS)
    if "correct" in table:
        table = table[table["correct"].astype(bool)]
    settings = " ".join(f"{k}={int(table[k].iloc[0])}" for k in ("n_directions", "direction_seed")
                        if k in table and len(table))
    rows, examples = [], []
    for q in [c for c in MARGIN_QUANTITIES + ["logit_gap"] if c in table]:
        v = table[q].to_numpy(dtype=float)
        v = v[~np.isnan(v)]
        lo, hi = median_ci(v)
        kw = dict(n=len(v), settings=settings, source=source)
        rows.append(_row("margins", q, np.median(v) if len(v) else math.nan, statistic="median",
                         ci_low=lo, ci_high=hi, **kw))
        for name, p in (("q25", 25), ("q75", 75)):
            value = np.percentile(v, p, method="inverted_cdf") if len(v) else math.nan  # inf-safe
            rows.append(_row("margins", q, value, statistic=name, **kw))
        rows.append(_row("margins", q, np.mean(v) if len(v) else math.nan, statistic="mean", **kw))
        if q in MARGIN_QUANTITIES:
            index = table["index"] if "index" in table else pd.RangeIndex(len(table))
            examples.append(pd.DataFrame({"quantity": q, "index": np.asarray(index), "value": table[q].to_numpy(float)}))
    for q in [c for c in RATE_QUANTITIES if c in table]:
        v = table[q].astype(float).to_numpy()
        lo, hi = wilson_interval(v.sum(), len(v)) if q != "margin_random_found_frac" else (math.nan, math.nan)
        rows.append(_row("margins", q, v.mean() if len(v) else math.nan, statistic="mean", ci_low=lo,
                         ci_high=hi, n=len(v), settings=settings, source=source))
    return rows, (pd.concat(examples, ignore_index=True) if examples else pd.DataFrame())


def jacobian_rows(record: RunRecord) -> list[dict]:
    """Mean (CI) and median of ||J||_F, R_z = 1/2 ||J_z||_F^2, spectral norm, stable rank,
    local radius; mean singular value k (``k`` column) in each space."""
    table, source = record.tables[JACOBIAN].copy(), str(record.path / JACOBIAN)
    if "frobenius_z" in table:
        table["R_z"] = 0.5 * table["frobenius_z"] ** 2
    rows = []
    for q in [c for c in JACOBIAN_QUANTITIES if c in table]:
        v = table[q].to_numpy(dtype=float)
        v = v[~np.isnan(v)]
        mean, lo, hi = mean_ci(v)
        rows.append(_row("jacobian", q, mean, statistic="mean", ci_low=lo, ci_high=hi, n=len(v), source=source))
        rows.append(_row("jacobian", q, np.median(v) if len(v) else math.nan, statistic="median",
                         n=len(v), source=source))
    for space in ("z", "pixel"):
        ks = sorted(int(c.split("_")[1]) for c in table if c.startswith("sv_") and c.endswith(f"_{space}"))
        for k in ks:
            v = table[f"sv_{k}_{space}"].to_numpy(dtype=float)
            mean, lo, hi = mean_ci(v[~np.isnan(v)])
            rows.append(_row("jacobian", f"singular_value_{space}", mean, k=float(k), statistic="mean",
                             ci_low=lo, ci_high=hi, n=int((~np.isnan(v)).sum()), source=source))
    return rows


def _seconds_per_step(record: RunRecord) -> float:
    """The fastest epoch's median seconds per step (NaN when unknown)."""
    metrics = record.tables.get(rundir.METRICS)
    if metrics is None or "seconds_per_step" not in metrics or metrics["seconds_per_step"].isna().all():
        return math.nan
    return float(metrics["seconds_per_step"].min())


def _timing_key(record: RunRecord) -> tuple:
    c = record.config
    return c.data.dataset, c.model.name, c.train.batch_size, device_label(record.env)


def overhead_rows(records: list[RunRecord]) -> tuple[list[tuple[RunRecord, dict]], list[Gap]]:
    """seconds_per_step (fastest epoch) of each run over the median of the plain runs' with the
    same data set, model, batch size and device; NaN (and a gap) where there is none."""
    plain: dict[tuple, list[tuple[str, float]]] = {}
    for r in records:
        spp = _seconds_per_step(r)
        if r.config.reg.names == ["none"] and math.isfinite(spp) and r.env:
            plain.setdefault(_timing_key(r), []).append((r.run_id, spp))
    rows, gaps = [], []
    for r in records:
        spp = _seconds_per_step(r)
        if not math.isfinite(spp):
            continue
        matches = plain.get(_timing_key(r), [])
        value = spp / float(np.median([s for _, s in matches])) if matches else math.nan
        if not matches:
            gaps.append(Gap(r.run_id, "overhead", "no plain ('--reg none') run with the same data set, "
                            "model, batch size and device in the collection; overhead is NaN"))
        rows.append((r, _row("overhead", "seconds_per_step_ratio", value, statistic="min_over_epochs",
                             n=len(matches), settings="vs plain: " + " ".join(i for i, _ in matches),
                             source=str(r.path / rundir.METRICS))))
    return rows, gaps


def _run_rows(record: RunRecord, gaps: list[Gap]) -> tuple[list[dict], pd.DataFrame]:
    rows, examples = [], pd.DataFrame()
    readers = {rundir.METRICS: metrics_rows, ATTACKS: attack_rows, ATTACK_EXAMPLES: worst_case_rows,
               JACOBIAN: jacobian_rows}
    for name in (rundir.METRICS, ATTACKS, ATTACK_EXAMPLES, MARGINS, JACOBIAN):
        if name not in record.tables:
            continue
        try:
            if name == MARGINS:
                new, examples = margins_rows(record)
            else:
                new = readers[name](record)
        except (UserError, KeyError, ValueError, TypeError, AttributeError) as e:
            gaps.append(Gap(record.run_id, name, f"malformed ({type(e).__name__}: {e}); left out"))
            continue
        rows += new
    return rows, examples


def collect(paths: list[str | Path]) -> Collection:
    """Every run directory under ``paths`` -> one tidy table, per-example margins and gaps.

    Raises :class:`UserError` when no run directory is found or none can be read.
    """
    dirs, model_dirs, gaps = find_result_dirs(paths)
    records, models = [], []
    ids = run_ids(dirs + model_dirs)
    for path, run_id in zip(dirs + model_dirs, ids):
        record, run_gaps = (read_run if path in dirs else read_model)(path, run_id)
        gaps += run_gaps
        if record is not None:
            (records if record.outside is None else models).append(record)
    if not records and not models:
        raise UserError("none of the run directories could be read: " + "; ".join(map(str, gaps)))
    labels = group_labels(records) if records else {}
    prov = {r.run_id: provenance(r, labels[group_id(r.config)]) for r in records}
    prov.update({m.run_id: model_provenance(m) for m in models})
    rows, examples = [], []
    for record in records + models:
        run_rows, run_examples = _run_rows(record, gaps)
        rows += [{**row, **prov[record.run_id]} for row in run_rows]
        if len(run_examples):
            p = prov[record.run_id]
            examples.append(run_examples.assign(run_id=record.run_id, group_id=p["group_id"],
                                                group_label=p["group_label"]))
    overhead, overhead_gaps = overhead_rows(records)
    rows += [{**row, **prov[r.run_id]} for r, row in overhead]
    gaps += overhead_gaps
    summary = pd.DataFrame(rows).reindex(columns=TIDY_COLUMNS)
    example_cols = ["run_id", "group_id", "group_label", "quantity", "index", "value"]
    examples_table = (pd.concat(examples, ignore_index=True)[example_cols] if examples
                      else pd.DataFrame(columns=example_cols))
    return Collection(records, summary, examples_table, gaps, [Path(p) for p in paths], models)
