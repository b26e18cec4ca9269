"""The common corruptions (jrbench attack --corruptions): every corruption on 28x28 grey and 32x32
colour images (shape, dtype, range, its effect growing with the severity), seeds per example
(batch size, batch and device change nothing), the greyscale adaptations, the selection rule, the
rows, and the path through attack_run."""
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from jrbench.errors import UserError
from jrbench.evaluate import corruptions as C
from jrbench.evaluate.attack_config import (COMMON_CORRUPTIONS, CORRUPTIONS, GREY_REFUSED, MNIST_C_CORRUPTIONS,
                                            AttackConfig, build_attack_config, default_corruptions,
                                            expand_corruptions, select_attacks)
from jrbench.evaluate.attacks import EXAMPLE_COLUMNS, ROW_COLUMNS
from jrbench.schema import FieldError


def ring_digit() -> np.ndarray:
    """A 28x28 grey '0': a ring of radius 7, strokes about 5 pixels wide, uint8 (1, 28, 28)."""
    yy, xx = np.mgrid[:28, :28]
    return (np.clip(1 - np.abs(np.hypot(yy - 14, xx - 13) - 7) / 2.5, 0, 1) * 255).astype(np.uint8)[None]


def colour_image() -> np.ndarray:
    """A 32x32 colour image: smooth gradients and a red block, uint8 (3, 32, 32)."""
    y3, x3 = np.mgrid[:32, :32] / 31.0
    image = np.stack([x3, y3, 1 - x3 * y3]) * 0.6 + 0.2
    image[:, 8:24, 10:22] = [[[0.9]], [[0.2]], [[0.3]]]
    return (image * 255).round().astype(np.uint8)


IMAGES = {"grey28": ring_digit(), "colour32": colour_image()}


def names_for(image: np.ndarray) -> list[str]:
    return [n for n in CORRUPTIONS if not (image.shape[0] == 1 and n in GREY_REFUSED)]


# ----------------------------------------------------------------------------- every corruption, both shapes
@pytest.mark.parametrize("image_name", sorted(IMAGES))
def test_every_corruption_keeps_shape_dtype_and_range(image_name):
    image = IMAGES[image_name]
    for name in names_for(image):
        for severity in range(1, 6):
            out = C.corrupt_image(image, name, severity, seed=3)
            assert out.shape == image.shape and out.dtype == np.uint8, (name, severity)
            pixels = torch.from_numpy(out).float()[None] / 255
            C.check_corrupted(pixels, (1, *image.shape), torch.float32)  # finite, in [0, 1]


# The library's constants do not order these by the size of the change (the test's images): glass_blur's
# iterations run 2, 1, 3, 2, 2; frost's image weight falls while its texture weight stalls (0.7, 0.7 at
# 3 and 4); fog's strength stays 2.5 from 3 to 4 while its fractal changes; spatter is water at 1-3 and
# mud at 4-5; pixelate's 9- and 8-pixel grids of a 32-pixel image alias differently.
NOT_MONOTONE = {"grey28": {"glass_blur", "frost", "fog", "spatter"},
                "colour32": {"glass_blur", "frost", "pixelate"}}
UNORDERED = {"saturate"}  # its scale lowers the saturation (0.3, 0.1), then raises it (2, 5, 20)
MAX_DROP = 0.02  # pixel units: the largest fall from one severity to the next allowed to those


def changes(image: np.ndarray, name: str) -> list[float]:
    """Mean |corrupted - clean| (pixel units) at severities 1-5, averaged over four seeds."""
    return [float(np.mean([C.mean_abs_change(image, name, s, seed) for seed in range(4)])) for s in range(1, 6)]


@pytest.mark.parametrize("image_name", sorted(IMAGES))
def test_each_corruption_changes_the_image_more_with_severity(image_name):
    """Not a hash of the library's floats: every corruption changes the image at every severity, and
    the change grows with the severity (non-strictly: where the library saturates it stays); the
    exceptions are named with the library's reason and may fall by at most MAX_DROP between
    neighbouring severities, ending above where they start. Saturate's scale has no order."""
    image = IMAGES[image_name]
    for name in names_for(image):
        c = changes(image, name)
        assert min(c) > 0, (name, c)
        steps = np.diff(c)
        if name in UNORDERED:
            continue
        if name in NOT_MONOTONE[image_name]:
            assert steps.min() > -MAX_DROP and c[-1] > c[0], (name, c)
        else:
            assert (steps >= -1e-12).all(), (name, c)
    assert {n for n in NOT_MONOTONE[image_name]} <= set(names_for(image))


def test_the_noise_family_grows_strictly():
    """Where nothing saturates the change grows strictly: the three common noises on the digit."""
    for name in ("gaussian_noise", "shot_noise", "impulse_noise"):
        assert (np.diff(changes(ring_digit(), name)) > 0).all(), name


