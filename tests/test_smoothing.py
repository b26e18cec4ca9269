"""Randomized smoothing (Cohen et al. 2019): closed forms, soundness, determinism, option errors.

Models act on one or two pixels against a threshold t in (0, 1): clipping to [0, 1] keeps the
sign of (pixel - t), so the probabilities under Gaussian noise stay exact with clipping on."""
import math

import pytest
import torch
from scipy.stats import beta, norm
from torch import nn

from jrbench.errors import UserError
from jrbench.certify.smoothing import SmoothingResult, certified_accuracy, certify_smoothed, check_smoothing_options

SHAPE = (1, 4, 4)


class Threshold(nn.Module):
    """Two classes: logits [0, w (x[pixel] - t)], float64; class 1 iff x[pixel] > t."""

    def __init__(self, pixel: int = 5, t: float = 0.5, w: float = 3.0):
        super().__init__()
        self.pixel, self.t = pixel, t
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))

    def forward(self, x):
        s = self.w * (x.flatten(1)[:, self.pixel] - self.t)
        return torch.stack([torch.zeros_like(s), s], 1)


class Quadrants(nn.Module):
    """Four classes by the signs of (x[0] - 1/2, x[1] - 1/2): each 1/4 at x[0] = x[1] = 1/2."""

    def __init__(self):
        super().__init__()
        self.signs = nn.Parameter(torch.tensor([[-1, -1], [-1, 1], [1, -1], [1, 1]], dtype=torch.float64))

    def forward(self, x):
        return (x.flatten(1)[:, :2] - 0.5) @ self.signs.T


class Constant(nn.Module):
    def __init__(self, c: int, k: int = 3):
        super().__init__()
        self.logits = nn.Parameter(torch.eye(k, dtype=torch.float64)[c])

    def forward(self, x):
        return self.logits.expand(len(x), -1)


def image(**pixels) -> torch.Tensor:
    x = torch.full((1, *SHAPE), 0.5, dtype=torch.float64)
    for p, v in pixels.items():
        x.view(-1)[int(p[1:])] = v
    return x


def test_linear_radius_is_sound_and_within_the_monte_carlo_band():
    # p = P(x5 + delta > t) = Phi((x5 - t) / sigma); exact radius sigma Phi^-1(p) = x5 - t.
    sigma, n, alpha, t = 0.25, 20_000, 1e-10, 0.5
    x = torch.cat([image(p5=0.8), image(p5=0.2), image(p5=0.62)])
    dist = torch.tensor([0.3, 0.3, 0.12], dtype=torch.float64)
    res = certify_smoothed(Threshold(t=t), x, sigma=sigma, n0=100, n=n, alpha=alpha, batch_size=4096)
    assert res.predicted.tolist() == [1, 0, 1] and not res.abstain.any()
    assert res.counts.sum(1).tolist() == [n] * 3
    k = res.counts.gather(1, res.predicted[:, None]).squeeze(1).numpy()
    assert torch.allclose(res.p_a_lower, torch.from_numpy(beta.ppf(alpha, k, n - k + 1)), rtol=1e-12)
    assert torch.allclose(res.radius, sigma * torch.from_numpy(norm.ppf(res.p_a_lower.numpy())), rtol=1e-12)
    # Sound: below the true distance (fails with probability <= alpha = 1e-10 per example).
    assert (res.radius <= dist).all()
    # Band: the radius of the upper Clopper-Pearson bound (level 1 - 1e-10) is above the truth.
    upper = sigma * norm.ppf(beta.ppf(1 - alpha, k + 1, n - k))
    assert (torch.from_numpy(upper) >= dist).all()
    assert ((dist - res.radius) < 0.05).all()  # narrow at n = 20,000 (about 0.02 expected)


def test_abstains_when_no_class_has_half():
    x = torch.cat([image(p0=0.5, p1=0.5), image(p0=0.9, p1=0.9)])
    res = certify_smoothed(Quadrants(), x, sigma=0.2, n0=50, n=2000, batch_size=500)
    # Example 0: four classes of 1/4 each; example 1: class 3 with Phi(2)^2 = 0.955.
    assert res.abstain.tolist() == [True, False]
    assert res.predicted.tolist() == [-1, 3]
    assert res.radius[0] == 0 and res.radius[1] > 0
    assert res.p_a_lower[0] < 0.5 <= res.p_a_lower[1]
    assert res.counts.dtype == torch.int64 and res.counts.shape == (2, 4)


def test_constant_classifier_closed_form():
    n, alpha, sigma = 500, 0.001, 0.5
    x = torch.rand(3, *SHAPE, dtype=torch.float64)
    res = certify_smoothed(Constant(2), x, sigma=sigma, n0=10, n=n, alpha=alpha)
    p = alpha ** (1 / n)  # Clopper-Pearson with k = n: beta.ppf(alpha, n, 1)
    assert res.predicted.tolist() == [2, 2, 2] and res.counts[:, 2].tolist() == [n] * 3
    assert torch.allclose(res.p_a_lower, torch.full((3,), p, dtype=torch.float64), rtol=1e-12)
    assert torch.allclose(res.radius, torch.full((3,), sigma * norm.ppf(p), dtype=torch.float64), rtol=1e-12)


