"""Data sets: IDX folders, the search order, missing-data messages, subsets."""
import gzip
import urllib.error

import pytest
import torch

from jrbench.data import datasets as data_mod
from jrbench.config import DataConfig
from jrbench.data.datasets import Split, load_data, read_idx, to_pixels, write_idx_folder
from jrbench.errors import UserError

from conftest import tiny_data


def _write(folder, n_train=40, n_test=20, gz=True):
    d = tiny_data(n_train, n_test)
    write_idx_folder(folder, d.train, d.test)
    if not gz:
        for f in folder.glob("*.gz"):
            (folder / f.stem).write_bytes(gzip.decompress(f.read_bytes()))
            f.unlink()
    return d


@pytest.mark.parametrize("gz", [True, False])
def test_flat_idx_folder_roundtrip(tmp_path, gz):
    d = _write(tmp_path, gz=gz)
    got = load_data(DataConfig("mnist", str(tmp_path)))
    assert torch.equal(got.train.images, d.train.images) and torch.equal(got.test.labels, d.test.labels)
    assert got.train.images.dtype == torch.uint8 and got.train.images.shape == (40, 1, 28, 28)
    x = to_pixels(got.train.images)
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1


def test_torchvision_layout_is_found(tmp_path):
    d = _write(tmp_path / "FashionMNIST" / "raw")
    got = load_data(DataConfig("fashion-mnist", str(tmp_path)))
    assert torch.equal(got.test.images, d.test.images)


def test_debian_fashion_mnist_is_found_without_being_named(tmp_path, monkeypatch):
    _write(tmp_path / "debian")
    monkeypatch.setattr(data_mod, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    got = load_data(DataConfig("fashion-mnist", str(tmp_path / "empty")))
    assert len(got.train) == 40


def test_corrupt_idx_file_is_a_user_error(tmp_path):
    _write(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="cannot read the IDX file"):
        load_data(DataConfig("mnist", str(tmp_path)))
    raw = tmp_path / "x-idx3-ubyte"
    raw.write_bytes(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\x00" * 10)
    with pytest.raises(UserError, match="expected 3920 bytes"):
        read_idx(raw)


def test_missing_data_and_failed_download_give_one_clear_paragraph(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(tv_utils, "urlopen", no_network, raising=False)
    monkeypatch.setattr(tv_utils.urllib.request, "urlopen", no_network)
    with pytest.raises(UserError) as err:
        load_data(DataConfig("mnist", str(tmp_path)))
    msg = str(err.value)
    assert "could not be downloaded" in msg and str(tmp_path) in msg
    assert "train-images-idx3-ubyte" in msg and "--data-dir" in msg and "\n" not in msg


def test_subsets_are_deterministic_and_sized():
    split = tiny_data(200, 10).train
    a, b = split.subset(50, 3), split.subset(50, 3)
    assert len(a) == 50 and torch.equal(a.images, b.images)
    assert not torch.equal(a.labels, split.subset(50, 4).labels)
    assert split.subset(None, 0) is split and split.subset(10_000, 0) is split


def test_synth_digits_loads_with_its_shape():
    got = load_data(DataConfig("synth-digits", train_subset=100, test_subset=50))
    assert got.train.images.shape == (100, 1, 28, 28) and len(got.test) == 50
    assert got.info.num_classes == 10 and set(got.train.labels.tolist()) <= set(range(10))


def test_bad_labels_are_rejected(tmp_path):
    d = tiny_data(20, 10)
    write_idx_folder(tmp_path, Split(d.train.images, d.train.labels + 10), d.test)
    with pytest.raises(UserError, match="labels must lie"):
        load_data(DataConfig("mnist", str(tmp_path)))


def _write_cifar_folder(root, n_per_batch=3, seed=0):
    """A tiny cifar-10-batches-py folder in CIFAR's own format: pickled dicts with 'data'
    (N, 3072) uint8, rows of R, G, B planes of 32x32, and 'labels' (str keys, as the Python 2
    pickles of the real files read with encoding latin1)."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n_per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": data, "labels": labels}, f)
        written[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                     "frog", "horse", "ship", "truck"]}, f)
    return written


def test_cifar10_is_read_from_a_written_batches_folder_without_download(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar
    import torchvision.datasets.utils as tv_utils

    written = _write_cifar_folder(tmp_path)

    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", no_network)
    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", no_network)
    # torchvision checks the folder against the md5 sums of the real CIFAR files; ours are tiny fakes
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    got = load_data(DataConfig("cifar10", str(tmp_path)))
    assert got.train.images.shape == (15, 3, 32, 32) and got.test.images.shape == (3, 3, 32, 32)
    assert got.train.images.dtype == torch.uint8 and got.info.num_classes == 10
    data, labels = written["test_batch"]
    expected = torch.from_numpy(data).view(3, 3, 32, 32)  # channel planes, row-major
    assert torch.equal(got.test.images, expected) and got.test.labels.tolist() == labels
    first, _ = written["data_batch_1"]
    assert torch.equal(got.train.images[:3], torch.from_numpy(first).view(3, 3, 32, 32))


def test_per_dataset_defaults_live_on_the_dataset_info():
    """Eps grids, report strengths, the sanity radius and the cross-section radius come from DatasetInfo."""
    from jrbench.evaluate import attack_config as A
    from jrbench.data.datasets import DATASETS
    from jrbench.report.table import Strengths

    cifar = DATASETS.get("cifar10").info.defaults
    assert A.default_eps("cifar10", "l2") == list(cifar.eps_l2) and cifar.report_eps_linf == pytest.approx(8 / 255)
    assert Strengths().targets("cifar10", "eps_l2") == (cifar.report_eps_l2,) == (0.5,)
    assert Strengths(eps_l2=2.0).targets("cifar10", "eps_l2") == (2.0,)
    assert Strengths(eps_l2=[2.0, 1.0, 2.0]).targets("cifar10", "eps_l2") == (1.0, 2.0)  # ascending, once each
    assert Strengths().targets("mnist", "sigma") == (DATASETS.get("mnist").info.defaults.report_sigma,) == (0.5,)
    assert A.huge_eps_linf("fashion-mnist") == 0.3 and A.huge_eps_linf("cifar10") == 0.5 == A.huge_eps_linf(None)
    assert {DATASETS.get(n).info.defaults.cell_radius for n in ("mnist", "cifar10")} == {8.0, 4.0}
    assert A.AttackConfig.for_dataset("mnist").sigmas == A.default_sigmas("mnist")
