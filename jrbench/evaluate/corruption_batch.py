"""The common corruptions over a whole batch of images of one size: the library's per-image
functions (``imagecorruptions``, docs/corruptions.md) recomputed batch-wise, each example's random
numbers drawn exactly as the library draws them, the arithmetic done on all the examples at once.

The library stays the definition. Every function here is tested float for float against the
library's own output on the same seeds (tests/test_corruption_batch.py): the same operations on the
same values in the same order, so the same pixels. Where the library calls a routine whose work
cannot be batched by calling it, this module recomputes that routine and is tested against it too:
scipy's order-1 zoom (zoom_blur, snow: its taps, weights and summation order), the library's numba
pixel shuffle (glass_blur, compiled here for a whole batch), its plasma fractal (fog) and shifted sums
(motion_blur, snow); and JPEG goes through OpenCV's libjpeg-turbo instead of Pillow's (the same
encoder settings and decoder: the same pixels, tested on digits, colour images and noise).
:func:`library_image` is the reference path, the library called image by image.

Torch-free and light (numpy, scipy, scikit-image, OpenCV, Pillow, numba, the library): worker
processes import it alone. Layout is the library's: a grey batch is (N, H, W), a colour batch
(N, H, W, 3), uint8; each corruption function returns the library's float output for every image
before the clipping to [0, 255] and truncation to uint8 (:func:`corrupt_images`). ``seeds`` are the
examples' seeds (jrbench.evaluate.corruptions.corruption_seed), one per image: image i depends on
its own seed alone, never on the batch, its size, its order or the number of processes.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

# The library's constants, per severity 1-5 (imagecorruptions/corruptions.py)
GAUSSIAN_NOISE = (.08, .12, 0.18, 0.26, 0.38)
SHOT_NOISE = (60, 25, 12, 5, 3)
IMPULSE_NOISE = (.03, .06, .09, 0.17, 0.27)
DEFOCUS_BLUR = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))
GLASS_BLUR = ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))  # sigma, max_delta, iterations
MOTION_BLUR = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))  # radius, sigma
SNOW = ((0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55))
FROST = ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))
FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")
FOG = ((1.5, 2), (2., 2), (2.5, 1.7), (2.5, 1.5), (3., 1.4))
BRIGHTNESS = (.1, .2, .3, .4, .5)
CONTRAST = (0.4, .3, .2, .1, .05)
ELASTIC_ALPHA = (250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12)


def zoom_factors(severity: int) -> np.ndarray:
    """zoom_blur's zoom factors at ``severity``, the library's aranges (11 to 16 of them)."""
    return [np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01), np.arange(1, 1.21, 0.02),
            np.arange(1, 1.26, 0.02), np.arange(1, 1.31, 0.03)][severity - 1]


def _module():
    from imagecorruptions import corruptions as module
    return module


def _legacy_draws(seeds: Sequence[int], draw: Callable[[np.random.RandomState], object]) -> list:
    """``draw(rng)`` per example, ``rng`` numpy's legacy generator seeded with the example's seed: the
    stream the library reads from numpy's global generator after jrbench seeds it."""
    rng = np.random.RandomState()
    out = []
    for seed in seeds:
        rng.seed(int(seed))
        out.append(draw(rng))
    return out


_KERNELS: dict = {}


def _compiled(function: Callable) -> Callable:
    """``function`` compiled by numba (nopython, no fast-math: the float operations as written, in
    order), once per process; cached on disk where the package is writable."""
    if function.__name__ not in _KERNELS:
        import numba

        try:
            _KERNELS[function.__name__] = numba.njit(cache=True)(function)
        except RuntimeError:  # no writable cache location: compile in memory
            _KERNELS[function.__name__] = numba.njit(function)
    return _KERNELS[function.__name__]


# ----------------------------------------------------------------------------- scipy's order-1 zoom
def _zoom_taps(n_in: int, factor: float) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scipy.ndimage.zoom(order=1, mode='constant', grid_mode=False) along one axis of length n_in by
    ``factor``: the output length and, per output position, its two input taps and their weights, as
    scipy's zoom_shift computes them (coordinate k * (n_in - 1) / (n_out - 1); w0 = 1 - frac,
    w1 = 1 - w0; at the last input frac is 0 and the second tap, weight 0, is read at the last input;
    a coordinate past the last input, by rounding, gives cval 0 as in scipy's constant mode)."""
    n_out = int(round(n_in * factor))
    ratio = (n_in - 1) / (n_out - 1) if n_out > 1 else 1.0
    lo, hi = np.zeros(n_out, np.int64), np.zeros(n_out, np.int64)
    w0, w1 = np.zeros(n_out), np.zeros(n_out)
    for k in range(n_out):
        cc = float(k) * ratio
        if cc > n_in - 1:  # scipy's constant mode: outside the input, the output is cval (0)
            continue
        start = math.floor(cc)
        frac = cc - start
        lo[k] = start
        hi[k] = min(start + 1, n_in - 1)
        w0[k] = 1.0 - frac
        w1[k] = 1.0 - w0[k]
    return n_out, lo, hi, w0, w1