class Recorder(nn.Module):
    """Class 0 always; remembers the smallest and largest pixel it was shown."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2, dtype=torch.float64))
        self.seen = []

    def forward(self, x):
        self.seen += [float(x.min()), float(x.max())]
        return self.w.expand(len(x), -1)


def test_noisy_images_are_clipped_to_pixels():
    model = Recorder()
    certify_smoothed(model, torch.cat([image(p0=0.0, p1=1.0)] * 2), sigma=2.0, n0=10, n=300)
    assert min(model.seen) == 0.0 and max(model.seen) == 1.0


def random_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).double()


def assert_same(a: SmoothingResult, b: SmoothingResult) -> None:
    for name in ("predicted", "abstain", "radius", "p_a_lower", "counts"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_independent_of_batch_size_and_of_the_other_examples():
    model = random_net()
    x = torch.rand(4, *SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    kw = dict(sigma=0.5, n0=30, n=250, seed=3)  # partial chunks in both stages
    ref = certify_smoothed(model, x, batch_size=1000, **kw)
    assert ref.counts.sum(1).tolist() == [250] * 4 and len(set(ref.counts.flatten().tolist())) > 2
    for bs in (7, 100, 280):
        assert_same(certify_smoothed(model, x, batch_size=bs, **kw), ref)
    assert_same(certify_smoothed(model, x, batch_size=1000, **kw), ref)  # same seed, same result
    alone = certify_smoothed(model, x[2:3], example_index=torch.tensor([2]), batch_size=64, **kw)
    assert torch.equal(alone.counts[0], ref.counts[2]) and alone.radius[0] == ref.radius[2]
    other = certify_smoothed(model, x, batch_size=1000, **{**kw, "seed": 4})
    assert not torch.equal(other.counts, ref.counts)


def test_model_runs_in_eval_mode_and_progress_reaches_the_total():
    model = nn.Sequential(random_net(), nn.Dropout(0.9)).train()
    x = torch.rand(3, *SHAPE, dtype=torch.float64)
    calls = []
    a = certify_smoothed(model, x, sigma=0.3, n0=5, n=20, batch_size=10,
                         on_progress=lambda d, t, label: calls.append((d, t)))
    assert model.training and all(m.training for m in model.modules())
    assert_same(a, certify_smoothed(model, x, sigma=0.3, n0=5, n=20, batch_size=10))  # dropout was off
    assert calls[0] == (0, 3) and calls[-1] == (3, 3)
    assert [d for d, _ in calls] == sorted({d for d, _ in calls})


@pytest.mark.parametrize("kw, flag", [
    (dict(sigma=0.0), "--sigma must be positive"), (dict(sigma=-1.0), "--sigma"),
    (dict(sigma=math.nan), "--sigma"), (dict(n0=0), "--n0"), (dict(n=0, n0=0), "--n0"),
    (dict(n=0), "--n must be at least 1"), (dict(n0=200, n=100), "--n0 (200) must not exceed --n (100)"),
    (dict(alpha=0.0), "--alpha"), (dict(alpha=1.0), "--alpha"), (dict(batch_size=0), "--smoothing-batch-size"),
])
def test_check_smoothing_options(kw, flag):
    settings = {"sigma": 0.25, "n0": 1, "n": 100, "alpha": 0.001, "batch_size": 10, **kw}
    with pytest.raises(UserError, match=flag.replace("(", r"\(").replace(")", r"\)")):
        check_smoothing_options(**settings)
    with pytest.raises(UserError, match="--"):
        certify_smoothed(Constant(0), torch.rand(1, *SHAPE), **settings)


def test_bad_images_are_user_errors():
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        certify_smoothed(Constant(0), torch.full((1, *SHAPE), 1.5), sigma=0.25)
    with pytest.raises(UserError, match="example_index"):
        certify_smoothed(Constant(0), torch.rand(2, *SHAPE), sigma=0.25, example_index=torch.tensor([0]))


def test_certified_accuracy_by_hand():
    res = SmoothingResult(
        predicted=torch.tensor([1, 0, -1, 2]), abstain=torch.tensor([False, False, True, False]),
        radius=torch.tensor([0.5, 0.1, 0.0, 0.3], dtype=torch.float64),
        p_a_lower=torch.tensor([0.9, 0.6, 0.4, 0.8], dtype=torch.float64),
        counts=torch.zeros(4, 3, dtype=torch.int64))
    labels = torch.tensor([1, 0, 2, 1])  # the last one is wrong with a large radius
    assert certified_accuracy(res, labels, 0.0) == 0.5
    assert certified_accuracy(res, labels, 0.1) == 0.5
    assert certified_accuracy(res, labels, 0.2) == 0.25
    assert certified_accuracy(res, labels, 0.6) == 0.0
    with pytest.raises(UserError):
        certified_accuracy(res, labels, -0.1)
