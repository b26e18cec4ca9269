"""Data the user brings: --dataset folder (an ImageFolder tree) and --dataset npz (arrays).

Small trees and arrays written here (tmp_path); what is checked: the shapes and pixels read
back, the class order, the statistics recorded in the run's config, the run id's dependence on
the content (not the path), and a clear UserError (CLI exit 2) for every kind of bad input.
"""
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from jrbench.config import DataConfig, RunConfig
from jrbench.data.datasets import CIFAR_LIKE, MNIST_LIKE, dataset_info, defaults_of, load_data
from jrbench.errors import UserError


def _arrays(n, shape, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    return x, y


def write_npz(path, shape=(8, 8, 3), n_train=12, n_test=6, n_classes=3, **replace):
    x_train, y_train = _arrays(n_train, shape, n_classes, 0)
    x_test, y_test = _arrays(n_test, shape, n_classes, 1)
    arrays = dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    arrays.update(replace)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return arrays


def write_folder(root, classes=("cat", "dog", "eel"), n=2, size=(6, 5), mode="RGB", test_classes=None):
    """root/train/<class>/<i>.png and root/test/...; pixel values distinct per image."""
    from PIL import Image

    written = {}
    for split, names in (("train", classes), ("test", test_classes or classes)):
        for c, name in enumerate(names):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                channels = 3 if mode == "RGB" else 1
                a = ((np.arange(size[0] * size[1] * channels).reshape(size[1], size[0], channels) * 7
                      + 40 * c + 11 * i + (split == "test")) % 256).astype(np.uint8)
                Image.fromarray(a if mode == "RGB" else a[..., 0], mode).save(root / split / name / f"{i}.png")
                written[(split, name, i)] = a
    return written


# ----------------------------------------------------------------------------- npz
@pytest.mark.parametrize("layout", ["nhwc", "nchw", "grey-nhw", "grey-nhwc"])
def test_npz_layouts_read_as_nchw(tmp_path, layout):
    shape = {"nhwc": (8, 7, 3), "nchw": (3, 8, 7), "grey-nhw": (8, 7), "grey-nhwc": (8, 7, 1)}[layout]
    arrays = write_npz(tmp_path / "d.npz", shape=shape)
    data = load_data(DataConfig("npz", str(tmp_path / "d.npz")))
    channels = 3 if layout in ("nhwc", "nchw") else 1
    assert data.info.input_shape == (channels, 8, 7) and data.train.images.shape == (12, channels, 8, 7)
    x = arrays["x_train"]
    expected = x[:, None] if layout == "grey-nhw" else x if layout == "nchw" else x.transpose(0, 3, 1, 2)
    assert torch.equal(data.train.images, torch.from_numpy(np.ascontiguousarray(expected)))
    assert data.test.labels.tolist() == arrays["y_test"].tolist() and data.info.num_classes == 3
    assert data.info.classes == ("0", "1", "2")
    # statistics: per channel, from the training split only, pixels in [0, 1]
    pixels = torch.from_numpy(np.ascontiguousarray(expected)).double() / 255
    assert data.info.mean == pytest.approx(pixels.mean(dim=(0, 2, 3)).tolist(), abs=1e-12)
    assert data.info.std == pytest.approx(pixels.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-12)
    assert data.info.defaults == (MNIST_LIKE if channels == 1 else CIFAR_LIKE)


def test_npz_class_names_from_an_optional_array(tmp_path):
    write_npz(tmp_path / "d.npz", classes=np.array(["a", "b", "c", "d"]))
    info = load_data(DataConfig("npz", str(tmp_path / "d.npz"))).info
    assert info.classes == ("a", "b", "c", "d") and info.num_classes == 4


@pytest.mark.parametrize("replace, message", [
    (dict(x_test=None), "lacks the arrays x_test"),
    (dict(x_train=np.zeros((12, 8, 8, 3), np.float32)), "must be uint8"),
    (dict(y_train=np.arange(12) * 0.5), "integer class indices"),
    (dict(y_train=np.arange(5)), r"expected \(12,\)"),
    (dict(y_test=np.array([0, 1, 2, 3, 0, 1])), r"test labels must lie in 0..2"),
    (dict(y_train=-np.ones(12, np.int64)), "labels must lie"),
    (dict(y_train=np.zeros(12, np.int64), y_test=np.zeros(6, np.int64)), "at least two classes"),
    (dict(x_test=np.zeros((0, 8, 8, 3), np.uint8), y_test=np.zeros(0, np.int64)), "test split is empty"),
    (dict(x_test=np.zeros((6, 9, 8, 3), np.uint8)), "must match"),
    (dict(x_train=np.zeros((12, 8, 8, 5), np.uint8)), "neither"),
    (dict(x_train=np.full((12, 8, 8, 3), 7, np.uint8)), "holds the same value"),
])
def test_bad_npz_is_a_user_error(tmp_path, replace, message):
    write_npz(tmp_path / "d.npz", **replace)
    with pytest.raises(UserError, match=message):
        load_data(DataConfig("npz", str(tmp_path / "d.npz")))


def test_missing_or_unreadable_npz_and_missing_data_dir(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_data(DataConfig("npz", str(tmp_path / "nothing.npz")))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="cannot read"):
        load_data(DataConfig("npz", str(tmp_path / "bad.npz")))
    with pytest.raises(UserError, match="need --data-dir"):
        load_data(DataConfig("npz", None))


# ----------------------------------------------------------------------------- image folders
def test_image_folder_reads_classes_in_sorted_order(tmp_path):
    written = write_folder(tmp_path, classes=("dog", "cat", "eel"))
    data = load_data(DataConfig("folder", str(tmp_path)))
    assert data.info.classes == ("cat", "dog", "eel") and data.info.num_classes == 3
    assert data.info.input_shape == (3, 5, 6) and data.train.images.shape == (6, 3, 5, 6)
    assert data.train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.equal(data.train.images[2], torch.from_numpy(written[("train", "dog", 0)]).permute(2, 0, 1))
    assert torch.equal(data.test.images[5], torch.from_numpy(written[("test", "eel", 1)]).permute(2, 0, 1))


def test_grey_folder_has_one_channel_and_a_test_split_may_miss_a_class(tmp_path):
    write_folder(tmp_path, mode="L", test_classes=("cat", "eel"))
    data = load_data(DataConfig("folder", str(tmp_path)))
    assert data.info.input_shape == (1, 5, 6) and data.info.defaults == MNIST_LIKE
    assert data.test.labels.tolist() == [0, 0, 2, 2]  # the train folder's indices, not the test folder's


def test_bad_image_folders_are_user_errors(tmp_path):
    from PIL import Image

    cases = {}
    cases["missing"] = (tmp_path / "nothing", "does not exist")
    only_train = tmp_path / "only-train"
    write_folder(only_train)
    import shutil

    shutil.rmtree(only_train / "test")
    cases["no test"] = (only_train, "has no test/ folder")
    one = tmp_path / "one"
    write_folder(one, classes=("a",))
    cases["one class"] = (one, "at least two classes")
    mixed = tmp_path / "mixed"
    write_folder(mixed)
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(mixed / "test" / "dog" / "odd.png")
    cases["mixed sizes"] = (mixed, r"differ in size.*odd.png is 9x9")
    extra = tmp_path / "extra"
    write_folder(extra, test_classes=("cat", "dog", "fox"))
    cases["unknown test class"] = (extra, "class 'fox' has no folder")
    empty = tmp_path / "empty"
    write_folder(empty)
    for p in (empty / "test").rglob("*.png"):
        p.unlink()
    cases["empty split"] = (empty, "test holds no images")
    broken = tmp_path / "broken"
    write_folder(broken)
    (broken / "train" / "cat" / "0.png").write_bytes(b"not a png")
    cases["unreadable"] = (broken, "cannot read the image")
    for name, (root, message) in cases.items():
        with pytest.raises(UserError, match=message):
            load_data(DataConfig("folder", str(root)))


# ----------------------------------------------------------------------------- recorded, and the run id
def test_run_id_follows_the_content_not_the_path_and_builtins_keep_theirs(tmp_path):
    write_npz(tmp_path / "a.npz")
    write_npz(tmp_path / "b.npz")  # the same arrays, elsewhere
    write_npz(tmp_path / "c.npz", y_test=np.array([0, 1, 2, 2, 1, 0]))
    ids = {n: RunConfig(data=DataConfig("npz", str(tmp_path / f"{n}.npz"))).run_id() for n in "abc"}
    assert ids["a"] == ids["b"] != ids["c"] and ids["a"].startswith("npz-lenet-none-s0-")
    recorded = RunConfig(data=DataConfig("npz", str(tmp_path / "gone.npz"),
                                         info=dataset_info(DataConfig("npz", str(tmp_path / "a.npz"))).record()))
    assert recorded.run_id() == ids["a"]  # a trained run's id needs only its recorded digest
    base = RunConfig()
    with_info = RunConfig(data=DataConfig(info=None))
    assert base.run_id() == with_info.run_id() == "synth-digits-lenet-none-s0-" + base.run_id().split("-")[-1]


def test_recorded_description_is_used_and_a_changed_file_refused(tmp_path):
    write_npz(tmp_path / "d.npz")
    info = dataset_info(DataConfig("npz", str(tmp_path / "d.npz")))
    record = info.record()
    cfg = DataConfig("npz", str(tmp_path / "d.npz"), info=record)
    assert dataset_info(cfg) == info and defaults_of(cfg) == CIFAR_LIKE
    assert load_data(cfg).info == info
    write_npz(tmp_path / "d.npz", y_test=np.array([2, 1, 0, 2, 1, 0]))
    with pytest.raises(UserError, match="changed since the run was trained"):
        load_data(cfg)
    with pytest.raises(UserError, match="depend on its images"):
        defaults_of("npz")


def test_cli_train_on_an_npz_records_the_data_and_bad_input_exits_2(tmp_path):
    import json

    from jrbench.cli import app

    write_npz(tmp_path / "d.npz", shape=(16, 16), n_train=30, n_test=10)
    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--dataset", "npz", "--data-dir", str(tmp_path / "d.npz"), "--model", "mlp",
                                 "--epochs", "1", "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    info = json.loads((out / "config.json").read_text())["data"]["info"]
    assert info["input_shape"] == [1, 16, 16] and info["num_classes"] == 3 and len(info["mean"]) == 1
    bad = runner.invoke(app, ["train", "--dataset", "folder", "--data-dir", str(tmp_path / "none"), "--epochs", "1"])
    assert bad.exit_code == 2 and "does not exist" in bad.output and "Traceback" not in bad.output
    write_npz(tmp_path / "f.npz", x_train=np.zeros((12, 8, 8, 3), np.float32))
    bad = runner.invoke(app, ["train", "--dataset", "npz", "--data-dir", str(tmp_path / "f.npz"), "--epochs", "1",
                              "--out", str(tmp_path / "run2")])
    assert bad.exit_code == 2 and "must be uint8" in bad.output
