"""The batched corruptions (jrbench.evaluate.corruption_batch) against the library they re-implement:
float for float on the same seeds, every common corruption at every severity, grey and colour, at
the benchmark's sizes and at odd ones; the routines recomputed from scipy, numba and the library
(order-1 zoom, the motion sum, the plasma fractal) against those routines directly; and the
independence of each example's pixels from the batch, its chunks and the number of processes."""
import numpy as np
import pytest
from PIL import Image

from jrbench.evaluate import corruption_batch as B
from jrbench.evaluate import corruptions as C
from jrbench.evaluate.attack_config import COMMON_CORRUPTIONS


def images(shape: tuple[int, ...], n: int = 4, seed: int = 0) -> np.ndarray:
    """n uint8 images in the library's layout: a ring (a digit's strokes), a blank one, uniform noise,
    and smooth gradients (the rest)."""
    rng = np.random.default_rng(seed)
    h, w = shape[:2]
    yy, xx = np.mgrid[:h, :w]
    ring = np.clip(1 - np.abs(np.hypot(yy - h / 2, xx - w / 2) - min(h, w) / 4) / 2.5, 0, 1)
    out = [ring, np.zeros((h, w)), rng.random((h, w))]
    while len(out) < n:
        a, b = rng.uniform(0.2, 0.8, 2)
        out.append(a * xx / max(w - 1, 1) + b * yy / max(h - 1, 1))
    out = np.stack(out[:n])
    if len(shape) == 3:  # colour: each channel its own mix
        out = np.stack([out, np.roll(out, 1, axis=0) * 0.7, 1 - out], axis=-1)
    return (out * 255).round().astype(np.uint8)


