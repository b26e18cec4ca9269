"""jrbench: robustness benchmarks for PyTorch image classifiers and Jacobian regularization.

Python API (heavy imports happen on first use, so ``jrbench --help`` stays instant)::

    from jrbench import RunConfig, train, load_run
    result = train(RunConfig(), "results/runs/my-run")   # trains, writes the run directory
    model, config = load_run("results/runs/my-run")      # eval mode, on the CPU
    attack_model(any_module, "mnist", AttackConfig(pgd=True))  # any classifier: pixels in, logits out
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["RunConfig", "train", "load_run", "attack_model", "margins_model", "load_outside_model",
           "UserError", "__version__"]


def __getattr__(name: str):
    if name == "RunConfig":
        from .config import RunConfig
        return RunConfig
    if name == "train":
        from .training.loop import train
        return train
    if name == "load_run":
        from .training.rundir import load_run
        return load_run
    if name in ("attack_model", "margins_model"):
        from .evaluate import api as evaluate
        return getattr(evaluate, name)
    if name == "load_outside_model":
        from .evaluate.outside import load_outside_model
        return load_outside_model
    if name == "UserError":
        from .errors import UserError
        return UserError
    raise AttributeError(f"module 'jrbench' has no attribute {name!r}")
