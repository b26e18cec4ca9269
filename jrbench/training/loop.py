"""The training loop: SGD with momentum, cross-entropy plus the chosen regularizers.

``train(config, run_dir)`` is the one function behind ``jrbench train``: it loads the data,
builds the model, trains epoch by epoch, evaluates after each epoch and writes the run
directory (see ``rundir.py``). It never prints; progress goes to the ``on_step`` and
``on_epoch`` callbacks. Everything random in epoch e (shuffle, dropout, projections, noise) is
seeded from (seed, e), so a resumed run ends with the same metrics as an uninterrupted one.
With ``--reg lipschitz`` the weights are projected after every SGD step and certified at every
epoch's end (:mod:`jrbench.penalty.lipschitz_constraint`); its power-iteration vectors travel in the
checkpoint, so resuming continues them. With ``--reg ibp`` / ``crown-ibp`` each step takes its eps,
kappa (and beta) from the schedule at its step number over the whole run
(:mod:`jrbench.penalty.certified_training`), and every epoch records the test split's certified
accuracy at ``--ibp-eps`` under certify --ibp's sound bound.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F

from . import rundir
from ..config import CUSTOM_DATASETS, RunConfig
from ..device import resolve_device
from ..data.datasets import Data, Split, load_data, to_pixels
from .envinfo import environment
from ..errors import NonFiniteLoss, UserError
from ..penalty.jacobian import jacobian_frobenius
from ..penalty.lipschitz_constraint import LipschitzConstraint, constraint_for
from ..models.architectures import Classifier, build_model
from ..penalty.certified_training import CertifiedTraining, bound_name, certified_count
from ..penalty.regularizers import BoundTerm, check_model, margin_scale, model_dropout, step_loss, weight_decay
from .validation import validate


@dataclass
class StepInfo:
    """What ``on_step`` gets every ``LOG_EVERY`` steps and at an epoch's last step."""
    epoch: int              # 1-based
    step: int               # 1-based within the epoch: the steps done so far
    steps: int
    ce: float               # running mean of the supervised loss this epoch
    jacobian: float | None  # running mean of R this epoch (None until a step computed R)
    accuracy: float         # running training accuracy this epoch
    seconds_per_step: float  # running mean, data loading excluded


@dataclass
class TrainResult:
    model: Classifier
    config: RunConfig
    metrics: pd.DataFrame
    run_dir: Path | None


LIPSCHITZ_STATE = "lipschitz_state"  # checkpoint key: the constraint's power-iteration vectors


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % (2**63)


@torch.no_grad()
def _accuracy_and_loss(model: Classifier, split: Split, device: torch.device, batch: int) -> tuple[float, float]:
    correct, loss = 0, 0.0
    for start in range(0, len(split), batch):
        x = to_pixels(split.images[start:start + batch], device)
        y = split.labels[start:start + batch].to(device)
        logits = model(x)
        correct += int((logits.argmax(1) == y).sum())
        loss += float(F.cross_entropy(logits.double(), y, reduction="sum"))
    return correct / len(split), loss / len(split)


def _ibp_certified(model: Classifier, split: Split, device: torch.device, batch: int,
                   certified: CertifiedTraining) -> float:
    """The fraction of ``split`` that certify --ibp's sound bound certifies at the training radius."""
    count = 0
    for start in range(0, len(split), batch):
        x = to_pixels(split.images[start:start + batch], device)
        y = split.labels[start:start + batch].to(device)
        count += certified_count(certified.layers, model, x, y, certified.schedule.eps)
    return count / len(split)


def evaluate(model: Classifier, split: Split, device: torch.device, batch: int, n_jacobian: int,
             certified: CertifiedTraining | None = None) -> dict:
    """Test accuracy and loss; exact mean ||J||_F on the first ``n_jacobian`` test examples; with
    ``certified`` (``--reg ibp`` / ``crown-ibp``) the certified accuracy at ``--ibp-eps`` (IBP, sound)."""
    model.eval()
    acc, loss = _accuracy_and_loss(model, split, device, batch)
    x = to_pixels(split.images[:n_jacobian], device)
    frob_z = jacobian_frobenius(model, x, "normalized", batch)
    frob_x = jacobian_frobenius(model, x, "pixel", batch)
    row = {
        "test_acc": acc, "test_ce": loss,
        "test_jac_frob_z": float(frob_z.mean()),          # mean ||d logits / dz||_F
        "test_R_z": float(0.5 * frob_z.pow(2).mean()),     # the regularizer's value, 1/2 mean ||J_z||_F^2
        "test_jac_frob_pixel": float(frob_x.mean()),       # mean ||d logits / dx||_F, pixel space
    }
    if certified is not None:
        row["test_ibp_certified"] = _ibp_certified(model, split, device, batch, certified)
    return row


