"""The demo: the quick profile (``jrbench/quick.toml``, linked from ``benchmarks/quick.toml``).

A plain and a Jacobian-regularized lenet on the embedded synth-digits data, trained,
attacked (noise and PGD) and measured (margins, spectra), compared side by side, ending in
a report.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

DEMO_SIGMA, DEMO_EPS_LINF, DEMO_EPS_L2 = 0.5, 0.1, 1.5


def quick_spec(out: Path = Path("results/demo")):
    """The quick profile as a sweep spec whose runs go straight into ``out``."""
    from importlib import resources

    from .sweep import parse_spec

    text = resources.files("jrbench").joinpath("quick.toml").read_text()
    spec = parse_spec(text, Path("jrbench/quick.toml"), out.parent)
    spec.name = out.name
    return spec


def demo_row(run_dir: Path) -> dict:
    """One column of the demo's comparison, read back from the run directory's tables."""
    from .rundir import load_config, load_metrics, read_csv

    m = load_metrics(run_dir).iloc[-1]
    attacks = read_csv(run_dir / "attacks.csv").set_index(["attack", "norm", "strength"])["accuracy"]
    margins = read_csv(run_dir / "margins.csv")
    return {
        "run": "+".join(load_config(run_dir).reg.names), "clean accuracy": m["test_acc"],
        "mean ||J_z||_F": m["test_jac_frob_z"], "R = 1/2 mean ||J_z||_F^2": m["test_R_z"],
        f"noise sigma {DEMO_SIGMA}": attacks[("noise", "gaussian", DEMO_SIGMA)],
        f"PGD-Linf eps {DEMO_EPS_LINF}": attacks[("pgd", "linf", DEMO_EPS_LINF)],
        f"PGD-L2 eps {DEMO_EPS_L2}": attacks[("pgd", "l2", DEMO_EPS_L2)],
        "median random-direction margin": margins["margin_random_median"].median(),
        "median adversarial margin": margins["margin_adv_l2"].median(),
        "ms/step": 1000 * m["seconds_per_step"],
    }


def demo_table(run_dirs: list[Path]) -> pd.DataFrame:
    """Measures as rows, runs as columns."""
    return pd.DataFrame([demo_row(d) for d in run_dirs]).set_index("run").T
