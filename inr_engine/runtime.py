"""Device choice and seeding.

PyTorch is imported where it is used, so that checking a device name (the command line's
argument checks) needs none.
"""

from __future__ import annotations

import random
import re
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


class DeviceError(ValueError):
    """A device that does not exist or that this PyTorch build cannot use."""


DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device_name(device: str) -> str:
    """``device`` if it names a device (``auto``, ``cpu``, ``cuda``, ``cuda:N``); needs no PyTorch."""
    if not DEVICE_PATTERN.fullmatch(device):
        raise DeviceError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")
    return device


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    import torch

    check_device_name(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r} was asked for, but this PyTorch build sees no CUDA GPU; "
                              "use --device cpu (or auto)")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise DeviceError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return torch.device(device)


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy and PyTorch; returns a NumPy generator for the caller's sampling."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)
