"""Evaluate trained runs: attacks and margins of a run directory -> tidy tables beside it.

``attack_run`` writes ``RUN_DIR/attacks.csv`` (one row per attack, norm, strength and loss;
re-running replaces those rows) and ``RUN_DIR/attack_examples.csv``, the per-example record
(one row per example and attacks.csv row, columns :data:`jrbench.attacks.EXAMPLE_COLUMNS`;
re-running replaces the rows of the same keys, every example). ``margins_run`` writes ``RUN_DIR/margins.csv`` and
``RUN_DIR/jacobian.csv`` (one row per example). Units are pixel space in [0, 1].
Every table is computed in full before it is written, atomically: a bad input or an
interrupted run leaves the previous table as it was.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from . import rundir
from .config import RunConfig
from .data import Data, load_data, to_pixels
from .errors import UserError

ATTACKS_CSV, MARGINS_CSV, JACOBIAN_CSV = "attacks.csv", "margins.csv", "jacobian.csv"
ATTACK_EXAMPLES_CSV = "attack_examples.csv"
ATTACK_KEYS = ["attack", "norm", "strength", "loss"]


def provenance(config: RunConfig, run_dir: Path) -> dict:
    """Columns that say which run a row belongs to."""
    return {
        "run_id": Path(run_dir).name, "dataset": config.data.dataset, "model": config.model.name,
        "regularizers": "+".join(config.reg.names),
        "lambda_jr": config.reg.lambda_jr if "jacobian" in config.reg.names else 0.0,
        "n_proj": config.reg.n_proj, "train_seed": config.train.seed,
    }


def load_test_data(config: RunConfig, data_dir: str | None = None) -> Data:
    if data_dir is not None:
        config.data.data_dir = str(data_dir)
    return load_data(config.data)


def fixed_examples(data: Data, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` test examples chosen by ``seed``, the same for every run on the same data.

    Returns (images uint8 (n, C, H, W), labels (n,), positions in the test split (n,)).
    """
    total = len(data.test)
    if n < 1:
        raise UserError(f"--n-examples must be at least 1, got {n}.")
    if n > total:
        raise UserError(f"--n-examples {n} is more than the {total} examples of the test set.")
    index = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return data.test.images[index], data.test.labels[index], index


