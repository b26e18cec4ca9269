"""Outside models: image classifiers trained elsewhere, brought to jrbench's attacks and margins.

A model comes from
- a ``torch.export`` program saved with ``torch.export.save`` (a ``.pt2`` file; export it with a
  dynamic batch dimension so that any batch size runs), or
- a ``module:function`` factory returning an ``nn.Module`` (imported by module name, so the
  module must be on ``sys.path``), with an optional state dict (``weights``, loaded strictly).

The model maps its input to logits (N, num_classes). When it expects normalized input
z = (x - mean) / std (``input_normalized``), jrbench puts :class:`jrbench.models.architectures.Classifier`'s
normalization in front, so the wrapped model takes pixels in [0, 1] and every radius is in pixel
units; otherwise it is wrapped in :class:`jrbench.models.architectures.PixelClassifier` (pixels in, no z space).

Its result folder (``results/models/<name>`` by default) holds ``model.json`` (provenance:
the file's SHA-256, or the factory and the weights' SHA-256, the data set, the normalization),
``env.json`` and the tables of a run directory (attacks.csv, attack_examples.csv, margins.csv,
jacobian.csv). The library never prints; every mistake is a :class:`UserError`.
"""
from __future__ import annotations

import hashlib
import importlib
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..errors import UserError

MODEL_JSON = "model.json"
DEFAULT_ROOT = Path("results/models")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_model_source(text: str | Path) -> bool:
    """True for a ``.pt2`` file name or a ``module:function`` factory (not an existing folder)."""
    text = str(text)
    if Path(text).is_dir():
        return False
    return text.endswith(".pt2") or (":" in text and not Path(text).exists())


def parse_normalization(text: str, channels: int) -> tuple[list[float], list[float]]:
    """``"MEAN,STD"`` (the same for every channel) or ``"M1,...,MC,S1,...,SC"`` (per channel)
    -> (mean, std), each of ``channels`` values; std must be positive."""
    try:
        values = [float(v) for v in str(text).replace(" ", "").split(",") if v != ""]
    except ValueError as e:
        per_channel = (f" or M1,...,M{channels},S1,...,S{channels} (per channel)" if channels > 1 else "")
        raise UserError(f"--input-normalized {text!r}: give numbers: MEAN,STD{per_channel}.") from e
    if len(values) == 2:
        mean, std = [values[0]] * channels, [values[1]] * channels
    elif len(values) == 2 * channels:
        mean, std = values[:channels], values[channels:]
    else:
        count = f"{len(values)} number{'s' if len(values) != 1 else ''}"
        per_channel = (f" or {2 * channels} (the {channels} channel means, then the {channels} stds)"
                       if channels > 1 else " (this data set has one channel)")
        raise UserError(f"--input-normalized {text!r} has {count}; give 2 (MEAN,STD){per_channel}.")
    if not all(s > 0 for s in std) or not all(map(lambda v: v == v and abs(v) != float("inf"), values)):
        raise UserError(f"--input-normalized {text!r}: the stds must be positive and every value finite.")
    return mean, std


class ExportedNet(nn.Module):
    """A ``torch.export`` program as a module. Its train/eval behaviour was fixed at export time;
    ``train()`` and ``eval()`` only set the flag (the program itself refuses them)."""

    def __init__(self, program: nn.Module):
        super().__init__()
        self.program = program

    def train(self, mode: bool = True) -> "ExportedNet":
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)


@dataclass
class OutsideModel:
    """The wrapped model (pixels in [0, 1] in, logits out), its name and its provenance."""

    model: nn.Module
    name: str
    dataset: str
    provenance: dict

    @property
    def normalized(self) -> bool:
        return self.provenance.get("input_normalized") is not None


def _first_line(e: BaseException) -> str:
    text = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def load_exported(path: Path) -> nn.Module:
    """The module of a ``torch.export.save`` file, or a :class:`UserError` saying what it is."""
    if not path.is_file():
        raise UserError(f"model file {path} does not exist.")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path} is not a torch.export program (not a .pt2 archive); save one with "
                        "torch.export.save(torch.export.export(model, (x,)), 'model.pt2').")
    names = zipfile.ZipFile(path).namelist()
    if not any(n.endswith("archive_format") or n.endswith("serialized_exported_program.json") for n in names):
        kind = " (it looks like a torch.save file: a state dict or a pickled module)" if any(
            n.endswith("data.pkl") for n in names) else ""
        raise UserError(f"{path} is not a torch.export program{kind}; save one with torch.export.save, "
                        "or give a factory 'module:function' with --weights for a state dict.")
    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # torch logs a traceback before raising; the message says enough
    try:
        program = torch.export.load(str(path))
    except Exception as e:
        raise UserError(f"{path} cannot be loaded as a torch.export program ({_first_line(e)}).") from e
    finally:
        logger.setLevel(level)
    return ExportedNet(program.module())


