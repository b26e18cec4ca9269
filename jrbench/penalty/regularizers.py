"""Regularizers, in a registry and combinable: none, l2, dropout, jacobian, input-grad, lipschitz, noise,
lipschitz-margin, gloro, ibp, crown-ibp.

Each acts in one place: ``l2`` through SGD weight decay, ``dropout`` through the model
(p before each hidden fully connected layer), ``jacobian`` and ``input-grad`` through a
penalty added to the cross-entropy loss, ``noise`` on the training batch (here), ``lipschitz``
on the weights after each SGD step (:mod:`jrbench.penalty.lipschitz_constraint`). Both penalties are
taken with respect to the normalized input z = (x - mean) / std, as in the paper and the
authors' code.

- jacobian (Hoffman, Roberts, Yaida 2019): R = 1/2 * batch mean of ||J_z||_F^2,
  estimated with ``n_proj`` random projections (-1: exact); with ``jr_subsample`` = K,
  R is computed on K samples of each (shuffled) batch only: still unbiased, K/B of the cost.
  With train-mode BatchNorm, J_z is taken with each BatchNorm held at the batch statistics of
  the step's one cross-entropy forward (:func:`step_loss`), so it stays per example.
- input-grad (double backpropagation, Drucker & LeCun 1992): 1/2 * batch mean of
  ||d CE_b / d z_b||^2 for the per-example cross-entropy CE_b.
- noise (Gaussian data augmentation: Bishop 1995, its first-order equivalence to a Jacobian
  penalty; Cohen, Rosenfeld, Kolter 2019, the training randomized smoothing assumes): pixels
  x + sigma N(0, I), clipped to [0, 1], before normalization; the penalties see the noisy x.
- lipschitz (Gouk, Frank, Pfahringer, Cridge 2021): every weight layer projected after each
  step so that the certified L2 Lipschitz bound of the model in pixel space is at most K.
- lipschitz-margin (Tsuzuku, Sato, Sugiyama 2018, "Lipschitz-margin training"), for networks
  1-Lipschitz by construction (aol-mlp, aol-lenet), whose constant L (pixels -> logits, max 1/std)
  is known without computing anything (:func:`jrbench.models.lipschitz.construction_bound`): every
  logit but the label's is raised by sqrt(2) L eps before the cross-entropy, which then asks for a
  logit gap that certifies the L2 radius eps (the certificate of ``jrbench certify --one-lipschitz``).
  With temperature T the loss is T CE(logits' / T) (Béthune et al. 2022, "Pay attention to your
  loss": a 1-Lipschitz network's logits cannot grow to saturate the cross-entropy, so its scale
  matters); it replaces the cross-entropy in the total, and ``ce`` stays the plain cross-entropy.
- gloro (Leino, Wang, Fredrikson 2021, "Globally-robust neural networks"), for the same networks:
  the logits get an extra class, "bottom", whose logit is max over j != c of (logit_j + sqrt(2) L eps)
  with c the predicted class, and the cross-entropy over the C + 1 logits is taken with the true
  label. The bottom logit is below the predicted one exactly when the construction's certificate
  holds at eps (logit gap > sqrt(2) L eps), so the loss rewards certified correct predictions and
  charges every uncertified one, as the GloRo net's own prediction does (the bound K_ij is the
  global sqrt(2) L of every logit pair, the certificate of ``jrbench certify --one-lipschitz``). It
  replaces the cross-entropy in the total, as lipschitz-margin does.
- ibp, crown-ibp (Gowal et al. 2018; Zhang et al. 2020): certified training, the cross-entropy
  mixed with that of the worst-case logits of the L-inf ball, from interval bounds (or CROWN-IBP),
  on a warm-up and ramp schedule (:mod:`jrbench.penalty.certified_training`).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import MARGIN_LOSSES, RegConfig
from ..errors import UserError
from . import vjp_tape
from .certified_training import BoundStep, CertifiedTraining, bound_name, training_chain
from .jacobian import (autograd_vjp, batch_statistic_norms, frobenius_sq_from_vjp, frozen_batch_norm,
                       recorded_batch_stats)
from ..data.datasets import DATASETS
from ..models.architectures import Classifier, build_model
from ..models.lipschitz import construction_constant, construction_problem
from ..registry import Registry


@dataclass(frozen=True)
class RegularizerSpec:
    name: str
    description: str


REGULARIZERS: Registry[RegularizerSpec] = Registry("regularizer")
for _name, _desc in [
    ("none", "plain SGD with momentum"),
    ("l2", "weight decay (--weight-decay) in SGD"),
    ("dropout", "dropout (--dropout) before each hidden fully connected layer"),
    ("jacobian", "1/2 ||d logits/dz||_F^2 by random projections (--lambda-jr, --n-proj, --jr-subsample)"),
    ("input-grad", "double backpropagation: 1/2 ||d CE/dz||^2 (--lambda-ig)"),
    ("lipschitz", "weights projected after each step so the certified L2 Lipschitz bound in pixels is "
                  "<= K (--lipschitz-bound; Gouk et al. 2021)"),
    ("noise", "Gaussian data augmentation: pixels x + sigma N(0, I) clipped to [0, 1] (--noise-sigma)"),
    ("lipschitz-margin", "1-Lipschitz models: sqrt(2) L eps added to the other logits before T CE(./T) "
                         "(--margin-eps, --margin-temperature; Tsuzuku et al. 2018)"),
    ("gloro", "1-Lipschitz models: GloRo's bottom class, max over j != predicted of logit_j + sqrt(2) L eps, "
              "in the cross-entropy (--margin-eps; Leino et al. 2021)"),
    ("ibp", "certified training against interval bounds of the L-inf ball (--ibp-eps, --ibp-kappa, "
            "--ibp-warmup-epochs, --ibp-ramp-epochs; Gowal et al. 2018)"),
    ("crown-ibp", "certified training against beta CROWN-IBP + (1 - beta) IBP bounds, beta 1 -> 0 over the "
                  "ramp (the ibp options; Zhang et al. 2020)"),
]:
    REGULARIZERS.register(_name)(RegularizerSpec(_name, _desc))


def add_noise(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Pixels ``x`` (B, C, H, W) in [0, 1] plus Gaussian noise of std ``sigma`` (pixel units),
    clipped to [0, 1]; drawn on ``x``'s device and dtype from the global RNG (seeded per epoch)."""
    return (x + sigma * torch.randn_like(x)).clamp_(0.0, 1.0)