def library_float(image: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """The library's own float output for one image, seeded as jrbench seeds it (its grey path, or
    three equal channels for GREY_VIA_RGB, one kept)."""
    grey = image.ndim == 2
    if grey and name in B.GREY_VIA_RGB:
        pil = Image.fromarray(np.repeat(image[:, :, None], 3, axis=2), "RGB")
    else:
        pil = Image.fromarray(image, "L" if grey else "RGB")
    extra = {"seed": seed} if name in B.SEED_ARGUMENT else {}
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        out = np.asarray(B.library_functions()[name](pil, severity, **extra), dtype=np.float64)
    finally:
        np.random.set_state(state)
    return out[:, :, 0] if grey and out.ndim == 3 else out


SIZES = {"grey28": (28, 28), "colour32": (32, 32, 3), "grey20x26": (20, 26), "colour17x23": (17, 23, 3)}


@pytest.mark.parametrize("size", ["grey28", "colour32", pytest.param("grey20x26", marks=pytest.mark.slow),
                                  pytest.param("colour17x23", marks=pytest.mark.slow)])
def test_every_batched_corruption_is_the_library_float_for_float(size):
    x = images(SIZES[size])
    assert set(B.BATCHED) == set(COMMON_CORRUPTIONS)
    for name in COMMON_CORRUPTIONS:
        seeds = [C.corruption_seed(0, name, i) for i in (3, 70, 11, 5)]
        for severity in range(1, 6):
            batched = np.asarray(B.BATCHED[name](x, severity, seeds), dtype=np.float64).reshape(x.shape)
            for i, seed in enumerate(seeds):
                reference = library_float(x[i], name, severity, seed)
                assert np.array_equal(batched[i], reference), (name, severity, i,
                                                               np.abs(batched[i] - reference).max())


def test_the_public_path_gives_the_librarys_pixels():
    """corrupt_batch (batched) and corrupt_batch(reference=True) / corrupt_image (the library)."""
    digits = images((28, 28), 5)[:, None]
    index = [9, 2, 40, 7, 1]
    for name in ("zoom_blur", "glass_blur", "snow", "jpeg_compression"):
        fast = C.corrupt_batch(digits, name, 4, 0, index)
        slow = C.corrupt_batch(digits, name, 4, 0, index, reference=True)
        assert fast.dtype == np.uint8 and np.array_equal(fast, slow), name
        assert np.array_equal(fast[2], C.corrupt_image(digits[2], name, 4, C.corruption_seed(0, name, 40)))


# ----------------------------------------------------------------------------- recomputed routines
def test_opencvs_jpeg_round_trip_is_pillows():
    """jpeg_compression through OpenCV against the library's Pillow round trip on 60 noise images (the
    hardest for a codec: every coefficient quantized) and 60 smooth ones, grey and colour, every quality."""
    rng = np.random.default_rng(5)
    for shape in ((28, 28), (32, 32, 3), (9, 13)):
        x = np.concatenate([rng.integers(0, 256, (60, *shape), dtype=np.uint8), images(shape, 60, seed=6)])
        for severity in range(1, 6):
            got = B.jpeg_compression(x, severity, [0] * len(x))
            for i in range(len(x)):
                assert np.array_equal(got[i], library_float(x[i], "jpeg_compression", severity, 0)), (shape, i)



@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zoom_order1_is_scipys_zoom(dtype):
    from scipy.ndimage import zoom

    rng = np.random.default_rng(1)
    factors = [1.0, *B.zoom_factors(5), *B.zoom_factors(2), 2, 2.5, 3, 4, 4.5, 0.6, 1.7]
    for h, w in ((28, 28), (26, 26), (7, 30), (13, 5), (1, 4), (2, 2)):
        x = (rng.random((3, h, w)) - 0.3).astype(dtype)
        for factor in factors:
            want = np.stack([zoom(image, factor, order=1) for image in x])
            got = B.zoom_order1(x, factor, 1 << 30, 1 << 30, dtype)
            assert got.dtype == want.dtype and np.array_equal(got, want), (h, w, factor)
            cut = B.zoom_order1(x, factor, 5, 3, dtype)
            assert np.array_equal(cut, want[:, :5, :3])
        # with a channel axis zoomed by 1 (the library's (factor, factor, 1)): each plane on its own
        colour = (rng.random((h, w, 3))).astype(dtype)
        planes = B.zoom_order1(np.ascontiguousarray(colour.transpose(2, 0, 1)), 1.13, 1 << 30, 1 << 30, dtype)
        assert np.array_equal(planes.transpose(1, 2, 0), zoom(colour, (1.13, 1.13, 1), order=1))


def test_map_coordinates_order1_is_scipys_with_reflection():
    """Coordinates inside, just outside (scipy's reflect quirks at -1 < c < 0 and past the end) and
    far outside the image."""
    from scipy.ndimage import map_coordinates

    rng = np.random.default_rng(3)
    for h, w in ((28, 28), (5, 9), (2, 3)):
        image = rng.random((3, h, w)).astype(np.float32)
        rows = rng.uniform(-2.5 * h, 2.5 * h, (3, h, w))
        cols = rng.uniform(-1.2, w + 0.2, (3, h, w))
        rows[0, 0, :3] = [-0.0, -1.0, h - 1.0]
        cols[1, 1, :3] = [w - 0.5, -0.5, 0.0]
        got = B.map_coordinates_order1(image, rows, cols)
        for k in range(3):
            want = map_coordinates(image[k], [rows[k].reshape(-1, 1), cols[k].reshape(-1, 1)], order=1,
                                   mode="reflect").reshape(h, w)
            assert got.dtype == np.float32 and np.array_equal(got[k], want), (h, w, k)


def test_the_motion_sum_is_the_librarys_at_any_angle_and_size():
    """Including the library's break (the motion leaving a small image) and angles at the edges."""
    module = B._module()
    rng = np.random.default_rng(2)
    angles = [-135.0, -90.0, -45.0, -44.9, 0.0, 13.7, 45.0, 90.0, *rng.uniform(-180, 180, 8)]
    for h, w, dtype in ((28, 28, np.uint8), (6, 9, np.uint8), (30, 30, np.float64), (3, 40, np.float64)):
        x = (rng.random((len(angles), h, w)) * 255).astype(dtype)
        for radius, sigma in ((10, 3), (20, 15), (12, 8)):
            got = B._motion_blur_batch(x, radius, sigma, angles)
            for i, angle in enumerate(angles):
                want = module._motion_blur(x[i], radius=radius, sigma=sigma, angle=angle)
                assert np.array_equal(got[i], want), (h, w, radius, angle)


def test_the_plasma_fractals_are_the_librarys():
    module = B._module()
    seeds = [0, 17, 2**32 - 1]
    for mapsize, decay in ((32, 2), (8, 1.7), (64, 1.4)):
        got = B._plasma_fractals(seeds, mapsize, decay)
        for i, seed in enumerate(seeds):
            np.random.seed(seed)
            assert np.array_equal(got[i], module.plasma_fractal(mapsize=mapsize, wibbledecay=decay))


def test_batched_corruptions_leave_numpys_global_generator_alone():
    x = images((28, 28))
    np.random.seed(5)
    expected = np.random.rand()
    np.random.seed(5)
    for name in COMMON_CORRUPTIONS:
        B.BATCHED[name](x, 3, [1, 2, 3, 4])
    assert np.random.rand() == expected


# ----------------------------------------------------------------------------- batches, chunks, processes
def test_an_image_depends_on_its_seed_alone(monkeypatch):
    x = images((28, 28), 7, seed=3)
    seeds = [C.corruption_seed(0, "snow", i) for i in range(7)]
    for name in ("snow", "motion_blur", "impulse_noise", "frost", "fog"):
        whole = B.corrupt_images(x, name, 5, seeds)
        order = [6, 2, 0, 5, 1, 4, 3]
        shuffled = B.corrupt_images(x[order], name, 5, [seeds[i] for i in order])
        assert np.array_equal(shuffled, whole[order]), name
        monkeypatch.setattr(B, "CHUNK", 3 * 28 * 28)  # chunks of 3 images
        assert np.array_equal(B.corrupt_images(x, name, 5, seeds), whole), name
        monkeypatch.undo()
        assert np.array_equal(B.corrupt_images(x[4:5], name, 5, seeds[4:5])[0], whole[4]), name


def test_the_number_of_worker_processes_changes_no_pixel():
    x = images((28, 28), 40, seed=4)
    seeds = [C.corruption_seed(1, "glass_blur", i) for i in range(40)]
    try:
        for name in ("glass_blur", "zoom_blur", "shot_noise", "speckle_noise"):  # the last: the library's
            one = B.corrupt_images_parallel(x, name, 2, seeds, workers=1)
            two = B.corrupt_images_parallel(x, name, 2, seeds, workers=2)
            assert np.array_equal(one, two), name
        assert B._POOL.get("executor") is not None  # the worker process really ran
    finally:
        B.shutdown_pool()
