"""synth-digits: a 28x28, ten-class, grayscale digits data set generated in code.

The embedded default data set of ``jrbench demo``: no download, no system fonts.
Each digit class is a hand-written glyph, a few polylines and elliptic arcs in a
glyph box (x in about [-0.6, 0.6], y in [-1, 1], y pointing down), some strokes
optional (the flag and foot of a 1, the bar of a 7, ...). Every sample gets

- a smooth random warp of the glyph (sine displacement field, glyph units),
- a random affine map to pixels: height 17-20 px, aspect, rotation +-10 degrees,
  shear, and a shift of up to 1 px from the centre (MNIST centres its digits),
- a stroke half-width of 1.2-2.0 px, an edge softness and a peak intensity:
  intensity = peak * sigmoid((half_width - d) / softness), d the distance in
  pixels from the pixel centre to the nearest stroke segment,
- clutter: up to three short, faint stray strokes or dots, and on half the
  samples faint pixel noise (a sum of four uniforms: nearly Gaussian), clipped
  to [0, 1].

The ranges sit together below. They were tuned so that a plain LeNet behaves
as on real MNIST: nearly perfect clean, yet far from robust, while Jacobian
regularization visibly helps (the measurements: docs/commands/demo.md).

The same seed gives the same bytes on every CPU (kernel path, vendor, thread
count): the random draws are torch.Generator integers and uniforms (exact
multiples of 2**-53), and everything after them is float64 arithmetic made of single IEEE
operations, each correctly rounded on every machine (+, -, *, /, sqrt, round,
min, max, comparisons). sin, cos and exp are therefore short polynomials here
(:func:`_sin`, :func:`_exp`) rather than torch.sin or numpy.sin, whose
vectorized kernels (Sleef, MKL, SVML) are chosen by the CPU and differ in the
last bit; rotations use the rational parametrization of the half-angle
tangent; no matrix product or sum reduction (whose order follows the vector
width) is used. Pixels are rounded to uint8 at the end. :data:`RENDER_VERSION`
names this rendering; the data cache's key includes it.

Images are uint8 in [0, 255] (divide by 255 for pixel space [0, 1]), shape
(n, 1, 28, 28), labels int64 in 0..9. The data are generated in chunks of
:data:`CHUNK` samples, each from its own torch.Generator seeded from (seed,
chunk index), so ``make_synth_digits(n, seed)[:k]`` equals
``make_synth_digits(k, seed)`` and the global torch RNG is neither read nor
changed. Labels are balanced within each chunk.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch

_F64 = torch.float64

SIZE = 28  # image height and width, pixels
CHUNK = 512  # samples per independently seeded chunk (also bounds memory)
N_GROUPS = 3  # optional-stroke groups per glyph (group 0 is always drawn)
N_CLUTTER = 3  # stray-stroke slots per sample
WARP = 0.22  # largest amplitude of the smooth glyph warp, glyph units (height 2)
SCALE = (8.5, 10.0)  # pixels per glyph unit: digit height 17-20 px
ASPECT = (0.75, 1.3)  # width / height scale factor
ROTATION_HALF_TAN = 0.0875  # tan(angle / 2) uniform in +-this: rotations up to +-10.0 degrees
SHEAR = 0.2  # largest horizontal shear
SHIFT = 1.0  # largest shift of the glyph centre from the image centre, pixels
HALF_WIDTH = (1.2, 2.0)  # stroke half-width range, pixels
PEAK = (0.9, 1.0)  # stroke peak intensity range, pixel units [0, 1]
CLUTTER_P = 0.3  # probability that a stray-stroke slot is drawn
CLUTTER_LEVEL = (0.2, 0.6)  # stray-stroke intensity range, pixel units
NOISE_P = 0.5  # fraction of samples with background noise
NOISE_SIGMA = (0.0, 0.12)  # its standard deviation range, pixel units
RENDER_VERSION = 2  # bump whenever the same seed gives other images (part of the data cache key)

# Pixel mean and std in [0, 1] units, measured by measure_mean_std(24_000, seed=0);
# the normalization layer of models trained on synth-digits uses them.
SYNTH_DIGITS_MEAN = 0.1707
SYNTH_DIGITS_STD = 0.2941


# ---------------------------------------------------------------- arithmetic
# Taylor coefficients; each 1/k! is a correctly rounded double on every machine.
_SIN_COEFFS = [(-1) ** k / math.factorial(2 * k + 1) for k in range(8)]  # up to x**15
_EXP_COEFFS = [1 / math.factorial(k) for k in range(8)]  # up to x**7


def _sin(x: torch.Tensor) -> torch.Tensor:
    """sin(x) of a float64 tensor (radians), the same bits on every CPU; error < 1e-11.

    x - round(x / 2pi) 2pi folded into [-pi/2, pi/2] by sin(r) = sin(+-pi - r), then
    the Taylor polynomial of degree 15 by Horner, all in single IEEE operations.
    """
    r = x - torch.round(x * (0.5 / math.pi)) * (2 * math.pi)
    r = torch.where(r > math.pi / 2, math.pi - r, r)
    r = torch.where(r < -math.pi / 2, -math.pi - r, r)
    r2 = r * r
    p = torch.full_like(r, _SIN_COEFFS[-1])
    for c in reversed(_SIN_COEFFS[:-1]):
        p = p * r2 + c
    return p * r


def _cos(x: torch.Tensor) -> torch.Tensor:
    """cos(x) = sin(x + pi/2) of a float64 tensor (radians), the same bits on every CPU."""
    return _sin(x + math.pi / 2)


def _exp(x: torch.Tensor) -> torch.Tensor:
    """exp(x) of a float64 tensor with |x| <= 32, the same bits on every CPU; relative error < 1e-9.

    exp(x) = exp(x / 256) ** 256: the Taylor polynomial of degree 7 on |x / 256| <= 0.125,
    then eight squarings, all in single IEEE operations (in place on one new buffer).
    """
    y = x * (1 / 256)  # exact: a power of two
    p = torch.full_like(y, _EXP_COEFFS[-1])
    for c in reversed(_EXP_COEFFS[:-1]):
        p.mul_(y).add_(c)
    for _ in range(8):
        p.mul_(p)
    return p


def _sigmoid(z: torch.Tensor) -> torch.Tensor:
    """The logistic function 1 / (1 + exp(-z)) of a float64 tensor, the same bits on every CPU."""
    return _exp(z.clamp(-32.0, 32.0).neg_()).add_(1.0).reciprocal_()  # |z| > 32: within 2e-14 of 0 or 1


def _rotation(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) of the angle 2 atan(t), rationally: ((1 - t^2), 2t) / (1 + t^2)."""
    t2 = t * t
    return (1.0 - t2) / (1.0 + t2), (t + t) / (1.0 + t2)


