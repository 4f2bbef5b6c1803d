"""Self-describing checkpoints: one safetensors file whose metadata describes the model.

Layout under a checkpoint root::

    root/
      latest                       # text file naming the version to serve
      <version>/checkpoint.safetensors
      <version>/metrics.json, *.png # written by training runs

The file holds the weights (``model.*``), an optional golden batch (``golden.*``) and, in the
safetensors header metadata under ``bigru``, a JSON document with the model config, class names,
normalization, feature count, wire version, metrics, data fingerprint, version and creation time.
Loading never unpickles anything. Writes are atomic (temp file + ``os.replace``).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from training.model import ModelConfig, SequenceClassifier

FILENAME = "checkpoint.safetensors"
LATEST = "latest"
FORMAT = "bigru-checkpoint/1"
WIRE_VERSION = 1  # the worker's wire format version this model was trained for


class CheckpointError(Exception):
    """A checkpoint is missing, corrupt or inconsistent."""


@dataclass
class Checkpoint:
    """A trained model plus everything a worker needs to serve it."""

    config: ModelConfig
    classes: list[str]
    mean: np.ndarray
    std: np.ndarray
    state_dict: dict[str, torch.Tensor]
    version: str = ""
    created_at: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    data_fingerprint: str = ""
    wire_version: int = WIRE_VERSION
    golden_x: np.ndarray | None = None  # [N, T, F] padded, raw (unnormalized)
    golden_lengths: np.ndarray | None = None  # [N]
    golden_y: np.ndarray | None = None  # [N]
    sha256: str = ""

    @property
    def input_dim(self) -> int:
        """Number of features F a window must have."""
        return self.config.input_dim

    def golden_windows(self) -> list[np.ndarray]:
        """The golden batch as unpadded raw [T_i, F] windows (empty when the checkpoint has none)."""
        if self.golden_x is None or self.golden_lengths is None:
            return []
        return [self.golden_x[i, : int(n)] for i, n in enumerate(self.golden_lengths)]

    def golden_batch(self) -> tuple[list[np.ndarray], list[str]] | None:
        """The golden batch as unpadded windows and their class names, or None when absent."""
        if self.golden_y is None or len(self.golden_y) == 0 or self.golden_x is None:
            return None
        return self.golden_windows(), [self.classes[int(y)] for y in self.golden_y]

    def build_model(self, device: str | torch.device = "cpu") -> SequenceClassifier:
        """Instantiate the module with these weights, in eval mode."""
        model = SequenceClassifier(self.config)
        try:
            model.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"weights do not match the config: {e}") from e
        return model.to(device).eval()

    def describe(self) -> dict[str, Any]:
        """The JSON metadata stored in the file."""
        return {
            "format": FORMAT,
            "version": self.version,
            "created_at": self.created_at,
            "config": self.config.to_dict(),
            "classes": list(self.classes),
            "input_dim": self.config.input_dim,
            "normalization": {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]},
            "wire_version": self.wire_version,
            "metrics": self.metrics,
            "data_fingerprint": self.data_fingerprint,
        }


def new_version(state_dict: dict[str, torch.Tensor]) -> str:
    """A sortable version id: UTC time to the millisecond plus a weights hash prefix."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        h.update(k.encode())
        h.update(state_dict[k].detach().cpu().numpy().tobytes())
    return datetime.now(timezone.utc).strftime("v%Y%m%dT%H%M%S%f")[:-3] + "-" + h.hexdigest()[:8]


def to_bytes(ckpt: Checkpoint) -> bytes:
    """Serialize a checkpoint (fills in version and creation time when empty)."""
    if not ckpt.version:
        ckpt.version = new_version(ckpt.state_dict)
    if not ckpt.created_at:
        ckpt.created_at = datetime.now(timezone.utc).isoformat()
    if len(ckpt.classes) != ckpt.config.num_classes:
        raise CheckpointError(f"{len(ckpt.classes)} class names for {ckpt.config.num_classes} classes")
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in ckpt.state_dict.items()}
    if ckpt.golden_x is not None:
        assert ckpt.golden_lengths is not None and ckpt.golden_y is not None
        tensors["golden.x"] = torch.from_numpy(np.ascontiguousarray(ckpt.golden_x, dtype=np.float32))
        tensors["golden.lengths"] = torch.from_numpy(np.asarray(ckpt.golden_lengths, dtype=np.int64))
        tensors["golden.y"] = torch.from_numpy(np.asarray(ckpt.golden_y, dtype=np.int64))
    data = st_save(tensors, metadata={"bigru": json.dumps(ckpt.describe())})
    ckpt.sha256 = hashlib.sha256(data).hexdigest()
    return data


