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
  samples faint Gaussian pixel noise, clipped to [0, 1].

The ranges sit together below. They were tuned so that a plain LeNet behaves
as on real MNIST: about 99% clean, yet far from robust (measured, 10,000
training images, 5 epochs: 64-77% under Gaussian noise sigma 0.5 and 29-41%
under PGD-Linf eps 0.1), while Jacobian regularization visibly helps.

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

SIZE = 28  # image height and width, pixels
CHUNK = 512  # samples per independently seeded chunk (also bounds memory)
N_GROUPS = 3  # optional-stroke groups per glyph (group 0 is always drawn)
N_CLUTTER = 3  # stray-stroke slots per sample
WARP = 0.22  # largest amplitude of the smooth glyph warp, glyph units (height 2)
SCALE = (8.5, 10.0)  # pixels per glyph unit: digit height 17-20 px
ASPECT = (0.75, 1.3)  # width / height scale factor
ROTATION_DEG = 10.0  # largest rotation, degrees
SHEAR = 0.2  # largest horizontal shear
SHIFT = 1.0  # largest shift of the glyph centre from the image centre, pixels
HALF_WIDTH = (1.2, 2.0)  # stroke half-width range, pixels
PEAK = (0.9, 1.0)  # stroke peak intensity range, pixel units [0, 1]
CLUTTER_P = 0.3  # probability that a stray-stroke slot is drawn
CLUTTER_LEVEL = (0.2, 0.6)  # stray-stroke intensity range, pixel units
NOISE_P = 0.5  # fraction of samples with background noise
NOISE_SIGMA = (0.0, 0.12)  # its standard deviation range, pixel units

# Pixel mean and std in [0, 1] units, measured by measure_mean_std(24_000, seed=0);
# the normalization layer of models trained on synth-digits uses them.
SYNTH_DIGITS_MEAN = 0.1703
SYNTH_DIGITS_STD = 0.2945


# ---------------------------------------------------------------- glyphs
def _arc(cx: float, cy: float, rx: float, ry: float, deg0: float, deg1: float,
         n: int) -> list[tuple[float, float]]:
    """n + 1 points on an elliptic arc from deg0 to deg1 (y down, so 90 degrees is below)."""
    angles = [math.radians(deg0 + (deg1 - deg0) * i / n) for i in range(n + 1)]
    return [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles]


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


_GLYPHS = [torch.tensor(g, dtype=torch.float32) for g in _glyphs()]  # each (M_c, 5)


# ---------------------------------------------------------------- rendering
def _chunk_seed(seed: int, chunk: int) -> int:
    """A 63-bit generator seed for one chunk, mixed from (seed, chunk) (splitmix64)."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + (chunk + 1) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return (z ^ (z >> 31)) % 2**63


def _uniform(g: torch.Generator, n: int, lo: float, hi: float, *shape: int) -> torch.Tensor:
    """Uniform draws in [lo, hi) of shape (n, *shape) from generator g."""
    return lo + (hi - lo) * torch.rand(n, *shape, generator=g)


def _pixel_grid() -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates, each (1, 1, 784), in pixels with (0, 0) the image centre."""
    c = torch.arange(SIZE, dtype=torch.float32) - (SIZE - 1) / 2
    y, x = torch.meshgrid(c, c, indexing="ij")
    return x.reshape(1, 1, -1), y.reshape(1, 1, -1)


_PX, _PY = _pixel_grid()
_FAR = 1e4  # coordinate of absent segments (pixels): far from every pixel


def _seg_distance(seg: torch.Tensor) -> torch.Tensor:
    """Distance (pixels) from each pixel centre to the nearest segment.

    seg: (B, M, 4) endpoints (x0, y0, x1, y1) in pixels, centred on the image;
    absent segments sit at _FAR. Returns (B, 784). Works in place on (B, M, 784)
    buffers, pixels the contiguous axis.
    """
    ax, ay = seg[..., 0:1], seg[..., 1:2]
    ex, ey = seg[..., 2:3] - ax, seg[..., 3:4] - ay
    inv_len2 = 1.0 / (ex * ex + ey * ey).clamp_min(1e-6)
    dx, dy = _PX - ax, _PY - ay
    t = (dx * ex).addcmul_(dy, ey).mul_(inv_len2).clamp_(0.0, 1.0)
    dx.addcmul_(t, ex, value=-1.0)
    dy.addcmul_(t, ey, value=-1.0)
    d2 = dx.mul_(dx).addcmul_(dy, dy)
    return d2.amin(dim=1).sqrt_()


