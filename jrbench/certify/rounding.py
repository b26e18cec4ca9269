"""Outward rounding for float64 bounds (Higham, "Accuracy and Stability of Numerical Algorithms",
2nd ed., ch. 3): a computed sum of n products has an error of at most gamma_n times the sum of the
products' magnitudes, gamma_n = n u / (1 - n u), u = 2^-53. Bounds add such slack and step to the
neighbouring float outward, so rounding cannot make a certificate too tight."""
from __future__ import annotations

import math

import torch

U = 2.0 ** -53  # unit roundoff of float64


def gamma(n: int) -> float:
    """2 gamma_{n+2}: the relative error bound of a length-n dot product, doubled for the rounding
    of the slack's own computation (all the slack's terms are non-negative)."""
    return 2 * (n + 2) * U / (1 - (n + 2) * U)


def up(t: torch.Tensor) -> torch.Tensor:
    """The next float64 towards +inf (elementwise)."""
    return torch.nextafter(t, t.new_full((), math.inf))  # a 0-d target broadcasts: no full-size copy


def down(t: torch.Tensor) -> torch.Tensor:
    """The next float64 towards -inf (elementwise)."""
    return torch.nextafter(t, t.new_full((), -math.inf))
