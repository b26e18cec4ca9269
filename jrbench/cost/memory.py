"""The memory of one training step, per overhead case: peak live tensor memory and what autograd saves.

``peak_mb`` is the peak of the tensor memory live during one step (parameters, momentum, the
batch, gradients, activations and temporaries), counted storage by storage
(:class:`LiveTensorBytes`, on any device); ``saved_mb`` is the size of the tensors autograd
saves for the backward (the graph's activations); on CUDA ``cuda_peak_mb`` is the allocator's
peak for the case. The step itself is the timing's (``jrbench.cost.overhead._step``), passed in.
"""
from __future__ import annotations

from typing import Callable

import pandas as pd
import torch

from ..models.architectures import Classifier

# one training step of a case: step(model, optimizer, params, x, y, case)
Step = Callable[..., None]


class LiveTensorBytes:
    """Bytes of tensor storage alive on one device type, and their peak, while active.

    A ``TorchDispatchMode`` sees every tensor an op returns (below autograd, so the graph's
    saved tensors, gradients and temporaries all count); each new storage is added once and
    taken off when it is freed. ``known`` tensors (parameters, optimizer state, the batch)
    count from the start.
    """

    def __init__(self, device_type: str, known: list[torch.Tensor]):
        from torch.utils.weak import WeakIdKeyDictionary

        self.device_type = device_type
        self.storages = WeakIdKeyDictionary()
        self.live = self.peak = 0
        for t in known:
            self._add(t)

    def _add(self, t: torch.Tensor) -> None:
        import weakref

        if t.device.type != self.device_type or t.is_meta:
            return
        st = t.untyped_storage()
        if st in self.storages:
            return
        self.storages[st] = st.nbytes()
        self.live += st.nbytes()
        self.peak = max(self.peak, self.live)
        weakref.finalize(st, self._free, st.nbytes())

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def mode(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor):
                        tracker._add(t)
                return out

        return Mode()


def _saved_mb(step: Step, model, opt, params, x, y, case) -> float:
    """MB of the tensors autograd saves for the backward during one step of ``case``."""
    total = 0

    def pack(t: torch.Tensor):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step(model, opt, params, x, y, case)
    return total / 2**20


def _peak_mb(step: Step, model, opt, params, x, y, case) -> float:
    """Peak MB of tensor memory during one training step of ``case`` (parameters included)."""
    step(model, opt, params, x, y, case)  # optimizer state exists before the measured step
    opt.zero_grad(set_to_none=True)
    state = [v for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
    tracker = LiveTensorBytes(x.device.type, [*params, *state, x, y])
    with tracker.mode():
        step(model, opt, params, x, y, case)
    return tracker.peak / 2**20


def memory_per_case(model: Classifier, x: torch.Tensor, y: torch.Tensor, cases: list, step: Step) -> pd.DataFrame:
    """One row per case (``case.name``): ``peak_mb``, ``saved_mb`` and on CUDA ``cuda_peak_mb``
    of one ``step(model, optimizer, params, x, y, case)`` with SGD and momentum (lr 0)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.0, momentum=0.9)
    rows = []
    for case in cases:
        row = {"case": case.name, "peak_mb": _peak_mb(step, model, opt, params, x, y, case),
               "saved_mb": _saved_mb(step, model, opt, params, x, y, case)}
        if x.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(x.device)
            step(model, opt, params, x, y, case)
            row["cuda_peak_mb"] = torch.cuda.max_memory_allocated(x.device) / 2**20
        rows.append(row)
    return pd.DataFrame(rows)