def _place_glyph(glyph: torch.Tensor, g: torch.Generator, n: int) -> torch.Tensor:
    """(n, M, 4) pixel-space segments of one glyph: optional strokes, warp, affine."""
    pts = glyph[:, :4].reshape(1, -1, 2).expand(n, -1, -1)  # (n, 2M, 2), glyph units
    # smooth warp: p + amp * sin(freq . p + phase), one field per coordinate
    freq = _uniform(g, n, -1.8, 1.8, 1, 2, 2)                 # (n, 1, out, in)
    phase = _uniform(g, n, 0.0, 2 * math.pi, 1, 2)
    amp = _uniform(g, n, 0.0, WARP, 1, 1)
    pts = pts + amp * torch.sin((pts[:, :, None, :] * freq).sum(-1) + phase)
    # affine: scale (px per glyph unit), aspect, rotation, shear, shift
    scale = _uniform(g, n, *SCALE)
    aspect = _uniform(g, n, *ASPECT)
    angle = _uniform(g, n, -math.radians(ROTATION_DEG), math.radians(ROTATION_DEG))
    shear = _uniform(g, n, -SHEAR, SHEAR)
    shift = _uniform(g, n, -SHIFT, SHIFT, 1, 2)
    cos, sin = torch.cos(angle), torch.sin(angle)
    sx, sy = scale * aspect, scale
    a = torch.stack([torch.stack([cos * sx, (cos * shear - sin) * sy], -1),
                     torch.stack([sin * sx, (sin * shear + cos) * sy], -1)], -2)  # (n, 2, 2)
    pts = pts @ a.transpose(1, 2) + shift
    seg = pts.reshape(n, -1, 4)
    keep = torch.rand(n, N_GROUPS, generator=g) < 0.5
    keep[:, 0] = True
    drawn = keep.gather(1, glyph[:, 4].long().expand(n, -1))  # (n, M)
    return seg.masked_fill(~drawn[..., None], _FAR)


def _render_strokes(seg: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """(n, 784) intensities in [0, 1] of the strokes: peak * sigmoid((w - d) / softness)."""
    n = seg.shape[0]
    half_width = _uniform(g, n, *HALF_WIDTH, 1)
    softness = _uniform(g, n, 0.25, 0.6, 1)
    peak = _uniform(g, n, *PEAK, 1)
    return peak * torch.sigmoid((half_width - _seg_distance(seg)) / softness)


def _render_clutter(g: torch.Generator, n: int) -> torch.Tensor:
    """(n, 784) faint stray strokes and dots: up to N_CLUTTER per sample."""
    start = _uniform(g, n, -12.0, 12.0, N_CLUTTER, 2)
    length = _uniform(g, n, 0.0, 6.0, N_CLUTTER, 1)
    angle = _uniform(g, n, 0.0, 2 * math.pi, N_CLUTTER, 1)
    end = start + length * torch.cat([torch.cos(angle), torch.sin(angle)], -1)
    seg = torch.cat([start, end], -1)
    present = torch.rand(n, N_CLUTTER, 1, generator=g) < CLUTTER_P
    seg = seg.masked_fill(~present, _FAR)
    level = _uniform(g, n, *CLUTTER_LEVEL, 1)
    return level * torch.sigmoid((0.7 - _seg_distance(seg)) / 0.4)


def _render_chunk(seed: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CHUNK images (uint8, (CHUNK, 1, 28, 28)) and balanced labels of one chunk."""
    g = torch.Generator().manual_seed(_chunk_seed(seed, chunk))
    labels = torch.randperm(CHUNK, generator=g) % 10
    image = torch.zeros(CHUNK, SIZE * SIZE)
    for digit, glyph in enumerate(_GLYPHS):  # one pass per class: no segment padding
        idx = (labels == digit).nonzero().squeeze(1)
        image[idx] = _render_strokes(_place_glyph(glyph, g, len(idx)), g)
    image = torch.maximum(image, _render_clutter(g, CHUNK))
    sigma = _uniform(g, CHUNK, *NOISE_SIGMA, 1) * (torch.rand(CHUNK, 1, generator=g) < NOISE_P)
    image = image + sigma * torch.randn(CHUNK, SIZE * SIZE, generator=g)
    pixels = (image.clamp(0.0, 1.0) * 255).round().to(torch.uint8)
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