def _read_metadata(data: bytes) -> dict[str, Any]:
    if len(data) < 8:
        raise CheckpointError(f"checkpoint truncated ({len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8 or n > 100_000_000:
        raise CheckpointError("checkpoint header length exceeds the file (truncated or not safetensors)")
    try:
        header = json.loads(data[8 : 8 + n])
        meta = json.loads(header["__metadata__"]["bigru"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint header is not bigru safetensors metadata: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"unknown checkpoint format {meta.get('format') if isinstance(meta, dict) else meta!r}")
    return meta


def from_bytes(data: bytes) -> Checkpoint:
    """Parse and validate checkpoint bytes (no pickle is involved)."""
    meta = _read_metadata(data)
    try:
        tensors = st_load(data)
    except Exception as e:  # safetensors raises its own error types for corrupt data
        raise CheckpointError(f"checkpoint tensors unreadable: {e}") from e
    try:
        config = ModelConfig.from_dict(meta["config"])
        norm = meta["normalization"]
        mean = np.asarray(norm["mean"], dtype=np.float32)
        std = np.asarray(norm["std"], dtype=np.float32)
        classes = [str(c) for c in meta["classes"]]
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint metadata incomplete: {e}") from e
    if mean.shape != (config.input_dim,) or std.shape != (config.input_dim,) or (std <= 0).any():
        raise CheckpointError("normalization does not match input_dim or has non-positive std")
    if len(classes) != config.num_classes:
        raise CheckpointError(f"{len(classes)} class names for {config.num_classes} classes")
    state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    g = {k: tensors[f"golden.{k}"].numpy() for k in ("x", "lengths", "y") if f"golden.{k}" in tensors}
    ckpt = Checkpoint(
        config=config,
        classes=classes,
        mean=mean,
        std=std,
        state_dict=state,
        version=str(meta.get("version", "")),
        created_at=str(meta.get("created_at", "")),
        metrics=dict(meta.get("metrics") or {}),
        data_fingerprint=str(meta.get("data_fingerprint", "")),
        wire_version=int(meta.get("wire_version", WIRE_VERSION)),
        golden_x=g.get("x"),
        golden_lengths=g.get("lengths"),
        golden_y=g.get("y"),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    ckpt.build_model("cpu")  # verifies the weights fit the config
    return ckpt


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(ckpt: Checkpoint, root: str | Path, set_latest: bool = True) -> Path:
    """Write ``root/<version>/checkpoint.safetensors`` atomically; optionally move ``latest`` to it."""
    data = to_bytes(ckpt)
    path = Path(root) / ckpt.version / FILENAME
    _atomic_write(path, data)
    if set_latest:
        set_latest_version(root, ckpt.version)
    return path


def set_latest_version(root: str | Path, version: str) -> None:
    """Point ``root/latest`` at ``version`` (atomically)."""
    if not (Path(root) / version / FILENAME).is_file():
        raise CheckpointError(f"no checkpoint {version} under {root}")
    _atomic_write(Path(root) / LATEST, (version + "\n").encode())


def resolve_path(path: str | Path) -> Path:
    """Map a file, a version directory or a root with ``latest`` to the checkpoint file."""
    p = Path(path)
    if p.is_file():
        return p
    if (p / FILENAME).is_file():
        return p / FILENAME
    if (p / LATEST).is_file():
        version = (p / LATEST).read_text().strip()
        if (p / version / FILENAME).is_file():
            return p / version / FILENAME
        raise CheckpointError(f"{p / LATEST} names {version!r}, which has no {FILENAME}")
    raise CheckpointError(f"no checkpoint at {p} (expected a file, a version directory or a root with 'latest')")


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a checkpoint from a file, version directory or root directory (follows ``latest``)."""
    file = resolve_path(path)
    try:
        data = file.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read {file}: {e}") from e
    return from_bytes(data)