_TAPS: dict = {}


def _zoom_axes(h: int, w: int, factor: float, rows: int, cols: int):
    """Both axes' taps and weights (:func:`_zoom_taps`) for the kept rows x cols, cached per shape and factor."""
    key = (h, w, float(factor), rows, cols)
    if key not in _TAPS:
        n_r, lo_r, hi_r, w0_r, w1_r = _zoom_taps(h, factor)
        n_c, lo_c, hi_c, w0_c, w1_c = _zoom_taps(w, factor)
        r, c = min(rows, n_r), min(cols, n_c)
        _TAPS[key] = (lo_r[:r], hi_r[:r], w0_r[:r], w1_r[:r], lo_c[:c], hi_c[:c], w0_c[:c], w1_c[:c])
    return _TAPS[key]


def _zoom_kernel(x, lo_r, hi_r, wr0, wr1, lo_c, hi_c, wc0, wc1, out, add):  # compiled by numba
    """out[j, a, b] (= or, with ``add``, +=) the order-1 zoom of x[j] at output (a, b): scipy's four
    products ((value * w_row) * w_col) summed in its tap order in float64, then cast to out's type
    (added in that type)."""
    for j in range(x.shape[0]):
        for a in range(len(lo_r)):
            for b in range(len(lo_c)):
                t = (x[j, lo_r[a], lo_c[b]] * wr0[a]) * wc0[b]
                t += (x[j, lo_r[a], hi_c[b]] * wr0[a]) * wc1[b]
                t += (x[j, hi_r[a], lo_c[b]] * wr1[a]) * wc0[b]
                t += (x[j, hi_r[a], hi_c[b]] * wr1[a]) * wc1[b]
                if add:
                    out[j, a, b] += out.dtype.type(t)
                else:
                    out[j, a, b] = t


def zoom_order1(x: np.ndarray, factor: float, rows: int, cols: int, out_dtype, *,
                add_to: np.ndarray | None = None) -> np.ndarray:
    """``scipy.ndimage.zoom(image, factor, order=1)[:rows, :cols]`` for every image of x (N, h, w), in
    float64 with scipy's products ((value * w_row) * w_col) summed in its tap order, then cast to
    ``out_dtype`` as scipy casts to the input's type. Returns (N, r, c): r = min(rows, zoomed height),
    c likewise; or, with ``add_to`` (N, >= r, >= c) of ``out_dtype``, adds it into its corner in place
    and returns that. A trailing channel axis of the library's (h, w, C) zoom by (factor, factor, 1) has
    weights 1 and 0, so each channel is this zoom of its own plane (the caller splits them)."""
    n, h, w = x.shape
    axes = _zoom_axes(h, w, factor, rows, cols)
    r, c = len(axes[0]), len(axes[4])
    x = np.ascontiguousarray(x)
    if add_to is not None:
        _compiled(_zoom_kernel)(x, *axes, add_to[:, :r, :c], True)
        return add_to
    out = np.empty((n, r, c), dtype=out_dtype)
    _compiled(_zoom_kernel)(x, *axes, out, False)
    return out


def _planes(x: np.ndarray) -> np.ndarray:
    """(N, h, w) as is; (N, h, w, C) as N*C planes (N*C, h, w), example-major."""
    return x if x.ndim == 3 else np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(-1, *x.shape[1:3])


def _unplanes(planes: np.ndarray, like: np.ndarray) -> np.ndarray:
    """The inverse of :func:`_planes` for a result of ``like``'s number of channels."""
    if like.ndim == 3:
        return planes
    return planes.reshape(len(like), like.shape[3], *planes.shape[1:]).transpose(0, 2, 3, 1)


def _clipped_zoom(x: np.ndarray, factor: float, rows: int, cols: int, out_dtype, *,
                  add_to: np.ndarray | None = None) -> np.ndarray:
    """The library's clipped_zoom over a batch (N, h, w[, C]): the centre crop of ceil(side / factor)
    pixels zoomed by ``factor`` (and cut to rows x cols as the callers' [:rows, :cols]); with
    ``add_to`` (the batch's shape) added into it in place."""
    h, w = x.shape[1], x.shape[2]
    ch0 = int(np.ceil(h / float(factor)))
    top0 = (h - ch0) // 2
    ch1 = int(np.ceil(w / float(factor)))
    top1 = (w - ch1) // 2
    crop = _planes(x[:, top0:top0 + ch0, top1:top1 + ch1])
    if add_to is None:
        return _unplanes(zoom_order1(crop, factor, rows, cols, out_dtype), x)
    if add_to.ndim == 3:
        return zoom_order1(crop, factor, rows, cols, out_dtype, add_to=add_to)
    planes = np.ascontiguousarray(add_to.transpose(0, 3, 1, 2)).reshape(-1, *add_to.shape[1:3])
    zoom_order1(crop, factor, rows, cols, out_dtype, add_to=planes)
    add_to[...] = _unplanes(planes, x)
    return add_to


