"""Which run or model a row belongs to, and the test data a run is measured on."""
from __future__ import annotations

from pathlib import Path

from ..config import RunConfig
from ..data.datasets import Data, load_data


def run_provenance(config: RunConfig, run_dir: Path) -> dict:
    """Columns that say which run a row belongs to."""
    return {
        "run_id": Path(run_dir).name, "dataset": config.data.dataset, "model": config.model.name,
        "regularizers": "+".join(config.reg.names),
        "lambda_jr": config.reg.lambda_jr if "jacobian" in config.reg.names else 0.0,
        "n_proj": config.reg.n_proj, "train_seed": config.train.seed,
    }


def model_provenance(name: str, dataset: str) -> dict:
    """The provenance columns of an outside model's rows: no training, so no regularizer, weight
    or seed (NaN); ``regularizers`` reads 'outside'."""
    nan = float("nan")
    return {"run_id": name, "dataset": dataset, "model": name, "regularizers": "outside",
            "lambda_jr": nan, "n_proj": nan, "train_seed": nan}


def load_test_data(config: RunConfig, data_dir: str | None = None) -> Data:
    """The data of the run ``config`` (``data_dir``: another folder than the one it was trained with)."""
    if data_dir is not None:
        config.data.data_dir = str(data_dir)
    return load_data(config.data)
