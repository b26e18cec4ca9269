"""Datasets: mnist, fashion-mnist, cifar10 (torchvision), synth-digits (made in code), and the
user's own: folder (an ImageFolder tree) and npz (arrays), read by :mod:`jrbench.data.custom`.

Every data set is held in memory as uint8 images (N, C, H, W) and int64 labels (N,);
batches become float pixels in [0, 1] (``to_pixels``). Normalization by the data set's
mean and std is the model's first layer (see ``models/architectures.py``), so attacks work in pixel space.

Where the files are looked for, in order, for ``mnist`` / ``fashion-mnist``:
``DATA_DIR`` itself holding the four raw IDX files flat (gzipped or not), torchvision's
layout ``DATA_DIR/MNIST/raw`` (or ``FashionMNIST/raw``), Debian's
``/usr/share/datasets/fashion-mnist`` (fashion-mnist only), and finally a torchvision
download into ``DATA_DIR``. ``DATA_DIR`` is ``--data-dir``, else ``$JRBENCH_DATA``, else
``~/.cache/jrbench``. For ``cifar10``: torchvision's folder ``cifar-10-batches-py`` in
``DATA_DIR`` (or ``DATA_DIR`` being it), read directly, else a torchvision download.

A custom data set (``folder``, ``npz``; ``--data-dir`` is the tree or the file) has no registered
:class:`DatasetInfo`: it is described from its data (:func:`describe`: shape, class names, the
per-channel mean and std of the training split, a content digest), recorded in the run's config
when it is trained (``DataConfig.info``), and read back from there by every later command
(:func:`dataset_info`); loading it again checks the digest, so a changed folder is refused.
Its defaults follow the channels (:func:`custom_defaults`): grey images get the MNIST-like
grids, colour images the CIFAR-like ones.
"""
from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..config import CUSTOM_DATASETS, DataConfig, data_digest
from ..errors import UserError
from ..registry import Registry

IDX_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


NOISE_SIGMAS = tuple(round(0.1 * i, 10) for i in range(11))  # 0, 0.1, ..., 1.0: every data set's noise grid


@dataclass(frozen=True)
class Defaults:
    """A data set's default strengths, all in pixel units (images in [0, 1]).

    ``eps_linf`` / ``eps_l2``: the PGD/FGSM grids of ``jrbench attack`` (0 first);
    ``sigmas``: the white-noise grid (per-pixel standard deviation);
    ``report_*``: the strength the report's wide table and verdicts read off the curves;
    ``huge_eps_linf``: an L-inf radius where a working attack leaves about chance accuracy
    (the sanity check); ``cell_radius``: the half-width (L2) of the report's cross-sections;
    ``attack_examples``: the test examples PGD, FGSM and AutoAttack run on by default
    (``jrbench attack --n-examples``; white noise runs on the whole test set).
    """

    eps_linf: tuple[float, ...]
    eps_l2: tuple[float, ...]
    report_sigma: float
    report_eps_linf: float
    report_eps_l2: float
    huge_eps_linf: float
    cell_radius: float
    sigmas: tuple[float, ...] = NOISE_SIGMAS
    # What a verdict needs, at the price of PGD and AutoAttack. A 95% Wilson interval at accuracy
    # 0.5 has half-width about 0.98 / sqrt(n): 200 examples -> +-6.9 points, 1,000 -> +-3.1,
    # 2,000 -> +-2.2. At 1,000 one seed's sampling error (sd 1.6 points) is below the spread of
    # robust accuracy over training seeds, so verdicts over seeds (paired t, every run on the same
    # examples) are limited by training noise, not by the examples; a one-seed McNemar test on
    # 1,000 paired examples with 10% discordant finds a 3-point difference (z = 3). 2,000 would buy
    # 0.9 points for twice the cost (AutoAttack: about 200 s per radius on 1,000 MNIST digits on
    # one CPU core; README "jrbench attack"). The same for every data set: the statistics do not
    # depend on it, the cost does (a GPU for CIFAR-10 models).
    attack_examples: int = 1000


