"""jrbench certify: certified accuracy (Lipschitz, 1-Lipschitz, IBP, CROWN, alpha-CROWN, complete, smoothing)
-> certify.csv."""
from __future__ import annotations

from rich.markup import escape

from ..certify.config import CertifyConfig
from ..runtables.examples import ExampleSet
from ..evaluate.outside_options import OutsideModelConfig
from .common import Bars, DataDirOpt, DeviceOpt, QuietOpt, RunDirsArg, app, console, for_each_source, friendly
from .options import with_options


def print_certify_table(result, title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for col in ("method", "norm", "strength", "sigma", "certified", "95% CI", "n", "seconds"):
        table.add_column(col, justify="right")
    for r in result.table.itertuples():
        table.add_row(r.method, r.norm, f"{r.strength:g}", f"{r.sigma:g}" if r.sigma > 0 else "",
                      f"{r.certified_acc:.4f}", f"[{r.ci_low:.3f}, {r.ci_high:.3f}]", str(r.n_examples),
                      f"{r.seconds:.2f}")
    console.print(table)
    bounds = result.table.get("lipschitz_bound")
    if bounds is not None and bounds.notna().any():
        for method, how in (("lipschitz", "product of layer norms"), ("one-lipschitz", "by construction")):
            bound = bounds[result.table["method"] == method].dropna()
            if len(bound):
                console.print(f"certified L2 Lipschitz bound of x -> logits (pixels), {how}: {bound.iloc[0]:.6g}",
                              highlight=False)
    if (result.table["method"] == "smoothing").any():
        console.print("smoothing certifies the smoothed classifier g (Cohen et al. 2019), not the model itself.",
                      highlight=False)
    if result.bounds is not None:
        counts = result.bounds.groupby(["method", "status"]).size()
        parts = [f"{method} {status} {n}" for (method, status), n in counts.items()
                 if status not in ("misclassified",)]
        console.print("per example and eps (certify_bounds.csv): " + ", ".join(parts), highlight=False)
        if "complete" in set(result.bounds["method"]):
            console.print("complete verification: 'unknown' means the time budget ran out, not a verdict.",
                          highlight=False)
    console.print(f"written: {result.path}, {result.examples_path}" if result.path else "nothing written")




@app.command("certify")
@friendly
@with_options(certify=CertifyConfig, examples=ExampleSet, outside=OutsideModelConfig)
def certify_command(
    run_dirs: RunDirsArg,
    certify: dict, examples: dict, outside: dict,
    device: DeviceOpt = "auto",
    data_dir: DataDirOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Certified accuracy, a lower bound beside every attack's upper bound: Lipschitz bound (the product
    of layer norms, or a 1-Lipschitz network's constant by construction), interval bound propagation,
    CROWN, alpha-CROWN, complete verification, randomized smoothing; write certify.csv and
    certify_examples.csv (and for the tight methods certify_bounds.csv) into the run (or model)
    folder. No certificate flag: --lipschitz and --ibp."""
    from ..certify.api import certify_model, certify_run, check_certify, unsupported
    from ..certify.config import METHOD_FLAGS
    from ..errors import UserError

    if not any(certify.get(name) for name in METHOD_FLAGS):
        certify.update(lipschitz=True, ibp=True)
    config, example_set = CertifyConfig(**certify), ExampleSet(**examples)

    def check(run_dir, model):
        if model is None:
            check_certify(run_dir, config)
        elif unsupported(model.model, config) is not None:
            raise UserError(unsupported(model.model, config))

    for run_dir, model in for_each_source(run_dirs, outside, check=check):
        data = str(data_dir) if data_dir else None
        with Bars(quiet) as bars:
            on_progress = bars.callback(f"{run_dir.name}: certify")
            if model is None:
                result = certify_run(run_dir, config, n_examples=example_set.n_examples,
                                     example_seed=example_set.example_seed, device=device, data_dir=data,
                                     on_progress=on_progress)
            else:
                result = certify_model(model.model, model.dataset, config, n_examples=example_set.n_examples,
                                       example_seed=example_set.example_seed, device=device, data_dir=data,
                                       out=run_dir, name=model.name, source=model.provenance,
                                       on_progress=on_progress)
        print_certify_table(result, f"{run_dir.name}: certified accuracy (a lower bound; pixel units)")
        for note in result.notes:
            console.print(f"[yellow]note:[/] {escape(str(note))}", highlight=False)
