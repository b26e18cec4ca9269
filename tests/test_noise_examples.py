"""White noise per example on the whole test set (jrbench.evaluate.attacks, evaluate._attack): draws seeded
by (seed, example index) alone, so the batch size changes no result; noise rows for every test
example beside the gradient attacks' subset in attack_examples.csv; the data set's default
--n-examples; the sanity checks and one-seed verdicts with unequal example sets; bad values."""
from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from conftest import tiny_config, tiny_data
from jrbench.evaluate import attacks as A
from jrbench.evaluate.attack_checks import sanity_warnings
from jrbench.evaluate.attack_common import derive_seed
from jrbench.cli import app
from jrbench.config import DataConfig, ModelConfig
from jrbench.data.datasets import DATASETS, write_idx_folder
from jrbench.errors import UserError
from jrbench.evaluate.api import ATTACK_EXAMPLES_CSV, ATTACKS_CSV, _attack, comparable_rows, example_counts, fixed_examples
from jrbench.models.architectures import build_model
from jrbench.analysis.results import collect
from jrbench.study.spec import attack_config, parse_spec
from jrbench.analysis.verdicts import verdicts

N_TEST = 128  # tiny_data's test split


@pytest.fixture(scope="module")
def problem():
    """tiny_data (the class sets a bright block) and an MLP trained a little on it, in float64 so
    that no prediction can depend on how examples are grouped into batches (float64 rounding of
    another batch shape is ~1e-16, the logit gaps are not)."""
    data = tiny_data(n_test=N_TEST)
    info = DATASETS.get("mnist").info
    torch.manual_seed(0)
    model = build_model("mlp", info.input_shape, info.num_classes, info.mean, info.std)
    x, y = data.train.images.float() / 255, data.train.labels
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(30):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return data, model.eval(), copy.deepcopy(model).double().eval()


def noise_config(**kw) -> A.AttackConfig:
    return A.AttackConfig(**{**dict(noise=True, pgd=False, fgsm=False, sigmas=[0.0, 0.3, 0.7], draws=3, seed=5),
                             **kw})


# ----------------------------------------------------------------------------- the draws
def test_noise_draws_are_each_examples_own_generator():
    index = torch.tensor([7, 3, 7])
    got = A.noise_draws(11, index, 2, (1, 4, 4))
    assert got.shape == (3, 2, 1, 4, 4) and got.dtype == torch.float32 and got.device.type == "cpu"
    for row, example in enumerate(index.tolist()):
        gen = torch.Generator().manual_seed(derive_seed(11, "noise", example))
        assert torch.equal(got[row], torch.randn(2, 1, 4, 4, generator=gen))
    assert torch.equal(got[0], got[2]) and not torch.equal(got[0], got[1])
    assert not torch.equal(A.noise_draws(12, index[:1], 2, (1, 4, 4))[0], got[0])  # the seed is used