MARGIN_FLAG = "--reg lipschitz-margin"


def margin_loss(logits: torch.Tensor, y: torch.Tensor, offset, temperature: float) -> torch.Tensor:
    """Lipschitz-margin cross-entropy: T CE((logits + offset (1 - e_y)) / T), the batch mean;
    ``offset`` (logit units) = sqrt(2) L eps."""
    shifted = logits + offset * (1 - F.one_hot(y, logits.shape[1]).to(logits.dtype))
    return temperature * F.cross_entropy(shifted / temperature, y)


def gloro_loss(logits: torch.Tensor, y: torch.Tensor, offset) -> torch.Tensor:
    """GloRo cross-entropy (Leino et al. 2021): CE over the C + 1 logits [logits, bottom] with the
    true labels y, bottom = max over j != c of (logits_j + offset), c = argmax logits (the
    prediction, not differentiated), the batch mean; ``offset`` (logit units) = sqrt(2) L eps.
    logits (N, C), y (N,)."""
    predicted = logits.detach().argmax(1, keepdim=True)
    others = (logits + offset).scatter(1, predicted, -math.inf)
    bottom = others.amax(1, keepdim=True)
    return F.cross_entropy(torch.cat([logits, bottom], 1), y)


def margin_offset(model: Classifier, reg: RegConfig) -> torch.Tensor:
    """sqrt(2) L eps of ``--reg lipschitz-margin`` and ``--reg gloro``, a 0-d tensor on the model's
    device (no host read): L the model's constant by construction (:class:`UserError` for a model
    not built from 1-Lipschitz layers)."""
    return math.sqrt(2) * reg.margin_eps * construction_constant(model, _margin_flag(reg))


def _margin_flag(reg: RegConfig) -> str:
    """'--reg lipschitz-margin' or '--reg gloro', whichever ``reg`` names (messages name it)."""
    return next((f"--reg {n}" for n in MARGIN_LOSSES if n in reg.names), MARGIN_FLAG)


