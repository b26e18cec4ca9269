"""The demo: a plain and a Jacobian-regularized lenet on the embedded synth-digits data,
trained, attacked (noise and PGD) and measured (margins), compared side by side."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .config import DataConfig, ModelConfig, RegConfig, RunConfig, TrainConfig

DEMO_LAMBDA_JR = 0.05
DEMO_SIGMA, DEMO_EPS_LINF, DEMO_EPS_L2 = 0.4, 0.1, 1.5


def demo_configs(epochs: int = 4, device: str = "auto") -> list[tuple[str, RunConfig]]:
    """(label, config) for the demo's two runs: same data, model, seed and schedule."""
    def config(names: list[str]) -> RunConfig:
        return RunConfig(
            DataConfig("synth-digits", train_subset=10_000, test_subset=2_000),
            ModelConfig("lenet"),
            RegConfig(names, lambda_jr=DEMO_LAMBDA_JR),
            TrainConfig(epochs=epochs, batch_size=64, lr=0.05, momentum=0.9, seed=0, device=device),
        ).validate()

    return [("plain", config(["none"])), ("jacobian", config(["jacobian"]))]


def demo_attack_config():
    from .attacks import AttackConfig

    return AttackConfig(noise=True, pgd=True, fgsm=False, sigmas=[0.0, 0.2, DEMO_SIGMA, 0.6], draws=2,
                        norms=("linf", "l2"), eps_linf=[0.0, 0.05, DEMO_EPS_LINF, 0.15],
                        eps_l2=[0.5, 1.0, DEMO_EPS_L2], steps=20, batch_size=500)


def demo_row(label: str, run_dir: Path) -> dict:
    """One line of the demo's comparison, read back from the run directory's tables."""
    from .rundir import load_metrics, read_csv

    m = load_metrics(run_dir).iloc[-1]
    attacks = read_csv(run_dir / "attacks.csv").set_index(["attack", "norm", "strength"])["accuracy"]
    margins = read_csv(run_dir / "margins.csv")
    return {
        "model": label, "clean accuracy": m["test_acc"], "mean ||J_z||_F": m["test_jac_frob_z"],
        "R = 1/2 mean ||J_z||_F^2": m["test_R_z"],
        f"noise sigma {DEMO_SIGMA}": attacks[("noise", "gaussian", DEMO_SIGMA)],
        f"PGD-Linf eps {DEMO_EPS_LINF}": attacks[("pgd", "linf", DEMO_EPS_LINF)],
        f"PGD-L2 eps {DEMO_EPS_L2}": attacks[("pgd", "l2", DEMO_EPS_L2)],
        "median random-direction margin": margins["margin_random_median"].median(),
        "median adversarial margin": margins["margin_adv_l2"].median(),
        "ms/step": 1000 * m["seconds_per_step"],
    }


def demo_table(runs: list[tuple[str, Path]]) -> pd.DataFrame:
    return pd.DataFrame([demo_row(label, d) for label, d in runs])
