"""Serving a checkpoint: normalize, pad, forward under ``inference_mode``, softmax."""

from __future__ import annotations

import numpy as np
import torch

from training.checkpoint import Checkpoint


class DeviceError(RuntimeError):
    """The configured device is not available."""


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("device 'cuda' requested but torch.cuda.is_available() is False")
    return torch.device(device)


class TorchPredictor:
    """Runs a checkpoint's model on a device for lists of [T_i, F] windows (always fp32: ``precision``)."""

    backend = "torch"
    precision = "fp32"

    def __init__(self, ckpt: Checkpoint, device: str = "cpu") -> None:
        self.checkpoint = ckpt
        self.version = ckpt.version
        self.classes = list(ckpt.classes)
        self.n_features = ckpt.input_dim
        self.device = resolve_device(device)
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

    def warmup(self) -> None:
        """One forward pass so the first real batch does not pay for lazy initialisation."""
        self.predict([np.zeros((8, self.n_features), dtype=np.float32)])
