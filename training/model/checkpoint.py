"""Self-describing checkpoints, torch side: weights as tensors, building the model, writing files.

The file format (layout, metadata, golden batch, the stored ONNX graph, atomic writes) is
:mod:`training.model.checkpoint_file`, which reads everything but the weights without torch; its public
names are re-exported here. This module adds :class:`Checkpoint` (the metadata plus a torch
``state_dict``), :func:`to_bytes` / :func:`save_checkpoint`, which also store the fp32 ONNX graph of
:func:`training.model.onnx.onnx_bytes` (the one exporter) so that a worker can serve the file without
torch, and :func:`from_bytes` / :func:`load_checkpoint`, which read the weights as tensors and check
that they fit the config.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import structlog
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from protocol.wire import WIRE_VERSION
from training.model.checkpoint_file import (
    FILENAME,
    FORMAT,
    GRAPH,
    INT8_GRAPH,
    LATEST,
    CheckpointError,
    CheckpointMeta,
    ServedCheckpoint,
    WireVersionError,
    meta_fields,
    read_file,
    read_metadata,
    resolve_path,
    set_latest_version,
    write_version,
)
from training.model.network import SequenceClassifier

__all__ = [
    "FILENAME", "FORMAT", "GRAPH", "LATEST", "WIRE_VERSION", "Checkpoint", "CheckpointError", "CheckpointMeta",
    "ServedCheckpoint", "WireVersionError", "as_torch", "from_bytes", "load_checkpoint", "new_version",
    "resolve_path", "save_checkpoint", "set_latest_version", "to_bytes",
]


@dataclass
class Checkpoint(CheckpointMeta):
    """A trained model plus everything a worker needs to serve it (``state_dict``: torch tensors)."""

    state_dict: dict[str, torch.Tensor] = field(kw_only=True)

    def build_model(self, device: str | torch.device = "cpu") -> SequenceClassifier:
        """Instantiate the module with these weights, in eval mode."""
        model = SequenceClassifier(self.config)
        try:
            model.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"weights do not match the config: {e}") from e
        return model.to(device).eval()


def new_version(state_dict: dict[str, torch.Tensor]) -> str:
    """A sortable version id: UTC time to the millisecond plus a weights hash prefix."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        h.update(k.encode())
        h.update(state_dict[k].detach().cpu().numpy().tobytes())
    return datetime.now(timezone.utc).strftime("v%Y%m%dT%H%M%S%f")[:-3] + "-" + h.hexdigest()[:8]


def _graph(ckpt: Checkpoint) -> bytes | None:
    """The fp32 ONNX graph to store, or None (with a warning) when the exporter fails."""
    from training.model.onnx import ExportError, onnx_bytes

    try:
        return onnx_bytes(ckpt)
    except ExportError as e:  # the file is still servable: a worker then exports, or serves with torch
        structlog.get_logger("checkpoint").warning("onnx_graph_not_stored", version=ckpt.version, error=str(e)[:300])
        return None


def _int8_graph(ckpt: Checkpoint, fp32: bytes) -> bytes | None:
    """The int8 graph to store (what a replica serves with precision ``auto``/``int8``), or None: no golden batch
    to calibrate on, or the quantizer failed (logged; a replica then builds it at start, or serves fp32)."""
    if ckpt.golden_batch() is None:
        return None
    from training.model.quantize import QuantizeError, onnx_int8_bytes

    try:
        return onnx_int8_bytes(ckpt, fp32)
    except (QuantizeError, ImportError) as e:
        structlog.get_logger("checkpoint").warning("int8_graph_not_stored", version=ckpt.version, error=str(e)[:300])
        return None


def to_bytes(ckpt: Checkpoint, graph: bool = True) -> bytes:
    """Serialize a checkpoint (fills in version and creation time when empty).

    With ``graph`` (the default) the file also holds the fp32 ONNX graph exported from these weights
    (tensor :data:`~training.model.checkpoint_file.GRAPH`) and, when there is a golden batch, the int8 graph
    calibrated on it (:data:`~training.model.checkpoint_file.INT8_GRAPH`); ``graph=False`` writes a file
    without either, as older releases did.
    """
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
    onnx = _graph(ckpt) if graph else None
    if onnx is not None:
        tensors[GRAPH] = torch.frombuffer(bytearray(onnx), dtype=torch.uint8)
        int8 = _int8_graph(ckpt, onnx)
        if int8 is not None:
            tensors[INT8_GRAPH] = torch.frombuffer(bytearray(int8), dtype=torch.uint8)
    data = st_save(tensors, metadata={"bigru": json.dumps(ckpt.describe())})
    ckpt.sha256 = hashlib.sha256(data).hexdigest()
    return data


def from_bytes(data: bytes) -> Checkpoint:
    """Parse and validate checkpoint bytes with the weights as torch tensors (no pickle is involved).

    Raises :class:`CheckpointError` for a corrupt or inconsistent file (weights that do not fit the
    config included) and :class:`WireVersionError` for a file made for another wire version.
    """
    meta = read_metadata(data)
    try:
        tensors = st_load(data)
    except Exception as e:  # safetensors raises its own error types for corrupt data
        raise CheckpointError(f"checkpoint tensors unreadable: {e}") from e
    golden = {k: tensors[f"golden.{k}"].numpy() for k in ("x", "lengths", "y") if f"golden.{k}" in tensors}
    state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    ckpt = Checkpoint(**meta_fields(meta, golden, data), state_dict=state)
    ckpt.build_model("cpu")  # verifies the weights fit the config
    return ckpt


def as_torch(ckpt: CheckpointMeta) -> Checkpoint:
    """The torch view of a checkpoint: ``ckpt`` itself, or a served one's file read again with its weights."""
    if isinstance(ckpt, Checkpoint):
        return ckpt
    if isinstance(ckpt, ServedCheckpoint) and ckpt.data:
        return from_bytes(ckpt.data)
    raise CheckpointError(f"checkpoint {ckpt.version} carries no weights to build a torch model from")


def save_checkpoint(ckpt: Checkpoint, root: str | Path, set_latest: bool = True, graph: bool = True) -> Path:
    """Write ``root/<version>/checkpoint.safetensors`` atomically; optionally move ``latest`` to it.

    ``graph``: store the fp32 ONNX graph in the file (see :func:`to_bytes`).
    """
    data = to_bytes(ckpt, graph=graph)  # names the version when it has none
    path = write_version(root, ckpt.version, data)
    if set_latest:
        set_latest_version(root, ckpt.version)
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a checkpoint from a file, version directory or root directory (follows ``latest``)."""
    return from_bytes(read_file(path))