def call_factory(factory: str) -> nn.Module:
    """``module:function`` -> the ``nn.Module`` the function returns (called without arguments)."""
    module_name, sep, function = factory.partition(":")
    if not sep or not module_name or not function:
        raise UserError(f"factory {factory!r} must read 'module:function', e.g. 'mypackage.models:make_net'.")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise UserError(f"factory {factory!r}: module '{module_name}' cannot be imported ({_first_line(e)}); "
                        "is it on PYTHONPATH?") from e
    make = getattr(module, function, None)
    if not callable(make):
        raise UserError(f"factory {factory!r}: module '{module_name}' has no function '{function}'.")
    try:
        net = make()
    except Exception as e:
        raise UserError(f"factory {factory!r} raised {_first_line(e)}.") from e
    if not isinstance(net, nn.Module):
        raise UserError(f"factory {factory!r} returned a {type(net).__name__}, not a torch nn.Module.")
    return net


def load_weights(net: nn.Module, path: Path) -> None:
    """Load a state dict (or a checkpoint dict with 'state_dict') into ``net``, strictly."""
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"weights file {path} cannot be loaded as a state dict ({_first_line(e)}).") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"weights file {path} holds a {type(state).__name__}, not a state dict.")
    try:
        net.load_state_dict(state)
    except Exception as e:
        raise UserError(f"weights file {path} does not fit the model: {str(e).strip()}") from e


def load_outside_model(source: str | Path, dataset: str | None, *, weights: str | Path | None = None,
                       input_normalized: str | None = None) -> OutsideModel:
    """Load a ``.pt2`` program or call a ``module:function`` factory (``weights``: a state dict) and
    wrap it for pixels in [0, 1] of ``dataset``; ``input_normalized``: ``"MEAN,STD"`` or per-channel
    values (:func:`parse_normalization`) when the model expects normalized input. On the CPU."""
    from ..data.datasets import DATASETS
    from ..models.architectures import Classifier, PixelClassifier

    source = str(source)
    if not dataset:
        raise UserError(f"{source} is an outside model: give its data set with --dataset "
                        f"({', '.join(DATASETS.names())}).")
    info = DATASETS.get(dataset).info
    if info is None:
        raise UserError(f"outside models are evaluated on the registered data sets "
                        f"({', '.join(n for n in DATASETS.names() if DATASETS.get(n).info is not None)}); "
                        f"--dataset {dataset} is for runs trained with jrbench.")
    prov: dict = {"dataset": dataset, "num_classes": info.num_classes, "input_shape": list(info.input_shape)}
    if source.endswith(".pt2"):
        if weights is not None:
            raise UserError("--weights is for a factory 'module:function'; a .pt2 program holds its weights.")
        path = Path(source)
        net = load_exported(path)
        name = path.stem
        prov.update(kind="torch.export", file=str(path.resolve()), sha256=sha256(path))
    else:
        net = call_factory(source)
        name = Path(weights).stem if weights is not None else source.partition(":")[2]
        prov.update(kind="factory", factory=source, weights=None, weights_sha256=None)
        if weights is not None:
            load_weights(net, Path(weights))
            prov.update(weights=str(Path(weights).resolve()), weights_sha256=sha256(Path(weights)))
    prov["name"] = name
    if input_normalized is not None:
        mean, std = parse_normalization(input_normalized, info.input_shape[0])
        prov["input_normalized"] = {"mean": mean, "std": std}
        model: nn.Module = Classifier(net, mean, std, info.input_shape, info.num_classes, name)
        prov["jacobian_z"] = "d logits / d z with z = (x - mean) / std, the model's own input"
    else:
        prov["input_normalized"] = None
        model = PixelClassifier(net, info.input_shape, info.num_classes, name)
        prov["jacobian_z"] = ("not available: the model takes pixels in [0, 1] (no --input-normalized); "
                              "only the pixel-space Jacobian is reported")
    return OutsideModel(model.eval(), name, dataset, prov)


IDENTITY = ("kind", "file", "sha256", "factory", "weights_sha256", "dataset", "input_normalized")