# MNIST-like 28x28 grey images: the radii of the Jacobian-regularization and PGD literature
# (Hoffman et al. 2019; Madry et al. 2018 use L-inf 0.3, where undefended models fall to ~0).
MNIST_LIKE = Defaults(eps_linf=(0.0, 0.05, 0.1, 0.15, 0.2, 0.3), eps_l2=(0.0, 0.5, 1.0, 1.5, 2.0, 3.0),
                      report_sigma=0.5, report_eps_linf=0.1, report_eps_l2=1.5,
                      huge_eps_linf=0.3, cell_radius=8.0)
# CIFAR-10: the RobustBench radii (L-inf 8/255, L2 0.5); at L-inf 0.5 every image can reach the
# all-0.5 image, so no model beats the largest class share there.
CIFAR_LIKE = Defaults(eps_linf=(0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255),
                      eps_l2=(0.0, 0.1, 0.25, 0.5, 1.0), report_sigma=0.1, report_eps_linf=8 / 255,
                      report_eps_l2=0.5, huge_eps_linf=0.5, cell_radius=4.0)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    input_shape: tuple[int, int, int]  # (channels, height, width)
    num_classes: int
    mean: tuple[float, ...]            # per-channel pixel mean, [0, 1] units
    std: tuple[float, ...]
    classes: tuple[str, ...]
    defaults: Defaults = MNIST_LIKE    # eps/sigma grids, report strengths, cross-section radius
    digest: str | None = None          # folder / npz: the data's content digest (config.data_digest)

    def record(self) -> dict:
        """What a custom data set's run records in ``DataConfig.info`` (JSON)."""
        return {"input_shape": list(self.input_shape), "num_classes": self.num_classes, "mean": list(self.mean),
                "std": list(self.std), "classes": list(self.classes), "digest": self.digest}


def custom_defaults(channels: int) -> Defaults:
    """A folder / npz data set's defaults: MNIST-like for grey images (1 channel), CIFAR-like
    for colour (3 channels), whatever the image size."""
    return MNIST_LIKE if channels == 1 else CIFAR_LIKE


def recorded_info(name: str, record: dict) -> DatasetInfo:
    """The :class:`DatasetInfo` a custom run recorded (:meth:`DatasetInfo.record`)."""
    try:
        shape = tuple(int(v) for v in record["input_shape"])
        return DatasetInfo(name, shape, int(record["num_classes"]), tuple(float(v) for v in record["mean"]),
                           tuple(float(v) for v in record["std"]), tuple(str(c) for c in record["classes"]),
                           custom_defaults(shape[0]), record.get("digest"))
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"the run's recorded data description is malformed ({e}).") from e


def describe(name: str, train_images: torch.Tensor, classes: tuple[str, ...], digest: str | None) -> DatasetInfo:
    """A custom data set's :class:`DatasetInfo` from its training images (uint8 (N, C, H, W)):
    the per-channel mean and (population) std of the pixels in [0, 1], in float64."""
    channels = train_images.shape[1]
    total, squares = torch.zeros(channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64)
    for chunk in train_images.split(4096):  # in chunks: float64 copies of a whole split are large
        x = chunk.double().div_(255.0).transpose(0, 1).reshape(channels, -1)
        total += x.sum(dim=1)
        squares += x.square().sum(dim=1)
    count = train_images.numel() // channels
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0.0).sqrt()
    flat = [c for c in range(len(std)) if float(std[c]) < 1e-6]
    if flat:
        raise UserError(f"channel {flat[0]} of every training image of the {name} data set holds the same value: "
                        "there is nothing to classify (and no std to normalize by).")
    shape = tuple(int(v) for v in train_images.shape[1:])
    return DatasetInfo(name, shape, len(classes), tuple(float(v) for v in mean), tuple(float(v) for v in std),
                       tuple(classes), custom_defaults(shape[0]), digest)


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, n: int | None, seed: int) -> "Split":
        """``n`` examples chosen by ``seed`` (all when ``n`` is None or too large)."""
        if n is None or n >= len(self):
            return self
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[:n].sort().values
        return Split(self.images[idx], self.labels[idx])


@dataclass
class Data:
    info: DatasetInfo
    train: Split
    test: Split


