"""Training: determinism, resume, divergence, the run directory and load_run."""
import json

import pandas as pd
import pytest
import torch

from jrbench import load_run
from jrbench.errors import NonFiniteLoss, UserError
from jrbench.training.loop import train
from jrbench.training.rundir import CHECKPOINT, CONFIG, ENV, METRICS, MODEL

from conftest import tiny_config, tiny_data

TIMING = ["seconds_per_step", "seconds_per_step_mean", "epoch_seconds"]


def _metrics(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=TIMING).reset_index(drop=True)


@pytest.mark.slow
def test_run_directory_files_and_learning(tmp_path):
    data = tiny_data()
    result = train(tiny_config(("jacobian",), epochs=2), tmp_path / "run", data=data)
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} == {CONFIG, ENV, METRICS, MODEL, CHECKPOINT}
    cfg = json.loads((run / CONFIG).read_text())
    assert cfg["reg"]["names"] == ["jacobian"] and cfg["train"]["epochs"] == 2
    env = json.loads((run / ENV).read_text())
    assert env["packages"]["torch"] and env["device"] == "cpu" and env["torch_threads"] >= 1
    metrics = pd.read_csv(run / METRICS)
    assert list(metrics["epoch"]) == [1, 2]
    for col in ["train_ce", "train_jacobian_R", "test_acc", "test_jac_frob_z", "seconds_per_step"]:
        assert metrics[col].notna().all(), col
    assert metrics["test_acc"].iloc[-1] > 0.5  # the toy problem is learned
    saved = torch.load(run / MODEL, weights_only=True)
    assert saved["epoch"] == 2 and saved["config"] == cfg
    assert result.metrics.shape[0] == 2


@pytest.mark.slow
def test_same_seed_same_metrics_and_other_seed_differs(tmp_path):
    data = tiny_data()
    a = train(tiny_config(("jacobian",)), data=data).metrics
    b = train(tiny_config(("jacobian",)), data=data).metrics
    c = train(tiny_config(("jacobian",), seed=1), data=data).metrics
    pd.testing.assert_frame_equal(_metrics(a), _metrics(b))
    assert not _metrics(a).equals(_metrics(c))


@pytest.mark.parametrize("regs", [("jacobian", "dropout"), ("none",)])
@pytest.mark.slow
def test_resume_after_interrupt_equals_uninterrupted(tmp_path, regs):
    data = tiny_data()
    config = tiny_config(regs, epochs=3)
    full = train(config, tmp_path / "full", data=data).metrics

    def interrupt(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "cut", data=data, on_epoch=interrupt)
    assert list(pd.read_csv(tmp_path / "cut" / METRICS)["epoch"]) == [1]
    model, _ = load_run(tmp_path / "cut")  # a valid run directory after Ctrl-C
    with pytest.raises(UserError, match="--resume"):
        train(config, tmp_path / "cut", data=data)
    resumed = train(config, tmp_path / "cut", data=data, resume=True).metrics
    pd.testing.assert_frame_equal(_metrics(full), _metrics(resumed))
    pd.testing.assert_frame_equal(_metrics(full), _metrics(pd.read_csv(tmp_path / "cut" / METRICS)),
                                  check_dtype=False)


@pytest.mark.slow
def test_resume_with_other_config_is_refused(tmp_path):
    data = tiny_data()
    train(tiny_config(epochs=1), tmp_path / "run", data=data)
    with pytest.raises(UserError, match=r"another configuration \(names \['none'\] there, \['jacobian'\] here\)"):
        train(tiny_config(("jacobian",), epochs=1), tmp_path / "run", data=data, resume=True)
    with pytest.raises(UserError, match="epochs 1 there, 2 here.*not extended"):  # the message names what differs
        train(tiny_config(epochs=2), tmp_path / "run", data=data, resume=True)


@pytest.mark.slow
def test_nan_loss_stops_naming_epoch_and_step_and_writes_no_model(tmp_path):
    """(That the last good checkpoint is kept: test_divergence_in_epoch_two_keeps_epoch_one.)"""
    data = tiny_data()
    config = tiny_config(epochs=4)
    config.train.lr = 1e12
    with pytest.raises((NonFiniteLoss, UserError)) as err:
        train(config, tmp_path / "run", data=data)
    assert isinstance(err.value, NonFiniteLoss)
    assert err.value.epoch == 1 and err.value.step >= 1 and "epoch 1, step" in str(err.value)
    assert not (tmp_path / "run" / MODEL).exists()  # no model from a diverged epoch


