"""Evaluate trained runs: attacks and margins of a run directory -> tidy tables beside it.

``attack_run`` writes ``RUN_DIR/attacks.csv`` (one row per attack, norm, strength and loss;
re-running replaces those rows) and ``RUN_DIR/attack_examples.csv``, the per-example record
(one row per example and attacks.csv row, columns :data:`jrbench.evaluate.attacks.EXAMPLE_COLUMNS`;
re-running replaces the rows of the same keys, every example). The gradient attacks run on
``n_examples`` fixed test examples (default: the data set's ``Defaults.attack_examples``),
white noise on the whole test set (or ``AttackConfig.noise_examples`` of them); both record
each example by its index in the test split, so the rows line up. ``margins_run`` writes ``RUN_DIR/margins.csv`` and
``RUN_DIR/jacobian.csv`` (one row per example). Units are pixel space in [0, 1].
Every table is computed in full before it is written, atomically: a bad input or an
interrupted run leaves the previous table as it was.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from torch import nn

from ..training import rundir
from ..config import RunConfig
from ..data.datasets import Data, load_data, to_pixels
from ..device import resolve_device
from ..errors import UserError
from ..runtables.examples import default_examples, fixed_examples
from ..runtables.provenance import load_test_data, model_provenance, run_provenance
from ..runtables.tables import upsert_rows
# (the run-table helpers above live in jrbench.runtables; scripts that imported them from here still can)

ATTACKS_CSV, MARGINS_CSV, JACOBIAN_CSV = "attacks.csv", "margins.csv", "jacobian.csv"
ATTACK_EXAMPLES_CSV = "attack_examples.csv"
ATTACK_KEYS = ["attack", "norm", "strength", "loss"]
Progress = Callable[[int, int, str], None]  # on_progress(done, total, label): units of work finished so far


# ----------------------------------------------------------------------------- attacks
@dataclass
class AttackResult:
    table: pd.DataFrame      # the rows of this call
    warnings: list[str]      # from the rows of attacks.csv on the same examples, this call's included
    path: Path | None  # attacks.csv, None when nothing was written
    examples: pd.DataFrame | None = None  # this call's per-example record
    examples_path: Path | None = None
    n_examples: int | None = None      # the gradient attacks' test examples
    noise_examples: int | None = None  # white noise's test examples (None: no noise)


def check_attack(run_dir: str | Path, config) -> RunConfig:
    """Check, before any work, that ``config`` can attack the run in ``run_dir``: a finished
    run directory, valid settings and, for AutoAttack, a number of target classes that fits
    the data set's classes. Returns the run's configuration; raises :class:`UserError`."""
    from .autoattack import resolve_targets
    from ..data.datasets import dataset_info

    run_dir = rundir.check_run_dir(Path(run_dir))
    run_config = rundir.load_config(run_dir)
    if config.autoattack:
        try:
            resolve_targets(dataset_info(run_config.data).num_classes,
                            config.aa_targets)
        except UserError as e:
            raise UserError(f"{run_dir}: {e}") from e
    return run_config


def comparable_rows(table: pd.DataFrame, example_seed: int, n_examples: int,
                    noise_examples: int | None = None) -> pd.DataFrame:
    """The rows of a run's attacks.csv or attack_examples.csv made on the same examples: the
    gradient attacks' on ``n_examples``, white noise's on ``noise_examples`` (default the same),
    both chosen by ``example_seed``."""
    keep = pd.Series(True, index=table.index)
    if "example_seed" in table.columns:
        keep &= table["example_seed"] == example_seed
    if "n_examples" in table.columns:
        n_noise = n_examples if noise_examples is None else noise_examples
        wanted = pd.Series(n_examples, index=table.index).where(table["attack"] != "noise", n_noise)
        keep &= table["n_examples"] == wanted
    return table[keep]


def example_counts(data: Data, config, n_examples: int | None) -> tuple[int, int]:
    """(the gradient attacks' examples, white noise's examples) of ``data``'s test split:
    ``n_examples`` (None: the data set's ``Defaults.attack_examples``, at most the whole split)
    and ``config.noise_examples`` (None: the whole split). Raises :class:`UserError` for a noise
    count above the split's size (counts below 1: ``AttackConfig.validate``, :func:`fixed_examples`)."""
    total = len(data.test)
    n_examples = default_examples(data, n_examples)
    noise = total if config.noise_examples is None else config.noise_examples
    if noise > total:
        raise UserError(f"noise_examples (--noise-examples) {noise} is more than the {total} examples "
                        "of the test set; leave it unset for the whole test set.")
    return n_examples, noise


def attack_run(run_dir: str | Path, config, *, n_examples: int | None = None, example_seed: int = 0,
               device: str = "auto", data_dir: str | None = None,
               on_progress: Progress | None = None) -> AttackResult:
    """Attack the model of ``run_dir`` on ``n_examples`` fixed test examples (None: the data
    set's ``Defaults.attack_examples``, 1000) and, white noise, on ``config.noise_examples``
    (None: the whole test set); update attacks.csv and attack_examples.csv (the per-example
    record, written first).
    ``on_progress(done, total, label)`` is called after each attack and strength.

    ``config`` is an :class:`jrbench.evaluate.attack_config.AttackConfig`; eps grids left None get the
    data set's defaults. The warnings (:func:`jrbench.evaluate.attack_checks.sanity_warnings`) look at every
    row of the run made on the same examples, earlier calls' included, so AutoAttack run
    after PGD is compared with it.
    """
    check_attack(run_dir, config)
    run_dir = Path(run_dir)
    dev = resolve_device(device)
    model, run_config = rundir.load_run(run_dir, dev)
    data = load_test_data(run_config, data_dir)
    return _attack(model, data, config, run_provenance(run_config, run_dir), run_dir,
                   n_examples=n_examples, example_seed=example_seed, device=dev, on_progress=on_progress)


def _attack(model: nn.Module, data: Data, config, prov: dict, out: Path | None, *,
            n_examples: int | None, example_seed: int, device: torch.device,
            on_progress: Progress | None = None) -> AttackResult:
    """The attacks of attack_run and attack_model: ``model`` (pixels in, logits out, on ``device``)
    on the fixed examples of ``data`` (:func:`example_counts`: the gradient attacks' and white
    noise's, both from :func:`fixed_examples` with ``example_seed``, so the noise set holds the
    attacks' whenever it is at least as large); rows get ``prov``; tables upserted into ``out``
    (None: kept in memory, the warnings then read this call's rows only)."""
    from .attack_checks import sanity_warnings
    from .attacks import run_attacks
    from .corruptions import corruption_units, run_corruptions

    dataset = data.info  # its defaults; a folder or npz data set's follow its images
    # the data set's default grids (noise sigmas, eps), only where a used grid is left None (a
    # data set without defaults can still be attacked with explicit radii)
    filled = config.filled(dataset)
    n_examples, n_noise = example_counts(data, config, n_examples)
    images, labels, index = fixed_examples(data, n_examples, example_seed)
    x, y = to_pixels(images, device), labels.to(device)
    noise_set = None
    if config.noise and n_noise != n_examples:
        noise_images, noise_labels, noise_index = fixed_examples(data, n_noise, example_seed)
        noise_set = (to_pixels(noise_images, device), noise_labels.to(device), noise_index)
    n_corrupt, units = corruption_units(filled), {"attacks": 0, "done": 0}

    def attack_progress(done: int, total: int, label: str) -> None:  # the corruptions come after the attacks
        units.update(attacks=total, done=done)
        if on_progress is not None:
            on_progress(done, total + n_corrupt, label)

    def corruption_step(label: str) -> None:
        units["done"] += 1
        if on_progress is not None:
            on_progress(units["done"], units["attacks"] + n_corrupt, label)

    result = run_attacks(model, x, y, filled, num_classes=data.info.num_classes,
                         example_index=index, example_seed=example_seed, on_progress=attack_progress,
                         noise_set=noise_set)
    corrupted = run_corruptions(model, x, y, filled, example_index=index, example_seed=example_seed,
                                on_step=corruption_step)
    parts = [r for r in (result, corrupted) if len(r.table)] or [result]
    table = pd.concat([r.table for r in parts], ignore_index=True)
    examples = pd.concat([r.examples for r in parts], ignore_index=True)
    for key, value in prov.items():
        table[key] = value
    table["example_seed"] = example_seed
    if out is None:
        all_examples, all_rows = examples, table
    else:
        all_examples = upsert_rows(out / ATTACK_EXAMPLES_CSV, examples, ATTACK_KEYS)
        all_rows = upsert_rows(out / ATTACKS_CSV, table, ATTACK_KEYS)
    same = comparable_rows(all_rows, example_seed, n_examples, n_noise)
    warnings = sanity_warnings(same, input_dim=int(x[0].numel()), dataset=dataset,
                               examples=comparable_rows(all_examples, example_seed, n_examples))
    return AttackResult(table, warnings, out / ATTACKS_CSV if out else None, examples,
                        out / ATTACK_EXAMPLES_CSV if out else None, n_examples,
                        n_noise if config.noise else None)


# ----------------------------------------------------------------------------- margins
@dataclass
class MarginsResult:
    margins: pd.DataFrame   # one row per example
    jacobian: pd.DataFrame  # one row per example, both spaces side by side
    n_requested: int
    notes: list[str] = field(default_factory=list)  # e.g. no z space for a pixel-input model


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


def check_margins_options(n_examples: int, n_directions: int, batch_size: int) -> None:
    """Raise :class:`UserError` naming each of --n-examples, --directions, --batch-size that its
    schema field refuses (:class:`~jrbench.evaluate.margins_config.MarginsConfig`, ``ExampleSet``)."""
    from ..schema import FieldError, check_value, field_of
    from ..runtables.examples import ExampleSet
    from .margins_config import MarginsConfig

    bad = []
    for cls, name, value in ((ExampleSet, "n_examples", n_examples), (MarginsConfig, "directions", n_directions),
                             (MarginsConfig, "batch_size", batch_size)):
        try:
            check_value(field_of(cls, name), value)
        except FieldError as e:
            bad.append(str(e).rstrip("."))
    if bad:
        raise UserError("; ".join(bad) + ".")


def margins_run(run_dir: str | Path, *, n_examples: int = 500, n_directions: int = 10, seed: int = 0,
                example_seed: int = 0, device: str = "auto", data_dir: str | None = None, batch_size: int = 500,
                on_progress: Progress | None = None) -> MarginsResult:
    """Margins and Jacobian spectra of the correctly classified ones among the ``n_examples`` test
    examples that ``example_seed`` picks (:func:`fixed_examples`, the examples :func:`attack_run`
    attacks with the same two numbers). ``on_progress(done, total, label)``: after each batch."""
    check_margins_options(n_examples, n_directions, batch_size)
    run_dir = rundir.check_run_dir(Path(run_dir))
    rundir.load_config(run_dir)  # a corrupt config.json is refused here as by attack and report
    dev = resolve_device(device)
    model, run_config = rundir.load_run(run_dir, dev)
    data = load_test_data(run_config, data_dir)
    return _margins(model, data, run_provenance(run_config, run_dir), run_dir, n_examples=n_examples,
                    n_directions=n_directions, seed=seed, example_seed=example_seed, device=dev,
                    batch_size=batch_size, on_progress=on_progress)


def _margins(model: nn.Module, data: Data, prov: dict, out: Path | None, *, n_examples: int,
             n_directions: int, seed: int, example_seed: int, device: torch.device, batch_size: int,
             std=None, z_space: bool = True, on_progress: Progress | None = None) -> MarginsResult:
    """The margins and spectra of margins_run and margins_model (autograd paths, any module).
    ``z_space`` False: the Jacobian columns of the normalized input (``_z``) are NaN."""
    from .margins import measure_margins, predict
    from .spectra import jacobian_table

    images, labels, picked = fixed_examples(data, n_examples, example_seed)
    x_all, y_all = to_pixels(images, device), labels.to(device)
    correct = (predict(model, x_all, batch_size) == y_all).cpu()
    index = picked[correct]
    x, y = x_all[correct.to(device)], y_all[correct.to(device)]
    total = [0]

    def margins_progress(done: int, n: int, label: str) -> None:  # one more unit: the spectra
        total[0] = n + 1
        if on_progress is not None:
            on_progress(done, n + 1, label)

    margins = measure_margins(model, x, y, n_directions=n_directions, seed=seed, index=index,
                              batch_size=batch_size, on_progress=margins_progress)
    jac = wide_jacobian_table(jacobian_table(model, x, y, std=std, batch_size=min(batch_size, 256)))
    if on_progress is not None:
        on_progress(total[0], total[0], "Jacobian spectra")
    jac["index"] = index.numpy()
    notes = []
    if not z_space:
        jac[[c for c in jac.columns if c.endswith("_z")]] = float("nan")
        notes.append("the model takes pixels (no input normalization given): the Jacobian with respect to "
                     "the normalized input z is not defined; only the pixel-space J_x is reported")
    for table in (margins, jac):
        for key, value in prov.items():
            table[key] = value
    margins["n_directions"], margins["direction_seed"] = n_directions, seed
    margins["n_examples"], margins["example_seed"] = n_examples, example_seed
    if out is not None:
        rundir.atomic_write_csv(out / MARGINS_CSV, margins)
        rundir.atomic_write_csv(out / JACOBIAN_CSV, jac)
    return MarginsResult(margins, jac, n_examples, notes)


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


# ----------------------------------------------------------------------------- outside models
def prepare_model(model: nn.Module, dataset: str, device: str, data_dir: str | None, name: str | None,
                   out: str | Path | None, source: dict | None
                   ) -> tuple[nn.Module, Data, torch.device, dict, Path | None]:
    """Move ``model`` to the device, check it on one small batch of ``dataset``, then (``out``)
    write the result folder's model.json (``source``, else the module's class) and env.json."""
    from ..config import DataConfig
    from .outside import check_classifier, python_provenance, write_model_dir

    dev = resolve_device(device)
    model = model.to(dev)
    data = load_data(DataConfig(dataset, str(data_dir) if data_dir else None))
    out = Path(out) if out is not None else None
    name = name or getattr(model, "name", None) or (out.name if out else type(model).__name__)
    check_classifier(model, to_pixels(data.test.images[:8], dev), data.info.num_classes, name, dataset)
    prov = model_provenance(out.name if out else name, dataset)
    prov["model"] = name
    if out is not None:
        write_model_dir(out, source or python_provenance(model, name, dataset), dev)
    return model, data, dev, prov, out


def attack_model(model: nn.Module, dataset: str, config, *, n_examples: int | None = None, example_seed: int = 0,
                 device: str = "auto", data_dir: str | None = None, out: str | Path | None = None,
                 name: str | None = None, source: dict | None = None,
                 on_progress: Progress | None = None) -> AttackResult:
    """Attack any image classifier (pixels (N, C, H, W) in [0, 1] in, logits (N, K) out) on the
    fixed test examples of ``dataset`` (``n_examples`` None: the data set's default; white
    noise on ``config.noise_examples``, None: the whole test set), as :func:`attack_run` does a run.

    ``out``: a result folder to upsert attacks.csv and attack_examples.csv into (None: nothing is
    written; ``source``: its model.json, e.g. :attr:`jrbench.evaluate.outside.OutsideModel.provenance`, else the
    module's class). The model is first checked on one small batch (finite logits of shape (N, K)).
    A model that expects normalized input must include its normalization (see
    :func:`jrbench.evaluate.outside.load_outside_model`), so that radii are in pixel units.
    """
    from .autoattack import resolve_targets
    from ..config import DataConfig
    from ..data.datasets import dataset_info

    if config.autoattack:
        resolve_targets(dataset_info(DataConfig(dataset, str(data_dir) if data_dir else None)).num_classes,
                        config.aa_targets)
    model, data, dev, prov, out = prepare_model(model, dataset, device, data_dir, name, out, source)
    if out is not None:  # a trained run's metrics.csv has its test accuracy; an outside model's gets it here
        rundir.atomic_write_csv(out / rundir.METRICS, clean_accuracy(model, data, dev, config.batch_size))
    return _attack(model, data, config, prov, out, n_examples=n_examples, example_seed=example_seed,
                   device=dev, on_progress=on_progress)


def clean_accuracy(model: nn.Module, data: Data, device: torch.device, batch_size: int = 500) -> pd.DataFrame:
    """One row: ``test_acc`` (fraction of the whole test set of ``data`` the model classifies
    correctly, pixels in [0, 1] in) and ``test_examples`` (how many)."""
    from .attack_common import correct_mask

    n, correct = len(data.test), 0
    for start in range(0, n, batch_size):
        x = to_pixels(data.test.images[start:start + batch_size], device)
        correct += int(correct_mask(model, x, data.test.labels[start:start + batch_size].to(device),
                                    batch_size).sum())
    return pd.DataFrame({"test_acc": [correct / n if n else float("nan")], "test_examples": [n]})


def margins_model(model: nn.Module, dataset: str, *, n_examples: int = 500, n_directions: int = 10,
                  seed: int = 0, example_seed: int = 0, device: str = "auto", data_dir: str | None = None,
                  out: str | Path | None = None, name: str | None = None, batch_size: int = 500,
                  input_std=None, source: dict | None = None,
                  on_progress: Progress | None = None) -> MarginsResult:
    """Margins and Jacobian spectra of any image classifier (pixels in, logits out), as
    :func:`margins_run` computes them for a run; ``out``: a folder for margins.csv and jacobian.csv.

    The Jacobian with respect to the normalized input z (columns ``_z``) needs the normalization:
    a model with a ``normalize`` layer (:class:`jrbench.models.architectures.Classifier`) or ``input_std`` (per
    channel). Without either, the ``_z`` columns are NaN and ``notes`` says so.
    """
    check_margins_options(n_examples, n_directions, batch_size)
    model, data, dev, prov, out = prepare_model(model, dataset, device, data_dir, name, out, source)
    z_space = hasattr(model, "normalize") or input_std is not None
    std = None if input_std is None else torch.tensor(list(input_std), device=dev).view(1, -1, 1, 1)
    return _margins(model, data, prov, out, n_examples=n_examples, n_directions=n_directions, seed=seed,
                    example_seed=example_seed, device=dev, batch_size=batch_size, std=std, z_space=z_space,
                    on_progress=on_progress)