def upsert_rows(path: Path, new: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Replace the rows of ``path`` that share ``keys`` with ``new``'s; write atomically."""
    if path.is_file():
        old = rundir.read_csv(path)
        if not set(keys) <= set(old.columns):
            raise UserError(f"{path} lacks the columns {keys}; move it away and run again.")
        merged = old.merge(new[keys].drop_duplicates(), on=keys, how="left", indicator=True)
        old = old[(merged["_merge"] == "left_only").to_numpy()]
        table = pd.concat([old, new], ignore_index=True) if len(old) else new
    else:
        table = new
    table = table.sort_values(keys, kind="stable").reset_index(drop=True)
    rundir.atomic_write_csv(path, table)
    return table


def resolve_device(name: str) -> torch.device:
    from .training import resolve_device as _resolve

    return _resolve(name)


# ----------------------------------------------------------------------------- attacks
@dataclass
class AttackResult:
    table: pd.DataFrame      # the rows of this call
    warnings: list[str]      # from the rows of attacks.csv on the same examples, this call's included
    path: Path
    examples: pd.DataFrame | None = None  # this call's per-example record
    examples_path: Path | None = None


def check_attack(run_dir: str | Path, config) -> RunConfig:
    """Check, before any work, that ``config`` can attack the run in ``run_dir``: a finished
    run directory, valid settings and, for AutoAttack, a number of target classes that fits
    the data set's classes. Returns the run's configuration; raises :class:`UserError`."""
    from .autoattack import resolve_targets
    from .data import DATASETS

    config.validate()
    run_dir = rundir.check_run_dir(Path(run_dir))
    run_config = rundir.load_config(run_dir)
    if config.autoattack:
        try:
            resolve_targets(DATASETS.get(run_config.data.dataset).info.num_classes,
                            config.aa_targets)
        except UserError as e:
            raise UserError(f"{run_dir}: {e}") from e
    return run_config


def comparable_rows(table: pd.DataFrame, example_seed: int, n_examples: int) -> pd.DataFrame:
    """The rows of a run's attacks.csv or attack_examples.csv made on the same examples."""
    keep = pd.Series(True, index=table.index)
    if "example_seed" in table.columns:
        keep &= table["example_seed"] == example_seed
    if "n_examples" in table.columns:
        keep &= table["n_examples"] == n_examples
    return table[keep]


def attack_run(run_dir: str | Path, config, *, n_examples: int = 1000, example_seed: int = 0,
               device: str = "auto", data_dir: str | None = None) -> AttackResult:
    """Attack the model of ``run_dir`` on ``n_examples`` fixed test examples; update
    attacks.csv and attack_examples.csv (the per-example record, written first).

    ``config`` is an :class:`jrbench.attacks.AttackConfig`; eps grids left None get the
    data set's defaults. The warnings (:func:`jrbench.attacks.sanity_warnings`) look at every
    row of the run made on the same examples, earlier calls' included, so AutoAttack run
    after PGD is compared with it.
    """
    from .attacks import default_eps, run_attacks, sanity_warnings

    check_attack(run_dir, config)
    run_dir = Path(run_dir)
    dev = resolve_device(device)
    model, run_config = rundir.load_run(run_dir, dev)
    dataset = run_config.data.dataset
    # the data set's default grids, only where a used grid is left None (a data set without
    # defaults can still be attacked with explicit radii)
    filled = dataclasses.replace(config, **{
        f"eps_{norm}": default_eps(dataset, norm) for norm in config.eps_norms()
        if getattr(config, f"eps_{norm}") is None})
    data = load_test_data(run_config, data_dir)
    images, labels, index = fixed_examples(data, n_examples, example_seed)
    x, y = to_pixels(images, dev), labels.to(dev)
    result = run_attacks(model, x, y, filled, num_classes=data.info.num_classes,
                         example_index=index, example_seed=example_seed)
    table, examples = result.table, result.examples
    for key, value in provenance(run_config, run_dir).items():
        table[key] = value
    table["example_seed"] = example_seed
    all_examples = upsert_rows(run_dir / ATTACK_EXAMPLES_CSV, examples, ATTACK_KEYS)
    all_rows = upsert_rows(run_dir / ATTACKS_CSV, table, ATTACK_KEYS)
    same = comparable_rows(all_rows, example_seed, n_examples)
    warnings = sanity_warnings(same, input_dim=int(x[0].numel()), dataset=dataset,
                               examples=comparable_rows(all_examples, example_seed, n_examples))
    return AttackResult(table, warnings, run_dir / ATTACKS_CSV, examples,
                        run_dir / ATTACK_EXAMPLES_CSV)


# ----------------------------------------------------------------------------- margins
@dataclass
class MarginsResult:
    margins: pd.DataFrame   # one row per example
    jacobian: pd.DataFrame  # one row per example, both spaces side by side
    n_requested: int


def wide_jacobian_table(long: pd.DataFrame) -> pd.DataFrame:
    """spectra.jacobian_table's two rows per example (wrt) -> one row, columns suffixed _z / _pixel."""
    shared = ["index", "label", "pred", "correct", "logit_gap", "radius_first_order_local"]
    parts = []
    for wrt, suffix in (("normalized", "_z"), ("pixel", "_pixel")):
        part = long[long["wrt"] == wrt].drop(columns=["wrt"]).set_index("index")
        rest = [c for c in part.columns if c not in shared]
        parts.append(part[rest].add_suffix(suffix))
    first = long[long["wrt"] == "pixel"].set_index("index")[[c for c in shared if c != "index"]]
    return pd.concat([first, *parts], axis=1).reset_index()


def margins_run(run_dir: str | Path, *, n_examples: int = 500, n_directions: int = 10, seed: int = 0,
                device: str = "auto", data_dir: str | None = None, batch_size: int = 500) -> MarginsResult:
    """Margins and Jacobian spectra of the first ``n_examples`` correctly classified test examples."""
    from .margins import first_correct, measure_margins
    from .spectra import jacobian_table

    if n_examples < 1 or n_directions < 1 or batch_size < 1:
        raise UserError("--n-examples, --directions and --batch-size must be at least 1.")
    run_dir = rundir.check_run_dir(Path(run_dir))
    dev = resolve_device(device)
    model, run_config = rundir.load_run(run_dir, dev)
    data = load_test_data(run_config, data_dir)
    if n_examples > len(data.test):
        raise UserError(f"--n-examples {n_examples} is more than the {len(data.test)} examples of the test set.")
    x_all, y_all = to_pixels(data.test.images, dev), data.test.labels.to(dev)
    index = first_correct(model, x_all, y_all, n_examples).to(dev)
    x, y = x_all[index], y_all[index]
    margins = measure_margins(model, x, y, n_directions=n_directions, seed=seed, index=index.cpu(),
                              batch_size=batch_size)
    jac = wide_jacobian_table(jacobian_table(model, x, y, batch_size=min(batch_size, 256)))
    jac["index"] = index.cpu().numpy()
    prov = provenance(run_config, run_dir)
    for table in (margins, jac):
        for key, value in prov.items():
            table[key] = value
    margins["n_directions"], margins["direction_seed"] = n_directions, seed
    rundir.atomic_write_csv(run_dir / MARGINS_CSV, margins)
    rundir.atomic_write_csv(run_dir / JACOBIAN_CSV, jac)
    return MarginsResult(margins, jac, n_examples)


def margins_summary(result: MarginsResult) -> dict:
    """Medians and rates for the console."""
    m, j = result.margins, result.jacobian
    return {
        "examples": len(m),
        "median random-direction margin (min over directions)": float(m["margin_random_min"].median()),
        "median random-direction margin (median over directions)": float(m["margin_random_median"].median()),
        "median adversarial margin (DeepFool, L2)": float(m["margin_adv_l2"].median()),
        "DeepFool success": float(m["adv_success"].mean()),
        "DeepFool success after clipping to [0,1]": float(m["adv_success_clipped"].mean()),
        "median first-order margin": float(m["margin_first_order"].median()),
        "mean ||J_z||_F (normalized input)": float(j["frobenius_z"].mean()),
        "mean ||J_x||_F (pixels)": float(j["frobenius_pixel"].mean()),
        "mean spectral norm ||J_x||_2 (pixels)": float(j["spectral_pixel"].mean()),
        "mean stable rank": float(j["stable_rank_pixel"].mean()),
        "median first-order local radius gap/(sqrt2 ||J_x||_2)": float(j["radius_first_order_local"].median()),
    }
