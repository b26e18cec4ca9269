"""Run directories: create, write atomically, checkpoint, resume, and ``load_run``.

A run directory (``results/runs/<run-id>/`` or ``--out``) holds
- ``config.json``  the full resolved :class:`RunConfig`;
- ``env.json``     package versions, device, threads, git commit;
- ``metrics.csv``  one row per finished epoch;
- ``model.pt``     ``{"state_dict", "config", "epoch", ...}`` of the last finished epoch,
                   loadable with ``torch.load(weights_only=True)``;
- ``checkpoint.pt`` optimizer and schedule state of that epoch, for ``--resume``.
Every file is written to a temporary name in the same folder and renamed into place,
so an interrupted run leaves only whole files.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from ..atomic import (atomic_torch_save, atomic_write_bytes, atomic_write_csv, atomic_write_json, atomic_write_text)                     # run dirs write through them)
from ..config import RunConfig
from ..errors import UserError

CONFIG, ENV, METRICS, MODEL, CHECKPOINT = "config.json", "env.json", "metrics.csv", "model.pt", "checkpoint.pt"


# ----------------------------------------------------------------------------- reading
def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise UserError(f"{path} is missing: is this a run directory written by 'jrbench train'?") from e
    except (OSError, ValueError) as e:
        raise UserError(f"{path} cannot be read ({e}); the run directory is corrupt.") from e


def read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except FileNotFoundError as e:
        raise UserError(f"{path} is missing.") from e
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise UserError(f"{path} cannot be read ({e}); the file is corrupt.") from e


def torch_load(path: Path, map_location: str | torch.device = "cpu") -> dict:
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as e:
        raise UserError(f"{path} is missing: the run has not finished an epoch yet.") from e
    except Exception as e:  # pickle, zip and unpickling errors all mean a corrupt file
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
        first = first.split(" Re-running")[0]  # torch's hint about weights_only=False does not apply
        raise UserError(f"{path} cannot be loaded ({type(e).__name__}: {first}); the file is corrupt. "
                        "Delete the run directory and train it again.") from e
    if not isinstance(obj, dict):
        raise UserError(f"{path} is not a jrbench checkpoint.")
    return obj


def check_run_dir(path: Path) -> Path:
    """The path of an existing run directory with a finished epoch, or a clear error."""
    path = Path(path)
    if path.is_file():
        hint = (f"give its folder {path.parent}" if path.name in (CONFIG, MODEL) else
                "an outside model is a torch.export program saved as .pt2, or a factory 'module:function' "
                "with --weights FILE")
        raise UserError(f"{path} is a file, not a run directory: {hint}.")
    if not path.is_dir():
        raise UserError(f"run directory {path} does not exist.")
    for name in (CONFIG, MODEL):
        if not (path / name).is_file():
            raise UserError(
                f"{path} is not a finished run directory: {name} is missing "
                "(train it with 'jrbench train', or resume it with --resume)."
            )
    return path


def load_config(path: Path) -> RunConfig:
    return RunConfig.from_dict(read_json(Path(path) / CONFIG))


def load_run(path: str | Path, device: str | torch.device = "cpu"):
    """The trained model of a run directory (normalization included, eval mode) and its config.

    Returns ``(model, config)``; the model is on ``device`` (the CPU unless told otherwise).
    """
    from ..models.architectures import build_model
    from ..data.datasets import dataset_info
    from ..penalty.regularizers import model_dropout

    path = check_run_dir(Path(path))
    saved = torch_load(path / MODEL)
    if "state_dict" not in saved or "config" not in saved:
        raise UserError(f"{path / MODEL} is not a jrbench model file.")
    config = RunConfig.from_dict(saved["config"])
    info = dataset_info(config.data)  # folder / npz: the description recorded when trained
    model = build_model(config.model.name, info.input_shape, info.num_classes, info.mean,
                        info.std, model_dropout(config.reg))
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError as e:
        raise UserError(f"{path / MODEL} does not match its model '{config.model.name}': {e}") from e
    return model.to(device).eval(), config


def load_metrics(path: Path) -> pd.DataFrame:
    return read_csv(Path(path) / METRICS)
