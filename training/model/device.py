"""Where a model runs: the one ``device`` setting resolver, for the worker and for training.

``cpu`` resolves without importing torch, so a CPU replica on the ONNX backend never loads it;
``auto`` and ``cuda`` ask torch (when torch is not installed, ``auto`` is ``cpu``).
"""

from __future__ import annotations

import importlib.util


class DeviceError(ValueError):
    """The configured device is not available (e.g. ``cuda`` on a machine without a GPU)."""


def resolve_device(device: str) -> str:
    """The torch device string for the ``device`` setting.

    ``auto`` picks ``cuda`` when torch sees a GPU and ``cpu`` otherwise; ``cpu`` (and ``cpu:N``) is
    returned as is without importing torch; ``cuda`` (or ``cuda:N``) without a usable GPU raises
    :class:`DeviceError`.
    """
    if device.split(":")[0] == "cpu":
        return device
    if device == "auto" and importlib.util.find_spec("torch") is None:
        return "cpu"
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} requested but CUDA is not available (torch.cuda.is_available() is False)")
    return device
