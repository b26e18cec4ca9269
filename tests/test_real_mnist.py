"""End to end on real digits: 8,000 MNIST test digits to train, 2,000 others to test.

Fails (not skips) in CI when ../shared/data/mnist-t10k is missing.
"""
import pandas as pd
import pytest
from typer.testing import CliRunner

from jrbench.cli import app
from jrbench.config import DataConfig
from jrbench.data import load_data, write_idx_folder

from conftest import require_real_mnist


@pytest.fixture(scope="module")
def real_mnist_folder(tmp_path_factory):
    source = require_real_mnist()
    full = load_data(DataConfig("mnist", str(source_folder(source, tmp_path_factory))))
    digits = full.test  # the 10,000 real test digits
    from jrbench.data import Split

    train = Split(digits.images[:8000], digits.labels[:8000])
    test = Split(digits.images[8000:], digits.labels[8000:])
    return write_idx_folder(tmp_path_factory.mktemp("mnist-8k-2k"), train, test)


def source_folder(source, tmp_path_factory):
    """mnist-t10k holds only the t10k files: pair them with themselves as a 'train' split."""
    folder = tmp_path_factory.mktemp("t10k")
    for stem in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        data = (source / f"t10k-{stem}.gz").read_bytes()
        (folder / f"t10k-{stem}.gz").write_bytes(data)
        (folder / f"train-{stem}.gz").write_bytes(data)
    return folder


@pytest.mark.slow
def test_train_lenet_on_real_digits_plain_and_jacobian(real_mnist_folder, tmp_path):
    runner = CliRunner()
    rows = {}
    for reg in ("none", "jacobian"):
        out = tmp_path / reg
        result = runner.invoke(app, ["train", "--dataset", "mnist", "--data-dir", str(real_mnist_folder),
                                     "--model", "lenet", "--reg", reg, "--epochs", "3", "--device", "cpu",
                                     "--out", str(out)])
        assert result.exit_code == 0, result.output
        rows[reg] = pd.read_csv(out / "metrics.csv").iloc[-1]
    assert rows["none"]["test_acc"] >= 0.95, rows["none"]
    assert rows["jacobian"]["test_acc"] >= 0.95, rows["jacobian"]
    # Jacobian regularization shrinks the Jacobian the paper talks about
    assert rows["jacobian"]["test_jac_frob_z"] < 0.7 * rows["none"]["test_jac_frob_z"]