def to_pixels(images: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 pixels in [0, 1] on ``device``."""
    return images.to(device).float().div_(255.0)


@dataclass(frozen=True)
class DatasetSpec:
    """A registered data set. ``info`` None: a custom one, described by its data, whose ``load``
    returns (train, test, class names)."""

    info: DatasetInfo | None
    load: Callable[[Path | None], tuple]  # data_dir -> (train, test) (custom: + classes)


DATASETS: Registry[DatasetSpec] = Registry("dataset")
DIGITS = tuple(str(i) for i in range(10))


def default_data_dir() -> Path:
    if os.environ.get("JRBENCH_DATA"):
        return Path(os.environ["JRBENCH_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "jrbench"


# ----------------------------------------------------------------------------- IDX files
def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file (gzipped or not) of unsigned bytes; a clear error if it is corrupt."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype_code != 0x08 or not 1 <= ndim <= 3:
            raise ValueError("not an IDX file of unsigned bytes")
        shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
        count = 1
        for s in shape:
            count *= s
        body = raw[4 + 4 * ndim:]
        if len(body) != count:
            raise ValueError(f"expected {count} bytes of data for shape {shape}, found {len(body)}")
        return torch.frombuffer(bytearray(body), dtype=torch.uint8).view(*shape)
    except (OSError, EOFError, ValueError, struct.error, gzip.BadGzipFile) as e:
        raise UserError(f"cannot read the IDX file {path}: {e}. Delete or replace it.") from e


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def read_idx_split(folder: Path, train: bool) -> Split:
    images_stem, labels_stem = IDX_FILES[train]
    images = read_idx(_find(folder, images_stem))
    labels = read_idx(_find(folder, labels_stem)).long()
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise UserError(
            f"the IDX files in {folder} do not match: images {tuple(images.shape)}, "
            f"labels {tuple(labels.shape)}."
        )
    return Split(images.unsqueeze(1).contiguous(), labels)


def has_idx_files(folder: Path) -> bool:
    return all(_find(folder, stem) for pair in IDX_FILES.values() for stem in pair)


def write_idx_folder(folder: Path, train: Split, test: Split) -> Path:
    """Write two splits as the four gzipped IDX files of an MNIST folder (for custom data)."""
    folder.mkdir(parents=True, exist_ok=True)
    for is_train, split in ((True, train), (False, test)):
        images_stem, labels_stem = IDX_FILES[is_train]
        images = split.images[:, 0].contiguous()
        n, h, w = images.shape
        with gzip.open(folder / f"{images_stem}.gz", "wb") as f:
            f.write(struct.pack(">HBB3I", 0, 0x08, 3, n, h, w) + images.numpy().tobytes())
        with gzip.open(folder / f"{labels_stem}.gz", "wb") as f:
            f.write(struct.pack(">HBBI", 0, 0x08, 1, n) + split.labels.to(torch.uint8).numpy().tobytes())
    return folder


def split_test_set(source: Path, out: Path, n_train: int) -> Path:
    """An MNIST-style folder from a folder holding only the t10k IDX pair (e.g. mnist-t10k).

    The first ``n_train`` test examples become the train split, the rest the test split (the
    order of the file: no shuffling, so the split is the same everywhere).
    """
    if _find(source, IDX_FILES[False][0]) is None or _find(source, IDX_FILES[False][1]) is None:
        raise UserError(f"no t10k-images-idx3-ubyte / t10k-labels-idx1-ubyte (gzipped or not) in {source}.")
    test = read_idx_split(source, train=False)
    if not 0 < n_train < len(test.labels):
        raise UserError(f"the train part must keep at least one example on each side: 0 < {n_train} < {len(test.labels)}.")
    return write_idx_folder(out, Split(test.images[:n_train], test.labels[:n_train]),
                            Split(test.images[n_train:], test.labels[n_train:]))


def _missing_data(name: str, looked_in: list[Path], error: Exception, how: str) -> UserError:
    places = "; ".join(str(p) for p in looked_in)
    return UserError(
        f"the {name} data set was not found and could not be downloaded. "
        f"Looked for the four raw IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        f"t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, gzipped or not) in: {places}. "
        f"The download failed with: {str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__}. "
        f"{how} Then point jrbench at them with --data-dir DIR or the JRBENCH_DATA variable."
    )


def _idx_dataset(name: str, tv_class: str, tv_folder: str, debian: bool = False,
                 how: str = "") -> Callable[[Path | None], tuple[Split, Split]]:
    def load(data_dir: Path | None) -> tuple[Split, Split]:
        root = Path(data_dir) if data_dir else default_data_dir()
        candidates = [root, root / tv_folder / "raw"] + ([DEBIAN_FASHION_MNIST] if debian else [])
        for folder in candidates:
            if has_idx_files(folder):
                return read_idx_split(folder, True), read_idx_split(folder, False)
        import torchvision.datasets as tvd

        try:
            for train in (True, False):
                getattr(tvd, tv_class)(str(root), train=train, download=True)
        except Exception as e:  # no network, DNS, HTTP, checksum: all one message
            raise _missing_data(name, candidates, e, how) from e
        return read_idx_split(candidates[1], True), read_idx_split(candidates[1], False)

    return load


def _cifar10(data_dir: Path | None) -> tuple[Split, Split]:
    import torchvision.datasets as tvd

    from .custom import cifar_batches_folder, read_cifar_batches

    root = Path(data_dir) if data_dir else default_data_dir()
    folder = cifar_batches_folder(root)
    if folder is not None:  # downloaded before (by torchvision or by hand): read, no checksum, no network
        train, test = read_cifar_batches(folder)
        return Split(*train), Split(*test)
    splits = []
    try:
        for train in (True, False):
            ds = tvd.CIFAR10(str(root), train=train, download=True)
            images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
            splits.append(Split(images, torch.tensor(ds.targets, dtype=torch.long)))
    except Exception as e:
        raise UserError(
            f"the cifar10 data set was not found and could not be downloaded. Looked for "
            f"torchvision's folder cifar-10-batches-py in {root}. The download failed with: "
            f"{str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}. "
            "Download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html "
            f"and extract it into {root}, or point jrbench at a folder holding it with "
            "--data-dir DIR or the JRBENCH_DATA variable."
        ) from e
    return splits[0], splits[1]


def synth_digits_cache_key() -> str:
    """The synth-digits cache's key: the rendering's version and a hash of the generator's source.

    ``v{RENDER_VERSION}-{sha1 of synth_digits.py, 12 hex}``: a cache written by another
    rendering (a bumped version or any edit of the generator) is never reused.
    """
    import hashlib

    from . import synth_digits

    source = hashlib.sha1(Path(synth_digits.__file__).read_bytes()).hexdigest()[:12]
    return f"v{synth_digits.RENDER_VERSION}-{source}"


def synth_digits_cache(data_dir: str | Path | None) -> Path:
    """The file synth-digits is cached in, in ``data_dir`` (None: :func:`default_data_dir`)."""
    return (Path(data_dir) if data_dir else default_data_dir()) / (
        f"synth-digits-{synth_digits_cache_key()}-{SYNTH_TRAIN_SIZE}-{SYNTH_TEST_SIZE}.pt")


def _synth_digits(data_dir: Path | None) -> tuple[Split, Split]:
    """Generated once (seconds) and cached in the data folder; a bad cache is made again."""
    from .synth_digits import make_synth_digits

    cache = synth_digits_cache(data_dir)
    try:
        saved = torch.load(cache, weights_only=True)
        return Split(*saved["train"]), Split(*saved["test"])
    except Exception:  # missing or unreadable: generate
        pass
    train = Split(*make_synth_digits(SYNTH_TRAIN_SIZE, seed=0))
    test = Split(*make_synth_digits(SYNTH_TEST_SIZE, seed=1))
    try:
        from ..atomic import atomic_torch_save

        atomic_torch_save(cache, {"train": (train.images, train.labels), "test": (test.images, test.labels)})
    except OSError:
        pass  # a read-only data folder only costs the generation next time
    return train, test


SYNTH_TRAIN_SIZE, SYNTH_TEST_SIZE = 20_000, 4_000


def _register() -> None:
    from .synth_digits import SYNTH_DIGITS_MEAN, SYNTH_DIGITS_STD

    DATASETS.register("mnist")(DatasetSpec(
        DatasetInfo("mnist", (1, 28, 28), 10, (0.1307,), (0.3081,), DIGITS),
        _idx_dataset("mnist", "MNIST", "MNIST",
                     how="Download them from a MNIST mirror (the files torchvision downloads)."),
    ))
    DATASETS.register("fashion-mnist")(DatasetSpec(
        DatasetInfo("fashion-mnist", (1, 28, 28), 10, (0.2860,), (0.3530,),
                    ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                     "Shirt", "Sneaker", "Bag", "Ankle boot")),
        _idx_dataset("fashion-mnist", "FashionMNIST", "FashionMNIST", debian=True,
                     how="On Debian, 'apt-get install dataset-fashion-mnist' puts them in "
                         f"{DEBIAN_FASHION_MNIST}, where jrbench finds them by itself."),
    ))
    DATASETS.register("cifar10")(DatasetSpec(
        DatasetInfo("cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                    ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                     "ship", "truck"), CIFAR_LIKE),
        _cifar10,
    ))
    DATASETS.register("synth-digits")(DatasetSpec(
        DatasetInfo("synth-digits", (1, 28, 28), 10, (SYNTH_DIGITS_MEAN,), (SYNTH_DIGITS_STD,), DIGITS),
        _synth_digits,
    ))


    from .custom import read_image_folder, read_npz

    def custom(read):
        def load(data_dir: Path | None) -> tuple[Split, Split, tuple[str, ...]]:
            train, test, classes = read(Path(data_dir))
            return Split(*train), Split(*test), classes
        return load

    DATASETS.register("folder")(DatasetSpec(None, custom(read_image_folder)))
    DATASETS.register("npz")(DatasetSpec(None, custom(read_npz)))


_register()


def dataset_info(cfg: DataConfig) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``cfg``'s data set: the registered one, or a custom data
    set's recorded description (``cfg.info``), else described from its data (loaded)."""
    spec = DATASETS.get(cfg.dataset)
    if spec.info is not None:
        return spec.info
    if cfg.info:
        return recorded_info(cfg.dataset, cfg.info)
    return load_data(cfg).info


def info_of(dataset: "str | DatasetInfo | DataConfig") -> DatasetInfo:
    """The :class:`DatasetInfo` of a data set given by name (registered ones), info or config."""
    if isinstance(dataset, DatasetInfo):
        return dataset
    if isinstance(dataset, DataConfig):
        return dataset_info(dataset)
    spec = DATASETS.get(dataset)
    if spec.info is None:
        raise UserError(f"the shape of a {dataset} data set depends on its images: give its run "
                        "(its recorded data description), not only the name.")
    return spec.info


def defaults_of(dataset: "str | DatasetInfo | DataConfig") -> Defaults:
    """The :class:`Defaults` of a data set given by name (registered ones), info or config."""
    if isinstance(dataset, DatasetInfo):
        return dataset.defaults
    if isinstance(dataset, DataConfig):
        return dataset_info(dataset).defaults
    spec = DATASETS.get(dataset)
    if spec.info is None:
        raise UserError(f"the defaults of a {dataset} data set depend on its images: give its run "
                        "(its recorded data description), not only the name.")
    return spec.info.defaults


def load_data(cfg: DataConfig) -> Data:
    """Load (or generate) the data set of ``cfg`` with its subsets applied.

    A custom data set (folder, npz) is described from its full training split (:func:`describe`);
    with a recorded description (``cfg.info``, a trained run's) its digest must match the data's
    and the recorded statistics are used as they are."""
    spec = DATASETS.get(cfg.dataset)
    if spec.info is None:
        digest = data_digest(cfg.data_dir)  # a clear error when --data-dir is missing or absent
        if cfg.info and cfg.info.get("digest") and cfg.info["digest"] != digest:
            raise UserError(f"the data in {cfg.data_dir} changed since the run was trained (content digest "
                            f"{digest}, the run recorded {cfg.info['digest']}); train the run again on it.")
        train, test, classes = spec.load(Path(cfg.data_dir).expanduser())
        info = recorded_info(cfg.dataset, cfg.info) if cfg.info else describe(cfg.dataset, train.images,
                                                                              classes, digest)
    else:
        train, test = spec.load(Path(cfg.data_dir).expanduser() if cfg.data_dir else None)
        info = spec.info
    shape = tuple(train.images.shape[1:])
    if shape != info.input_shape or tuple(test.images.shape[1:]) != shape:
        raise UserError(
            f"the {cfg.dataset} files hold images of shape {shape}, not {info.input_shape}."
        )
    for split in (train, test):
        if len(split) and (int(split.labels.min()) < 0 or int(split.labels.max()) >= info.num_classes):
            raise UserError(f"the {cfg.dataset} labels must lie in 0..{info.num_classes - 1}.")
    return Data(info, train.subset(cfg.train_subset, cfg.subset_seed),
                test.subset(cfg.test_subset, cfg.subset_seed + 1))