@pytest.mark.slow
def test_divergence_in_epoch_two_keeps_epoch_one(tmp_path):
    data = tiny_data()
    config = tiny_config(epochs=3)
    config.train.schedule, config.train.step_epochs, config.train.gamma = "step", 1, 1e15
    with pytest.raises(NonFiniteLoss) as err:
        train(config, tmp_path / "run", data=data)
    assert err.value.epoch == 2
    assert torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)["epoch"] == 1
    model, _ = load_run(tmp_path / "run")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert list(pd.read_csv(tmp_path / "run" / METRICS)["epoch"]) == [1]


@pytest.mark.slow
def test_progress_every_log_every_steps_and_the_first_bad_step_named_from_mid_interval(monkeypatch):
    """The running sums are read every LOG_EVERY steps and at an epoch's end (on_step then); a NaN
    in the middle of an interval stops the run at the interval's end, naming the step it appeared."""
    import jrbench.training.loop as training

    monkeypatch.setattr(training, "LOG_EVERY", 3)
    data = tiny_data(n_train=256)  # batch 32: 8 steps an epoch
    infos = []
    train(tiny_config(("jacobian",), epochs=1), data=data, on_step=infos.append)
    assert [i.step for i in infos] == [3, 6, 8] and all(i.steps == 8 for i in infos)
    assert infos[-1].jacobian is not None and 0 <= infos[-1].accuracy <= 1

    real = training.step_loss

    def nan_at_step_5(model, x, y, reg, step=0, *rest):  # rest: the certified-training bound
        loss = real(model, x, y, reg, step, *rest)
        if step >= 4:  # steps 5, 6, ... (1-based)
            loss.total = loss.total * float("nan")
        return loss

    monkeypatch.setattr(training, "step_loss", nan_at_step_5)
    infos.clear()
    with pytest.raises(NonFiniteLoss) as err:
        train(tiny_config(epochs=1), data=data, on_step=infos.append)
    assert (err.value.epoch, err.value.step) == (1, 5) and "epoch 1, step 5" in str(err.value)
    assert [i.step for i in infos] == [3]  # stopped at the read after step 6


def test_load_run_gives_the_trained_model_in_eval_mode_on_cpu(tmp_path):
    data = tiny_data()
    result = train(tiny_config(("dropout",), epochs=1), tmp_path / "run", data=data)
    model, config = load_run(tmp_path / "run")
    assert not model.training and next(model.parameters()).device.type == "cpu"
    assert config.reg.names == ["dropout"]
    x = data.test.images[:16].float() / 255
    assert torch.equal(model(x).argmax(1), result.model(x).argmax(1))
    assert torch.allclose(model.normalize.std, torch.tensor(data.info.std).view(1, -1, 1, 1))


def test_corrupt_or_missing_run_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_run(tmp_path / "nope")
    data = tiny_data()
    train(tiny_config(epochs=1), tmp_path / "run", data=data)
    (tmp_path / "run" / MODEL).write_bytes(b"garbage")
    with pytest.raises(UserError, match="corrupt"):
        load_run(tmp_path / "run")
    (tmp_path / "run" / MODEL).unlink()
    with pytest.raises(UserError, match="model.pt is missing"):
        load_run(tmp_path / "run")


def test_top_level_api_names_are_the_functions_whatever_was_imported_first():
    import jrbench.training.loop  # noqa: F401  (a submodule named like the function would shadow it)
    from jrbench import RunConfig, load_run, train as train_fn

    assert callable(train_fn) and train_fn.__name__ == "train"
    assert callable(load_run) and isinstance(RunConfig(), RunConfig)


@pytest.mark.slow
def test_cosine_and_step_schedules_set_each_epochs_lr():
    import math

    data = tiny_data()
    cfg = tiny_config(epochs=4)
    cfg.train.schedule, cfg.train.lr = "cosine", 0.1
    lrs = list(train(cfg, data=data).metrics["lr"])
    assert lrs == pytest.approx([0.05 * (1 + math.cos(math.pi * e / 4)) for e in range(4)])
    cfg.train.schedule, cfg.train.step_epochs, cfg.train.gamma = "step", 2, 0.5
    assert list(train(cfg, data=data).metrics["lr"]) == pytest.approx([0.1, 0.1, 0.05, 0.05])


def test_a_model_refuses_inputs_of_another_data_set():
    from jrbench.models.architectures import build_model

    model = build_model("lenet", (1, 28, 28), 10, [0.1], [0.3])
    with pytest.raises(UserError, match=r"built for inputs of shape \(1, 28, 28\).*\(3, 32, 32\)"):
        model(torch.rand(2, 3, 32, 32))


def test_training_leaves_the_global_random_state_as_it_found_it(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(tiny_config(epochs=1), data=tiny_data(64, 32))
    assert torch.equal(torch.rand(3), expected)
