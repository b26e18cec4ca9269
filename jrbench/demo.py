"""The demo: a plain and a Jacobian-regularized lenet on the embedded synth-digits data."""
from __future__ import annotations

from .config import DataConfig, ModelConfig, RegConfig, RunConfig, TrainConfig

DEMO_LAMBDA_JR = 0.05


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