# ---------------------------------------------------------------- glyphs
def _arc(cx: float, cy: float, rx: float, ry: float, deg0: float, deg1: float,
         n: int) -> list[tuple[float, float]]:
    """n + 1 points on an elliptic arc from deg0 to deg1 (y down, so 90 degrees is below)."""
    a = torch.tensor([deg0 + (deg1 - deg0) * i / n for i in range(n + 1)], dtype=_F64) * (math.pi / 180)
    return list(zip((_cos(a) * rx + cx).tolist(), (_sin(a) * ry + cy).tolist()))


def _segments(points: list[tuple[float, float]], group: int = 0) -> list[tuple]:
    """The segments (x0, y0, x1, y1, group) of a polyline."""
    return [(*p, *q, group) for p, q in zip(points[:-1], points[1:])]


def _glyphs() -> list[list[tuple]]:
    """Segment lists of the ten digits; group k > 0 marks an optional stroke."""
    s = _segments
    return [
        s(_arc(0.0, 0.0, 0.55, 0.95, 0, 360, 14)),                                   # 0
        s([(0.05, -1.0), (0.05, 1.0)]) + s([(-0.3, -0.62), (0.05, -1.0)], 1)
        + s([(-0.3, 1.0), (0.4, 1.0)], 2),                                            # 1
        s(_arc(0.0, -0.45, 0.5, 0.55, 190, 385, 7) + [(-0.55, 1.0), (0.6, 1.0)]),    # 2
        s(_arc(0.0, -0.5, 0.45, 0.5, 200, 450, 6))
        + s(_arc(0.0, 0.47, 0.52, 0.53, 270, 520, 7)),                               # 3
        s([(0.25, -1.0), (-0.55, 0.35), (0.6, 0.35)]) + s([(0.3, -0.35), (0.3, 1.0)])
        + s([(0.3, -1.0), (0.3, -0.35)], 1),                                          # 4
        s([(0.5, -1.0), (-0.35, -1.0), (-0.42, -0.12)])
        + s(_arc(0.0, 0.4, 0.55, 0.58, 235, 500, 8)),                                # 5
        s(_arc(0.45, 0.4, 0.95, 1.4, 265, 180, 5))
        + s(_arc(0.0, 0.45, 0.5, 0.52, 180, 540, 10)),                               # 6
        s([(-0.55, -1.0), (0.55, -1.0), (-0.1, 1.0)]) + s([(-0.55, -1.0), (-0.55, -0.75)], 1)
        + s([(-0.15, 0.02), (0.4, 0.02)], 2),                                         # 7
        s(_arc(0.0, -0.5, 0.4, 0.47, 0, 360, 10))
        + s(_arc(0.0, 0.48, 0.5, 0.5, 0, 360, 10)),                                  # 8
        s(_arc(0.0, -0.45, 0.5, 0.52, 0, 360, 10)) + s([(0.5, -0.45), (0.38, 1.0)]),  # 9
    ]


