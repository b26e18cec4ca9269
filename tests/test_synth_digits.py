"""synth-digits: shapes, determinism by seed, balance, and that it is learnable but not trivial."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from jrbench.models.architectures import build_model
from jrbench.data.synth_digits import (
    CHUNK, SYNTH_DIGITS_MEAN, SYNTH_DIGITS_STD, make_synth_digits, measure_mean_std,
)


def test_shapes_dtypes_and_label_range():
    images, labels = make_synth_digits(700, seed=3)
    assert images.shape == (700, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (700,) and labels.dtype == torch.int64
    assert images.device.type == "cpu" and labels.device.type == "cpu"
    assert labels.min() == 0 and labels.max() == 9
    assert images.max() > 200  # strokes reach near-full intensity
    corners = images[:, 0, :3, :3].float().mean() / 255
    assert corners < 0.1  # mostly dark background


def test_empty_and_negative_n():
    images, labels = make_synth_digits(0, seed=0)
    assert images.shape == (0, 1, 28, 28) and labels.shape == (0,)
    with pytest.raises(ValueError):
        make_synth_digits(-1, seed=0)


def test_deterministic_and_independent_of_global_rng():
    state = torch.get_rng_state()
    torch.manual_seed(123)
    a_images, a_labels = make_synth_digits(300, seed=7)
    torch.manual_seed(456)
    torch.rand(1000)
    b_images, b_labels = make_synth_digits(300, seed=7)
    assert torch.equal(a_images, b_images) and torch.equal(a_labels, b_labels)
    # the global RNG is neither reseeded nor advanced
    torch.manual_seed(99)
    expected = torch.rand(5)
    torch.manual_seed(99)
    make_synth_digits(50, seed=1)
    assert torch.equal(torch.rand(5), expected)
    torch.set_rng_state(state)


def test_same_bytes_for_any_thread_count_and_threads_restored():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two, _ = make_synth_digits(600, seed=4)
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        one, _ = make_synth_digits(600, seed=4)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


def test_prefix_property_across_chunks():
    n = CHUNK + 37
    images, labels = make_synth_digits(n, seed=5)
    for k in (10, CHUNK, CHUNK + 1):
        k_images, k_labels = make_synth_digits(k, seed=5)
        assert torch.equal(images[:k], k_images) and torch.equal(labels[:k], k_labels)


def test_different_seeds_differ():
    a, ya = make_synth_digits(200, seed=0)
    b, yb = make_synth_digits(200, seed=1)
    assert not torch.equal(ya, yb)
    same_label = ya == yb
    diff = (a[same_label].float() - b[same_label].float()).abs().mean(dim=(1, 2, 3))
    assert (diff > 5).all()  # images of the same class still differ clearly
    # chunks of one seed differ from each other too
    c, _ = make_synth_digits(2 * CHUNK, seed=0)
    assert not torch.equal(c[:CHUNK], c[CHUNK:])


def test_class_balance():
    _, labels = make_synth_digits(3000, seed=2)
    counts = torch.bincount(labels, minlength=10)
    assert counts.min() >= 290 and counts.max() <= 310


def test_mean_std_constants_match_a_fresh_sample():
    mean, std = measure_mean_std(2000, seed=11)
    assert abs(mean - SYNTH_DIGITS_MEAN) < 0.005
    assert abs(std - SYNTH_DIGITS_STD) < 0.005


def _pgd_linf(model, x, y, eps_pixel, steps, gen):
    """L-inf PGD with random start (Madry et al. 2018) in pixel space [0, 1]."""
    alpha = 2.5 * eps_pixel / steps
    x_adv = (x + eps_pixel * (2 * torch.rand(x.shape, generator=gen) - 1)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        grad, = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = torch.minimum(torch.maximum(x_adv, x - eps_pixel), x + eps_pixel).clamp(0, 1)
    return x_adv


def _accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_learnable_by_lenet_but_not_trivially_robust():
    """Plain LeNet: >= 90% clean on held-out seed; noise sigma 0.5 and PGD-Linf 0.15 hurt it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # predictable on a shared 2-core machine
    try:
        x_train, y_train = make_synth_digits(4000, seed=0)
        x_test, y_test = make_synth_digits(1000, seed=1)
        x_train, x_test = x_train.float() / 255, x_test.float() / 255
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = build_model("lenet", (1, 28, 28), 10, [SYNTH_DIGITS_MEAN], [SYNTH_DIGITS_STD])
        gen = torch.Generator().manual_seed(0)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for lr in (0.05, 0.05, 0.05, 0.01):  # a last epoch at a lower rate settles the weights
            for group in opt.param_groups:
                group["lr"] = lr
            model.train()
            for batch in torch.randperm(len(x_train), generator=gen).split(64):
                loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
        model.eval()
        clean = _accuracy(model, x_test, y_test)
        noisy = (x_test + 0.5 * torch.randn(x_test.shape, generator=gen)).clamp(0, 1)
        noise = _accuracy(model, noisy, y_test)
        x_adv = _pgd_linf(model, x_test[:300], y_test[:300], 0.15, steps=10, gen=gen)
        pgd = _accuracy(model, x_adv, y_test[:300])
    finally:
        torch.set_num_threads(threads)
    assert clean >= 0.90, clean
    assert noise < 0.90 and noise < clean - 0.05, (clean, noise)
    assert pgd < 0.5, (clean, pgd)