def check_model(model: Classifier, reg: RegConfig) -> None:
    """Raise :class:`UserError` when ``reg`` needs what ``model`` lacks (a margin: a network of
    1-Lipschitz layers; ``--jr-backend tape``: a net the tape covers; ``ibp``, ``crown-ibp``: a chain
    of layers their bound has rules for), before any training; the model may be on the meta device."""
    if "jacobian" in reg.names:
        jacobian_path(model, reg)
    if set(MARGIN_LOSSES) & set(reg.names):
        problem = construction_problem(model, _margin_flag(reg))
        if problem is not None:
            raise UserError(problem)
    if bound_name(reg) is not None:
        training_chain(model, bound_name(reg))


def check_model_name(name: str, dataset: str, reg: RegConfig) -> None:
    """:func:`check_model` for ``--reg lipschitz-margin``, ``gloro``, ``ibp`` and ``crown-ibp`` with registered
    model ``name`` on registered ``dataset`` (built on the meta device: no memory, no data); a folder
    or npz data set's shape is known from its data only, so its check waits for training."""
    if not set(MARGIN_LOSSES) & set(reg.names) and bound_name(reg) is None:
        return
    info = DATASETS.get(dataset).info
    if info is None:
        return
    with torch.device("meta"):
        model = build_model(name, info.input_shape, info.num_classes, info.mean, info.std)
    check_model(model, reg)


def model_dropout(reg: RegConfig) -> float:
    return reg.dropout if "dropout" in reg.names else 0.0


def weight_decay(reg: RegConfig) -> float:
    return reg.weight_decay if "l2" in reg.names else 0.0


@dataclass
class StepLoss:
    """The loss of one training batch: ``total`` to backpropagate and its parts (detached)."""

    total: torch.Tensor
    ce: torch.Tensor
    logits: torch.Tensor
    jacobian: torch.Tensor | None = None    # R, before lambda
    input_grad: torch.Tensor | None = None  # before lambda
    bound_ce: torch.Tensor | None = None    # ibp / crown-ibp: CE of the worst-case logits, before 1 - kappa
    certified: torch.Tensor | None = None   # ibp / crown-ibp: examples the training bound certifies


@dataclass(frozen=True)
class BoundTerm:
    """The certified-training term of a step: the model's :class:`CertifiedTraining` and its schedule's step."""

    training: CertifiedTraining
    at: BoundStep


def jacobian_path(model: Classifier, reg: RegConfig) -> str:
    """Which code computes the Jacobian penalty of ``reg`` for ``model``: 'tape', 'autograd' or 'jvp'.

    ``jr_backend`` auto takes the explicit-VJP tape where the net allows it; 'tape' insists on
    it (a UserError for a net it does not cover); 'autograd' forces the double backward.
    """
    if reg.jr_estimator == "jvp":
        return "jvp"
    if reg.jr_backend == "autograd":
        return "autograd"
    if vjp_tape.supports(model.net):
        return "tape"
    if reg.jr_backend == "tape":
        raise UserError(f"--jr-backend tape needs a sequential net of {', '.join(t.__name__ for t in vjp_tape.SUPPORTED)}"
                        f" layers; this model's net is not one. Use --jr-backend auto or autograd.")
    return "autograd"


