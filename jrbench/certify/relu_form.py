"""A network with MaxMin activations rewritten as a chain of Linear / Conv2d and ReLU, the same
function on the pixel box [0, 1] in exact arithmetic, so that CROWN (:mod:`jrbench.certify.crown`),
alpha-CROWN and complete verification, written for ReLU, certify it.

max(a, b) = b + relu(a - b) and min(a, b) = a - relu(a - b), but a chain has no skip connection to
carry a and b past the ReLU. They pass through it shifted: relu(a + c_a) = a + c_a whenever
a + c_a >= 0, and c_a is taken from the interval bounds of a over the whole pixel box
(:mod:`jrbench.certify.ibp`, rounded outward: c_a = max(0, -lower) over the channel, plus a margin),
so on every input in [0, 1] the shifted neuron is active, and CROWN, whose interval pass over a
smaller box gives a lower bound at least as high, finds it stable. A MaxMin becomes three layers

    T: (a, b) -> (a - b, a + c_a, b + c_b),   ReLU,   S: (r, s_a, s_b) -> (s_b - c_b + r, s_a - c_a - r)

(Linear, or 1x1 Conv2d over channels): one neuron a - b per pair is relaxed, as a MaxMin needs.
T's and S's weights are 0 and +-1 and S's biases the negated shifts, so the form computes the chain
of the model's layers exactly, with no arithmetic on its weights (folding T into the layer before
would round w_a - w_b and b + c). CROWN tightens the input bounds of every nonlinearity but the
first by its backward pass; so that this covers the first MaxMin too, the form starts with a ReLU
that is stable on the pixel box (z + c_0 through a ReLU, then - c_0: identity maps). AOL layers enter
as the ordinary layers they compute (:func:`jrbench.models.lipschitz.layer_chain`, in float64). The
form runs in float64 (its inputs are cast); tests/test_lipnet.py checks it against the model.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import UserError
from ..models.architectures import Classifier, Normalize, eval_mode
from ..models.lipschitz import layer_chain
from ..models.onelip import MaxMin
from .ibp import _box, _center, _step
from .rounding import up

SHIFT_MARGIN = 1e-3  # relative and absolute margin added to each shift c (any c above -lower is exact)


class ReluForm(Classifier):
    """The rewritten network: a :class:`Classifier` in float64 that casts its input to float64."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.to(torch.float64))


def has_maxmin(model: nn.Module) -> bool:
    return any(isinstance(m, MaxMin) for m in model.modules())


def _shifts(lower: torch.Tensor) -> torch.Tensor:
    """Per channel (dimension 0) of one example's lower bounds: c = max(0, -lower) over the
    channel's positions, plus the margin; at least 0."""
    need = (-lower).clamp_min(0).reshape(lower.shape[0], -1).amax(1)
    return up(need * (1 + SHIFT_MARGIN) + SHIFT_MARGIN)


def _matrix_layer(matrix: torch.Tensor, bias: torch.Tensor, spatial: bool) -> nn.Module:
    """The linear map ``matrix`` (out, in) plus ``bias`` over dimension 1: a Linear, or a 1x1 Conv2d
    over channels when ``spatial``."""
    out_f, in_f = matrix.shape
    if spatial:
        layer = nn.Conv2d(in_f, out_f, 1, dtype=torch.float64)
        layer.weight.data.copy_(matrix[:, :, None, None])
    else:
        layer = nn.Linear(in_f, out_f, dtype=torch.float64)
        layer.weight.data.copy_(matrix)
    layer.bias.data.copy_(bias)
    return layer


def _maps(half: int, c_a: torch.Tensor, c_b: torch.Tensor):
    """T (3 half, 2 half) with its shift (3 half,), and S (2 half, 3 half) with its bias (2 half,)."""
    eye = torch.eye(half, dtype=torch.float64)
    zero = torch.zeros(half, half, dtype=torch.float64)
    t = torch.cat([torch.cat([eye, -eye], 1), torch.cat([eye, zero], 1), torch.cat([zero, eye], 1)])
    shift = torch.cat([torch.zeros(half, dtype=torch.float64), c_a, c_b])
    s = torch.cat([torch.cat([eye, zero, eye], 1), torch.cat([-eye, eye, zero], 1)])
    return t, shift, s, torch.cat([-c_b, -c_a])


def relu_form(model: Classifier, flag: str = "--crown") -> ReluForm:
    """The ReLU form of ``model`` (module docstring); :class:`UserError` for a layer the chain has no
    rule for, or a MaxMin whose input is not split into whole channels."""
    model = copy.deepcopy(model).double()  # AOL layers' weights rescaled in float64 and kept so
    chain = layer_chain(model, flag, ibp=True)
    if chain[0].kind != "normalize":
        raise UserError(f"certify {flag} rewrites MaxMin with ReLU for models whose first layer normalizes.")
    ones = torch.ones((1, *model.input_shape), dtype=torch.float64)
    mu, r = _center(torch.zeros_like(ones), ones)  # the whole pixel box
    layers: list[nn.Module] = []
    with eval_mode(model), torch.no_grad():
        for layer in chain:
            m = layer.module
            if isinstance(m, Normalize):
                mu, r = _step(layer.kind, m, mu, r)
                shift = _shifts(_box(mu, r)[0][0])  # z + c_0 >= 0 on the pixel box: a stable first ReLU
                identity = torch.eye(len(shift), dtype=torch.float64)
                layers += [_matrix_layer(identity, shift, True), nn.ReLU(), _matrix_layer(identity, -shift, True)]
                continue
            if isinstance(m, MaxMin):
                lower = _box(mu, r)[0][0]
                if lower.shape[0] % 2:
                    raise UserError(f"certify {flag}: MaxMin at {layer.path} has an odd number of channels.")
                half = lower.shape[0] // 2
                t, shift, s, s_bias = _maps(half, _shifts(lower[:half]), _shifts(lower[half:]))
                spatial = lower.dim() == 3
                layers += [_matrix_layer(t, shift, spatial), nn.ReLU(), _matrix_layer(s, s_bias, spatial)]
            else:
                layers.append(copy.deepcopy(m))
            mu, r = _step(layer.kind, m, mu, r)
    normalize = model.normalize
    form = ReluForm(nn.Sequential(*layers), normalize.mean.detach().double().view(-1).tolist(),
                    normalize.std.detach().double().view(-1).tolist(), model.input_shape, model.num_classes,
                    f"{model.name} (ReLU form)")
    return form.to(device=next(iter(model.buffers())).device, dtype=torch.float64).eval()


def model_for_crown(model: nn.Module, flag: str = "--crown") -> nn.Module:
    """What CROWN certifies for ``model``: its ReLU form when it has MaxMin activations, else itself."""
    if not has_maxmin(model):
        return model
    if not isinstance(model, Classifier):
        raise UserError(f"certify {flag} rewrites MaxMin with ReLU for jrbench classifiers with a normalization "
                        f"only, not a {type(model).__name__}.")
    return relu_form(model, flag)

