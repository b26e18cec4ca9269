"""Interval bound propagation (jrbench.certify.ibp): soundness at random points and corners of the box,
exact bounds of a linear model, eps = 0 is clean accuracy, and clear refusals."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from jrbench.errors import UserError
from jrbench.certify.ibp import certified_linf, interval_bounds, margin_lower_bounds, supports
from jrbench.models.lipschitz import strictly_correct
from jrbench.models.architectures import Classifier, PixelClassifier, build_model


def linear_model(classes=4, std=0.25):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, classes))
    return Classifier(net, [0.5], [std], (1, 6, 6), classes, "linear")


def mixed_model(last_linear=True):
    """Rules IBP has beyond the Lipschitz ones too: grouped convolutions, padding='same',
    AvgPool2d with ceil_mode, eval BatchNorm, overlapping max pooling, all the activations."""
    torch.manual_seed(1)
    bn = nn.BatchNorm2d(4)
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.2, 3), bn.weight.data.uniform_(-2, 2)
    head = [nn.Linear(16, 5)] if last_linear else [nn.Linear(16, 5), nn.Tanh()]
    net = nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1), bn, nn.LeakyReLU(0.1),
                        nn.Conv2d(4, 4, 3, padding="same", groups=2), nn.ReLU6(),
                        nn.AvgPool2d(2, 1, ceil_mode=True), nn.MaxPool2d(3, 2), nn.Sigmoid(),
                        nn.Flatten(), nn.Linear(16, 16), nn.Tanh(), nn.Dropout(0.5), *head)
    return PixelClassifier(net, (2, 12, 12), 5, "mixed").eval()


def models():
    torch.manual_seed(2)
    lenet = build_model("lenet", (1, 16, 16), 10, [0.13], [0.31], dropout=0.5).eval()
    dilated = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, dilation=2, groups=2), nn.ReLU(), nn.Flatten(),
                            nn.Linear(4 * 5 * 5, 3))
    return {"lenet": lenet, "mixed": mixed_model(), "mixed-no-last-linear": mixed_model(False),
            "dilated": PixelClassifier(dilated, (2, 7, 7), 3, "dilated").eval()}


def margins(logits, labels):
    """(N, C): f_y - f_j, +inf on the label's own column (as margin_lower_bounds)."""
    return (logits.gather(1, labels[:, None]) - logits).scatter(1, labels[:, None], math.inf)


@pytest.mark.parametrize("name", ["lenet", "mixed", "mixed-no-last-linear", "dilated"])
def test_bounds_hold_at_random_points_and_corners_of_the_box(name):
    model = models()[name]
    model64 = copy.deepcopy(model).double()
    torch.manual_seed(3)
    x = torch.rand(4, *model.input_shape)
    x[0] = 0.0  # a box clipped at 0
    eps = 0.02
    labels = torch.randint(0, model.num_classes, (4,))
    lo_box, hi_box = (x.double() - eps).clamp(0, 1), (x.double() + eps).clamp(0, 1)
    lo, hi = interval_bounds(model, lo_box, hi_box)
    low = margin_lower_bounds(model, x, labels, eps)
    assert lo.dtype == torch.float64 and (lo <= hi).all()
    assert torch.isinf(low.gather(1, labels[:, None])).all()
    for i in range(4):
        t = torch.rand(128, *model.input_shape, dtype=torch.float64)
        corners = (torch.rand_like(t[:32]) < 0.5).double()
        points = torch.cat([lo_box[i] + t * (hi_box[i] - lo_box[i]), lo_box[i] + corners * (hi_box[i] - lo_box[i])])
        with torch.no_grad():
            logits = model64(points)
        tol = 1e-9 * (1 + logits.abs())
        assert (logits >= lo[i] - tol).all() and (logits <= hi[i] + tol).all()
        assert (margins(logits, labels[i].expand(len(points))) >= low[i] - tol).all()
    # margins from the last-layer elision are at least as tight as from the logit bounds
    assert (low >= lo.gather(1, labels[:, None]) - hi - 1e-12).all()