def jvp_frobenius_sq(net, z: torch.Tensor, n_proj: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (K, C) of ``net`` at ``z`` (K, ...) and the estimate of ||J_z||_F^2 per example (K,).

    Input-side estimator: ||J u||^2 with u ~ N(0, I_D) per example, E[u u^T] = I, so
    E ||J u||^2 = tr(J^T J) = ||J||_F^2; the mean over ``n_proj`` directions. Each J u is one
    forward-mode product (``torch.func.jvp``), which also returns the logits: no double
    backward, so any differentiable net works (``resnet18`` included), and the weight gradient
    is one reverse pass through the forward-mode graph. A net with train-mode BatchNorm gets
    one ordinary forward at ``z`` (the logits; running statistics updated once), then the
    products with every BatchNorm held at that forward's batch statistics
    (:func:`jrbench.penalty.jacobian.frozen_batch_norm`), whatever ``n_proj``. Directions are
    drawn on ``z``'s device and dtype from the global RNG.
    """
    norms = batch_statistic_norms(net)
    if norms:
        with recorded_batch_stats(norms) as stats:
            logits = net(z)
        with frozen_batch_norm(stats):
            return logits, jvp_frobenius_sq(net, z, n_proj)[1]
    total, logits = None, None
    for _ in range(n_proj):
        u = torch.randn(z.shape, device=z.device, dtype=z.dtype)
        with warnings.catch_warnings():  # torch.func.jvp's own first use calls the deprecated torch.jit.script
            warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated", category=FutureWarning)
            out, ju = torch.func.jvp(net, (z,), (u,))
        logits = out if logits is None else logits
        sq = ju.reshape(ju.shape[0], -1).pow(2).sum(1)
        total = sq if total is None else total + sq
    return logits, total / n_proj


def margin_scale(reg: RegConfig, step: int, steps_per_epoch: int) -> float:
    """The share of ``--margin-eps`` at SGD step ``step`` (0-based over the whole run):
    min(1, (step + 1) / R) with R = ``margin_ramp_epochs`` x ``steps_per_epoch`` steps; 1 without a ramp."""
    ramp = round(reg.margin_ramp_epochs * steps_per_epoch)
    return 1.0 if ramp <= 0 else min(1.0, (step + 1) / ramp)


def step_loss(model: Classifier, x: torch.Tensor, y: torch.Tensor, reg: RegConfig, step: int = 0,
              bound: BoundTerm | None = None, margin_share: float = 1.0) -> StepLoss:
    """Cross-entropy plus the penalties of ``reg`` for pixels ``x`` (B, C, H, W), labels ``y`` (B,).

    The Jacobian penalty takes the path of :func:`jacobian_path`: the explicit-VJP route of
    :mod:`jrbench.penalty.vjp_tape` when the net allows it (all the registry's sequential models),
    else autograd's double backward (both give the same value and gradients,
    tests/test_vjp_tape.py), or forward mode for ``jr_estimator`` 'jvp'. With ``jr_every`` k the
    penalty is computed on steps where ``step`` % k == 0 only, weighted lambda_jr * k, so that
    its expected gradient over k steps is unchanged. With ``noise`` the batch is
    :func:`add_noise`'s x + sigma N(0, I) in [0, 1] before anything else sees it.

    BatchNorm that normalizes with batch statistics (train mode) couples the examples, while
    the penalties are per example. Here: the cross-entropy forward runs once over the whole
    batch, as in plain training (its batch statistics, its gradient through them, running
    statistics updated once per step). J_z (and input-grad's d CE_b / d z_b) is the Jacobian of
    the net with every such BatchNorm held at THAT forward's batch mean and biased variance,
    detached: each BatchNorm is the per-channel affine map it was for this batch, so J_b
    depends on example b alone. A second pass computes it, over the K penalized rows only
    (all rows with input-grad), with no running-statistic update, whatever the path
    (autograd, sub-sample, jvp with any ``n_proj``, ``jr_every``); the tape covers no
    BatchNorm. Dropout in such a net draws its masks afresh in that pass. Nets without
    batch-statistic BatchNorm (eval-mode BatchNorm is already affine) take the single-forward
    paths, unchanged.

    With ``ibp`` or ``crown-ibp`` the cross-entropy becomes kappa CE + (1 - kappa) CE(worst-case
    logits at eps) for ``bound``'s step of the schedule (the training loop's); without ``bound``, the
    schedule's steady step (:meth:`CertifiedTraining.steady`, what ``jrbench overhead`` times). With
    kappa = 1 (the warm-up) the bound is not computed. The penalties are added on top.
    """
    if "noise" in reg.names:
        x = add_noise(x, reg.noise_sigma)
    use_jr = "jacobian" in reg.names and reg.lambda_jr > 0 and step % reg.jr_every == 0
    use_ig = "input-grad" in reg.names and reg.lambda_ig > 0
    lambda_jr = reg.lambda_jr * reg.jr_every
    z = model.normalize(x)
    batch = x.shape[0]
    k = batch if not use_jr or reg.jr_subsample is None else min(reg.jr_subsample, batch)
    path = jacobian_path(model, reg) if use_jr else None
    vjp = None  # v (k, C) -> J_z^T v for the first k rows
    frob_sq = None  # or the per-example estimate itself (jvp)
    ig_out = ig_in = None  # input-grad: d ig_out / d ig_in, when not d (CE * B) / d z
    norms = batch_statistic_norms(model.net) if use_jr or use_ig else []
    if norms:  # one CE forward; the penalties with its batch statistics frozen (docstring)
        with recorded_batch_stats(norms) as stats:
            logits = model.net(z)
        rows = batch if use_ig else k
        with frozen_batch_norm(stats):
            if path == "jvp":
                frob_sq = jvp_frobenius_sq(model.net, z[:k].detach(), reg.n_proj)[1]
            if use_ig or (use_jr and path != "jvp"):
                z_frozen = z[:rows].detach().requires_grad_(True)
                logits_frozen = model.net(z_frozen)
        if use_jr and path != "jvp":  # 'autograd': the tape supports no BatchNorm
            full = autograd_vjp(logits_frozen[:k], z_frozen, create_graph=True)
            vjp = full if rows == k else (lambda v: full(v)[:k])  # rows k: are zero: frozen stats
        if use_ig:
            ig_out, ig_in = F.cross_entropy(logits_frozen, y, reduction="sum"), z_frozen
    elif path == "jvp" and not use_ig:
        logits_jr, frob_sq = jvp_frobenius_sq(model.net, z[:k].detach(), reg.n_proj)
        logits = logits_jr if k == batch else torch.cat([logits_jr, model.net(z[k:])])
    elif path == "tape" and not use_ig:
        logits, vjp = vjp_tape.forward(model.net, z.detach(), k)
    elif use_jr and k < batch and not use_ig:
        # Two forwards so that the double backward runs over the K sub-sampled rows only.
        z_jr = z[:k].detach().requires_grad_(True)
        logits_jr = model.net(z_jr)
        logits = torch.cat([logits_jr, model.net(z[k:])])
        vjp = autograd_vjp(logits_jr, z_jr, create_graph=True)
    else:
        z = z.detach().requires_grad_(use_jr or use_ig)
        logits = model.net(z)
        if path == "jvp":  # with input-grad: a forward of its own for the input-side estimate
            frob_sq = jvp_frobenius_sq(model.net, z[:k].detach(), reg.n_proj)[1]
        elif use_jr:
            full = autograd_vjp(logits[:k], z, create_graph=True)
            vjp = lambda v: full(v)[:k]  # noqa: E731  (rows k: of the gradient are zero)
    ce = F.cross_entropy(logits, y)
    total = ce
    if "lipschitz-margin" in reg.names:
        total = margin_loss(logits, y, margin_share * margin_offset(model, reg), reg.margin_temperature)
    elif "gloro" in reg.names:
        total = gloro_loss(logits, y, margin_share * margin_offset(model, reg))
    out = StepLoss(total, ce.detach(), logits.detach())
    if bound is None and bound_name(reg) is not None:
        training = CertifiedTraining(model, reg)
        bound = BoundTerm(training, training.steady())
    if bound is not None and bound.at.kappa < 1:
        part = bound.training.loss(x, y, logits.detach(), bound.at)
        total = bound.at.kappa * ce + (1 - bound.at.kappa) * part.ce
        out.bound_ce, out.certified = part.ce.detach(), part.certified
    if use_jr:
        if frob_sq is None:
            frob_sq = frobenius_sq_from_vjp(vjp, k, model.num_classes, logits, reg.n_proj)
        r = 0.5 * frob_sq.mean()
        total = total + lambda_jr * r
        out.jacobian = r.detach()
    if use_ig:
        if ig_out is None:
            ig_out, ig_in = ce * batch, z
        (g,) = torch.autograd.grad(ig_out, ig_in, create_graph=True)
        ig = 0.5 * g.reshape(batch, -1).pow(2).sum(1).mean()
        total = total + reg.lambda_ig * ig
        out.input_grad = ig.detach()
    out.total = total
    return out