# ----------------------------------------------------------------------------- shifts (motion blur)
def _motion_shifts(angles: Sequence[float], width: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The library's _motion_blur offsets per example: dy, dx (N, width) and the number of terms it
    sums before the motion leaves the image (its ``break``). The sine and cosine are the library's
    scalar calls; the rest is elementwise IEEE arithmetic, the same on arrays."""
    sin = np.array([np.sin(np.deg2rad(angle)) for angle in angles], dtype=np.float64)
    cos = np.array([np.cos(np.deg2rad(angle)) for angle in angles], dtype=np.float64)
    p0, p1 = width * sin, width * cos
    hypot = np.array([math.hypot(a, b) for a, b in zip(p0, p1)], dtype=np.float64)
    i = np.arange(width)[None, :]
    dy = -np.ceil(((i * p0[:, None]) / hypot[:, None]) - 0.5)
    dx = -np.ceil(((i * p1[:, None]) / hypot[:, None]) - 0.5)
    dy, dx = dy.astype(np.int64), dx.astype(np.int64)
    outside = (np.abs(dy) >= h) | (np.abs(dx) >= w)
    terms = np.where(outside.any(axis=1), outside.argmax(axis=1), width)
    return dy, dx, terms


def _motion_kernel(x, dy, dx, terms, kernel):  # compiled by numba
    """sum_i kernel[i] * x[j] shifted by (dy[j, i], dx[j, i]) (its edge repeated), i < terms[j], in
    float64, term by term in order as the library's ``blurred = blurred + kernel[i] * shifted``."""
    m, h, w = x.shape
    out = np.zeros((m, h, w))
    for j in range(m):
        for i in range(terms[j]):
            k, sy, sx = kernel[i], dy[j, i], dx[j, i]
            for r in range(h):
                rr = min(max(r - sy, 0), h - 1)
                for c in range(w):
                    out[j, r, c] = out[j, r, c] + k * x[j, rr, min(max(c - sx, 0), w - 1)]
    return out


def _motion_blur_batch(x: np.ndarray, radius: int, sigma: float, angles: Sequence[float]) -> np.ndarray:
    """The library's _motion_blur of every image of x (N, h, w[, C]) with its own angle: the sum over i
    of kernel[i] times the image shifted by (dy_i, dx_i) with its edge repeated, in float64 in the
    library's order, up to the example's break (:func:`_motion_shifts`)."""
    width = radius * 2 + 1
    kernel = np.asarray(_module().getMotionBlurKernel(width, sigma), dtype=np.float64)
    h, w = x.shape[1], x.shape[2]
    dy, dx, terms = _motion_shifts(angles, width, h, w)
    planes = np.ascontiguousarray(_planes(x))
    channels = len(planes) // max(len(x), 1)
    if channels > 1:
        dy, dx, terms = (np.repeat(v, channels, axis=0) for v in (dy, dx, terms))
    return _unplanes(_compiled(_motion_kernel)(planes, dy, dx, terms.astype(np.int64), kernel), x)


# ----------------------------------------------------------------------------- the corruptions
def gaussian_noise(x, severity, seeds):
    c = GAUSSIAN_NOISE[severity - 1]
    noise = np.stack(_legacy_draws(seeds, lambda rng: rng.normal(size=x.shape[1:], scale=c)))
    return np.clip(x / 255. + noise, 0, 1) * 255


def shot_noise(x, severity, seeds):
    c = SHOT_NOISE[severity - 1]
    lam = (x / 255.) * c
    rng = np.random.RandomState()
    counts = np.empty(x.shape, np.int64)
    for i, seed in enumerate(seeds):
        rng.seed(int(seed))
        counts[i] = rng.poisson(lam[i])
    return np.clip(counts / float(c), 0, 1) * 255


def impulse_noise(x, severity, seeds):
    """scikit-image's random_noise(mode='s&p', amount=c, rng=seed): a Generator from the seed draws
    the flipped pixels, then which of them are salt (1) and which pepper (0)."""
    c = IMPULSE_NOISE[severity - 1]
    out = x / 255.
    shape = x.shape[1:]
    for i, seed in enumerate(seeds):
        rng = np.random.default_rng(int(seed))
        flipped = rng.random(shape) <= c
        salted = rng.random(shape) <= 0.5
        out[i][flipped & salted] = 1
        out[i][flipped & ~salted] = 0.0
    return np.clip(out, 0, 1) * 255


def defocus_blur(x, severity, seeds):
    import cv2

    c = DEFOCUS_BLUR[severity - 1]
    kernel = _module().disk(radius=c[0], alias_blur=c[1])
    x = x / 255.
    out = np.empty_like(x)
    for i in range(len(x)):
        if x.ndim == 3:
            out[i] = cv2.filter2D(x[i], -1, kernel)
        else:
            for d in range(3):
                out[i, :, :, d] = cv2.filter2D(x[i, :, :, d], -1, kernel)
    return np.clip(out, 0, 1) * 255


def _gaussian(x: np.ndarray, sigma: float, **kwargs) -> np.ndarray:
    """scikit-image's gaussian(image, sigma, channel_axis=-1) (or grey) of every image: scipy's
    gaussian_filter along the two image axes only, in the same order."""
    from scipy.ndimage import gaussian_filter

    sigmas = (0, sigma, sigma) + (0,) * (x.ndim - 3)
    return gaussian_filter(x, sigmas, mode=kwargs.get("mode", "nearest"), truncate=kwargs.get("truncate", 4.0))


def _glass_shuffle(x, seeds, delta, iterations):  # compiled by numba (_compiled)
    """The library's _shuffle_pixels_njit_glass_blur for each image of x (N, h, w, C) in place, numba's
    generator seeded with the example's seed. Its ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` on (h, w, C)
    arrays assigns views: the first copies pixel (h', w') to (h, w), the second copies it back onto
    itself; so a pixel is copied, not swapped. Its randint(-d, d, size=(2,)) is two scalar draws."""
    n, d0, d1, channels = x.shape
    for k in range(n):
        np.random.seed(seeds[k])
        for _ in range(iterations):
            for h in range(d0 - delta, delta, -1):
                for w in range(d1 - delta, delta, -1):
                    dx = np.random.randint(-delta, delta)
                    dy = np.random.randint(-delta, delta)
                    for c in range(channels):
                        x[k, h, w, c] = x[k, h + dy, w + dx, c]


def glass_blur(x, severity, seeds):
    """Blur, the library's pixel shuffle per image with the example's seed (:func:`_glass_shuffle`),
    blur again. A grey batch is shuffled as (h, w, 1) images: the library's three equal channels move
    together."""
    c = GLASS_BLUR[severity - 1]
    blurred = np.uint8(_gaussian(x / 255., c[0]) * 255)
    pixels = blurred if blurred.ndim == 4 else blurred[..., None]
    _compiled(_glass_shuffle)(pixels, np.asarray(seeds, dtype=np.int64), int(c[1]), int(c[2]))
    return np.clip(_gaussian(blurred / 255., c[0]), 0, 1) * 255


def motion_blur(x, severity, seeds):
    c = MOTION_BLUR[severity - 1]
    angles = _legacy_draws(seeds, lambda rng: rng.uniform(-45, 45))
    return np.clip(_motion_blur_batch(x, c[0], c[1], angles), 0, 255)


def zoom_blur(x, severity, seeds):
    """The mean of the image and its zooms by each factor (centre crops zoomed back, order-1), float32
    as the library's; a grey image is zoomed as one channel (the library's three copies are equal)."""
    x = (x / 255.).astype(np.float32)
    out = np.zeros_like(x)
    factors = zoom_factors(severity)
    h, w = x.shape[1], x.shape[2]
    for factor in factors:  # out += each zoomed layer (float32), as the library adds them
        _clipped_zoom(x, factor, h, w, np.float32, add_to=out)
    x = (x + out) / (len(factors) + 1)
    return np.clip(x, 0, 1) * 255


def snow(x, severity, seeds):
    import cv2

    c = SNOW[severity - 1]
    n, h, w = x.shape[:3]
    x = np.array(x, dtype=np.float32) / 255.
    rng = np.random.RandomState()
    layers, angles = np.empty((n, h, w)), []
    for i, seed in enumerate(seeds):  # the library's draws: the layer, then (after the zoom) the angle
        rng.seed(int(seed))
        layers[i] = rng.normal(size=(h, w), loc=c[0], scale=c[1])
        angles.append(rng.uniform(-135, -45))
    # round(ceil(side / z) * z) >= side: the zoomed layer covers the image
    zoomed = _clipped_zoom(layers, c[2], 1 << 30, 1 << 30, np.float64)
    zoomed[zoomed < c[3]] = 0
    zoomed = np.clip(zoomed, 0, 1)
    layer = _motion_blur_batch(zoomed, c[4], c[5], angles)
    layer = np.round(layer * 255).astype(np.uint8) / 255.
    layer = layer[:, :h, :w]
    if x.ndim == 3:
        x = c[6] * x + (1 - c[6]) * np.maximum(x, x * 1.5 + 0.5)
    else:
        grey = cv2.cvtColor(np.ascontiguousarray(x.reshape(n * h, w, 3)), cv2.COLOR_RGB2GRAY).reshape(n, h, w, 1)
        x = c[6] * x + (1 - c[6]) * np.maximum(x, grey * 1.5 + 0.5)
        layer = layer[..., None]
    return np.clip(x + layer + np.rot90(layer, k=2, axes=(1, 2)), 0, 1) * 255


_TEXTURES: dict = {}


def _frost_texture(index: int, h: int, w: int) -> np.ndarray:
    """The library's frost texture ``index`` resized for an h x w image (its scale factor, cubic), BGR
    uint8; decoded and resized once per process."""
    import importlib.resources

    import cv2

    key = (index, h, w)
    if key not in _TEXTURES:
        ref = importlib.resources.files("imagecorruptions") / "frost" / FROST_FILES[index]
        with importlib.resources.as_file(ref) as path:
            frost = cv2.imread(str(path))
        fh, fw = frost.shape[:2]
        if fh >= h and fw >= w:
            scaling = 1
        elif fh < h and fw >= w:
            scaling = h / fh
        elif fh >= h and fw < w:
            scaling = w / fw
        else:
            scaling = np.maximum(h / fh, w / fw)
        scaling *= 1.1
        size = (int(np.ceil(fw * scaling)), int(np.ceil(fh * scaling)))
        _TEXTURES[key] = cv2.resize(frost, dsize=size, interpolation=cv2.INTER_CUBIC)
    return _TEXTURES[key]


def frost(x, severity, seeds):
    c = FROST[severity - 1]
    n, h, w = x.shape[:3]

    def crop(rng):
        index = rng.randint(6)
        texture = _frost_texture(index, h, w)
        top, left = rng.randint(0, texture.shape[0] - h), rng.randint(0, texture.shape[1] - w)
        return texture[top:top + h, left:left + w]

    crops = np.stack(_legacy_draws(seeds, crop))
    if x.ndim == 3:
        layer = _module().rgb2gray(crops)
    else:
        layer = crops[..., [2, 1, 0]]
    return np.clip(c[0] * x + c[1] * layer, 0, 255)


def _plasma_fractals(seeds: Sequence[int], mapsize: int, wibbledecay: float) -> np.ndarray:
    """The library's plasma_fractal (diamond-square) for each example (N, mapsize, mapsize) float32:
    each example's uniform draws in the library's order, the arithmetic on all at once."""
    levels = []
    stepsize, wibble = mapsize, 100
    while stepsize >= 2:
        levels.append((stepsize, wibble, mapsize // stepsize))
        stepsize //= 2
        wibble /= wibbledecay

    # The library's uniform(-w, w, (k, k)) calls, three per level, are low + (high - low) * u of
    # consecutive doubles u of the generator (numpy's random_uniform; the range 2w is exact): one
    # random_sample per example gives the same u, and the same two operations the same values.
    n = len(seeds)
    sizes = [k * k for _, _, k in levels for _ in range(3)]
    u = np.empty((n, sum(sizes)))
    rng = np.random.RandomState()
    for i, seed in enumerate(seeds):
        rng.seed(int(seed))
        u[i] = rng.random_sample(u.shape[1])
    noise, start = [], 0
    for _, wib, k in levels:
        level = []
        for _ in range(3):
            low, high = -float(wib), float(wib)
            level.append(low + (high - low) * u[:, start:start + k * k].reshape(n, k, k))
            start += k * k
        noise.append(level)
    maparray = np.empty((n, mapsize, mapsize), dtype=np.float32)
    maparray[:, 0, 0] = 0
    for u, (step, wib, _) in zip(noise, levels):
        half = step // 2
        corner = maparray[:, 0:mapsize:step, 0:mapsize:step]
        square = corner + np.roll(corner, shift=-1, axis=1)
        square += np.roll(square, shift=-1, axis=2)
        maparray[:, half:mapsize:step, half:mapsize:step] = square / 4 + wib * u[0]
        down_right = maparray[:, half:mapsize:step, half:mapsize:step]
        up_left = maparray[:, 0:mapsize:step, 0:mapsize:step]
        lt = (down_right + np.roll(down_right, 1, axis=1)) + (up_left + np.roll(up_left, -1, axis=2))
        maparray[:, 0:mapsize:step, half:mapsize:step] = lt / 4 + wib * u[1]
        tt = (down_right + np.roll(down_right, 1, axis=2)) + (up_left + np.roll(up_left, -1, axis=1))
        maparray[:, half:mapsize:step, 0:mapsize:step] = tt / 4 + wib * u[2]
    maparray -= maparray.min(axis=(1, 2), keepdims=True)
    return maparray / maparray.max(axis=(1, 2), keepdims=True)


def fog(x, severity, seeds):
    c = FOG[severity - 1]
    n, h, w = x.shape[:3]
    mapsize = _module().next_power_of_2(int(max(x.shape[1:])))
    x = x / 255.
    max_val = x.reshape(n, -1).max(axis=1).reshape((n,) + (1,) * (x.ndim - 1))
    fractal = _plasma_fractals(seeds, mapsize, c[1])[:, :h, :w]
    if x.ndim == 3:
        x += c[0] * fractal
    else:
        x += c[0] * fractal[..., np.newaxis]
    return np.clip(x * max_val / (max_val + c[0]), 0, 1) * 255


def brightness(x, severity, seeds):
    c = BRIGHTNESS[severity - 1]
    x = x / 255.
    if x.ndim == 3:
        x = np.clip(x + c, 0, 1)
    else:
        import skimage as sk

        x = sk.color.rgb2hsv(x)
        x[..., 2] = np.clip(x[..., 2] + c, 0, 1)
        x = sk.color.hsv2rgb(x)
    return np.clip(x, 0, 1) * 255


def contrast(x, severity, seeds):
    c = CONTRAST[severity - 1]
    x = x / 255.
    means = np.stack([np.mean(image, axis=(0, 1), keepdims=True) for image in x])
    return np.clip((x - means) * c + means, 0, 1) * 255


def _map_kernel(image, rows, cols, out):  # compiled by numba
    """out[j, r, c] = the order-1 value of image[j] at (rows, cols)[j, r, c], mode 'reflect', as scipy's
    map_coordinates computes it: the coordinate reflected into [-1, side) (its map_coordinate), taps
    floor(.) and floor(.) + 1, those outside extended by the edge sample (reflect's extension),
    weights w0 = 1 - frac and w1 = 1 - w0, the products ((value * w_row) * w_col) summed in order in
    float64, cast to out's type."""
    m, h, w = image.shape
    for j in range(m):
        for r in range(rows.shape[1]):
            for c in range(rows.shape[2]):
                y, x = rows[j, r, c], cols[j, r, c]
                for axis in range(2):
                    v = y if axis == 0 else x
                    n = h if axis == 0 else w
                    if n <= 1:
                        v = 0.0
                    elif v < 0:
                        sz2 = 2 * n
                        if v < -sz2:
                            v = sz2 * int(-v / sz2) + v
                        v = v + sz2 if v < -n else -v - 1
                    elif v > n - 1:
                        sz2 = 2 * n
                        v -= sz2 * int(v / sz2)
                        if v >= n:
                            v = sz2 - v - 1
                    if axis == 0:
                        y = v
                    else:
                        x = v
                fy, fx = np.floor(y), np.floor(x)
                wy0, wx0 = 1.0 - (y - fy), 1.0 - (x - fx)
                wy1, wx1 = 1.0 - wy0, 1.0 - wx0
                y0, x0 = int(fy), int(fx)
                y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
                y0, x0 = max(y0, 0), max(x0, 0)
                t = (image[j, y0, x0] * wy0) * wx0
                t += (image[j, y0, x1] * wy0) * wx1
                t += (image[j, y1, x0] * wy1) * wx0
                t += (image[j, y1, x1] * wy1) * wx1
                out[j, r, c] = t


def map_coordinates_order1(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.map_coordinates(image[k], [rows[k], cols[k]], order=1, mode='reflect')`` for
    every k of image (N, h, w), rows and cols (N, h, w) float64 (:func:`_map_kernel`), in the image's type."""
    out = np.empty(rows.shape, dtype=image.dtype)
    _compiled(_map_kernel)(np.ascontiguousarray(image), np.ascontiguousarray(rows, dtype=np.float64),
                           np.ascontiguousarray(cols, dtype=np.float64), out)
    return out


def elastic_transform(x, severity, seeds):
    """Per example: two uniform displacement fields (the library's draws), smoothed and scaled, then
    the image resampled at the displaced grid (:func:`map_coordinates_order1`, each channel of a colour
    image on its own: the library's third coordinate is the channel's own index, weight 1)."""
    from scipy.ndimage import gaussian_filter

    n, h, w = x.shape[:3]
    image = np.array(x, dtype=np.float32) / 255.
    sigma = np.array((h, w)) * 0.01
    alpha = ELASTIC_ALPHA[severity - 1]
    max_d = h * 0.005
    fields = np.empty((n, 2, h, w))
    rng = np.random.RandomState()
    for i, seed in enumerate(seeds):
        rng.seed(int(seed))
        fields[i, 0] = rng.uniform(-max_d, max_d, size=(h, w))
        fields[i, 1] = rng.uniform(-max_d, max_d, size=(h, w))
    smooth = gaussian_filter(fields, (0, 0, sigma[0], sigma[1]), mode="reflect", truncate=3)
    dx = (smooth[:, 0] * alpha).astype(np.float32)
    dy = (smooth[:, 1] * alpha).astype(np.float32)
    xx, yy = np.meshgrid(np.arange(w), np.arange(h))
    rows, cols = yy + dy, xx + dx  # float64, as the library's coordinates
    if x.ndim == 3:
        out = map_coordinates_order1(image, rows, cols)
    else:
        channels = x.shape[3]
        planes = _planes(image)
        out = _unplanes(map_coordinates_order1(planes, np.repeat(rows, channels, axis=0),
                                               np.repeat(cols, channels, axis=0)), x)
    return np.clip(out, 0, 1) * 255


def pixelate(x, severity, seeds):
    """The library's Pillow resizes (box down, nearest up), image by image."""
    from PIL import Image

    function, mode = _module().pixelate, "L" if x.ndim == 3 else "RGB"
    return np.stack([np.asarray(function(Image.fromarray(image, mode), severity)) for image in x])


JPEG_QUALITY = (25, 18, 15, 10, 7)


def jpeg_compression(x, severity, seeds):
    """JPEG at the library's quality through OpenCV's libjpeg-turbo instead of Pillow's (baseline,
    4:2:0, the same quantization tables and decoder): the same pixels, tested, in a tenth of the time.
    A grey image goes as a one-channel JPEG: the library's RGB copy of it has chroma exactly 128,
    which decodes to R = G = B = Y, and Pillow's L of that is Y."""
    import cv2

    quality = [int(cv2.IMWRITE_JPEG_QUALITY), JPEG_QUALITY[severity - 1]]
    out = np.empty_like(x)
    for i, image in enumerate(x):
        if x.ndim == 3:
            ok, data = cv2.imencode(".jpg", image, quality)
            decoded = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)
        else:
            ok, data = cv2.imencode(".jpg", np.ascontiguousarray(image[:, :, ::-1]), quality)
            decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)[:, :, ::-1]
        if not ok or decoded is None or decoded.shape != image.shape:
            raise RuntimeError("OpenCV's JPEG round trip failed")
        out[i] = decoded
    return out


BATCHED: dict[str, Callable] = {
    "gaussian_noise": gaussian_noise, "shot_noise": shot_noise, "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur, "glass_blur": glass_blur, "motion_blur": motion_blur, "zoom_blur": zoom_blur,
    "snow": snow, "frost": frost, "fog": fog, "brightness": brightness, "contrast": contrast,
    "elastic_transform": elastic_transform, "pixelate": pixelate, "jpeg_compression": jpeg_compression,
}


# ----------------------------------------------------------------------------- the library, image by image
# The library's greyscale path is broken for these (docs/corruptions.md): three equal channels, one kept
GREY_VIA_RGB = ("motion_blur", "glass_blur", "gaussian_blur")
SEED_ARGUMENT = ("glass_blur", "impulse_noise")  # the library takes their seed as an argument


class _CachedImread:
    """``cv2`` as the library's module sees it, with ``imread`` memoized (a copy returned each
    time): frost decodes one of its six texture files (up to 1.2 MB) on every call, two thirds of
    its time; the textures and so the results are the same."""

    def __init__(self, cv2):
        self._cv2, self._cache = cv2, {}

    def imread(self, path, *args):
        key = (str(path), args)
        if key not in self._cache:
            self._cache[key] = self._cv2.imread(path, *args)
        image = self._cache[key]
        return None if image is None else image.copy()

    def __getattr__(self, name):
        return getattr(self._cv2, name)


def library_functions() -> dict[str, Callable]:
    """The library's corruption functions by name (frost's texture reads cached). Raises ImportError
    when the library is not installed."""
    from imagecorruptions import corruption_dict

    module = _module()
    if not isinstance(module.cv2, _CachedImread):
        module.cv2 = _CachedImread(module.cv2)
    return corruption_dict


def library_image(image: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """The reference: one uint8 image (H, W) grey or (H, W, 3) colour through the library's own
    function, numpy's global generator seeded with ``seed`` for the call (the caller's state put
    back; glass_blur and impulse_noise also get it as their seed argument), the library's prints
    swallowed, its float output clipped to [0, 255] and truncated to uint8 -> the same shape."""
    import contextlib
    import io

    from PIL import Image

    grey = image.ndim == 2
    if grey and name in GREY_VIA_RGB:
        pil = Image.fromarray(np.repeat(image[:, :, None], 3, axis=2), "RGB")
    else:
        pil = Image.fromarray(np.ascontiguousarray(image), "L" if grey else "RGB")
    function = library_functions()[name]
    extra = {"seed": int(seed)} if name in SEED_ARGUMENT else {}
    state = np.random.get_state()
    try:
        np.random.seed(int(seed))
        with contextlib.redirect_stdout(io.StringIO()):
            out = np.asarray(function(pil, int(severity), **extra), dtype=np.float64)
    finally:
        np.random.set_state(state)
    if grey and out.ndim == 3:
        out = out[:, :, 0]  # three equal channels (GREY_VIA_RGB): one
    out = out.reshape(image.shape)
    if not np.isfinite(out).all():
        raise RuntimeError(f"{name} severity {severity} returned non-finite pixels")
    return np.clip(out, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- a batch, on one or more processes
CHUNK = 128 * 28 * 28  # values (pixels x channels) computed together: 128 digits, arrays that stay in the
# CPU's cache (a few images at a time for large ones); no result depends on it


def corrupt_images(x: np.ndarray, name: str, severity: int, seeds: Sequence[int], *,
                   reference: bool = False) -> np.ndarray:
    """uint8 (N, H, W) or (N, H, W, 3) -> uint8 of the same shape: corruption ``name`` at ``severity``
    of every image with its seed, clipped to [0, 255] and truncated as the library's ``corrupt()``
    does. Batched (:data:`BATCHED`) unless ``reference`` or the corruption has no batched version;
    then :func:`library_image` per image. Image i depends on ``seeds[i]`` alone."""
    if len(seeds) != len(x):
        raise ValueError(f"{len(seeds)} seeds for {len(x)} images")
    out = np.empty_like(x)
    if reference or name not in BATCHED:
        for i, (image, seed) in enumerate(zip(x, seeds)):
            out[i] = library_image(image, name, severity, seed)
        return out
    step = max(1, CHUNK // max(1, x[0].size if len(x) else 1))
    for start in range(0, len(x), step):
        part = x[start:start + step]
        done = np.asarray(BATCHED[name](part, int(severity), seeds[start:start + step]), dtype=np.float64)
        done = done.reshape(part.shape)
        if not np.isfinite(done).all():
            raise RuntimeError(f"{name} severity {severity} returned non-finite pixels")
        out[start:start + step] = np.clip(done, 0, 255).astype(np.uint8)
    return out


_POOL: dict = {}


def _worker_setup() -> None:
    """A worker process: one thread for OpenCV (the processes are the parallelism)."""
    import cv2

    cv2.setNumThreads(1)


def _pool(workers: int):
    """A process pool of ``workers - 1`` processes (the caller's process is the other worker), kept
    for the next call; forkserver (spawn where there is none): no fork of a process running torch's
    threads. None where no pool can start (a daemonic process, a platform without processes)."""
    if _POOL.get("workers") != workers:
        shutdown_pool()
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        try:
            _POOL.update(workers=workers, executor=ProcessPoolExecutor(workers - 1, mp_context=context,
                                                                       initializer=_worker_setup))
        except (OSError, ValueError, AssertionError, NotImplementedError):
            _POOL.update(workers=workers, executor=None)
        else:
            import atexit

            atexit.register(shutdown_pool)  # before the interpreter tears the executor's modules down
    return _POOL["executor"]


def shutdown_pool() -> None:
    """Stop the worker processes (if any); the next parallel call starts new ones."""
    executor = _POOL.pop("executor", None)
    _POOL.pop("workers", None)
    if executor is not None:
        executor.shutdown(wait=True, cancel_futures=True)


def corrupt_images_parallel(x: np.ndarray, name: str, severity: int, seeds: Sequence[int], *,
                            workers: int = 1, reference: bool = False) -> np.ndarray:
    """:func:`corrupt_images` split into ``workers`` contiguous shares, one computed here and the
    others by worker processes (:func:`_pool`). The same pixels for any number of workers: each image
    depends on its seed alone. A pool that cannot start or breaks leaves the work to this process."""
    from concurrent.futures.process import BrokenProcessPool

    workers = max(1, min(int(workers), len(x) // 8))  # a handful of images is not worth a round trip
    executor = _pool(workers) if workers > 1 else None
    if executor is None:
        return corrupt_images(x, name, severity, seeds, reference=reference)
    bounds = np.linspace(0, len(x), workers + 1).round().astype(int)
    shares = [(x[a:b], list(seeds[a:b])) for a, b in zip(bounds[:-1], bounds[1:])]
    try:
        futures = [executor.submit(corrupt_images, part, name, severity, part_seeds, reference=reference)
                   for part, part_seeds in shares[1:]]
    except Exception:  # the processes could not start here (a daemonic process, no semaphores, ...)
        shutdown_pool()
        _POOL.update(workers=workers, executor=None)
        return corrupt_images(x, name, severity, seeds, reference=reference)
    first = corrupt_images(shares[0][0], name, severity, shares[0][1], reference=reference)
    try:
        rest = [future.result() for future in futures]
    except BrokenProcessPool:
        shutdown_pool()
        rest = [corrupt_images(part, name, severity, part_seeds, reference=reference)
                for part, part_seeds in shares[1:]]
    return np.concatenate([first, *rest])


__all__ = ["BATCHED", "GREY_VIA_RGB", "SEED_ARGUMENT", "corrupt_images", "corrupt_images_parallel",
           "library_functions", "library_image", "shutdown_pool", "zoom_factors", "zoom_order1"]
