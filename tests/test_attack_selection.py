"""One attack-selection rule for `jrbench attack` and a study's [attack] table (naming selects),
the per-data-set noise grid, and each config validated once, where it is built."""
import dataclasses
import itertools
import tomllib
from pathlib import Path

import click.testing
import pandas as pd
import pytest
import torch
import typer
from typer.testing import CliRunner

from jrbench.cli import app
from jrbench.config import DataConfig, ModelConfig, RegConfig, RunConfig, TrainConfig
from jrbench.data.datasets import DATASETS, DIGITS, MNIST_LIKE, NOISE_SIGMAS, DatasetInfo, DatasetSpec, Split
from jrbench.errors import UserError
from jrbench.evaluate import api
from jrbench.evaluate.attack_config import (ATTACKS, AttackConfig, build_attack_config, default_eps,
                                            default_sigmas, select_attacks)
from jrbench.study.spec import attack_config, load_spec, parse_spec

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
COMMAND = typer.main.get_command(app)  # built once: each invoke of `app` would build it again
ALL = set(ATTACKS)
THREE = {"noise", "pgd", "fgsm"}


def chosen(selection) -> set[str]:
    """The attacks on in a select_attacks dict or an AttackConfig."""
    if isinstance(selection, dict):
        return {a for a, on in selection.items() if on}
    return {a for a in (*ATTACKS, "corruptions") if getattr(selection, a)}


# ----------------------------------------------------------------------------- the rule
@pytest.mark.parametrize("words, grid, expected", [
    ({}, False, THREE),                                          # nothing said: the default three
    ({"autoattack": True}, False, {"autoattack"}),               # --autoattack alone: only AutoAttack
    ({}, True, {"autoattack"}),                                  # a grid names AutoAttack
    ({"pgd": True}, True, {"pgd", "autoattack"}),
    ({"noise": False}, False, {"pgd", "fgsm"}),                  # --no-noise alone: the three less noise
    ({"noise": False, "fgsm": False}, False, {"pgd"}),
    ({"autoattack": False}, False, THREE),
    ({"noise": True, "pgd": False}, False, {"noise"}),           # a true name: exactly the true ones
    ({"noise": False, "fgsm": True, "autoattack": True}, False, {"fgsm", "autoattack"}),
    ({"noise": True, "pgd": True, "fgsm": True, "autoattack": True}, False, ALL),
    ({"noise": False, "pgd": False, "fgsm": False}, False, set()),
])
def test_naming_selects(words, grid, expected):
    assert chosen(select_attacks(**words, aa_grids_given=grid)) == expected


def test_every_combination_follows_the_rule():
    """The rule over all 3^4 x 2 words, stated a second way: with a true name, the true names;
    else the three less the false ones."""
    for values in itertools.product((None, True, False), repeat=4):
        for grid in (False, True):
            words = dict(zip(ATTACKS, values))
            if grid and words["autoattack"] is False:
                with pytest.raises(UserError, match="AutoAttack grid"):
                    select_attacks(**words, aa_grids_given=grid)
                continue
            named = {a for a, v in words.items() if v is True} | ({"autoattack"} if grid else set())
            expected = named or {a for a in THREE if words[a] is not False}
            assert chosen(select_attacks(**words, aa_grids_given=grid)) == expected, (words, grid)


def test_a_word_that_is_not_true_or_false_is_refused():
    with pytest.raises(UserError, match=r"--noise must be true or false, got 'yes'"):
        select_attacks(noise="yes")
    with pytest.raises(UserError, match=r"line 3: field 'pgd' must be true or false, got 1"):
        parse_spec('name = "t"\n[attack]\npgd = 1\n', Path("t.toml"))


# ----------------------------------------------------------------------------- CLI == spec
def _cli_config(monkeypatch, tmp_path, *args):
    """The AttackConfig `jrbench attack` builds from ``args`` (caught where the library first
    sees it), or the error output when it refuses them."""
    seen = []

    def caught(run_dir, config):
        seen.append(config)
        raise UserError("caught")

    monkeypatch.setattr(api, "check_attack", caught)
    result = click.testing.CliRunner().invoke(COMMAND, ["attack", str(tmp_path), *args])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    return (seen[0], None) if seen else (None, result.output)


def _flags(words: dict, grid: bool) -> list[str]:
    flags = [f"--{'' if v else 'no-'}{a}" for a, v in words.items() if v is not None]
    return flags + (["--autoattack-eps-linf", "0.1"] if grid else [])


def _table(words: dict, grid: bool) -> dict:
    return {**{a: v for a, v in words.items() if v is not None}, **({"autoattack_eps_linf": [0.1]} if grid else {})}