def test_linear_model_bounds_are_exact_when_the_box_is_not_clipped():
    model = linear_model()
    w, b = model.net[1].weight.detach().double(), model.net[1].bias.detach().double()
    torch.manual_seed(4)
    x, eps = 0.1 + 0.8 * torch.rand(8, 1, 6, 6, dtype=torch.float64), 0.05
    f = (x.flatten(1) - 0.5) / 0.25 @ w.T + b
    lo, hi = interval_bounds(model, x - eps, x + eps)
    assert torch.allclose(lo, f - eps * w.abs().sum(1) / 0.25, rtol=1e-10, atol=1e-12)
    assert torch.allclose(hi, f + eps * w.abs().sum(1) / 0.25, rtol=1e-10, atol=1e-12)
    labels = torch.randint(0, 4, (8,))
    d = w[labels][:, None, :] - w[None]  # (N, C, F): W_y - W_j
    expect = margins(f, labels) - eps * d.abs().sum(2) / 0.25
    assert torch.allclose(margin_lower_bounds(model, x, labels, eps), expect, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["lenet", "mixed", "mixed-no-last-linear"])
def test_eps_zero_is_clean_accuracy_and_certificates_shrink_with_eps(name):
    model = models()[name]
    torch.manual_seed(5)
    x = torch.rand(40, *model.input_shape)
    with torch.no_grad():
        logits = model(x)
    labels = torch.where(torch.rand(40) < 0.8, logits.argmax(1), torch.randint(0, model.num_classes, (40,)))
    correct = strictly_correct(logits, labels)
    clear = margins(logits, labels).amin(1).abs() > 1e-4
    at_zero = certified_linf(model, x, labels, 0.0, batch_size=16)
    assert not (at_zero & ~correct).any() and torch.equal(at_zero[clear], correct[clear])
    previous = at_zero
    for eps in (1e-3, 1e-2, 0.1):
        now = certified_linf(model, x, labels, eps)
        assert not (now & ~previous).any()
        previous = now
    assert certified_linf(model, x[:0], labels[:0], 0.1).shape == (0,)


def test_a_trained_linear_model_certifies_exactly_its_closed_form():
    model = linear_model(classes=3, std=0.5)
    torch.manual_seed(6)
    x = 0.2 + 0.6 * torch.rand(40, 1, 6, 6)
    with torch.no_grad():
        logits = model(x).double()
    labels = logits.argmax(1)
    w = model.net[1].weight.detach().double()
    slack = ((w[labels][:, None, :] - w[None]).abs().sum(2) / 0.5).scatter(1, labels[:, None], 1.0)
    largest = (margins(logits, labels) / slack).amin(1)  # the exact L-inf radius
    eps = 0.05
    expect = largest > eps
    decided = (largest - eps).abs() > 1e-5
    assert 0 < int(expect.sum()) < 40
    assert torch.equal(certified_linf(model, x, labels, eps)[decided], expect[decided])


def test_model_modes_are_restored():
    model = mixed_model().train()
    certified_linf(model, torch.rand(3, 2, 12, 12), torch.zeros(3, dtype=torch.long), 0.01)
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("net, path, cls", [
    (nn.Sequential(nn.Flatten(), nn.Unflatten(1, (8, 8)), nn.LSTM(8, 4)), "net.2", "LSTM"),
    (nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False))),
     "net.0.1", "BatchNorm2d without running statistics"),
    (nn.Sequential(nn.Flatten(), nn.Linear(64, 3), nn.LeakyReLU(-0.5)), "net.2", "LeakyReLU with a negative slope"),
    (nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular")), "net.0", "Conv2d with padding_mode"),
])
def test_unsupported_layers_are_named(net, path, cls):
    model = Classifier(net, [0.5], [0.5], (1, 8, 8), 3, "odd")
    message = supports(model)
    assert message and f"layer {path} ({cls}" in message and message.startswith("certify --ibp")
    with pytest.raises(UserError, match=f"layer {path} "):
        certified_linf(model, torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), 0.1)


def test_bad_inputs_are_user_errors():
    model = linear_model()
    x, y = torch.rand(2, 1, 6, 6), torch.zeros(2, dtype=torch.long)
    for call, match in [(lambda: margin_lower_bounds(model, x, y, -0.1), "eps"),
                        (lambda: margin_lower_bounds(model, x + 2, y, 0.1), r"\[0, 1\]"),
                        (lambda: margin_lower_bounds(model, torch.rand(2, 1, 5, 5), y, 0.1), "shape"),
                        (lambda: interval_bounds(model, x + 0.1, x), "lower <= upper"),
                        (lambda: certified_linf(model, x, y, 0.1, batch_size=0), "batch_size")]:
        with pytest.raises(UserError, match=match):
            call()
    assert supports(model) is None and supports(mixed_model()) is None
