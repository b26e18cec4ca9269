"""Shared fixtures: tiny synthetic data for fast tests, paths to the real data."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from jrbench.config import DataConfig, ModelConfig, RegConfig, RunConfig, TrainConfig
from jrbench.data.datasets import DATASETS, Data, Split

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MNIST_T10K = SHARED / "data" / "mnist-t10k"

torch.set_num_threads(min(2, os.cpu_count() or 1))

# Tests whose numbers come from PyTorch's CPU kernels (training, attacks, gradients, bounds): CI runs
# them again under ATEN_CPU_CAPABILITY=default (and avx2 on an AVX-512 CPU), so that another CPU's
# float rounding is exercised on every submission (`make test-cpus`).
KERNEL_DEPENDENT = {
    "test_e2e_synth_digits", "test_real_mnist", "test_synth_digits", "test_train", "test_attacks",
    "test_margins", "test_vjp_tape", "test_regularizers", "test_jacobian", "test_spectra", "test_lipschitz",
    "test_ibp", "test_smoothing", "test_certify", "test_lipschitz_train", "test_noise_examples",
    "test_attack_batch_size", "test_batchnorm_penalty", "test_crown", "test_complete", "test_lipnet",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rpartition(".")[2] in KERNEL_DEPENDENT:
            item.add_marker(pytest.mark.kernels)


@pytest.fixture(autouse=True, scope="session")
def _data_cache(tmp_path_factory):
    """Keep generated data (synth-digits) in a folder of this test session, not the user's cache."""
    old = os.environ.get("JRBENCH_DATA")
    os.environ["JRBENCH_DATA"] = str(tmp_path_factory.mktemp("jrbench-data"))
    yield
    if old is None:
        os.environ.pop("JRBENCH_DATA", None)
    else:
        os.environ["JRBENCH_DATA"] = old


def block_split(n: int, g: torch.Generator, noise: int = 60, block: int = 220, labels=None) -> Split:
    """n 28x28 grey images: uniform noise below ``noise`` and a bright 7x7 block (value ``block``)
    whose place is the class (``labels``, default random)."""
    labels = torch.randint(0, 10, (n,), generator=g) if labels is None else labels
    images = (torch.rand(n, 1, 28, 28, generator=g) * noise).to(torch.uint8)
    for i, c in enumerate(labels.tolist()):
        r, col = divmod(c, 4)
        images[i, 0, r * 7:(r + 1) * 7, col * 7:(col + 1) * 7] = block
    return Split(images, labels)


def tiny_data(n_train: int = 256, n_test: int = 128, seed: int = 0) -> Data:
    """A separable toy problem shaped like MNIST: the class sets a bright 7x7 block."""
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> Split:
        labels = torch.randint(0, 10, (n,), generator=g)
        images = (torch.rand(n, 1, 28, 28, generator=g) * 60).to(torch.uint8)
        for i, c in enumerate(labels.tolist()):
            r, col = divmod(c, 4)
            images[i, 0, r * 7:(r + 1) * 7, col * 7:(col + 1) * 7] = 220
        return Split(images, labels)

    return Data(DATASETS.get("mnist").info, split(n_train), split(n_test))


def tiny_config(regs=("none",), epochs: int = 2, seed: int = 0, **reg_kwargs) -> RunConfig:
    return RunConfig(
        DataConfig("mnist"), ModelConfig("lenet"), RegConfig(list(regs), **reg_kwargs),
        TrainConfig(epochs=epochs, batch_size=32, lr=0.05, seed=seed, device="cpu",
                    jacobian_eval_examples=32),
    )


def require_real_mnist() -> Path:
    """The real MNIST test digits; in CI their absence fails the test instead of skipping it."""
    if (MNIST_T10K / "t10k-images-idx3-ubyte.gz").is_file():
        return MNIST_T10K
    message = f"real MNIST digits not found at {MNIST_T10K}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
