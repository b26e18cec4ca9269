"""Statistics: confidence intervals and the tests behind the report's verdicts, from scipy.

Every function names its test and what it assumes. Confidence levels are two-sided (0.95
by default); p values are two-sided. Nothing here knows about runs or files: plain numbers
and arrays in, plain numbers out (:mod:`jrbench.analysis.verdicts` applies them to runs).

Intervals of one measurement
- :func:`wilson_interval`  a binomial proportion (accuracy over independent examples);
- :func:`noise_interval`   accuracy under noise, draws of one image being correlated;
- :func:`mean_ci`          a mean (t interval);
- :func:`median_ci`        a median (distribution-free, from order statistics).

Tests of a difference (group minus baseline)
- :func:`paired_t`         per-seed differences: paired t-test and t interval;
- :func:`mcnemar_exact`    one seed, the same examples scored right/wrong by both models;
- :func:`sign_test`        one seed, per-example shares (accuracy under noise);
- :func:`median_difference` one seed, two independent samples (margins): bootstrap interval
                           of the difference of medians and a permutation test.

Many tests at once (a report's verdicts are one family)
- :func:`adjust_p_values`  Benjamini-Hochberg (false discovery rate), Holm (family-wise error)
                           or none.

"Not worse" (non-inferiority with a margin delta, per-seed differences)
- :func:`noninferiority`   one-sided paired t bounds against -delta: not worse / worse / inconclusive;
- :func:`noninferiority_power` and :func:`seeds_for_noninferiority`: the power of that test
                           and the seeds it needs (noncentral t, ``scipy.stats.nct``).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
Z_95 = float(stats.norm.ppf(0.975))  # two-sided 95% standard normal quantile
BOOTSTRAP_RESAMPLES = 9999


def normal_quantile(confidence: float = CONFIDENCE) -> float:
    """z such that a standard normal lies in [-z, z] with probability ``confidence``."""
    return float(stats.norm.ppf(0.5 + confidence / 2))


# ----------------------------------------------------------------------------- intervals
def wilson_interval(n_correct: float, n_trials: float, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion n_correct / n_trials.

    Assumes independent trials with one success probability. Integer counts go to
    ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``; real counts (an effective
    number of trials, see :func:`noise_interval`) use the same Wilson formula with scipy's
    normal quantile. (NaN, NaN) for no trials."""
    if not n_trials > 0:
        return math.nan, math.nan
    if float(n_correct).is_integer() and float(n_trials).is_integer():
        ci = stats.binomtest(int(n_correct), int(n_trials)).proportion_ci(confidence, method="wilson")
        return float(ci.low), float(ci.high)
    z, n = normal_quantile(confidence), float(n_trials)
    p = min(max(n_correct / n, 0.0), 1.0)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if n_correct <= 0 else max(0.0, centre - half)
    return low, 1.0 if n_correct >= n else min(1.0, centre + half)


def noise_interval(counts, draws: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson interval of the accuracy under noise from per-image correct counts (of ``draws``).

    Draws of one image are correlated, so the interval uses an effective number of trials
    n_eff = (N * draws) / design effect, with the design effect (Kish) estimated from the
    spread of per-image accuracies, clamped to [N, N * draws]: N when draws agree
    (e.g. sigma = 0) or all are right (or all wrong), N * draws when they look independent.
    n_eff is real, so the Wilson formula is used with scipy's normal quantile. ``counts``:
    a 1-d array or tensor of integers in [0, draws]. Assumes independent images."""
    if hasattr(counts, "detach"):
        counts = counts.detach().cpu().numpy()
    per_image = np.asarray(counts, dtype=float) / draws
    n = len(per_image)
    if n == 0:
        return math.nan, math.nan
    p = float(per_image.mean())
    var_mean = float(per_image.var(ddof=1)) / n if n > 1 else 0.0
    if p * (1 - p) == 0:
        n_eff = float(n)  # all right or all wrong: no spread to go by, count images
    else:
        n_eff = min(max(p * (1 - p) / max(var_mean, 1e-300), n), n * draws)
    return wilson_interval(p * n_eff, n_eff, confidence)


def mean_ci(values: np.ndarray, confidence: float = CONFIDENCE,
            bounds: tuple[float, float] = (-math.inf, math.inf)) -> tuple[float, float, float]:
    """(mean, low, high): Student t interval, mean -+ t_{n-1} * s / sqrt(n) (scipy.stats.t).

    Assumes independent values whose mean is about normal (exact for normal values, the
    central limit theorem otherwise). NaN bounds for fewer than 2 values or non-finite ones.
    ``bounds``: the range every value lies in (accuracies: (0, 1)); the interval is cut to it,
    which keeps its coverage since the true mean lies there too."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    mean = float(np.mean(values)) if n else math.nan
    if n < 2 or not np.isfinite(values).all():
        return mean, math.nan, math.nan
    se = float(np.std(values, ddof=1)) / math.sqrt(n)
    if se == 0:
        return mean, mean, mean
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=se)
    return mean, max(float(low), bounds[0]), min(float(high), bounds[1])


