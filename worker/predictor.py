"""The torch serving backend: normalize, pad, forward under ``inference_mode``, softmax.

Importing this module imports torch; :mod:`worker.backends` imports it only for the torch backend
(CUDA, ``backend=torch``, or ``auto`` without a usable ONNX backend).
"""

from __future__ import annotations

import numpy as np
import torch

from training.model.checkpoint import as_torch
from training.model.checkpoint_file import CheckpointMeta
from training.model.device import DeviceError, resolve_device
from worker.golden import ServesCheckpoint

__all__ = ["DeviceError", "TorchPredictor"]


class TorchPredictor(ServesCheckpoint):
    """Runs a checkpoint's model on a device for lists of [T_i, F] windows (always fp32: ``precision``)."""

    backend = "torch"
    precision = "fp32"

    def __init__(self, ckpt: CheckpointMeta, device: str = "cpu", threads: int = 0) -> None:
        """``ckpt``: any checkpoint (a served one's weights are read with torch); ``threads`` > 0 sets
        torch's intra-op threads for the process (the worker's ``torch_threads``)."""
        ckpt = as_torch(ckpt)
        if threads:
            torch.set_num_threads(threads)
        self.checkpoint = ckpt
        self.version = ckpt.version
        self.classes = list(ckpt.classes)
        self.n_features = ckpt.input_dim
        self.device = torch.device(resolve_device(device))
        if self.device.type == "cuda":
            # cuDNN convolutions default to TF32 on Ampere and newer, which moves probabilities by ~1e-3
            # against the CPU and ONNX graphs; full fp32 keeps every backend within 1e-4 (and the
            # reload gate's golden-batch comparison device-independent).
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        self.model = ckpt.build_model(self.device)
        self._mean = ckpt.mean.astype(np.float32)
        self._inv_std = (1.0 / ckpt.std).astype(np.float32)
        self._pinned: torch.Tensor | None = None
        self._copied: torch.cuda.Event | None = None

    def prepare(self, xs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Normalize and right-pad windows into [B, T_max, F] plus lengths [B]."""
        lengths = np.fromiter((x.shape[0] for x in xs), dtype=np.int64, count=len(xs))
        t = int(lengths.max())
        if int(lengths.min()) == t:
            arr = np.stack(xs)
        else:
            arr = np.zeros((len(xs), t, self.n_features), dtype=np.float32)
            for i, x in enumerate(xs):
                arr[i, : x.shape[0]] = x
        arr = (arr - self._mean) * self._inv_std
        return arr.astype(np.float32, copy=False), lengths

    def predict(self, xs: list[np.ndarray]) -> np.ndarray:
        """Class probabilities [B, C] for the windows ``xs``."""
        arr, lengths = self.prepare(xs)
        x = torch.from_numpy(arr)
        if self.device.type == "cuda":
            x = self._to_device(x)
        with torch.inference_mode():
            logits = self.model(x, torch.from_numpy(lengths))
            probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        return probs

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        """Copy through a reused pinned staging buffer (pinning per batch costs more than the copy).

        The host-to-device copy is asynchronous; the buffer is rewritten only after the event
        recorded behind the previous copy has completed.
        """
        n = x.numel()
        if self._copied is not None:
            self._copied.synchronize()
        if self._pinned is None or self._pinned.numel() < n:
            self._pinned = torch.empty(max(n, 1 << 16), dtype=torch.float32).pin_memory()
        staged = self._pinned[:n].view(x.shape)
        staged.copy_(x)
        out = staged.to(self.device, non_blocking=True)
        self._copied = torch.cuda.Event()
        self._copied.record()
        return out
