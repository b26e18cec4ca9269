"""End to end on real digits: 8,000 MNIST test digits to train, 2,000 others to test.

Fails (not skips) in CI when ../shared/data/mnist-t10k is missing.
"""
import pandas as pd
import pytest
from typer.testing import CliRunner

from jrbench.cli import app
from jrbench.config import DataConfig
from jrbench.data.datasets import load_data, split_test_set

from conftest import require_real_mnist


@pytest.fixture(scope="module")
def real_mnist_folder(tmp_path_factory):
    """The 10,000 real test digits as 8,000 train and 2,000 test (file order)."""
    return split_test_set(require_real_mnist(), tmp_path_factory.mktemp("mnist-8k-2k"), 8000)


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