def test_the_cli_and_a_spec_give_the_same_config_for_the_same_words(monkeypatch, tmp_path):
    for values in itertools.product((None, True, False), repeat=4):
        for grid in (False, True):
            words = dict(zip(ATTACKS, values))
            cli, error = _cli_config(monkeypatch, tmp_path, *_flags(words, grid))
            try:
                spec = attack_config(_table(words, grid))
            except UserError as e:
                assert cli is None and str(e) in error.replace("\n", " "), (words, grid, error)
                continue
            assert cli == spec, (words, grid)  # every field, the selection and the grids included
            assert chosen(cli) == chosen(select_attacks(**words, aa_grids_given=grid))


@pytest.mark.parametrize("args, expected", [
    (["--autoattack"], {"autoattack"}),
    (["--no-noise"], {"pgd", "fgsm"}),
    (["--autoattack-eps-linf", "0.1"], {"autoattack"}),
    (["--pgd", "--autoattack-eps-l2", "0.5"], {"pgd", "autoattack"}),
    (["--noise", "--fgsm"], {"noise", "fgsm"}),
    ([], THREE),
])
def test_cli_flags(monkeypatch, tmp_path, args, expected):
    config, _ = _cli_config(monkeypatch, tmp_path, *args)
    assert chosen(config) == expected
    assert config.sigmas is None  # no --sigma: the run's data set's grid, filled per run


def test_cli_refuses_contradictions_with_exit_2(monkeypatch, tmp_path):
    _, out = _cli_config(monkeypatch, tmp_path, "--no-autoattack", "--autoattack-eps-linf", "0.1")
    assert "--autoattack is off but an AutoAttack grid" in out
    _, out = _cli_config(monkeypatch, tmp_path, "--no-noise", "--no-pgd", "--no-fgsm")
    assert "no attack selected" in out


# ----------------------------------------------------------------------------- committed specs
# What each committed spec ran before the rule was shared (noise, PGD and FGSM on unless false;
# autoattack = true or an AutoAttack grid added AutoAttack): the same under the shared rule.
COMMITTED = {
    "benchmarks/bracket.toml": {"pgd", "fgsm", "autoattack"},  # noise = false
    "benchmarks/certified-training.toml": {"pgd", "fgsm"},  # noise = false, no AutoAttack
    "benchmarks/certified-training-fashion.toml": {"pgd", "fgsm"},  # noise = false, no AutoAttack
    "benchmarks/certified.toml": ALL,  # noise and AutoAttack-L2 named since (the study ran them by command)
    "benchmarks/corruptions.toml": {"corruptions"},
    "benchmarks/corruptions-fashion.toml": {"corruptions"},
    "benchmarks/frontier.toml": THREE,
    "benchmarks/frontier-seeds-mnist.toml": THREE,
    "benchmarks/frontier-seeds.toml": THREE,
    "benchmarks/lambda-sweep.toml": ALL,
    "benchmarks/mnist-t10k-paper.toml": THREE,
    "benchmarks/mnist-t10k.toml": ALL,
    "benchmarks/paper-cifar10.toml": THREE,
    "benchmarks/paper-mnist.toml": THREE,
    "benchmarks/quick.toml": THREE,
    "jrbench/study/quick.toml": THREE,
}


def _committed_specs() -> list[str]:
    paths = sorted(REPO.glob("benchmarks/*.toml")) + [REPO / "jrbench/study/quick.toml"]
    return [str(p.relative_to(REPO)) for p in paths if "attack" in tomllib.loads(p.read_text())]


def test_every_committed_spec_with_attacks_is_listed():
    assert sorted(COMMITTED) == _committed_specs()


@pytest.mark.parametrize("path", sorted(COMMITTED))
@pytest.mark.slow
def test_committed_specs_run_the_attacks_they_ran(path):
    spec = load_spec(REPO / path)
    config = spec.attack
    assert chosen(config) == COMMITTED[path]
    table = tomllib.loads((REPO / path).read_text())["attack"]  # the raw table, read as before the schema
    old_sigmas = table.get("sigma", list(NOISE_SIGMAS))  # before: the table's, else the shared grid
    for cell in spec.cells:
        filled = config.filled(cell.data.dataset)
        if config.noise:
            assert filled.sigmas == pytest.approx(old_sigmas)
        for norm in filled.eps_norms():
            assert getattr(filled, f"eps_{norm}") == pytest.approx(
                table.get(f"eps_{norm}", default_eps(cell.data.dataset, norm)))


# ----------------------------------------------------------------------------- per-data-set noise grid
TINY_SIGMAS = (0.0, 0.35)