# ----------------------------------------------------------------------------- greyscale
def test_grey_goes_through_three_equal_channels_where_the_library_grey_path_is_broken():
    from imagecorruptions import corruption_dict
    from PIL import Image

    digit = ring_digit()
    with pytest.raises(IndexError):  # the library's own grey path of motion blur
        corruption_dict["motion_blur"](Image.fromarray(digit[0], "L"), 1)
    for name in C.GREY_VIA_RGB:
        for severity in (1, 3, 5):
            seed = C.corruption_seed(0, name, 5)
            grey = C.corrupt_image(digit, name, severity, seed)
            colour = C.corrupt_image(np.repeat(digit, 3, axis=0), name, severity, seed)
            assert (colour == colour[:1]).all()  # the three channels stay equal
            assert np.array_equal(grey[0], colour[0])


def test_gaussian_blur_blurs_both_axes_of_a_grey_image():
    """The library's grey path blurs one axis only (scikit-image reads the 2-D image's last axis as
    channels); jrbench's blurs both: a single bright pixel spreads symmetrically."""
    dot = np.zeros((1, 28, 28), np.uint8)
    dot[0, 14, 14] = 255
    out = C.corrupt_image(dot, "gaussian_blur", 1, 0).astype(int)[0]
    assert out[14, 13] > 0 and out[13, 14] > 0 and abs(out[14, 13] - out[13, 14]) <= 1


def test_saturate_is_refused_on_grey_images_and_left_out_of_their_list():
    assert "saturate" in GREY_REFUSED and "saturate" not in COMMON_CORRUPTIONS
    with pytest.raises(UserError, match="greyscale"):
        C.corrupt_image(ring_digit(), "saturate", 3, 0)
    config = build_attack_config(corruption_names=["saturate"])
    with pytest.raises(FieldError, match="--corruption names saturate, which a greyscale"):
        config.filled("mnist")
    assert config.filled("cifar10").corruption_names == ["saturate"]


def test_default_lists_per_data_set():
    assert default_corruptions("mnist") == list(COMMON_CORRUPTIONS) == default_corruptions("cifar10")
    assert len(COMMON_CORRUPTIONS) == 15
    assert {CORRUPTIONS[n] for n in COMMON_CORRUPTIONS} == {"noise", "blur", "weather", "digital"}
    assert expand_corruptions(["mnist-c", "fog", "blur"]) == [*MNIST_C_CORRUPTIONS, "defocus_blur", "zoom_blur"]


def test_frost_textures_are_read_once_with_the_same_result():
    """The cached texture reader changes no pixel: frost through the library's own cv2 is the same."""
    from imagecorruptions import corruptions as module
    from PIL import Image

    image = colour_image()
    cached = C.corrupt_image(image, "frost", 3, 11)
    assert isinstance(module.cv2, C._CachedImread)
    real = module.cv2._cv2
    state = np.random.get_state()
    try:
        module.cv2 = real
        np.random.seed(11)
        raw = np.asarray(module.frost(Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)), "RGB"), 3),
                         dtype=np.float64)
    finally:
        module.cv2 = C._CachedImread(real)
        np.random.set_state(state)
    assert np.array_equal(cached, np.clip(raw, 0, 255).astype(np.uint8).transpose(2, 0, 1))


# ----------------------------------------------------------------------------- seeds
def test_an_examples_copy_depends_on_its_index_alone():
    images = np.stack([ring_digit()[0:1]] * 6)
    index = [4, 9, 1, 7, 30, 2]
    whole = C.corrupt_batch(images, "gaussian_noise", 3, 0, index)
    parts = np.concatenate([C.corrupt_batch(images[i:i + 2], "gaussian_noise", 3, 0, index[i:i + 2])
                            for i in (0, 2, 4)])
    assert np.array_equal(whole, parts)
    reordered = C.corrupt_batch(images[::-1], "gaussian_noise", 3, 0, index[::-1])
    assert np.array_equal(reordered[::-1], whole)
    assert not np.array_equal(whole[0], whole[1])  # another index: another draw
    other_seed = C.corrupt_batch(images, "gaussian_noise", 3, 1, index)
    assert not np.array_equal(other_seed, whole)


def test_the_seed_ignores_the_severity_and_the_callers_numpy_state_is_kept():
    assert C.corruption_seed(0, "fog", 3) == C.corruption_seed(0, "fog", 3) != C.corruption_seed(0, "fog", 4)
    assert C.corruption_seed(0, "fog", 3) != C.corruption_seed(0, "snow", 3)
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    for name in ("glass_blur", "impulse_noise", "snow", "frost"):
        C.corrupt_image(ring_digit(), name, 2, 5)
    assert np.random.rand() == expected


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()


