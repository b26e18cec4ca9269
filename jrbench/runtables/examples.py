"""The example set: which fixed test examples attack, margins and certify measure.

One :class:`ExampleSet` (``n_examples``, ``example_seed``) names the examples; the same set on
the same data set is the same examples for every run, so per-example records of attacks,
margins and certificates line up. Light: torch is imported inside :func:`fixed_examples`.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..schema import check, option


@dataclass(frozen=True)
class ExampleSet:
    """``n_examples`` fixed test examples chosen by ``example_seed`` (None: the data set's
    ``Defaults.attack_examples``, at most the whole test split)."""

    n_examples: int | None = option(
        None, low=1, help="Fixed test examples, chosen by --example-seed (the same in attack, margins and certify; "
                          "default: the data set's, 1000).")
    example_seed: int = option(0, low=0, help="Seed choosing the examples (the same for every run).")

    def __post_init__(self) -> None:
        check(self)


def default_examples(data, n_examples: int | None) -> int:
    """``n_examples``, or for None the data set's ``Defaults.attack_examples`` (at most the whole
    test split): the fixed examples of the gradient attacks, margins and certificates."""
    return n_examples if n_examples is not None else min(data.info.defaults.attack_examples, len(data.test))


def fixed_examples(data, n: int, seed: int):
    """``n`` test examples of ``data`` chosen by ``seed``, the same for every run on the same data.

    Returns (images uint8 (n, C, H, W), labels (n,), positions in the test split (n,))."""
    import torch

    total = len(data.test)
    if n < 1:
        raise UserError(f"--n-examples must be at least 1, got {n}.")
    if n > total:
        raise UserError(f"--n-examples {n} is more than the {total} examples of the test set.")
    index = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return data.test.images[index], data.test.labels[index], index