@pytest.fixture
def tiny_dataset(monkeypatch):
    """A registered data set 'tiny-digits' (28x28 grey, 10 classes) whose noise grid is not the others'."""
    g = torch.Generator().manual_seed(0)

    def split(n):
        labels = torch.arange(n) % 10
        images = (torch.rand(n, 1, 28, 28, generator=g) * 60).to(torch.uint8)
        for i, c in enumerate(labels.tolist()):
            r, col = divmod(c, 4)
            images[i, 0, r * 7:(r + 1) * 7, col * 7:(col + 1) * 7] = 220
        return Split(images, labels)

    train, test = split(120), split(30)
    info = DatasetInfo("tiny-digits", (1, 28, 28), 10, (0.2,), (0.3,), DIGITS,
                       dataclasses.replace(MNIST_LIKE, sigmas=TINY_SIGMAS))
    monkeypatch.setitem(DATASETS._entries, "tiny-digits", DatasetSpec(info, lambda data_dir: (train, test)))
    assert default_sigmas("tiny-digits") != default_sigmas("mnist")
    return "tiny-digits"


def _tiny_run(tmp_path, dataset) -> Path:
    from jrbench.training.loop import train

    run = tmp_path / "run"
    train(RunConfig(DataConfig(dataset), ModelConfig("mlp"), RegConfig(["none"]),
                    TrainConfig(epochs=1, batch_size=40, device="cpu", jacobian_eval_examples=8)), run)
    return run


def test_a_none_noise_grid_is_the_data_sets(tiny_dataset):
    assert build_attack_config().filled(tiny_dataset).sigmas == list(TINY_SIGMAS)
    assert build_attack_config(sigmas=[0.2]).filled(tiny_dataset).sigmas == [0.2]
    assert AttackConfig.for_dataset(tiny_dataset, sigmas=None).sigmas == list(TINY_SIGMAS)
    assert build_attack_config(noise=False).filled(tiny_dataset).sigmas is None  # not used, not filled
    assert build_attack_config(pgd=True).filled(tiny_dataset).eps_l2 == default_eps(tiny_dataset, "l2")


def test_cli_attack_uses_the_run_data_sets_noise_grid(tiny_dataset, tmp_path):
    run = _tiny_run(tmp_path, tiny_dataset)
    result = runner.invoke(app, ["attack", str(run), "--noise", "--draws", "1", "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(run / "attacks.csv")
    assert sorted(rows.loc[rows["attack"] == "noise", "strength"]) == pytest.approx(TINY_SIGMAS)
    assert set(rows["attack"]) == {"noise"}


def test_a_spec_without_sigma_wants_each_cells_data_set_grid(tiny_dataset, tmp_path):
    from jrbench.study.sweep import attack_done
    from jrbench.training import rundir

    run = tmp_path / "cell"
    run.mkdir()
    rundir.atomic_write_json(run / rundir.CONFIG, RunConfig(DataConfig(tiny_dataset)).to_dict())
    pd.DataFrame({"attack": ["noise"], "example": [0]}).to_csv(run / "attack_examples.csv", index=False)
    options = attack_config({"noise": True, "draws": 1})
    for grid, done in ((NOISE_SIGMAS, False), (TINY_SIGMAS, True)):
        pd.DataFrame({"attack": "noise", "norm": "gaussian", "strength": list(grid), "example_seed": 0}
                     ).to_csv(run / "attacks.csv", index=False)
        assert attack_done(run, options) is done


# ----------------------------------------------------------------------------- validated once
def _count(monkeypatch, owner, name):
    calls = []
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def test_an_attack_config_is_validated_once_where_it_is_built(monkeypatch, tmp_path):
    calls = _count(monkeypatch, AttackConfig, "validate")
    parse_spec('name = "t"\n[attack]\nsteps = 3\nautoattack_eps_linf = 0.1\n', Path("t.toml"))
    assert len(calls) == 1
    calls.clear()
    config, _ = _cli_config(monkeypatch, tmp_path, "--pgd", "--sigma", "0.1")
    assert chosen(config) == {"pgd"} and len(calls) == 1  # the CLI's config, before the library sees it


def test_a_run_config_is_validated_once_by_train(monkeypatch, tiny_dataset, tmp_path):
    import jrbench.training.loop as loop
    import jrbench.training.validation as validation

    calls = _count(monkeypatch, validation, "validate")
    monkeypatch.setattr(loop, "validate", validation.validate)  # the name train() calls
    result = runner.invoke(app, ["train", "--dataset", tiny_dataset, "--model", "mlp", "--epochs", "1",
                                 "--batch-size", "40", "--device", "cpu", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert len(calls) == 1
    calls.clear()
    bad = runner.invoke(app, ["train", "--epochs", "0", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and bad.output.strip() == "error: --epochs must be positive, got 0."  # no bar first
    assert len(calls) == 1 and not (tmp_path / "bad").exists()
