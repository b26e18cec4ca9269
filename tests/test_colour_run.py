"""Models for any shape: mlp, lenet and ddnet on colour 32x32 images with another class count,
and every attack, margin and certificate on a 3-channel run (a small generated npz set)."""
import numpy as np
import pytest
import torch

from jrbench.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from jrbench.errors import UserError
from jrbench.models.architectures import build_model


@pytest.mark.parametrize("name", ["mlp", "lenet", "ddnet"])
@pytest.mark.parametrize("shape, classes", [((3, 32, 32), 5), ((1, 20, 24), 2), ((3, 16, 16), 7)])
def test_models_adapt_to_channels_size_and_classes(name, shape, classes):
    model = build_model(name, shape, classes, [0.5] * shape[0], [0.25] * shape[0])
    assert model(torch.rand(2, *shape)).shape == (2, classes)


@pytest.mark.parametrize("name, shape", [("lenet", (3, 15, 32)), ("ddnet", (1, 12, 12))])
def test_models_say_which_shapes_they_refuse(name, shape):
    with pytest.raises(UserError, match=r"needs images of at least 16x16"):
        build_model(name, shape, 3, [0.5] * shape[0], [0.25] * shape[0])


def _colour_npz(path, n_train=300, n_test=100, classes=4):
    """The class sets which quadrant is bright in which colour channel, over uniform noise."""
    rng = np.random.default_rng(0)

    def split(n):
        y = np.arange(n) % classes
        x = rng.integers(0, 90, (n, 32, 32, 3), dtype=np.uint8)
        for i, c in enumerate(y):
            r, col = divmod(int(c), 2)
            x[i, r * 16:(r + 1) * 16, col * 16:(col + 1) * 16, c % 3] = 230
        return x, y

    (x_train, y_train), (x_test, y_test) = split(n_train), split(n_test)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


@pytest.mark.slow
def test_every_attack_margin_and_certificate_on_a_colour_run(tmp_path):
    from jrbench.certify.api import certify_run
    from jrbench.certify.config import CertifyConfig
    from jrbench.evaluate.api import attack_run, margins_run
    from jrbench.evaluate.attack_config import AttackConfig
    from jrbench.training.loop import train
    from jrbench.training.rundir import load_run

    _colour_npz(tmp_path / "colour.npz")
    config = RunConfig(data=DataConfig("npz", str(tmp_path / "colour.npz")), model=ModelConfig("lenet"),
                       train=TrainConfig(epochs=1, batch_size=32, device="cpu"))
    config.reg.names = ["jacobian"]  # the tape's first-conv adjoint on 3 channels
    run = tmp_path / "run"
    result = train(config, run)
    assert result.config.data.info["input_shape"] == [3, 32, 32] and len(result.config.data.info["mean"]) == 3
    model, loaded = load_run(run)
    assert model.input_shape == (3, 32, 32) and model.num_classes == 4
    assert model.normalize.mean.flatten().tolist() == pytest.approx(loaded.data.info["mean"])

    attacks = AttackConfig(noise=True, pgd=True, fgsm=True, autoattack=True, norms=["linf", "l2"],
                           sigmas=[0.0, 0.1], eps_linf=None, eps_l2=None, steps=3, restarts=1,
                           aa_targets=3, draws=1, autoattack_eps_linf=[8 / 255])  # AutoAttack: the slow one
    table = attack_run(run, attacks, n_examples=4, device="cpu").table
    assert {"noise", "pgd", "fgsm", "autoattack"} <= set(table["attack"])
    linf = sorted(table[(table["attack"] == "pgd") & (table["norm"] == "linf")]["strength"].unique())
    assert linf == pytest.approx([0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255])  # CIFAR-like: colour
    assert table["accuracy"].between(0, 1).all()

    margins = margins_run(run, n_examples=6, n_directions=2, device="cpu")
    assert len(margins.margins) and margins.margins["margin_adv_l2"].notna().any() and len(margins.jacobian)

    certify = CertifyConfig(lipschitz=True, ibp=True, crown=True, alpha_crown=True, complete=True, smoothing=True,
                            sigmas=[0.25], n0=10, n=50, eps_linf=[1 / 255], eps_l2=[0.1], alpha_steps=2,
                            timeout=5.0, skip=False)
    rows = certify_run(run, certify, n_examples=2, device="cpu").table
    assert {"lipschitz", "ibp", "crown", "alpha-crown", "complete", "smoothing"} <= set(rows["method"])
    assert rows["certified_acc"].between(0, 1).all()
