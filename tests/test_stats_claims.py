"""Multiplicity adjustments, the non-inferiority rule and its power calculation, by hand.

Every expected value comes from a small fixed table and a closed form: with 2 degrees of
freedom Student's t has F(t) = 1/2 + t / (2 sqrt(2 + t^2)), so its quantiles and tails are
exact; the power is checked against a numerical integral of its definition, not scipy's nct.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate
from scipy import stats as sps

from jrbench import stats


def t2_quantile(q: float) -> float:
    """Student t quantile with 2 degrees of freedom: t = (2q - 1) sqrt(2 / (4 q (1 - q)))."""
    return (2 * q - 1) * math.sqrt(2 / (4 * q * (1 - q)))


def t2_sf(t: float) -> float:
    return 0.5 - t / (2 * math.sqrt(2 + t * t))


# ----------------------------------------------------------------------------- Holm and BH
P = [0.01, 0.04, 0.03, 0.005]


def test_holm_step_down_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert list(stats.holm(P)) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)
    assert list(stats.adjust_p_values(P, "holm")) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)
    assert list(stats.holm([0.3, 0.6])) == pytest.approx([0.6, 0.6])  # capped at 1 before the running max
    assert list(stats.holm([0.9, 0.8])) == [1.0, 1.0]


def test_bh_step_up_by_hand_and_nan_is_not_in_the_family():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4/1, 4/2, 4/3, 4/4: 0.02, 0.02, 0.04, 0.04 (running min from the top)
    with_nan = [0.01, 0.04, math.nan, 0.03, 0.005]
    adjusted = stats.adjust_p_values(with_nan, "bh")
    assert math.isnan(adjusted[2])
    assert list(np.delete(adjusted, 2)) == pytest.approx([0.02, 0.04, 0.04, 0.02], abs=1e-15)
    holm = stats.adjust_p_values(with_nan, "holm")
    assert list(np.delete(holm, 2)) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)  # m = 4, not 5
    assert list(stats.adjust_p_values(P, "none")) == P
    with pytest.raises(ValueError, match="correction must be one of bh, holm, none"):
        stats.adjust_p_values(P, "bonferroni")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        stats.adjust_p_values([0.5, 1.5], "holm")


# ----------------------------------------------------------------------------- non-inferiority
# accuracies (points) of a reference and a setting over 3 seeds
REFERENCE = np.array([80.0, 82.0, 78.0])
SETTING = np.array([81.0, 81.0, 81.0])  # d = +1, -1, +3: mean 1, sd 2, se 2 / sqrt 3


def test_noninferiority_by_hand():
    se = 2 / math.sqrt(3)
    q = t2_quantile(0.95)  # one-sided 95%: 2.919986
    assert q == pytest.approx(2.919985580355516, rel=1e-12)
    ni = stats.noninferiority(SETTING, REFERENCE, margin=3.0)
    assert (ni.diff, ni.sd, ni.n) == (pytest.approx(1.0), pytest.approx(2.0), 3)
    assert ni.lower == pytest.approx(1 - q * se, rel=1e-12) and ni.lower == pytest.approx(-2.3717, abs=1e-4)
    assert ni.upper == pytest.approx(1 + q * se, rel=1e-12)
    # H0: mean <= -3; t = (1 + 3) / se = 3.4641; one-sided p = P(T_2 >= t) = 0.0371 < 0.05 <=> lower > -3
    assert ni.p_value == pytest.approx(t2_sf(4 / se), rel=1e-9) and ni.p_value == pytest.approx(0.03709, abs=1e-5)
    assert ni.verdict == "not worse" and ni.margin == 3.0 and ni.assumed_diff == 0.0
    # margin 2: the lower bound -2.37 is not above -2, the upper +4.37 not below: inconclusive
    two = stats.noninferiority(SETTING, REFERENCE, margin=2.0)
    assert two.verdict == "inconclusive" and two.p_value == pytest.approx(t2_sf(3 / se), rel=1e-9)
    assert two.p_value > 0.05
    assert two.seeds_needed == stats.seeds_for_noninferiority(2.0, 2.0)
    # worse by more than the margin: d = -6, -5, -7, upper bound -6 + q / sqrt 3 = -4.31 < -3
    worse = stats.noninferiority(REFERENCE - np.array([6.0, 5.0, 7.0]), REFERENCE, margin=3.0)
    assert worse.upper == pytest.approx(-6 + q / math.sqrt(3), rel=1e-12) and worse.verdict == "worse"
    # no spread: decided by the mean against -delta
    assert stats.noninferiority(REFERENCE - 2, REFERENCE, 3.0).verdict == "not worse"
    assert stats.noninferiority(REFERENCE - 4, REFERENCE, 3.0).verdict == "worse"
    with pytest.raises(ValueError, match="positive"):
        stats.noninferiority(SETTING, REFERENCE, margin=0.0)
    with pytest.raises(ValueError, match="at least 2"):
        stats.noninferiority(SETTING[:1], REFERENCE[:1], margin=3.0)


def power_by_integration(n: int, sd: float, margin: float, true_diff: float = 0.0) -> float:
    """P((d + delta) / (s / sqrt n) > t_{0.95, n-1}) from its definition: with Z ~ N(0, 1) and
    V ~ chi2(n - 1) the statistic is (Z + lambda) / sqrt(V / (n - 1)), lambda = (true_diff +
    delta) sqrt(n) / sd, so the power is the integral over v of P(Z > c sqrt(v / (n - 1)) - lambda)
    times the chi2 density."""
    df, c = n - 1, sps.t.ppf(0.95, n - 1)
    lam = (true_diff + margin) * math.sqrt(n) / sd
    value, _ = integrate.quad(lambda v: sps.norm.sf(c * math.sqrt(v / df) - lam) * sps.chi2.pdf(v, df), 0, np.inf,
                              epsabs=1e-12, epsrel=1e-10, limit=200)
    return value


@pytest.mark.parametrize("sd, margin, true_diff", [(2.0, 3.0, 0.0), (4.0, 3.0, 0.0), (5.0, 3.0, 1.0)])
def test_power_and_seeds_needed_against_the_definition(sd, margin, true_diff):
    n = stats.seeds_for_noninferiority(sd, margin, true_diff)
    for k in (n - 1, n):
        assert stats.noninferiority_power(k, sd, margin, true_diff) == pytest.approx(
            power_by_integration(k, sd, margin, true_diff), abs=1e-7)
    # the fewest seeds with 80% power
    assert power_by_integration(n - 1, sd, margin, true_diff) < 0.8 <= power_by_integration(n, sd, margin, true_diff)
    # and near the normal approximation n = (z_0.95 + z_0.8)^2 sd^2 / (delta + true_diff)^2, a little above it
    normal = (sps.norm.ppf(0.95) + sps.norm.ppf(0.8)) ** 2 * sd**2 / (margin + true_diff) ** 2
    assert normal <= n <= normal + 3


def test_seeds_needed_fixed_values_and_edges():
    # sd 2 and 4 points at a 3-point margin, if truly equally good: 5 and 13 seeds
    assert stats.seeds_for_noninferiority(2.0, 3.0) == 5
    assert stats.seeds_for_noninferiority(4.0, 3.0) == 13
    assert stats.seeds_for_noninferiority(0.0, 3.0) == 2  # no spread: any pair decides
    assert stats.seeds_for_noninferiority(2.0, 3.0, true_diff=-3.0) is None  # worse by the margin: never
    assert stats.seeds_for_noninferiority(math.nan, 3.0) is None
    assert stats.noninferiority_power(1, 2.0, 3.0) == 0.0


def test_mean_ci_is_cut_to_the_range_of_the_values():
    """Accuracies of three seeds far apart: the t interval runs past 0 and 1 (the review saw
    62.5 [-0.4, 125.4] in the frontier); cut to [0, 1] it keeps the rest of the interval as it was."""
    from jrbench.stats import mean_ci

    values = np.array([0.2, 0.95, 0.7])
    mean, low, high = mean_ci(values)
    assert low < 0 and high > 1
    assert mean_ci(values, bounds=(0.0, 1.0)) == (mean, 0.0, 1.0)
    narrow = np.array([0.5, 0.52, 0.55])
    assert mean_ci(narrow, bounds=(0.0, 1.0)) == mean_ci(narrow)