def model_dir(provenance: dict, out: str | Path | None) -> Path:
    """The model's result folder (default ``results/models/<name>``), checked but not written:
    refuse a folder that holds another model's results (a different file, factory, weights, data
    set or normalization, by ``model.json``) or a trained run."""
    import json

    from ..training import rundir

    out = Path(out) if out is not None else DEFAULT_ROOT / provenance["name"]
    if (out / rundir.CONFIG).exists():
        raise UserError(f"{out} is a run directory of 'jrbench train'; give the model another --out.")
    path = out / MODEL_JSON
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{path} cannot be read ({e}); move it away and run again.") from e
        new = json.loads(json.dumps(provenance))
        differs = [k for k in IDENTITY if old.get(k) != new.get(k)]
        if differs:
            raise UserError(f"{out} holds the results of another model (its {', '.join(differs)} differ); "
                            "give this one another --out, or move that folder away.")
    return out


def python_provenance(model: nn.Module, name: str, dataset: str) -> dict:
    """model.json of a module handed over from Python: its class, no file to hash."""
    norm = getattr(model, "normalize", None)
    normalized = None
    if norm is not None and hasattr(norm, "mean"):
        normalized = {"mean": norm.mean.flatten().tolist(), "std": norm.std.flatten().tolist()}
    return {"kind": "python", "name": name, "class": f"{type(model).__module__}.{type(model).__qualname__}",
            "dataset": dataset, "input_normalized": normalized}


def write_model_dir(out: Path, provenance: dict, device: torch.device) -> None:
    """Write ``model.json`` (after :func:`model_dir`'s check) and ``env.json`` into ``out``."""
    from ..training import rundir
    from ..training.envinfo import environment

    model_dir(provenance, out)
    rundir.atomic_write_json(out / MODEL_JSON, provenance)
    rundir.atomic_write_json(out / rundir.ENV, environment(device))


def resolve_sources(sources: Sequence[str | Path], *, dataset: str | None, weights: str | Path | None,
                    input_normalized: str | None, out: str | Path | None
                    ) -> list[tuple[Path, OutsideModel | None]]:
    """Each source of a command: a run directory (``None``) or a loaded outside model, with the
    folder its tables go to. Every model is loaded and every option checked before any work."""
    outside_sources = [s for s in sources if is_model_source(s)]
    if not outside_sources:
        given = [flag for flag, v in (("--dataset", dataset), ("--weights", weights),
                                      ("--input-normalized", input_normalized), ("--out", out)) if v is not None]
        if given:
            files = [str(s) for s in sources if Path(s).is_file()]
            if files:
                raise UserError(f"{', '.join(files)} {'is a file' if len(files) == 1 else 'are files'}, not a run "
                                "directory or an outside model: give a torch.export program saved as .pt2, or a "
                                "factory 'module:function' with --weights FILE for a state dict.")
            raise UserError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for outside models "
                            "(a .pt2 file or 'module:function'); a run directory knows its data set and "
                            "writes into itself.")
    if len(outside_sources) > 1 and (out is not None or weights is not None):
        raise UserError("--out and --weights apply to one outside model; give one model per command.")
    resolved = []
    for source in sources:
        if source in outside_sources:
            model = load_outside_model(source, dataset, weights=weights, input_normalized=input_normalized)
            resolved.append((model_dir(model.provenance, out), model))
        else:
            resolved.append((Path(source), None))
    return resolved


def check_classifier(model: nn.Module, images: torch.Tensor, num_classes: int, name: str,
                     dataset: str) -> None:
    """Run ``model`` on ``images`` (pixels (N, C, H, W), on the model's device), and on the first
    alone, and check that it returns finite logits of shape (N, num_classes)."""
    from ..models.architectures import eval_mode

    shape = tuple(images.shape[1:])
    for x in (images, images[:1]):
        try:
            with torch.no_grad(), eval_mode(model):
                out = model(x)
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"model '{name}' fails on a batch of {x.shape[0]} {dataset} images of shape "
                            f"{shape} ({_first_line(e)}); is it a classifier for {dataset}? (A torch.export "
                            "program needs a dynamic batch dimension.)") from e
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (x.shape[0], num_classes):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise UserError(f"model '{name}' is not a classifier for {dataset}: for {x.shape[0]} images it "
                            f"returned {got}, not logits of shape ({x.shape[0]}, {num_classes}).")
        if not torch.isfinite(out).all():
            raise UserError(f"model '{name}' returned non-finite logits (NaN or inf) on {dataset} test images.")