def median_ci(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Distribution-free interval of the median from order statistics (exact binomial,
    ``scipy.stats.quantile_test(...).confidence_interval``): [x_(l), x_(n-l+1)] with coverage
    at least ``confidence`` for any continuous distribution. Assumes independent values.
    Infinite values are allowed (they sort last); a bound the sample is too small to give
    (fewer than 6 values at 95%) is NaN."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return math.nan, math.nan
    result = stats.quantile_test(v, q=float(np.median(v)), p=0.5)
    ci = result.confidence_interval(confidence)
    return float(ci.low), float(ci.high)


# ----------------------------------------------------------------------------- differences
@dataclass
class Difference:
    """A difference (group minus baseline) with its two-sided interval and p value; ``n``:
    seeds (paired t) or examples (per-example tests); ``note``: what the method covers."""

    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int
    note: str = ""


def paired_t(group: np.ndarray, baseline: np.ndarray, confidence: float = CONFIDENCE) -> Difference:
    """Paired t-test on per-seed differences d_i = group_i - baseline_i (``scipy.stats.ttest_rel``)
    and the t interval mean(d) -+ t_{n-1} s_d / sqrt(n) (``scipy.stats.t.interval``).

    Assumes the seed pairs are independent and their differences about normal. It covers
    training noise (initialization, data order) across seeds; the test examples are the
    same for every seed. Differences all zero: diff 0, interval [0, 0], p = 1."""
    g, b = np.asarray(group, dtype=float), np.asarray(baseline, dtype=float)
    if len(g) != len(b) or len(g) < 2:
        raise ValueError("paired_t needs two equally long arrays of at least 2 values")
    d = g - b
    mean, low, high = mean_ci(d, confidence)
    if np.all(d == 0):
        return Difference(0.0, 0.0, 0.0, 1.0, len(d))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # zero spread: scipy says so, p is 0
        p = float(stats.ttest_rel(g, b).pvalue)
    return Difference(mean, low, high, p, len(d))


def mcnemar_exact(group_correct: np.ndarray, baseline_correct: np.ndarray,
                  confidence: float = CONFIDENCE) -> Difference:
    """Exact McNemar test on the same examples scored by both models (0/1 each).

    b = examples only the baseline gets right, c = only the group; under the null hypothesis
    of equal accuracy c ~ Binom(b + c, 1/2), so p = min(1, 2 P(Binom(b + c, 1/2) <= min(b, c)))
    (``scipy.stats.binomtest(c, b + c)``). The difference of accuracies is (c - b) / n. Its
    interval, conditional on the m = b + c discordant examples as the test is: the exact
    (Clopper-Pearson) interval [t_lo, t_hi] of theta = P(group right | discordant), mapped to
    (m / n)(2 theta - 1). It excludes 0 exactly when p < 1 - confidence. Assumes independent
    examples; it covers the choice of test examples only, not training noise."""
    g = np.asarray(group_correct, dtype=float).astype(bool)
    b_ = np.asarray(baseline_correct, dtype=float).astype(bool)
    n = len(g)
    if n == 0 or len(b_) != n:
        raise ValueError("mcnemar_exact needs two equally long, non-empty arrays")
    b, c = int((b_ & ~g).sum()), int((g & ~b_).sum())
    m = b + c
    if m == 0:
        return Difference(0.0, 0.0, 0.0, 1.0, n, "b = c = 0")
    test = stats.binomtest(c, m, 0.5)
    ci = test.proportion_ci(confidence, method="exact")
    scale = m / n
    return Difference((c - b) / n, scale * (2 * ci.low - 1), scale * (2 * ci.high - 1),
                      float(test.pvalue), n, f"b = {b}, c = {c}")


def sign_test(group_share: np.ndarray, baseline_share: np.ndarray,
              confidence: float = CONFIDENCE) -> Difference:
    """Exact sign test on per-example shares in [0, 1] (e.g. the share of noise draws
    classified correctly), paired by example.

    p: ``scipy.stats.binomtest(n_plus, n_plus + n_minus)`` on the examples whose shares differ
    (ties dropped); the difference is the mean of d_i = group_i - baseline_i, and its interval
    the t interval over examples (central limit theorem over many examples). Assumes
    independent examples; it covers the choice of test examples (and of noise draws) only,
    not training noise."""
    g, b = np.asarray(group_share, dtype=float), np.asarray(baseline_share, dtype=float)
    if len(g) == 0 or len(g) != len(b):
        raise ValueError("sign_test needs two equally long, non-empty arrays")
    d = g - b
    plus, minus = int((d > 0).sum()), int((d < 0).sum())
    note = f"{plus} examples up, {minus} down"
    if plus + minus == 0:
        return Difference(0.0, 0.0, 0.0, 1.0, len(d), note)
    mean, low, high = mean_ci(d, confidence)
    return Difference(mean, low, high, float(stats.binomtest(plus, plus + minus).pvalue), len(d), note)


def _median_diff(a, b, axis=-1):
    return np.median(a, axis=axis) - np.median(b, axis=axis)


def median_difference(group: np.ndarray, baseline: np.ndarray, confidence: float = CONFIDENCE,
                      seed: int = 0, n_resamples: int = BOOTSTRAP_RESAMPLES) -> Difference:
    """Difference of medians of two independent samples (e.g. per-example margins of two
    models): percentile bootstrap interval (``scipy.stats.bootstrap``, each sample resampled
    on its own, ``n_resamples``, seeded) and a two-sided permutation test of the same
    statistic (``scipy.stats.permutation_test``, independent samples, seeded). NaN values are
    dropped; infinite ones (no boundary found) are allowed. Assumes independent examples;
    it covers the choice of examples only, not training noise."""
    a = np.asarray(group, dtype=float)
    b = np.asarray(baseline, dtype=float)
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if len(a) < 2 or len(b) < 2:
        raise ValueError("median_difference needs at least 2 values in each sample")
    diff = float(_median_diff(a, b))
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        boot = stats.bootstrap((a, b), _median_diff, vectorized=True, paired=False, confidence_level=confidence,
                               n_resamples=n_resamples, method="percentile", rng=np.random.default_rng(seed))
        perm = stats.permutation_test((a, b), _median_diff, vectorized=True, permutation_type="independent",
                                      n_resamples=n_resamples, alternative="two-sided",
                                      rng=np.random.default_rng(seed))
    ci = boot.confidence_interval
    return Difference(diff, float(ci.low), float(ci.high), float(perm.pvalue), len(a) + len(b),
                      f"{len(a)} and {len(b)} examples")


# ----------------------------------------------------------------------------- multiplicity
CORRECTIONS = ("bh", "holm", "none")
CORRECTION_NAMES = {"bh": "Benjamini-Hochberg", "holm": "Holm", "none": "none"}


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p values (Holm 1979): with p_(1) <= ... <= p_(m) sorted,
    adjusted p_(i) = max over j <= i of min(1, (m - j + 1) p_(j)). Rejecting where the adjusted
    p < alpha controls the family-wise error rate at alpha under any dependence. 1-d input,
    no NaN; the order of the input is kept."""
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = stepped
    return out


def adjust_p_values(p_values, method: str) -> np.ndarray:
    """Multiplicity-adjusted p values over one family of tests, in the input's order.

    ``bh``: Benjamini and Hochberg 1995, step-up, ``scipy.stats.false_discovery_control(p,
    method="bh")``; rejecting where the adjusted p < alpha controls the false discovery rate
    (the expected share of false claims among the claims) at alpha for independent or
    positively dependent tests (Benjamini and Yekutieli 2001). ``holm``: :func:`holm`, the
    family-wise error rate (any false claim at all), any dependence. ``none``: p unchanged.
    NaN p values (no test) are not members of the family: they stay NaN and do not count."""
    if method not in CORRECTIONS:
        raise ValueError(f"correction must be one of {', '.join(CORRECTIONS)}, got {method!r}")
    p = np.asarray(p_values, dtype=float).copy()
    if p.ndim != 1:
        raise ValueError("adjust_p_values needs a 1-d array of p values")
    finite = ~np.isnan(p)
    if method == "none" or not finite.any():
        return p
    if ((p[finite] < 0) | (p[finite] > 1)).any():
        raise ValueError("p values must lie in [0, 1]")
    p[finite] = (stats.false_discovery_control(p[finite], method="bh") if method == "bh" else holm(p[finite]))
    return p


# ----------------------------------------------------------------------------- non-inferiority
NOT_WORSE, WORSE_BY_MARGIN, INCONCLUSIVE = "not worse", "worse", "inconclusive"
POWER = 0.8
MAX_SEEDS = 100_000


@dataclass
class NonInferiority:
    """A one-sided comparison of a setting with a reference against the margin ``margin``
    (delta > 0, in the unit of the values): per-seed differences d_i = setting_i - reference_i,
    larger is better. ``lower`` / ``upper``: one-sided ``confidence`` bounds of the mean
    difference; ``p_value``: one-sided p of H0 "mean difference <= -delta"; ``sd``: sample
    standard deviation of the d_i; ``seeds_needed``: seeds for the test to show "not worse" with
    power :data:`POWER` if the true difference were ``assumed_diff`` (0: equally good) at the
    spread ``sd`` (None: unreachable or no spread to go by)."""

    diff: float
    lower: float
    upper: float
    margin: float
    p_value: float
    n: int
    sd: float
    verdict: str
    seeds_needed: int | None
    assumed_diff: float = 0.0


def noninferiority(setting: np.ndarray, reference: np.ndarray, margin: float, confidence: float = CONFIDENCE,
                   power: float = POWER, assumed_diff: float = 0.0) -> NonInferiority:
    """Non-inferiority of ``setting`` to ``reference`` paired by seed, larger is better (for a
    smaller-is-better quantity pass both negated), margin ``margin`` = delta > 0.

    With the per-seed differences d_i (n >= 2), mean d and se = s_d / sqrt(n), the one-sided
    ``confidence`` bounds are L = d - t_{conf, n-1} se and U = d + t_{conf, n-1} se (at 95%:
    the ends of the two-sided 90% t interval). Verdict: "not worse" when L > -delta (the paired
    t-test of H0 "mean <= -delta" rejects at 1 - confidence: p = P(T_{n-1} >= (d + delta) / se));
    "worse" when U < -delta (worse by more than the margin, at the same confidence); else
    "inconclusive". Assumes independent seed pairs with about normal differences (as
    :func:`paired_t`); no spread (all d_i equal) decides by d against -delta.
    ``seeds_needed``: :func:`seeds_for_noninferiority` at s_d, assuming the true mean
    difference is ``assumed_diff`` (default 0: the setting is as good as the reference)."""
    s, r = np.asarray(setting, dtype=float), np.asarray(reference, dtype=float)
    if len(s) != len(r) or len(s) < 2:
        raise ValueError("noninferiority needs two equally long arrays of at least 2 values")
    if not margin > 0:
        raise ValueError(f"the non-inferiority margin must be positive, got {margin!r}")
    d = s - r
    n, mean = len(d), float(d.mean())
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    if se > 0:
        q = float(stats.t.ppf(confidence, n - 1))
        lower, upper = mean - q * se, mean + q * se
        p = float(stats.t.sf((mean + margin) / se, n - 1))
    else:
        lower = upper = mean
        p = 0.0 if mean > -margin else 1.0
    verdict = NOT_WORSE if lower > -margin else WORSE_BY_MARGIN if upper < -margin else INCONCLUSIVE
    needed = seeds_for_noninferiority(sd, margin, assumed_diff, confidence, power)
    return NonInferiority(mean, lower, upper, margin, p, n, sd, verdict, needed, assumed_diff)


def noninferiority_power(n: int, sd: float, margin: float, true_diff: float = 0.0,
                         confidence: float = CONFIDENCE) -> float:
    """Power of the one-sided paired t-test of :func:`noninferiority` with ``n`` seeds: the
    probability that L > -delta when the differences are normal with mean ``true_diff`` and
    standard deviation ``sd``. The statistic (d + delta) / (s_d / sqrt(n)) is then noncentral t
    with n - 1 degrees of freedom and noncentrality (true_diff + delta) sqrt(n) / sd, so the
    power is P(T' > t_{conf, n-1}) (``scipy.stats.nct.sf``)."""
    if n < 2:
        return 0.0
    if sd == 0:
        return 1.0 if true_diff + margin > 0 else 0.0
    ncp = (true_diff + margin) * math.sqrt(n) / sd
    return float(stats.nct.sf(stats.t.ppf(confidence, n - 1), n - 1, ncp))


def seeds_for_noninferiority(sd: float, margin: float, true_diff: float = 0.0, confidence: float = CONFIDENCE,
                             power: float = POWER, max_n: int = MAX_SEEDS) -> int | None:
    """The fewest seeds n >= 2 at which :func:`noninferiority_power` reaches ``power``: how many
    seed pairs the test needs to show "not worse" (margin delta) with that probability if the
    true mean difference is ``true_diff`` and the per-seed differences spread by ``sd`` (the
    observed s_d is an estimate: with 3 seeds it is itself uncertain). None when no n up to
    ``max_n`` does, or ``true_diff <= -delta`` (never), or ``sd`` is not finite."""
    if not math.isfinite(sd) or true_diff + margin <= 0:
        return None
    if noninferiority_power(2, sd, margin, true_diff, confidence) >= power:
        return 2
    high = 4
    while noninferiority_power(high, sd, margin, true_diff, confidence) < power:  # power grows with n
        if high >= max_n:
            return None
        high = min(2 * high, max_n)
    low = high // 2  # power(low) < power <= power(high)
    while high - low > 1:
        mid = (low + high) // 2
        if noninferiority_power(mid, sd, margin, true_diff, confidence) >= power:
            high = mid
        else:
            low = mid
    return high