def _make_optimizer(model: Classifier, config: RunConfig):
    t = config.train
    opt = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum,
                          weight_decay=weight_decay(config.reg))
    if t.schedule == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=t.step_epochs, gamma=t.gamma)
    elif t.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t.epochs)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return opt, sched


LOG_EVERY = 50  # steps between host reads of train_epoch's running sums (on_step, the finiteness check)
STAGE_BYTES = 2**30  # on CUDA, a training split up to this size is copied to the device once an epoch


class _StepTimer:
    """Seconds per SGD step (data loading excluded) without waiting on the device every step.

    On CPU, where an op has finished when it returns, the host clock around the step; on CUDA a
    pair of events per step on the device's current stream, read by :meth:`collect` once the
    logged interval's host read has synchronized. Other devices: the host clock (launch time).
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.current_stream(device) if self.cuda else None
        self.seconds: list[float] = []
        self._begin = None
        self._events: list[tuple] = []

    def start(self) -> None:
        if self.cuda:
            self._begin = torch.cuda.Event(enable_timing=True)
            self._begin.record(self.stream)
        else:
            self._begin = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record(self.stream)
            self._events.append((self._begin, end))
        else:
            self.seconds.append(time.perf_counter() - self._begin)

    def collect(self) -> None:
        """Move the steps timed on the device into ``seconds`` (free after a host read)."""
        for begin, end in self._events:
            end.synchronize()
            self.seconds.append(begin.elapsed_time(end) / 1000)  # ms -> s
        self._events.clear()


def _batches(data: Data, order: torch.Tensor, batch_size: int, device: torch.device):
    """The epoch's batches in ``order``: pixels (B, C, H, W) in [0, 1] and labels (B,) on ``device``.

    On CUDA a training split of up to :data:`STAGE_BYTES` goes to the device once, and batches are
    gathered there: a blocking host-to-device copy each step would synchronize as a host read does.
    """
    images, labels = data.train.images, data.train.labels
    if device.type == "cuda" and images.nbytes + labels.nbytes <= STAGE_BYTES:
        images, labels, order = images.to(device), labels.to(device), order.to(device)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield to_pixels(images.index_select(0, idx), device), labels.index_select(0, idx).to(device)


def train_epoch(model: Classifier, data: Data, config: RunConfig, epoch: int, opt,
                device: torch.device, on_step: Callable[[StepInfo], None] | None = None,
                constraint: LipschitzConstraint | None = None,
                certified: CertifiedTraining | None = None) -> dict:
    """One pass over the training split; returns the epoch's training columns. ``constraint``
    (``--reg lipschitz``) projects the weights after every SGD step; ``certified`` (``--reg ibp``,
    ``crown-ibp``) gives each step its schedule's eps and kappa (step numbers count from the run's
    first step) and adds the bound's columns.

    No step waits on the device: the running sums (float64, the same numbers as summing on the
    host), the correct count and the first non-finite step stay device tensors, read in one copy
    every :data:`LOG_EVERY` steps and at the epoch's last step. Then ``on_step`` gets the running
    means, and a non-finite loss raises :class:`NonFiniteLoss` naming this epoch and the first bad
    step (the interval's later steps have run on weights that are never saved). seconds_per_step
    is the median over steps (:class:`_StepTimer`).
    """
    t = config.train
    seed = _epoch_seed(t.seed, epoch)
    torch.manual_seed(seed)  # dropout and projections (CPU and CUDA)
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))
    steps = (len(order) + t.batch_size - 1) // t.batch_size
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    # sums over examples of CE, R, the input-grad penalty, the bound's CE; the count the bound certified
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    first_bad = torch.zeros((), dtype=torch.int64, device=device)  # 1-based step of the first NaN/inf; 0: none
    bad_value = torch.zeros((), dtype=torch.float64, device=device)  # its loss
    step_ids = torch.arange(1, steps + 1, device=device)
    timer = _StepTimer(device)
    seen, has_r, bound_seen, at = 0, False, 0, None
    for step, (x, y) in enumerate(_batches(data, order, t.batch_size, device)):
        timer.start()
        opt.zero_grad(set_to_none=True)
        bound = None
        if certified is not None:
            at = certified.schedule.at((epoch - 1) * steps + step)
            bound = BoundTerm(certified, at)
        share = margin_scale(config.reg, (epoch - 1) * steps + step, steps)
        loss = step_loss(model, x, y, config.reg, step, bound, share)
        total = loss.total.detach()
        fresh = ~torch.isfinite(total) & (first_bad == 0)
        first_bad = torch.where(fresh, step_ids[step], first_bad)
        bad_value = torch.where(fresh, total.double(), bad_value)
        loss.total.backward(inputs=params)  # weights only: the input's gradient is not needed
        opt.step()
        if constraint is not None:
            constraint.project()  # no host sync: one power iteration and a rescale per layer
        timer.stop()
        n = y.shape[0]
        seen += n
        zero = torch.zeros_like(loss.ce)
        terms = [loss.ce, zero if loss.jacobian is None else loss.jacobian,
                 zero if loss.input_grad is None else loss.input_grad,
                 zero if loss.bound_ce is None else loss.bound_ce]
        sums[:4] += torch.stack(terms).double() * n
        if loss.certified is not None:
            sums[4] += loss.certified
            bound_seen += n
        correct += (loss.logits.argmax(1) == y).sum()
        has_r = has_r or loss.jacobian is not None
        if (step + 1) % LOG_EVERY and step + 1 < steps:
            continue
        ce_sum, jac_sum, ig_sum, bound_sum, cert_sum, right, bad_step, value = torch.cat(
            [sums, torch.stack([correct, first_bad]).double(), bad_value[None]]).tolist()  # the one host read
        if bad_step:
            raise NonFiniteLoss(epoch, int(bad_step), value)
        timer.collect()
        if on_step is not None:
            on_step(StepInfo(epoch, step + 1, steps, ce_sum / seen, jac_sum / seen if has_r else None,
                             right / seen, sum(timer.seconds) / len(timer.seconds)))
    has_jr = "jacobian" in config.reg.names
    has_ig = "input-grad" in config.reg.names
    row = {
        "train_ce": ce_sum / seen,
        "train_jacobian_R": jac_sum / seen if has_jr else float("nan"),
        "train_input_grad": ig_sum / seen if has_ig else float("nan"),
        "train_acc": right / seen,
        "steps": steps,
        "seconds_per_step": statistics.median(timer.seconds),
        "seconds_per_step_mean": sum(timer.seconds) / len(timer.seconds),
    }
    if certified is not None:  # means over the steps that computed the bound (none in the warm-up: NaN)
        nan = float("nan")
        row.update({"train_ibp_ce": bound_sum / bound_seen if bound_seen else nan,
                    "train_ibp_certified": cert_sum / bound_seen if bound_seen else nan,
                    "ibp_eps": at.eps, "ibp_kappa": at.kappa})  # at the epoch's last step
        if certified.schedule.crown:
            row["crown_ibp_beta"] = at.beta
    return row


def _differences(saved: RunConfig, config: RunConfig) -> str:
    """'epochs 1 there, 2 here; ...': the settings in which two configs differ (device and data folder aside)."""
    there, here = saved.to_dict(), config.to_dict()
    diffs = [f"{key} {there[part].get(key)!r} there, {value!r} here"
             for part in here for key, value in here[part].items()
             if key not in ("device", "data_dir", "info") and there.get(part, {}).get(key) != value]
    if saved.data.dataset in CUSTOM_DATASETS and saved.data.dataset == config.data.dataset:
        digests = [(c.data.info or {}).get("digest") for c in (saved, config)]
        if digests[0] != digests[1]:
            diffs.append(f"the data's content digest {digests[0]} there, {digests[1]} here")
    return "; ".join(diffs) or f"run id {saved.run_id()} there, {config.run_id()} here"


def _prepare_run_dir(run_dir: Path, config: RunConfig, resume: bool, device: torch.device):
    """Create ``run_dir`` or, with ``resume``, return its saved state (None when fresh)."""
    exists = (run_dir / rundir.CONFIG).is_file()
    if exists and not resume:
        raise UserError(
            f"{run_dir} already holds a run. Pass --resume to continue it, or choose another --out."
        )
    if exists:
        saved = rundir.load_config(run_dir)
        if saved.run_id() != config.run_id():
            raise UserError(
                f"{run_dir} holds a run with another configuration ({_differences(saved, config)}); "
                "--resume needs the same options (a finished run is not extended: train a new one)."
            )
        if (run_dir / rundir.CHECKPOINT).is_file():
            checkpoint = rundir.torch_load(run_dir / rundir.CHECKPOINT, device)
            if not {"epoch", "model", "optimizer", "scheduler"} <= set(checkpoint):
                raise UserError(f"{run_dir / rundir.CHECKPOINT} is not a jrbench checkpoint.")
            if "lipschitz" in config.reg.names and LIPSCHITZ_STATE not in checkpoint:
                raise UserError(f"{run_dir / rundir.CHECKPOINT} has no {LIPSCHITZ_STATE} (the power-iteration "
                                "vectors of --reg lipschitz); delete the run directory and train it again.")
            return checkpoint
        return None
    rundir.atomic_write_json(run_dir / rundir.CONFIG, config.to_dict())
    rundir.atomic_write_json(run_dir / rundir.ENV, environment(device))
    return None


def train(config: RunConfig, run_dir: str | Path | None = None, *, resume: bool = False,
          data: Data | None = None, on_step: Callable[[StepInfo], None] | None = None,
          on_epoch: Callable[[dict], None] | None = None) -> TrainResult:
    """Train ``config``; write ``run_dir`` when given (resuming it with ``resume``).

    Raises :class:`UserError` for bad input and :class:`NonFiniteLoss` when the loss diverges
    (the run directory then keeps its last finished epoch). ``config`` is checked here
    (:func:`jrbench.training.validation.validate`), before anything is loaded or written: the
    one check of a config that is trained, the CLI's included.
    """
    validate(config)
    device = resolve_device(config.train.device)
    run_dir = Path(run_dir) if run_dir is not None else None
    data = data if data is not None else load_data(config.data)
    if config.data.dataset in CUSTOM_DATASETS and not config.data.info:
        # a folder / npz data set: its shape, classes, statistics and digest go into config.json
        # and model.pt, and every later command reads them from there (load_run, attack, certify)
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, info=data.info.record()))
    # training seeds the global generators (dropout, projections, noise); the caller's are restored
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return _train(config, device, run_dir, resume, data, on_step, on_epoch)


def _train(config: RunConfig, device: torch.device, run_dir: Path | None, resume: bool, data: Data,
           on_step, on_epoch) -> TrainResult:
    info = data.info
    torch.manual_seed(config.train.seed)
    model = build_model(config.model.name, info.input_shape, info.num_classes, info.mean,
                        info.std, model_dropout(config.reg)).to(device)
    constraint = constraint_for(model, config.reg, config.train.seed)  # refuses unsupported nets
    check_model(model, config.reg)  # --reg lipschitz-margin: a network of 1-Lipschitz layers; ibp: a chain it bounds
    steps_per_epoch = -(-len(data.train) // config.train.batch_size)
    certified = CertifiedTraining(model, config.reg, steps_per_epoch) if bound_name(config.reg) else None
    state = _prepare_run_dir(run_dir, config, resume, device) if run_dir is not None else None
    opt, sched = _make_optimizer(model, config)
    rows: list[dict] = []
    first_epoch = 1
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if constraint is not None:
            constraint.load_state_dict(state[LIPSCHITZ_STATE])
        first_epoch = int(state["epoch"]) + 1
        rows = [r for r in rundir.load_metrics(run_dir).to_dict("records") if r["epoch"] < first_epoch]
    for epoch in range(first_epoch, config.train.epochs + 1):
        start = time.perf_counter()
        lr = opt.param_groups[0]["lr"]
        row = {"epoch": epoch, "lr": lr}
        row.update(train_epoch(model, data, config, epoch, opt, device, on_step, constraint, certified))
        sched.step()
        if constraint is not None:  # before evaluating and saving: the certified bound <= K
            row["lipschitz_bound_certified"] = constraint.certify()
        row.update(evaluate(model, data.test, device, config.train.eval_batch_size,
                            config.train.jacobian_eval_examples, certified))
        row["epoch_seconds"] = time.perf_counter() - start
        rows.append(row)
        if run_dir is not None:
            _save_epoch(run_dir, model, opt, sched, config, epoch, rows, constraint)
        if on_epoch is not None:
            on_epoch(row)
    return TrainResult(model.eval(), config, pd.DataFrame(rows), run_dir)


def _save_epoch(run_dir: Path, model, opt, sched, config: RunConfig, epoch: int, rows: list[dict],
                constraint: LipschitzConstraint | None = None) -> None:
    """Metrics, then the checkpoint, then the model: each file whole.

    Resuming starts after the checkpoint's epoch and drops later metrics rows, so a stop
    between any two writes loses at most the epoch in flight, which is then trained again.
    """
    state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    rundir.atomic_write_csv(run_dir / rundir.METRICS, pd.DataFrame(rows))
    checkpoint = {"epoch": epoch, "model": state_dict, "optimizer": opt.state_dict(),
                  "scheduler": sched.state_dict()}
    if constraint is not None:
        checkpoint[LIPSCHITZ_STATE] = constraint.state_dict()
    rundir.atomic_torch_save(run_dir / rundir.CHECKPOINT, checkpoint)
    rundir.atomic_torch_save(run_dir / rundir.MODEL, {
        "state_dict": state_dict, "config": config.to_dict(), "epoch": epoch,
        "format": "jrbench-model-1",
    })
