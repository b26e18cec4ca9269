"""The one schema (jrbench.schema): command options and spec keys derived from the config classes,
errors that carry their field, and run ids that did not move."""
from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from jrbench.cli import app
from jrbench.config import RegConfig, RunConfig, TrainConfig
from jrbench.errors import UserError
from jrbench.evaluate.attack_config import AttackConfig
from jrbench.schema import COMMAND_ONLY, FieldError, check, field_of, fields, from_table, run_id_irrelevant
from jrbench.study import spec as spec_module
from jrbench.study.spec import parse_spec

ROOT = Path(__file__).resolve().parents[1]

# command -> the spec keys of its table (the [base]/[grid] keys for train)
TABLES = {"train": set(spec_module.FIELDS), "attack": spec_module.ATTACK_FIELDS,
          "margins": spec_module.MARGIN_FIELDS, "certify": spec_module.CERTIFY_FIELDS,
          "report": spec_module.REPORT_FIELDS}


def command_options(name: str) -> set[str]:
    """The option names (not arguments) of ``jrbench NAME``, as Typer built them."""

    command = typer.main.get_command(app).commands[name]
    return {p.name for p in command.params if p.param_type_name == "option"}


@pytest.mark.parametrize("command", sorted(TABLES))
def test_every_command_option_is_a_spec_key_of_its_table_and_the_reverse(command):
    options, keys = command_options(command), TABLES[command]
    only_flag = options - keys
    undeclared = only_flag - set(COMMAND_ONLY)
    assert not undeclared, f"jrbench {command} options that are no spec key and not declared: {undeclared}"
    assert keys <= options, f"[{command}] keys that are no option of jrbench {command}: {keys - options}"


def test_the_declared_exceptions_are_used_and_say_why():
    used = set().union(*(command_options(c) - TABLES[c] for c in TABLES))
    assert used == set(COMMAND_ONLY), set(COMMAND_ONLY) - used
    assert all(len(why) > 20 for why in COMMAND_ONLY.values())
    device = field_of(TrainConfig, "device")  # a field that is a flag but no spec key says why
    assert device.opt.cli and not device.opt.spec and device.opt.note


def test_a_fields_help_and_flag_reach_the_command_line():
    runner = CliRunner()
    out = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    for f in fields(RegConfig):
        assert f.flag in out
    assert field_of(RegConfig, "lambda_jr").opt.help in out
    aa = runner.invoke(app, ["attack", "--help"], env={"COLUMNS": "200"}).output
    assert "--noise / --no-noise" in aa and "--norm [linf|l2]" in aa.replace("<", "[").replace(">", "]") or "linf|l2" in aa


def test_field_errors_carry_the_field_and_name_the_flag():
    cfg = RunConfig()
    cfg.reg.lambda_jr = -1.0
    with pytest.raises(FieldError) as err:
        check(cfg.reg)
    assert err.value.key == "lambda_jr" and str(err.value).startswith("--lambda-jr must be zero or positive")
    assert err.value.for_spec().startswith("lambda_jr must be zero or positive")
    with pytest.raises(FieldError) as err:
        AttackConfig(norms=("l3",))
    assert err.value.key == "norm" and "Did you mean 'l2'" in str(err.value)
    with pytest.raises(FieldError, match="must be in \\[0, 1\\] \\(pixel units\\), got 2.0"):
        AttackConfig(eps_linf=[2.0])


def test_the_command_line_names_the_flag_and_exits_2():
    result = CliRunner().invoke(app, ["train", "--lambda-jr", "-1", "--epochs", "1"])
    assert result.exit_code == 2
    assert "--lambda-jr must be zero or positive, got -1.0" in result.output


def test_a_spec_names_the_line_and_key_of_the_bad_field(tmp_path):
    text = ('name = "s"\n[base]\ndataset = "synth-digits"\nepochs = 1\n[grid]\nseed = [0]\n'
            '[attack]\nsteps = 5\nsigma = 0.2\nnorm = "l3"\n')
    with pytest.raises(UserError, match=r"s.toml, line 10: field 'norm' must be one of linf, l2, got 'l3'"):
        parse_spec(text, tmp_path / "s.toml", tmp_path)
    cell = 'name = "s"\n[base]\ndataset = "synth-digits"\nreg = ["jacobian"]\njr_estimator = "jvp"\n[grid]\nn_proj = [-1]\n'
    with pytest.raises(UserError, match=r"line 7: field 'n_proj' gives an invalid cell|line 5: field 'jr_estimator'"):
        parse_spec(cell, tmp_path / "s.toml", tmp_path)


def test_from_table_sorts_keys_onto_classes_and_wraps_single_values():
    from jrbench.runtables.examples import ExampleSet

    parts = from_table([AttackConfig, ExampleSet], {"sigma": 0.3, "n_examples": 10, "steps": 7})
    assert parts == {"AttackConfig": {"sigmas": [0.3], "steps": 7}, "ExampleSet": {"n_examples": 10}}
    with pytest.raises(FieldError, match="Did you mean 'steps'"):
        from_table([AttackConfig], {"stepz": 3})


def test_run_id_relevance_comes_from_the_owners():
    reg = RegConfig(names=["l2"])
    dropped = run_id_irrelevant(reg, set(reg.names))
    assert "weight_decay" not in dropped and {"lambda_jr", "n_proj", "dropout", "noise_sigma"} <= dropped
    jac = RegConfig(names=["jacobian"], jr_every=2)
    assert "jr_every" not in run_id_irrelevant(jac, {"jacobian"})
    assert "jr_backend" in run_id_irrelevant(jac, {"jacobian"})  # its default: ids of earlier runs stay


@pytest.mark.parametrize("study", ["bracket", "certified", "mnist-t10k", "lambda-sweep"])
def test_committed_studies_keep_their_run_ids(study):
    """Every cell of a committed study still has the run id its report lists (runs.csv)."""
    import pandas as pd

    runs = ROOT / "results" / study / "report" / "runs.csv"
    toml = {"bracket": "bracket.toml", "certified": "certified.toml", "mnist-t10k": "mnist-t10k.toml",
            "lambda-sweep": "lambda-sweep.toml"}[study]
    cells = spec_module.load_spec(ROOT / "benchmarks" / toml).cells
    listed = set(pd.read_csv(runs)["run_id"])
    assert {c.run_id() for c in cells} <= listed


def test_the_command_line_builds_its_options_without_torch():
    """--help stays instant: deriving the options runs no default factory that loads torch."""
    import subprocess
    import sys

    code = "import sys, jrbench.cli; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_the_report_choices_are_the_statistics_corrections():
    from jrbench.report.options import CORRECTIONS
    from jrbench.stats import CORRECTIONS as STATS

    assert CORRECTIONS == STATS
