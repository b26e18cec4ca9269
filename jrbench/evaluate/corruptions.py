"""The common corruptions of the fixed test examples -> attacks.csv rows and per-example rows.

Paper: Hendrycks and Dietterich 2019, "Benchmarking neural network robustness to common
corruptions and perturbations" (arXiv:1903.12261): ImageNet-C and CIFAR-10-C, 15 corruptions in
four families (noise, blur, weather, digital) at severities 1-5. Digits: Mu and Gilmer 2019,
MNIST-C (arXiv:1906.02337). The corruptions themselves are the library's: ``imagecorruptions``
(PyPI ``imagecorruptions-imaug``, the maintained release of bethgelab's ``imagecorruptions``, whose
1.1.2 no longer imports under numpy 2, scikit-image >= 0.19 and setuptools without pkg_resources),
with the ImageNet-C severity constants at every image size, as MNIST-C did on its 28x28 digits.

What jrbench adds (docs/corruptions.md says it in full):

- **any size, grey or colour**: the library's ``corrupt()`` refuses images under 32x32; its
  corruption functions take them, and are called directly (every one runs on 28x28 and 32x32,
  tested). A greyscale image goes through the library's own greyscale path, except for
  :data:`GREY_VIA_RGB`, whose greyscale path is broken in the library (motion_blur raises; glass_blur
  and gaussian_blur blur along one axis only, as scikit-image reads the 2-D image's last axis as
  channels): those get the image as three equal channels, which stay equal, and return one.
- **seeds per example**: each (corruption, example) has its own seed, :func:`corruption_seed`
  (the run's seed, the corruption and the example's index in the test split; not the severity, so
  the severities share their random draws, nor the batch or the device). The library draws from
  numpy's global RNG (and takes a seed argument for glass_blur and impulse_noise): it is seeded per
  call and the caller's numpy state put back.
- **uint8 like the benchmark's files**: the library's float output is clipped to [0, 255] and cast
  to uint8 as its ``corrupt()`` does (truncation), then divided by 255 (pixels in [0, 1]).
- **batch-wise, on the command's cores**: the library corrupts one image per Python call; the 15
  common corruptions are recomputed over whole batches by jrbench.evaluate.corruption_batch (each
  example's random draws as the library makes them, the same float operations: the same pixels as
  the library's, tested per corruption and severity), shared among torch's thread count of
  processes. :func:`corrupt_image` and ``corrupt_batch(..., reference=True)`` call the library.

Rows (:data:`jrbench.evaluate.attacks.ROW_COLUMNS`): attack ``corruption``, norm = the corruption's
name, strength = the severity (0: the clean images, the identity, always written: the relative
corruption error needs the clean error of the same examples), accuracy = share of the examples
whose corrupted copy is classified correctly (one copy per example, ``draws`` 1), a 95% Wilson
interval, loss ``none``. Per example (:data:`~jrbench.evaluate.attacks.EXAMPLE_COLUMNS`): robust =
1 if the corrupted copy is classified correctly (whether or not the clean one is: accuracy under
corruption, not a robustness of the correct ones), broken = clean-correct and made wrong.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .attack_common import correct_mask, derive_seed, index_batches, model_device, model_dtype
from .attack_config import CORRUPTION, CORRUPTIONS, GREY_REFUSED, AttackConfig
from .attacks import EXAMPLE_COLUMNS, ROW_COLUMNS, AttackTables, _row, example_frame
from .corruption_batch import (GREY_VIA_RGB, SEED_ARGUMENT, _CachedImread, corrupt_images_parallel,  # noqa: F401
                               library_functions, library_image)
from ..device import sync_device
from ..errors import UserError
from ..models.architectures import eval_mode
from ..stats import wilson_interval



def corruption_seed(seed: int, corruption: str, example: int) -> int:
    """The seed of one example's corrupted copies: derive_seed(seed, 'corruption', name, example)
    folded to numpy's 32 bits. Not the severity: severities share the draws (common random numbers)."""
    return derive_seed(seed, CORRUPTION, corruption, int(example)) % 2**32


def _library():
    """The library's corruption functions by name; a clear error when it is not installed."""
    try:
        return library_functions()
    except ImportError as e:  # a dependency of jrbench (pyproject.toml): a broken install
        raise UserError(f"--corruptions needs the imagecorruptions-imaug package ({e}); "
                        "pip install imagecorruptions-imaug") from e