class Recorder(nn.Module):
    """Logits (x.sum - 0.1, 0): class 0 iff the pixel sum exceeds 0.1; keeps every batch it sees."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))  # a device and dtype for the batches
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return torch.stack([x.flatten(1).sum(1) - 0.1, x.new_zeros(len(x))], 1)


def test_noisy_inputs_are_clipped_draws_batched_by_batch_size():
    x = torch.full((5, 1, 2, 2), 0.5)
    x[0] = 0.0
    index, draws, sigma = torch.tensor([40, 41, 42, 43, 44]), 3, 0.4
    model = Recorder()
    counts = A.noise_correct_counts(model, x, torch.zeros(5, dtype=torch.long), sigma, draws=draws, seed=2,
                                    batch_size=7, example_index=index)
    assert [len(b) for b in model.seen] == [6, 6, 3]  # 7 // 3 = 2 examples (6 images) per forward pass
    expected = (x.unsqueeze(1) + sigma * A.noise_draws(2, index, draws, (1, 2, 2))).clamp(0, 1).flatten(0, 1)
    assert torch.equal(torch.cat(model.seen), expected)
    assert torch.equal(counts, (expected.flatten(1).sum(1) > 0.1).view(5, draws).sum(1))
    model.seen.clear()
    assert torch.equal(A.noise_correct_counts(model, x, torch.zeros(5, dtype=torch.long), 0.0, draws=draws),
                       torch.tensor([0, 3, 3, 3, 3]))  # sigma 0: the clean result, draws times
    assert len(model.seen) == 1 and torch.equal(model.seen[0], x)  # one clean pass, no draws


@pytest.mark.slow
def test_batch_size_changes_no_result(problem):
    data, _, model = problem
    x, y = data.test.images.float() / 255, data.test.labels
    index = torch.arange(N_TEST) * 3 + 1
    out = {bs: A.run_attacks(model, x, y, noise_config(batch_size=bs), example_index=index, example_seed=4)
           for bs in (7, 500)}
    pd.testing.assert_frame_equal(out[7].examples, out[500].examples)
    pd.testing.assert_frame_equal(out[7].table.drop(columns="seconds"), out[500].table.drop(columns="seconds"))
    assert 0 < out[7].table.accuracy.min() < 1  # the noise does something (78% at sigma 0.7)
    # an example's noise depends on its index only: a subset gets the same shares
    part = slice(10, 30)
    sub = A.run_attacks(model, x[part], y[part], noise_config(batch_size=11), example_index=index[part])
    merged = sub.examples.merge(out[7].examples, on=["example", "strength"], suffixes=("", "_all"))
    assert len(merged) == 20 * 3 and (merged["robust"] == merged["robust_all"]).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_adds_the_same_noise_as_the_cpu(problem):
    data, _, model = problem
    x, y = data.test.images.float() / 255, data.test.labels
    seen = {}
    for device in ("cpu", "cuda"):
        recorder = Recorder().to(device)
        A.noise_correct_counts(recorder, x.to(device), y.to(device), 0.5, draws=3, seed=1, batch_size=64)
        seen[device] = torch.cat([b.cpu() for b in recorder.seen])
    assert torch.equal(seen["cpu"], seen["cuda"])  # drawn on the CPU, added and clipped elementwise
    counts = [A.noise_correct_counts(model.to(d), x.to(d), y.to(d), 0.5, draws=3, seed=1).cpu()
              for d in ("cpu", "cuda")]
    model.to("cpu")
    assert torch.equal(counts[0], counts[1])  # float64: no prediction flips on another device's rounding


# ----------------------------------------------------------------------------- the whole test set
def test_counts_default_to_the_data_sets_and_whole_split(problem):
    data = problem[0]
    assert DATASETS.get("mnist").info.defaults.attack_examples == 1000
    assert example_counts(data, noise_config(), None) == (N_TEST, N_TEST)  # 1000 > 128: the whole split
    small = dataclasses.replace(data, info=dataclasses.replace(
        data.info, defaults=dataclasses.replace(data.info.defaults, attack_examples=50)))
    assert example_counts(small, noise_config(), None) == (50, N_TEST)
    assert example_counts(small, noise_config(noise_examples=64), 20) == (20, 64)
    with pytest.raises(UserError, match=r"noise_examples \(--noise-examples\) 129 is more than the 128"):
        example_counts(data, noise_config(noise_examples=N_TEST + 1), 20)
    # the noise set holds the attacks' when it is at least as large (one permutation, its first N)
    attacked, noised = fixed_examples(data, 20, 3)[2], fixed_examples(data, 64, 3)[2]
    assert set(attacked.tolist()) <= set(noised.tolist())
    assert torch.equal(fixed_examples(data, N_TEST, 3)[2], torch.arange(N_TEST))


def test_noise_covers_the_test_set_and_rows_line_up(problem, tmp_path):
    data, _, model = problem
    config = noise_config(pgd=True, fgsm=True, norms=("linf",), eps_linf=[0.0, 0.1], steps=3, batch_size=50)
    result = _attack(model, data, config, {"run_id": "r"}, tmp_path, n_examples=20, example_seed=3,
                     device=torch.device("cpu"))
    assert (result.n_examples, result.noise_examples) == (20, N_TEST)
    table = pd.read_csv(tmp_path / ATTACKS_CSV)
    assert set(table.loc[table.attack == "noise", "n_examples"]) == {N_TEST}
    assert set(table.loc[table.attack != "noise", "n_examples"]) == {20}
    ex = pd.read_csv(tmp_path / ATTACK_EXAMPLES_CSV)
    noise, adv = ex[ex.attack == "noise"], ex[ex.attack != "noise"]
    attacked = fixed_examples(data, 20, 3)[2].numpy()
    for strength, rows in noise.groupby("strength"):
        assert sorted(rows.example) == list(range(N_TEST))
    for key, rows in adv.groupby(["attack", "strength"]):
        assert sorted(rows.example) == sorted(attacked)
    labels = data.test.labels.numpy()
    assert (ex.label == labels[ex.example]).all() and (ex.example_seed == 3).all()
    # the same example is clean-correct (or not) in every row, noise or attack
    assert (ex.groupby("example").clean_correct.nunique() == 1).all()
    clean = ex[ex.strength == 0].groupby("example").robust.agg(["min", "max"])
    assert (clean["min"] == clean["max"]).all()  # sigma 0 and eps 0 both give the clean result
    # the whole-set noise of this call is what the subset would get alone (per-example seeds)
    alone = _attack(model, data, dataclasses.replace(config, pgd=False, fgsm=False, noise_examples=20), {}, None,
                    n_examples=20, example_seed=3, device=torch.device("cpu"))
    sub = noise[noise.example.isin(attacked)].sort_values(["strength", "example"]).reset_index(drop=True)
    mine = alone.examples.sort_values(["strength", "example"]).reset_index(drop=True)
    assert (sub.robust.to_numpy() == mine.robust.to_numpy()).all() and alone.noise_examples == 20


def test_comparable_rows_pick_each_attacks_own_set():
    table = pd.DataFrame({"attack": ["noise", "noise", "pgd", "pgd", "fgsm", "noise"],
                          "n_examples": [128, 20, 20, 50, 20, 128], "example_seed": [0, 0, 0, 0, 0, 1]})
    assert comparable_rows(table, 0, 20, 128).index.tolist() == [0, 2, 4]
    assert comparable_rows(table, 0, 20).index.tolist() == [1, 2, 4]  # noise on the attacks' examples


def _row(attack, norm, strength, accuracy, n, half):
    return {"attack": attack, "norm": norm, "strength": strength, "accuracy": accuracy,
            "ci_low": accuracy - half, "ci_high": accuracy + half, "n_examples": n,
            "loss": "none" if attack == "noise" else "ce64", "steps": np.nan if attack == "noise" else 40,
            "restarts": np.nan if attack == "noise" else 1, "draws": 5 if attack == "noise" else np.nan,
            "grad_vanish_frac": np.nan if attack == "noise" else 0.0, "grad_zero_frac": np.nan if attack == "noise" else 0.0}


@pytest.mark.parametrize("pgd_n, pgd_acc, fires", [
    (10000, 0.86, True),   # same examples: PGD above noise's interval is enough
    (1000, 0.86, False),   # a 1,000 subset: 0.86 - 0.02 is inside noise's interval, no warning
    (1000, 0.90, True),    # PGD's whole interval above noise's: it fires on any subset
])
def test_pgd_vs_noise_on_other_examples_compares_intervals(pgd_n, pgd_acc, fires):
    # noise sigma 0.05 on 784 pixels: expected L2 norm 1.4 <= eps 1.5
    df = pd.DataFrame([_row("noise", "gaussian", 0.05, 0.84, 10000, 0.01),
                       _row("pgd", "l2", 1.5, pgd_acc, pgd_n, 0.03)])
    found = any("white noise" in w for w in sanity_warnings(df, input_dim=784, dataset="mnist"))
    assert found == fires


# ----------------------------------------------------------------------------- verdicts on unequal sets
def _fake_run(root, name, regs, pgd, noise):
    """A run directory with attack_examples.csv: noise shares on examples 0..39, PGD on the
    even ones (20) only, every example clean-correct."""
    run = root / name
    run.mkdir()
    (run / "config.json").write_text(json.dumps(tiny_config(regs).to_dict()))
    (run / "model.pt").write_bytes(b"")
    pd.DataFrame({"epoch": [1], "test_acc": [1.0], "test_R_z": [1.0]}).to_csv(run / "metrics.csv", index=False)
    rows = [dict(example=i, attack="noise", norm="gaussian", strength=0.5, loss="none", clean_correct=1,
                 robust=v, broken=1 - v, example_seed=0) for i, v in enumerate(noise)]
    rows += [dict(example=2 * i, attack="pgd", norm="linf", strength=0.1, loss="ce64", clean_correct=1,
                  robust=v, broken=1 - v, example_seed=0) for i, v in enumerate(pgd)]
    pd.DataFrame(rows).to_csv(run / "attack_examples.csv", index=False)
    pd.DataFrame([{"attack": "noise", "norm": "gaussian", "strength": 0.5, "accuracy": np.mean(noise),
                   "loss": "none", "n_examples": len(noise), "example_seed": 0},
                  {"attack": "pgd", "norm": "linf", "strength": 0.1, "accuracy": np.mean(pgd), "loss": "ce64",
                   "n_examples": len(pgd), "example_seed": 0}]).to_csv(run / "attacks.csv", index=False)


def test_one_seed_verdicts_pair_by_example_with_unequal_sets(tmp_path):
    plain_noise = [0.6] * 6 + [1.0] * 34
    jr_noise = [1.0] * 6 + [1.0] * 33 + [0.8]   # 6 up (examples 0-5), 1 down (example 39)
    _fake_run(tmp_path, "plain", ("none",), [1] * 10 + [0] * 10, plain_noise)
    _fake_run(tmp_path, "jr", ("jacobian",), [1] * 10 + [1] * 8 + [0] * 2, jr_noise)
    table, _ = verdicts(collect([tmp_path]), correction="none")
    noise = table[(table.metric == "noise_acc") & (table.strength == "sigma 0.5")].iloc[0]
    # the sign test runs over all 40 noise examples: 6 up, 1 down -> p = 2 P(Binom(7, 1/2) <= 1) = 2 * 8 / 128
    assert "6 examples up, 1 down" in noise["method"] and "over 40 examples" in noise["method"]
    assert noise["p_value"] == pytest.approx(16 / 128)
    assert noise["diff"] == pytest.approx(100 * (6 * 0.4 - 0.2) / 40)
    for metric in ("pgd_acc", "worst_case_acc"):  # on the 20 attacked examples: b = 0, c = 8
        r = table[(table.metric == metric) & (table.strength == "linf 0.1")].iloc[0]
        assert r["method"].startswith("McNemar exact (20 examples, b = 0, c = 8;")
        assert r["p_value"] == pytest.approx(2 / 2**8) and r["diff"] == pytest.approx(100 * 8 / 20)


# ----------------------------------------------------------------------------- settings and the CLI
def test_noise_examples_setting_is_checked():
    for bad in (0, -3, 2.5, True, "all"):
        with pytest.raises(UserError, match=r"--noise-examples must be (an integer|at least 1)"):
            noise_config(noise_examples=bad).validate()
    assert attack_config({"noise_examples": 500, "n_examples": 100}).noise_examples == 500
    spec = parse_spec('name = "t"\n[attack]\nn_examples = 100\nnoise_examples = 500\n', Path("t.toml"))
    assert spec.attack.noise_examples == 500 and spec.attack_examples.n_examples == 100
    with pytest.raises(UserError, match=r"line 4: field 'noise_examples' must be at least 1, got 0"):
        parse_spec('name = "t"\n[attack]\nsteps = 3\nnoise_examples = 0\n', Path("bad.toml"))


@pytest.fixture(scope="module")
def run_dir(problem, tmp_path_factory):
    """A finished run directory written by hand (no training): tiny_data as IDX files, the MLP."""
    data, model, _ = problem
    root = tmp_path_factory.mktemp("noise-run")
    config = tiny_config()
    config.data = DataConfig("mnist", data_dir=str(write_idx_folder(root / "data", data.train, data.test)))
    config.model = ModelConfig("mlp")
    run = root / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config.to_dict()))
    torch.save({"state_dict": model.state_dict(), "config": config.to_dict(), "epoch": 1}, run / "model.pt")
    return run


@pytest.mark.parametrize("value, message", [
    ("0", "--noise-examples must be at least 1, got 0"),
    ("-2", "--noise-examples must be at least 1, got -2"),
    ("many", "Invalid value for '--noise-examples'"),
    ("129", "--noise-examples) 129 is more than the 128 examples of the test set"),
])
def test_cli_bad_noise_examples_exit_2(run_dir, value, message):
    result = CliRunner().invoke(app, ["attack", str(run_dir), "--noise", "--sigma", "0.3", "--draws", "2",
                                      "--noise-examples", value, "--device", "cpu", "--quiet"])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert not (run_dir / ATTACKS_CSV).exists()


def test_cli_default_noise_on_whole_test_set(run_dir):
    result = CliRunner().invoke(app, ["attack", str(run_dir), "--noise", "--pgd", "--norm", "linf", "--eps", "0.1",
                                      "--steps", "2", "--sigma", "0.3", "--draws", "2", "--n-examples", "16",
                                      "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "(16 test examples; noise: 128)" in result.output
    table = pd.read_csv(run_dir / ATTACKS_CSV).set_index("attack")
    assert (table.loc["noise", "n_examples"], table.loc["pgd", "n_examples"]) == (N_TEST, 16)
    ex = pd.read_csv(run_dir / ATTACK_EXAMPLES_CSV)
    assert (ex.attack == "noise").sum() == N_TEST and (ex.attack == "pgd").sum() == 16
    assert not any("white noise" in line for line in result.output.splitlines())
    for name in (ATTACKS_CSV, ATTACK_EXAMPLES_CSV):
        (run_dir / name).unlink()