def tiny_set(n: int = 12):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 1, 28, 28), generator=g).float() / 255
    return x, torch.randint(0, 10, (n,), generator=g)


def test_rows_do_not_depend_on_the_batch_size_or_the_processes():
    from jrbench.evaluate import corruption_batch

    model, (x, y) = tiny_model(), tiny_set(24)
    index = torch.arange(len(x)) * 5 + 3
    out = []
    try:
        for batch, workers in ((1, 1), (5, 1), (500, 1), (500, 2)):
            record: list[pd.DataFrame] = []
            rows = C.corruption_rows(model, x, y, ["gaussian_noise", "glass_blur", "fog"], [1, 4], batch_size=batch,
                                     example_index=index, record=record, workers=workers)
            out.append((pd.DataFrame(rows).drop(columns="seconds"), pd.concat(record, ignore_index=True)))
    finally:
        corruption_batch.shutdown_pool()
    for table, examples in out[1:]:
        pd.testing.assert_frame_equal(table, out[0][0])
        pd.testing.assert_frame_equal(examples, out[0][1])


def test_the_batched_path_is_the_librarys_through_corrupt_batch():
    """Every common corruption through corrupt_batch (batched) and corrupt_batch(reference=True)
    (the library image by image) on a digit and a colour image at severities 1 and 5
    (tests/test_corruption_batch.py compares every severity float for float)."""
    for image in (ring_digit(), colour_image()):
        images = np.stack([image, image[:, ::-1].copy()])
        for name in COMMON_CORRUPTIONS:
            for severity in (1, 5):
                fast = C.corrupt_batch(images, name, severity, 0, [4, 11])
                assert np.array_equal(fast, C.corrupt_batch(images, name, severity, 0, [4, 11], reference=True)), name


# ----------------------------------------------------------------------------- rows
def test_the_rows_and_the_per_example_record():
    model, (x, y) = tiny_model(), tiny_set()
    config = build_attack_config(corruption_names=["contrast", "shot_noise"], severities=[2, 5]).filled("mnist")
    result = C.run_corruptions(model, x, y, config, example_index=torch.arange(12), example_seed=7)
    table, examples = result.table, result.examples
    assert list(table.columns) == ROW_COLUMNS and list(examples.columns) == EXAMPLE_COLUMNS
    assert set(table["attack"]) == {"corruption"} and list(table["norm"].unique()) == ["contrast", "shot_noise"]
    assert sorted(table["strength"].unique()) == [0, 2, 5]  # severity 0: the clean images
    assert (table["loss"] == "none").all() and (table["draws"] == 1).all() and (table["n_examples"] == 12).all()
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).numpy()
    for r in table[table["strength"] == 0].itertuples():
        assert r.accuracy == pytest.approx(clean.mean())
    assert table["accuracy"].between(0, 1).all() and (table["ci_low"] <= table["accuracy"]).all()
    assert (examples["example_seed"] == 7).all() and len(examples) == 12 * len(table)
    # accuracy under corruption, whether or not the clean copy is right; broken: right clean, wrong corrupted
    for (name, s), sel in examples.groupby(["norm", "strength"]):
        row = table[(table["norm"] == name) & (table["strength"] == s)].iloc[0]
        assert sel["robust"].mean() == pytest.approx(row["accuracy"])
        assert (sel["broken"] == sel["clean_correct"] * (1 - sel["robust"])).all()


def test_pixels_that_are_not_8_bit_are_refused():
    model, (x, y) = tiny_model(), tiny_set(3)
    with pytest.raises(UserError, match="8-bit"):
        C.corruption_rows(model, x + 0.3 / 255, y, ["fog"], [1])


# ----------------------------------------------------------------------------- naming selects
@pytest.mark.parametrize("words, expected", [
    ({"corruptions": True}, {"corruptions"}),
    ({"corruptions": True, "pgd": True}, {"corruptions", "pgd"}),
    ({"corruptions": False}, {"noise", "pgd", "fgsm"}),
    ({}, {"noise", "pgd", "fgsm"}),
])
def test_naming_selects_the_corruptions(words, expected):
    assert {a for a, on in select_attacks(**words).items() if on} == expected


def test_a_corruption_or_severity_names_the_corruptions():
    config = build_attack_config(corruption_names=["fog"])
    assert config.corruptions and not (config.noise or config.pgd or config.fgsm or config.autoattack)
    assert build_attack_config(severities=[3]).corruptions
    with pytest.raises(UserError, match="--corruptions is off but corruptions or severities"):
        build_attack_config(corruptions=False, severities=[3])
    with pytest.raises(FieldError, match=r"--severity must be in \[1, 5\]"):
        build_attack_config(severities=[6])
    with pytest.raises(FieldError, match="Did you mean .fog.?"):
        build_attack_config(corruption_names=["fogg"])


