"""The demo: the quick profile (``jrbench/study/quick.toml``, linked from ``benchmarks/quick.toml``).

A plain and a Jacobian-regularized lenet on the embedded synth-digits data, trained,
attacked (noise and PGD) and measured (margins, spectra), ending in a report that compares
them side by side.
"""
from __future__ import annotations

from pathlib import Path


def quick_spec(out: Path = Path("results/demo")):
    """The quick profile as a sweep spec whose runs go straight into ``out``."""
    from importlib import resources

    from .spec import parse_spec

    text = resources.files("jrbench.study").joinpath("quick.toml").read_text()
    spec = parse_spec(text, Path("jrbench/study/quick.toml"), out.parent)
    spec.name = out.name
    return spec
