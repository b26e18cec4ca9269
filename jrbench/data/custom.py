"""Data the user brings: an image folder tree, an .npz of arrays, CIFAR-10's python batches.

Each reader returns uint8 images (N, C, H, W) and int64 labels (N,) per split, plus the class
names, and refuses bad input with a :class:`UserError` that names the file or folder:

- ``folder``: ``ROOT/train/<class>/*.png`` and ``ROOT/test/<class>/*.png`` (torchvision's
  ``ImageFolder`` layout, any of its image extensions). Classes are the train folder's
  sub-folders in sorted order (ImageFolder's indices); a test class folder must be one of them.
  Images are grey (1 channel) when every image is grey ('L' or '1'), else RGB (3 channels; an
  alpha channel is dropped, palettes are expanded). Every image must have the same size.
- ``npz``: ``x_train, y_train, x_test, y_test``; images uint8 as (N, H, W) grey, (N, H, W, C)
  or (N, C, H, W) with C 1 or 3 (channels-last when the last axis is 1 or 3 and the second is
  not); labels integers 0..K-1 with K the largest training label + 1; an optional ``classes``
  array names them.
- CIFAR-10 as torchvision downloads it: ``cifar-10-batches-py/data_batch_1..5`` and
  ``test_batch``, pickled dicts with ``data`` (N, 3072) uint8 and ``labels``.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # ImageFolder's
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"

Arrays = tuple[torch.Tensor, torch.Tensor]  # uint8 (N, C, H, W), int64 (N,)


def _check_labels(where: str, splits: dict[str, Arrays], num_classes: int) -> None:
    for split, (images, labels) in splits.items():
        if len(labels) == 0:
            raise UserError(f"{where}: the {split} split is empty.")
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            raise UserError(f"{where}: the {split} labels must lie in 0..{num_classes - 1} "
                            f"({num_classes} classes), found {low}..{high}.")
    if num_classes < 2:
        raise UserError(f"{where}: a classifier needs at least two classes, found {num_classes}.")


# ----------------------------------------------------------------------------- image folders
def _class_folders(split_dir: Path) -> list[Path]:
    return sorted((p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def read_image_folder(root: Path) -> tuple[Arrays, Arrays, tuple[str, ...]]:
    """``root/train`` and ``root/test`` of an ImageFolder tree -> (train, test, class names)."""
    from PIL import Image, UnidentifiedImageError

    if not root.is_dir():
        raise UserError(f"the image folder {root} does not exist (--dataset folder needs --data-dir PATH "
                        "holding train/ and test/, one sub-folder per class).")
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise UserError(f"{root} has no {split}/ folder: an image folder holds train/ and test/, "
                            "one sub-folder per class.")
    classes = tuple(p.name for p in _class_folders(root / "train"))
    index = {name: i for i, name in enumerate(classes)}
    files: dict[str, list[tuple[Path, int]]] = {}
    for split in ("train", "test"):
        files[split] = []
        for folder in _class_folders(root / split):
            if folder.name not in index:
                raise UserError(f"{folder}: the class '{folder.name}' has no folder in {root / 'train'} "
                                f"(its classes: {', '.join(classes) or 'none'}).")
            files[split] += [(p, index[folder.name]) for p in _image_files(folder)]
        if not files[split]:
            raise UserError(f"{root / split} holds no images ({', '.join(IMAGE_EXTENSIONS)} in one "
                            "sub-folder per class): the split is empty.")
    if len(classes) < 2:
        raise UserError(f"{root / 'train'}: a classifier needs at least two classes (sub-folders), "
                        f"found {len(classes)}.")
    def open_image(path: Path):
        try:
            return Image.open(path)
        except (OSError, UnidentifiedImageError) as e:
            raise UserError(f"cannot read the image {path}: {e}.") from e

    headers = {}  # first pass: modes and sizes from the headers only
    for pairs in files.values():
        for path, _ in pairs:
            with open_image(path) as im:
                headers[path] = (im.mode, im.size)
    grey = all(mode in ("L", "1") for mode, _ in headers.values())
    first = files["train"][0][0]
    size = headers[first][1]
    for path, (_, other) in headers.items():
        if other != size:
            raise UserError(f"the images differ in size: {first} is {size[0]}x{size[1]}, {path} is "
                            f"{other[0]}x{other[1]} (width x height); resize them to one size first.")
    out = []
    for split in ("train", "test"):
        arrays, labels = [], []
        for path, label in files[split]:
            try:
                with open_image(path) as im:
                    a = np.asarray(im.convert("L" if grey else "RGB"), dtype=np.uint8)
            except OSError as e:
                raise UserError(f"cannot read the image {path}: {e}.") from e
            arrays.append(a[None] if grey else a.transpose(2, 0, 1))
            labels.append(label)
        out.append((torch.from_numpy(np.stack(arrays)).contiguous(), torch.tensor(labels, dtype=torch.long)))
    return out[0], out[1], classes


# ----------------------------------------------------------------------------- .npz arrays
def _npz_images(path: Path, key: str, x: np.ndarray) -> torch.Tensor:
    if x.dtype != np.uint8:
        raise UserError(f"{path}: {key} must be uint8 pixels 0..255, found dtype {x.dtype} "
                        "(convert with (x * 255).round().astype(np.uint8) if they are floats in [0, 1]).")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        last, second = x.shape[3] in (1, 3), x.shape[1] in (1, 3)
        if last and not second:
            x = x.transpose(0, 3, 1, 2)
        elif not second:
            raise UserError(f"{path}: {key} has shape {x.shape}: neither (N, H, W, C) nor (N, C, H, W) "
                            "with 1 or 3 channels.")
    else:
        raise UserError(f"{path}: {key} has shape {x.shape}: expected (N, H, W), (N, H, W, C) or (N, C, H, W).")
    return torch.from_numpy(np.ascontiguousarray(x))


def _npz_labels(path: Path, key: str, y: np.ndarray, n: int) -> torch.Tensor:
    if not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{path}: {key} must hold integer class indices, found dtype {y.dtype}.")
    y = y.reshape(-1) if y.ndim == 2 and 1 in y.shape else y
    if y.ndim != 1 or len(y) != n:
        raise UserError(f"{path}: {key} has shape {y.shape}; expected ({n},), one label per image.")
    return torch.from_numpy(y.astype(np.int64))


def read_npz(path: Path) -> tuple[Arrays, Arrays, tuple[str, ...]]:
    """An .npz of ``x_train, y_train, x_test, y_test`` (and optional ``classes``) -> (train, test, classes)."""
    if not path.is_file():
        raise UserError(f"the file {path} does not exist (--dataset npz needs --data-dir FILE.npz "
                        f"holding {', '.join(NPZ_KEYS)}).")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"cannot read {path} as an .npz file: {e}.") from e
    missing = [k for k in NPZ_KEYS if k not in arrays]
    if missing:
        raise UserError(f"{path} lacks the arrays {', '.join(missing)} (found: {', '.join(arrays) or 'none'}); "
                        f"it needs {', '.join(NPZ_KEYS)}.")
    splits = {}
    for split in ("train", "test"):
        images = _npz_images(path, f"x_{split}", arrays[f"x_{split}"])
        splits[split] = (images, _npz_labels(path, f"y_{split}", arrays[f"y_{split}"], images.shape[0]))
    if splits["train"][0].shape[1:] != splits["test"][0].shape[1:]:
        raise UserError(f"{path}: x_train holds images of shape {tuple(splits['train'][0].shape[1:])}, x_test of "
                        f"{tuple(splits['test'][0].shape[1:])} (channels, height, width); they must match.")
    num_classes = int(splits["train"][1].max()) + 1 if len(splits["train"][1]) else 0
    if "classes" in arrays:
        classes = tuple(str(c) for c in arrays["classes"].reshape(-1))
        num_classes = len(classes)
    else:
        classes = tuple(str(i) for i in range(num_classes))
    _check_labels(str(path), splits, num_classes)
    return splits["train"], splits["test"], classes


# ----------------------------------------------------------------------------- CIFAR-10's python batches
def cifar_batches_folder(root: Path) -> Path | None:
    """The ``cifar-10-batches-py`` folder in ``root`` (or ``root`` itself) holding all six batches."""
    for folder in (root / CIFAR_FOLDER, root):
        if all((folder / name).is_file() for name in CIFAR_TRAIN + (CIFAR_TEST,)):
            return folder
    return None


def _cifar_batch(path: Path) -> Arrays:
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")  # the batches are Python 2 pickles (as torchvision reads them)
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = entry["labels"] if "labels" in entry else entry["fine_labels"]
        images = data.reshape(-1, 3, 32, 32)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"cannot read the CIFAR-10 batch {path} ({type(e).__name__}: {e}); "
                        "download and extract cifar-10-python.tar.gz again.") from e
    if len(labels) != images.shape[0]:
        raise UserError(f"the CIFAR-10 batch {path} has {images.shape[0]} images but {len(labels)} labels.")
    return torch.from_numpy(images.copy()), torch.tensor(list(labels), dtype=torch.long)


def read_cifar_batches(folder: Path) -> tuple[Arrays, Arrays]:
    """torchvision's ``cifar-10-batches-py`` folder -> (train, test), read without a checksum."""
    parts = [_cifar_batch(folder / name) for name in CIFAR_TRAIN]
    train = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return train, _cifar_batch(folder / CIFAR_TEST)
