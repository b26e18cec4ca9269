"""The corruption studies: benchmarks/corruptions.toml parses, runs only the corruptions, and its cells
are the certified (and bracket) study's, run id for run id, so those models are corrupted, not trained
again; the Fashion-MNIST variant has the same groups and recipe on other data."""
from pathlib import Path

from jrbench.evaluate.attack_config import COMMON_CORRUPTIONS, SEVERITIES
from jrbench.study.spec import load_spec

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_the_digits_study_reuses_the_certified_studys_cells():
    spec = load_spec(BENCH / "corruptions.toml")
    certified, bracket = load_spec(BENCH / "certified.toml"), load_spec(BENCH / "bracket.toml")
    ids = [c.run_id() for c in spec.cells]
    assert len(ids) == 25 and ids == [c.run_id() for c in certified.cells] == [c.run_id() for c in bracket.cells]
    assert [c.to_dict() for c in spec.cells] == [c.to_dict() for c in certified.cells]
    a = spec.attack
    assert a.corruptions and not (a.noise or a.pgd or a.fgsm or a.autoattack)
    filled = a.filled(spec.cells[0].data.dataset)
    assert filled.corruption_names == list(COMMON_CORRUPTIONS) and filled.severities == list(SEVERITIES)
    assert spec.attack_examples.n_examples == 1000 and spec.cells[0].data.data_dir == "data/mnist-8k-2k"


def test_the_fashion_variant_has_the_same_groups_and_recipe():
    digits, fashion = load_spec(BENCH / "corruptions.toml"), load_spec(BENCH / "corruptions-fashion.toml")
    assert len(fashion.cells) == 25 and {c.data.dataset for c in fashion.cells} == {"fashion-mnist"}
    for d, f in zip(digits.cells, fashion.cells):
        assert (d.reg, d.model, d.train.seed, d.train.lr, d.train.epochs) == (f.reg, f.model, f.train.seed,
                                                                              f.train.lr, f.train.epochs)
    assert fashion.attack == digits.attack


def test_a_cell_with_every_corruption_row_is_attacked_and_one_without_is_not(tmp_path):
    import pandas as pd

    from jrbench.study.sweep import attack_done
    from jrbench.training import rundir

    spec = load_spec(BENCH / "corruptions.toml")
    run = tmp_path / "cell"
    run.mkdir()
    rundir.atomic_write_json(run / rundir.CONFIG, spec.cells[0].to_dict())
    pd.DataFrame({"attack": ["corruption"]}).to_csv(run / "attack_examples.csv", index=False)
    rows = [("corruption", name, float(s), 1000) for name in COMMON_CORRUPTIONS for s in (0, *SEVERITIES)]
    frame = pd.DataFrame(rows, columns=["attack", "norm", "strength", "n_examples"]).assign(example_seed=0)
    frame.to_csv(run / "attacks.csv", index=False)
    assert attack_done(run, spec.attack, spec.attack_examples)
    frame[~((frame["norm"] == "fog") & (frame["strength"] == 5))].to_csv(run / "attacks.csv", index=False)
    assert not attack_done(run, spec.attack, spec.attack_examples)
    frame.assign(n_examples=100).to_csv(run / "attacks.csv", index=False)  # the certificates' 100: not these
    assert not attack_done(run, spec.attack, spec.attack_examples)
