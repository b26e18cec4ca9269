"""One row of certify.csv: a certificate's certified accuracy at one radius, with its Wilson interval."""
from __future__ import annotations

import torch

NO_SIGMA = -1.0  # the sigma column of deterministic certificates (a key column: no NaN)


def certify_row(method: str, norm: str, strength: float, certified: torch.Tensor, seconds: float,
                settings: str, sigma: float = NO_SIGMA, **extra) -> dict:
    from ..stats import wilson_interval

    n, k = int(certified.numel()), int(certified.sum())
    low, high = wilson_interval(k, n)
    return {"method": method, "norm": norm, "strength": float(strength), "sigma": float(sigma),
            "certified_acc": k / n, "ci_low": low, "ci_high": high, "n_examples": n, "n_certified": k,
            "seconds": seconds, "settings": settings, **extra}