_GLYPHS = [torch.tensor(g, dtype=_F64) for g in _glyphs()]  # each (M_c, 5)


# ---------------------------------------------------------------- rendering
def _chunk_seed(seed: int, chunk: int) -> int:
    """A 63-bit generator seed for one chunk, mixed from (seed, chunk) (splitmix64)."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + (chunk + 1) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return (z ^ (z >> 31)) % 2**63


def _uniform(g: torch.Generator, n: int, lo: float, hi: float, *shape: int) -> torch.Tensor:
    """Uniform float64 draws in [lo, hi) of shape (n, *shape) from generator g."""
    return torch.rand(n, *shape, generator=g, dtype=_F64) * (hi - lo) + lo


def _pixel_grid() -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates, each (1, 784) float64, in pixels with (0, 0) the image centre."""
    c = torch.arange(SIZE, dtype=_F64) - (SIZE - 1) / 2
    y, x = torch.meshgrid(c, c, indexing="ij")
    return x.reshape(1, -1), y.reshape(1, -1)


_PX, _PY = _pixel_grid()


def _seg_distance(seg: torch.Tensor, drawn: torch.Tensor) -> torch.Tensor:
    """Distance (pixels) from each pixel centre to the nearest drawn segment.

    seg: (B, M, 4) float64 endpoints (x0, y0, x1, y1) in pixels, centred on the
    image; drawn: (B, M) bool. Returns (B, 784); a row without drawn segments
    gets 1e4 px. One segment at a time on (B, 784) buffers that stay in the
    cache; single IEEE operations only.
    """
    d2min = torch.full((seg.shape[0], SIZE * SIZE), 1e8, dtype=_F64)
    for m in range(seg.shape[1]):
        rows = drawn[:, m].nonzero().squeeze(1)
        if len(rows) == 0:
            continue
        s = seg[rows, m]
        ax, ay = s[:, 0:1], s[:, 1:2]
        ex, ey = s[:, 2:3] - ax, s[:, 3:4] - ay
        len2 = (ex * ex + ey * ey).clamp_min(1e-12)
        dx, dy = _PX - ax, _PY - ay
        t = (dx * ex).add_(dy * ey).div_(len2).clamp_(0.0, 1.0)
        dx.sub_(t * ex)
        dy.sub_(t.mul_(ey))
        d2 = dx.mul_(dx).add_(dy.mul_(dy))
        if len(rows) == len(d2min):
            torch.minimum(d2min, d2, out=d2min)
        else:
            d2min[rows] = torch.minimum(d2min[rows], d2)
    return d2min.sqrt_()


