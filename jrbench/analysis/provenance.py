"""Who made a result: a run's group id and label, its provenance columns, and the
``jrbench train`` command line that remakes it.

Runs with the same :func:`group_id` differ at most by seed, device and data folder
(:func:`relevant_config` is the config without those); the report aggregates them into one row
and :mod:`jrbench.analysis.verdicts` pairs them by seed. :func:`provenance` gives the columns of
:data:`PROVENANCE` that every tidy row of :func:`jrbench.analysis.results.collect` carries; outside models
(``model.json``, :mod:`jrbench.evaluate.outside`) get theirs from :func:`model_provenance`.
:func:`train_command_line` rebuilds the command line from a run's config.json (run ids match).

Records here are :class:`jrbench.analysis.run_records.RunRecord` (read through their attributes only, so
that this module imports no stage after the config).
"""
from __future__ import annotations

import hashlib
import json
import math
import shlex
from pathlib import Path

import pandas as pd

from ..config import BOUND_TRAINING, CUSTOM_DATASETS, MARGIN_LOSSES, DataConfig, RegConfig, RunConfig, TrainConfig

PROVENANCE = ["run_id", "group_id", "group_label", "dataset", "model", "regularizers", "lambda_jr",
              "n_proj", "jr_subsample", "seed", "batch_size", "epochs", "device", "torch_version",
              "torchvision_version", "torchattacks_version", "jrbench_version", "git_commit", "run_dir"]


# ----------------------------------------------------------------------------- groups and labels
UNUSED_AS_DEFAULT = {"jacobian": ("jr_backend", "jr_estimator", "jr_every"), "lipschitz": ("lipschitz_bound",),
                     "noise": ("noise_sigma",)}
IBP_OPTIONS = ("ibp_eps", "ibp_warmup_epochs", "ibp_ramp_epochs", "ibp_kappa")  # ibp and crown-ibp share them


def relevant_config(config: RunConfig) -> dict:
    """The config without what does not change the result: seed, device, data folder, and the
    settings of regularizers the run does not use."""
    d = config.to_dict()
    d["data"].pop("data_dir")
    info = d["data"].pop("info", None)
    if config.data.dataset in CUSTOM_DATASETS:  # which data, by content (recorded when trained)
        d["data"]["digest"] = (info or {}).get("digest")
    d["train"].pop("device")
    d["train"].pop("seed")
    names = set(config.reg.names)
    unused = {"jacobian": ("lambda_jr", "n_proj", "jr_subsample"), "l2": ("weight_decay",),
              "dropout": ("dropout",), "input-grad": ("lambda_ig",),
              "lipschitz-margin": ("margin_eps", "margin_temperature", "margin_ramp_epochs"),
              "gloro": ("margin_eps", "margin_ramp_epochs")}
    used_keys = {key for reg, keys in unused.items() if reg in names for key in keys}
    for reg, keys in unused.items():
        if reg not in names:
            for key in keys:
                if key not in used_keys:
                    d["reg"].pop(key, None)
    if d["reg"].get("margin_ramp_epochs") == 0:  # dropped at 0: the group ids of earlier runs stay
        d["reg"].pop("margin_ramp_epochs")
    if not names & set(BOUND_TRAINING):  # dropped: the group ids of earlier runs stay as they were
        for key in IBP_OPTIONS:
            d["reg"].pop(key)
    # the other options of an unused regularizer are set to their defaults rather than dropped, so
    # that the group ids of runs made before they counted stay (as RunConfig.run_id ignores them)
    default = RegConfig().__dict__
    for reg, keys in UNUSED_AS_DEFAULT.items():
        if reg not in names:
            for key in keys:
                if key in d["reg"]:
                    d["reg"][key] = default[key]
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
    if "lipschitz-margin" in r.names:
        parts.append(f"ε_margin={r.margin_eps:g} T={r.margin_temperature:g}")
    if "gloro" in r.names:
        parts.append(f"ε_gloro={r.margin_eps:g}")
    if set(r.names) & set(MARGIN_LOSSES) and r.margin_ramp_epochs > 0:
        parts.append(f"ramp={r.margin_ramp_epochs:g}")
    if set(r.names) & set(BOUND_TRAINING):
        parts.append(f"ε_train={r.ibp_eps:g} κ={r.ibp_kappa:g}")
    return " ".join(parts)


def group_labels(records: list) -> dict[str, str]:
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


def provenance(record, label: str) -> dict:
    """The provenance columns (:data:`PROVENANCE`) of a trained run; ``label``: its group's label."""
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


# ----------------------------------------------------------------------------- outside models
def model_group_id(info: dict) -> str:
    """One group per outside model: its data set, name and a digest of its identity."""
    from ..evaluate.outside import IDENTITY

    digest = hashlib.sha1(json.dumps({k: info.get(k) for k in IDENTITY}, sort_keys=True,
                                     default=str).encode()).hexdigest()[:6]
    return f"{info['dataset']}-model-{info['name']}-{digest}"


def model_provenance(record) -> dict:
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


# ----------------------------------------------------------------------------- the train command
def _num(value: float) -> str:
    """The shortest text that reads back as the same float."""
    return repr(float(value))


def train_command_line(config: RunConfig, out: str | Path | None = None) -> str:
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
    if "lipschitz" in r.names:
        args += ["--lipschitz-bound", _num(r.lipschitz_bound)]
    if "noise" in r.names:
        args += ["--noise-sigma", _num(r.noise_sigma)]
    if "lipschitz-margin" in r.names:
        args += ["--margin-eps", _num(r.margin_eps), "--margin-temperature", _num(r.margin_temperature)]
    if "gloro" in r.names:
        args += ["--margin-eps", _num(r.margin_eps)]
    if set(r.names) & set(MARGIN_LOSSES) and r.margin_ramp_epochs > 0:
        args += ["--margin-ramp-epochs", _num(r.margin_ramp_epochs)]
    if set(r.names) & set(BOUND_TRAINING):
        args += ["--ibp-eps", _num(r.ibp_eps), "--ibp-warmup-epochs", _num(r.ibp_warmup_epochs),
                 "--ibp-ramp-epochs", _num(r.ibp_ramp_epochs), "--ibp-kappa", _num(r.ibp_kappa)]
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