def test_the_cli_and_a_spec_build_the_same_corruption_config(monkeypatch, tmp_path):
    import click.testing
    import typer

    from jrbench.cli import app
    from jrbench.evaluate import api
    from jrbench.study.spec import attack_config

    seen = []

    def caught(run_dir, config):
        seen.append(config)
        raise UserError("caught")

    monkeypatch.setattr(api, "check_attack", caught)
    args = ["attack", str(tmp_path), "--corruption", "mnist-c", "--corruption", "contrast", "--severity", "1",
            "--severity", "5", "--pgd"]
    result = click.testing.CliRunner().invoke(typer.main.get_command(app), args)
    assert result.exit_code == 2 and seen, result.output
    spec = attack_config({"corruption": ["mnist-c", "contrast"], "severity": [1, 5], "pgd": True})
    assert seen[0] == spec and spec.corruptions and spec.pgd and not spec.noise
    assert spec.filled("mnist").corruption_names == [*MNIST_C_CORRUPTIONS, "contrast"]


# ----------------------------------------------------------------------------- not adversarial
def test_the_worst_case_and_the_checks_leave_the_corruptions_out():
    from jrbench.analysis.worst_case import worst_case_examples
    from jrbench.evaluate.attack_checks import sanity_warnings

    examples = pd.DataFrame({"example": [0, 0, 1, 1], "attack": ["pgd", "corruption"] * 2,
                             "norm": ["linf", "fog"] * 2, "strength": [0.1, 1.0] * 2, "loss": ["ce64", "none"] * 2,
                             "clean_correct": [1, 1, 1, 1], "robust": [1.0, 0.0, 1.0, 0.0], "broken": [0, 1, 0, 1],
                             "example_seed": 0})
    worst = worst_case_examples(examples)
    assert list(worst["norm"]) == ["linf", "linf"] and worst["robust"].tolist() == [1, 1]
    rising = pd.DataFrame([{**dict.fromkeys(ROW_COLUMNS, float("nan")), "attack": "corruption", "norm": "snow",
                            "strength": s, "accuracy": a, "ci_low": a - 0.01, "ci_high": a + 0.01, "loss": "none",
                            "n_examples": 100} for s, a in ((2, 0.5), (3, 0.9))])
    assert sanity_warnings(rising) == []


# ----------------------------------------------------------------------------- through attack_run
def _grey_npz(path, n_train=200, n_test=60):
    rng = np.random.default_rng(0)

    def split(n):
        y = np.arange(n) % 4
        x = rng.integers(0, 60, (n, 28, 28), dtype=np.uint8)
        for i, c in enumerate(y):
            r, col = divmod(int(c), 2)
            x[i, r * 14:(r + 1) * 14, col * 14:(col + 1) * 14] = 220
        return x, y

    (x_train, y_train), (x_test, y_test) = split(n_train), split(n_test)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


@pytest.mark.slow
def test_attack_run_writes_corruption_rows_beside_the_other_attacks(tmp_path):
    from jrbench.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from jrbench.evaluate.api import attack_run
    from jrbench.training.loop import train
    from jrbench.training.rundir import read_csv

    _grey_npz(tmp_path / "grey.npz")
    config = RunConfig(data=DataConfig("npz", str(tmp_path / "grey.npz")), model=ModelConfig("mlp"),
                       train=TrainConfig(epochs=1, batch_size=32, device="cpu"))
    run = tmp_path / "run"
    train(config, run)
    attack_run(run, AttackConfig(noise=True, pgd=False, fgsm=False, sigmas=[0.0, 0.2], draws=1), n_examples=20,
               device="cpu")
    progress = []
    result = attack_run(run, build_attack_config(corruption_names=["fog", "pixelate"], severities=[1, 3]),
                        n_examples=20, device="cpu", on_progress=lambda d, t, label: progress.append((d, t)))
    assert progress[0] == (0, 4) and progress[-1] == (4, 4)
    table, examples = read_csv(run / "attacks.csv"), read_csv(run / "attack_examples.csv")
    assert set(table["attack"]) == {"noise", "corruption"}  # upserted beside the noise rows
    rows = table[table["attack"] == "corruption"]
    assert len(rows) == 6 and (rows["n_examples"] == 20).all() and (rows["example_seed"] == 0).all()
    assert all("corruption" not in w for w in result.warnings)
    # the fixed examples of the other attacks: the same positions
    from jrbench.data.datasets import load_data
    from jrbench.runtables.examples import fixed_examples
    _, _, index = fixed_examples(load_data(config.data), 20, 0)
    assert sorted(set(examples[examples["attack"] == "corruption"]["example"])) == sorted(index.tolist())
