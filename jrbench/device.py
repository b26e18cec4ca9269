"""Devices: the one place that turns ``--device`` into a torch.device and waits for a GPU.

``auto`` is a GPU when there is one, else the CPU; ``cuda`` and ``cuda:N`` need CUDA and, for
``N``, that many devices. Bad names are refused earlier (the CLI's choices, config checks).
"""
from __future__ import annotations

import torch

from .errors import UserError


def resolve_device(name: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` -> a torch.device; :class:`UserError` when CUDA is
    asked for and absent, or ``cuda:N`` names a device the machine does not have."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for but no CUDA device is available; use --device cpu.")
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise UserError(f"--device {name}: this machine has {count} CUDA device{'s' if count != 1 else ''} "
                        f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''}).")
    return device


def sync_device(device: torch.device) -> None:
    """Wait for a CUDA device's queued work (before reading the clock); a no-op elsewhere."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