def _place_glyph(glyph: torch.Tensor, g: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, M, 4) pixel-space segments of one glyph (warp, affine) and which are drawn, (n, M) bool."""
    gx = glyph[:, [0, 2]].reshape(1, -1)  # (1, 2M) endpoint x, glyph units
    gy = glyph[:, [1, 3]].reshape(1, -1)
    # smooth warp: p + amp * sin(freq . p + phase), one field per coordinate
    freq = _uniform(g, n, -1.8, 1.8, 4)
    phase = _uniform(g, n, 0.0, 2 * math.pi, 2)
    amp = _uniform(g, n, 0.0, WARP, 1)
    wx = gx + amp * _sin(freq[:, 0:1] * gx + freq[:, 1:2] * gy + phase[:, 0:1])
    wy = gy + amp * _sin(freq[:, 2:3] * gx + freq[:, 3:4] * gy + phase[:, 1:2])
    # affine: scale (px per glyph unit), aspect, rotation, shear, shift
    scale = _uniform(g, n, *SCALE, 1)
    aspect = _uniform(g, n, *ASPECT, 1)
    cos, sin = _rotation(_uniform(g, n, -ROTATION_HALF_TAN, ROTATION_HALF_TAN, 1))
    shear = _uniform(g, n, -SHEAR, SHEAR, 1)
    shift = _uniform(g, n, -SHIFT, SHIFT, 2)
    sx = scale * aspect
    x = cos * sx * wx + (cos * shear - sin) * scale * wy + shift[:, 0:1]
    y = sin * sx * wx + (sin * shear + cos) * scale * wy + shift[:, 1:2]
    x, y = x.reshape(n, -1, 2), y.reshape(n, -1, 2)
    seg = torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], -1)  # (n, M, 4)
    keep = torch.rand(n, N_GROUPS, generator=g, dtype=_F64) < 0.5
    keep[:, 0] = True
    return seg, keep.gather(1, glyph[:, 4].long().expand(n, -1))


def _render_strokes(seg: torch.Tensor, drawn: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """(n, 784) intensities in [0, 1] of the strokes: peak * sigmoid((w - d) / softness)."""
    n = seg.shape[0]
    half_width = _uniform(g, n, *HALF_WIDTH, 1)
    softness = _uniform(g, n, 0.25, 0.6, 1)
    peak = _uniform(g, n, *PEAK, 1)
    return _sigmoid(half_width.sub(_seg_distance(seg, drawn)).div_(softness)).mul_(peak)


def _render_clutter(g: torch.Generator, n: int) -> torch.Tensor:
    """(n, 784) faint stray strokes and dots: up to N_CLUTTER per sample.

    Each starts anywhere within 12 px of the centre and runs 0-6 px at an angle
    2 atan(t), t uniform in [-1, 1] (every orientation of a segment).
    """
    start = _uniform(g, n, -12.0, 12.0, N_CLUTTER, 2)
    length = _uniform(g, n, 0.0, 6.0, N_CLUTTER, 1)
    cos, sin = _rotation(_uniform(g, n, -1.0, 1.0, N_CLUTTER, 1))
    end = start + length * torch.cat([cos, sin], -1)
    present = torch.rand(n, N_CLUTTER, generator=g, dtype=_F64) < CLUTTER_P
    level = _uniform(g, n, *CLUTTER_LEVEL, 1)
    d = _seg_distance(torch.cat([start, end], -1), present)
    return _sigmoid(d.neg_().add_(0.7).div_(0.4)).mul_(level)


_NOISE_BITS = 15  # four uniform integers of 15 bits from one 60-bit draw
_NOISE_SCALE = math.sqrt(12 / (4 * (2 ** (2 * _NOISE_BITS) - 1)))  # 1 / std of their sum


def _noise(g: torch.Generator, n: int) -> torch.Tensor:
    """(n, 784) nearly Gaussian noise, mean 0, std 1: a centred, scaled sum of four uniforms.

    Integers: four 15-bit fields of one 60-bit draw per pixel, summed exactly.
    """
    r = torch.randint(0, 2 ** (4 * _NOISE_BITS), (n, SIZE * SIZE), generator=g)
    field = 2 ** _NOISE_BITS - 1
    total = (r & field) + ((r >> _NOISE_BITS) & field) + ((r >> 2 * _NOISE_BITS) & field) + (r >> 3 * _NOISE_BITS)
    return total.sub_(2 * field).to(_F64).mul_(_NOISE_SCALE)


def _render_chunk(seed: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CHUNK images (uint8, (CHUNK, 1, 28, 28)) and balanced labels of one chunk."""
    g = torch.Generator().manual_seed(_chunk_seed(seed, chunk))
    labels = torch.randperm(CHUNK, generator=g) % 10
    image = torch.zeros(CHUNK, SIZE * SIZE, dtype=_F64)
    for digit, glyph in enumerate(_GLYPHS):  # one pass per class: no segment padding
        idx = (labels == digit).nonzero().squeeze(1)
        image[idx] = _render_strokes(*_place_glyph(glyph, g, len(idx)), g)
    image = torch.maximum(image, _render_clutter(g, CHUNK))
    sigma = _uniform(g, CHUNK, *NOISE_SIGMA, 1)
    noisy = (torch.rand(CHUNK, generator=g, dtype=_F64) < NOISE_P).nonzero().squeeze(1)
    image[noisy] += sigma[noisy] * _noise(g, len(noisy))
    pixels = torch.round(image.clamp(0.0, 1.0) * 255.0).to(torch.uint8)
    return pixels.view(CHUNK, 1, SIZE, SIZE), labels


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch ops on one intra-op thread, then restore the caller's setting.

    Rendering is many small ops; on a loaded machine handing each to a thread
    pool costs far more than it saves (12,000 images: 1.1 s on one thread,
    8.6 s on two threads of a busy 2-core machine).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def make_synth_digits(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n synth-digits images and labels, deterministic by seed.

    Returns images uint8 (n, 1, 28, 28) on the CPU (pixel value / 255 is pixel
    space [0, 1]) and labels int64 (n,) in 0..9, balanced within each chunk of
    CHUNK samples. The first k of make_synth_digits(n, seed) equal
    make_synth_digits(k, seed). Uses local generators only, and one intra-op
    thread while rendering (the caller's thread count is restored).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    with _one_thread():
        chunks = [_render_chunk(seed, i) for i in range(-(-n // CHUNK))]
    if not chunks:
        return torch.zeros(0, 1, SIZE, SIZE, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
    images = torch.cat([c[0] for c in chunks])[:n].contiguous()
    labels = torch.cat([c[1] for c in chunks])[:n].contiguous()
    return images, labels


def measure_mean_std(n: int = 24_000, seed: int = 0) -> tuple[float, float]:
    """Pixel mean and std, in [0, 1] units, of make_synth_digits(n, seed)."""
    x = make_synth_digits(n, seed)[0].double() / 255
    return x.mean().item(), x.std().item()