def _check(images: np.ndarray, corruption: str, severity: int, batch: bool) -> None:
    if corruption not in CORRUPTIONS:
        raise UserError(f"unknown corruption {corruption!r}: one of {', '.join(CORRUPTIONS)}.")
    shape = "(N, C, H, W)" if batch else "(C, H, W)"
    if images.dtype != np.uint8 or images.ndim != 3 + batch or images.shape[batch] not in (1, 3):
        raise UserError(f"corruptions need uint8 images {shape} with 1 or 3 channels, got {images.dtype} "
                        f"{tuple(images.shape)}.")
    if int(severity) not in (1, 2, 3, 4, 5):
        raise UserError(f"severity must be 1-5, got {severity!r}.")
    if images.shape[batch] == 1 and corruption in GREY_REFUSED:
        raise UserError(f"{corruption} cannot corrupt a greyscale image: {GREY_REFUSED[corruption]}.")
    _library()


def _library_layout(images: np.ndarray) -> np.ndarray:
    """uint8 (N, C, H, W) -> the library's layout: (N, H, W) grey, (N, H, W, 3) colour."""
    if images.shape[1] == 1:
        return np.ascontiguousarray(images[:, 0])
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1))


def _channels_first(out: np.ndarray) -> np.ndarray:
    return out[:, None] if out.ndim == 3 else np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def corrupt_image(image: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """One image corrupted by the library itself (the reference; :func:`corrupt_batch` computes the
    same pixels batch-wise): ``image`` uint8 (C, H, W) with C 1 or 3, severity 1-5, ``seed`` (below
    2**32; :func:`corruption_seed`) -> uint8 (C, H, W). Seeds numpy's global RNG for the call and
    restores it; the library's prints (it prints on some fallbacks) are swallowed."""
    _check(image, corruption, severity, batch=False)
    return _channels_first(library_image(_library_layout(image[None])[0], corruption, int(severity),
                                         int(seed))[None])[0]


def corrupt_batch(images: np.ndarray, corruption: str, severity: int, seed: int,
                  example_index: Sequence[int], *, workers: int = 1, reference: bool = False) -> np.ndarray:
    """uint8 (N, C, H, W) -> uint8 (N, C, H, W): image i corrupted with the seed of its
    ``example_index[i]`` (:func:`corruption_seed`), whatever the batch it comes in. The 15 common
    corruptions run batch-wise (jrbench.evaluate.corruption_batch: the library's pixels, tested),
    the extras image by image through the library, as all do with ``reference``; ``workers`` > 1
    shares the images among that many processes (the same pixels for any number)."""
    if len(example_index) != len(images):
        raise ValueError(f"{len(example_index)} example indices for {len(images)} images")
    _check(images, corruption, severity, batch=True)
    if not len(images):
        return images.copy()
    seeds = [corruption_seed(seed, corruption, int(example)) for example in example_index]
    out = corrupt_images_parallel(_library_layout(images), corruption, int(severity), seeds, workers=workers,
                                  reference=reference)
    return _channels_first(out)


def check_corrupted(x: torch.Tensor, shape: Sequence[int], dtype: torch.dtype) -> None:
    """Raise RuntimeError unless the corrupted pixels ``x`` have ``shape`` and ``dtype``, are finite
    and lie in [0, 1]: a bug in jrbench or the library, never the user's."""
    if tuple(x.shape) != tuple(shape) or x.dtype != dtype:
        raise RuntimeError(f"corrupted batch is {x.dtype} {tuple(x.shape)}, expected {dtype} {tuple(shape)}")
    if not torch.isfinite(x).all() or float(x.min()) < 0.0 or float(x.max()) > 1.0:
        raise RuntimeError("corrupted pixels outside [0, 1]")


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Pixels in [0, 1] (N, C, H, W) that are k/255 (8-bit images, as every jrbench data set's) ->
    uint8 numpy; raises :class:`UserError` for pixels that are not."""
    scaled = x.detach().cpu().double() * 255
    rounded = scaled.round()
    if len(x) and float((scaled - rounded).abs().max()) > 1e-3:
        raise UserError("corruptions need 8-bit images (pixels k/255); these are not.")
    return rounded.to(torch.uint8).numpy()


def corruption_units(config: AttackConfig) -> int:
    """How many (corruption, severity) runs ``config`` makes (its progress units)."""
    if not config.corruptions:
        return 0
    return len(config.corruption_names or ()) * len(config.severities or ())


def corruption_rows(model: nn.Module, x: torch.Tensor, y: torch.Tensor, corruptions: Sequence[str],
                    severities: Sequence[int], *, seed: int = 0, batch_size: int = 500,
                    example_index: torch.Tensor | None = None, clean_correct: torch.Tensor | None = None,
                    record: list[pd.DataFrame] | None = None,
                    on_step: Callable[[str], None] | None = None, workers: int | None = None) -> list[dict]:
    """One row per corruption and severity (and severity 0 per corruption, the clean images), see
    the module. x: (N, C, H, W) 8-bit pixels in [0, 1], y (N,), ``example_index`` (N,) the
    examples' positions in the test split (default 0..N-1) seeding their copies. The corruptions run
    on the CPU over ``workers`` processes (default: torch's thread count, the command's thread
    setting), the model on its device in batches of ``batch_size``: no result depends on any of them.
    ``on_step(label)`` after each (corruption, severity)."""
    index = (torch.arange(len(x)) if example_index is None else example_index.detach().cpu()).tolist()
    workers = torch.get_num_threads() if workers is None else int(workers)
    device, dtype = model_device(model, x.device), model_dtype(model)
    images = to_uint8(x)
    rows: list[dict] = []
    with eval_mode(model), torch.no_grad():
        clean = correct_mask(model, x, y, batch_size) if clean_correct is None else clean_correct
        n = len(x)
        for name in corruptions:
            if images.shape[1] == 1 and name in GREY_REFUSED:
                raise UserError(f"{name} cannot corrupt a greyscale image: {GREY_REFUSED[name]}.")
            k = int(clean.sum())
            rows.append(_row(CORRUPTION, name, 0, n, k, n, wilson_interval(k, n), 0.0, seed, draws=1))
            if record is not None:
                record.append(example_frame(CORRUPTION, name, 0, "none", clean, clean.double(), y, seed,
                                            example_index))
            for severity in severities:
                start = time.perf_counter()
                right = torch.empty(n, dtype=torch.float64, device=x.device)
                for idx in index_batches(torch.arange(n), batch_size):
                    part = corrupt_batch(images[idx.numpy()], name, int(severity), seed, [index[i] for i in idx],
                                         workers=workers)
                    xb = torch.from_numpy(part).to(device).to(dtype) / 255
                    check_corrupted(xb, (len(idx), *x.shape[1:]), dtype)
                    pred = model(xb).argmax(1)
                    right[idx.to(x.device)] = (pred == y[idx.to(y.device)].to(device)).double().to(x.device)
                sync_device(device)
                k = int(right.sum())
                rows.append(_row(CORRUPTION, name, float(severity), n, k, n, wilson_interval(k, n),
                                 time.perf_counter() - start, seed, draws=1))
                if record is not None:
                    record.append(example_frame(CORRUPTION, name, float(severity), "none", clean, right, y, seed,
                                                example_index))
                if on_step is not None:
                    on_step(f"corruption {name} severity {severity}")
    return rows


def run_corruptions(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: AttackConfig, *,
                    example_index: torch.Tensor | None = None, example_seed: int = -1,
                    on_step: Callable[[str], None] | None = None) -> AttackTables:
    """The corruption rows of ``config`` (filled: its ``corruption_names`` and ``severities`` given,
    :meth:`AttackConfig.filled`) as :class:`~jrbench.evaluate.attacks.AttackTables`, like
    :func:`jrbench.evaluate.attacks.run_attacks`' (empty when ``config.corruptions`` is off)."""
    record: list[pd.DataFrame] = []
    rows: list[dict] = []
    if config.corruptions:
        if config.corruption_names is None or config.severities is None:
            raise UserError("the corruptions are not set: fill the config with AttackConfig.filled(dataset).")
        rows = corruption_rows(model, x, y, config.corruption_names, config.severities, seed=config.seed,
                               batch_size=config.batch_size, example_index=example_index, record=record,
                               on_step=on_step)
    df = pd.DataFrame(rows, columns=ROW_COLUMNS)
    text, ints = ("attack", "norm", "loss"), ("n_examples", "seed")
    df = df.astype({c: str if c in text else int if c in ints else float for c in ROW_COLUMNS})
    examples = pd.concat(record, ignore_index=True) if record else pd.DataFrame(columns=EXAMPLE_COLUMNS)
    examples["example_seed"] = example_seed
    return AttackTables(df, examples)


def mean_abs_change(image: np.ndarray, corruption: str, severity: int, seed: int = 0) -> float:
    """Mean |corrupted - clean| in pixel units ([0, 1]) of one uint8 (C, H, W) image: the size of a
    corruption's effect (tests and docs/corruptions.md)."""
    out = corrupt_image(image, corruption, severity, seed)
    return float(np.abs(out.astype(np.float64) - image.astype(np.float64)).mean() / 255)


__all__ = ["GREY_VIA_RGB", "check_corrupted", "corrupt_batch", "corrupt_image", "corruption_rows",
           "corruption_seed", "corruption_units", "mean_abs_change", "run_corruptions", "to_uint8"]
