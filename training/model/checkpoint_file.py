"""The checkpoint file format, without torch: metadata, golden batch, served graph, layout, atomic writes.

Layout under a checkpoint root::

    root/
      latest                       # text file naming the version to serve
      <version>/checkpoint.safetensors
      <version>/metrics.json, *.png # written by training runs

The file is one safetensors file: the weights (``model.*``), an optional golden batch (``golden.*``),
the fp32 ONNX graph the worker serves (``onnx.fp32``, a uint8 tensor holding the bytes of
:func:`training.model.onnx.onnx_bytes`; files written before it existed have none), the int8 graph
(``onnx.int8``, the bytes of :func:`training.model.quantize.onnx_int8_bytes`, when there is a golden batch
to calibrate on; older files have none and a replica then builds it at start) and, in the header
metadata under ``bigru``, a JSON document with the model config, class names, normalization, feature
count, wire version, metrics, data fingerprint, version and creation time. The graph is part of the
file's bytes, so the registry's sha256 covers it.

This module reads all of it with numpy (:func:`parse`, :func:`load_served`): that is the ONNX
replica's whole load path, which never imports torch. :mod:`training.model.checkpoint` adds the torch side
(weights as tensors, building the module, writing). Loading never unpickles anything; writes are
atomic (temp file + ``os.replace``).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from protocol.wire import WIRE_VERSION
from training.model.config import ModelConfig
from training.model.drift_ref import DriftReference, DriftReferenceError

FILENAME = "checkpoint.safetensors"
LATEST = "latest"
FORMAT = "bigru-checkpoint/1"
#: The tensor holding the fp32 ONNX graph's bytes (uint8).
GRAPH = "onnx.fp32"
#: The tensor holding the int8 graph's bytes (uint8): :func:`training.model.quantize.onnx_int8_bytes` of the
#: fp32 graph, built at save time so that a replica loads what it serves instead of quantizing at start.
INT8_GRAPH = "onnx.int8"


class CheckpointError(Exception):
    """A checkpoint is missing, corrupt or inconsistent."""


class WireVersionError(CheckpointError):
    """The checkpoint was made for another wire format version than :data:`protocol.wire.WIRE_VERSION`."""


@dataclass
class CheckpointMeta:
    """What a checkpoint file says about its model, without the weights: enough to check and serve it."""

    config: ModelConfig
    classes: list[str]
    mean: np.ndarray
    std: np.ndarray
    version: str = ""
    created_at: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    data_fingerprint: str = ""
    wire_version: int = WIRE_VERSION
    golden_x: np.ndarray | None = None  # [N, T, F] padded, raw (unnormalized)
    golden_lengths: np.ndarray | None = None  # [N]
    golden_y: np.ndarray | None = None  # [N]
    sha256: str = ""
    drift: DriftReference | None = None  # training statistics for drift monitoring (None: drift unknown)

    @property
    def input_dim(self) -> int:
        """Number of features F a window must have."""
        return self.config.input_dim

    def golden_windows(self) -> list[np.ndarray]:
        """The golden batch as unpadded raw [T_i, F] windows (empty when the checkpoint has none)."""
        if self.golden_x is None or self.golden_lengths is None:
            return []
        return [self.golden_x[i, : int(n)] for i, n in enumerate(self.golden_lengths)]

    def stored_int8(self) -> bytes | None:
        """The int8 graph stored in the file, or None (not read from a file, or a file without one)."""
        return None

    def golden_batch(self) -> tuple[list[np.ndarray], list[str]] | None:
        """The golden batch as unpadded windows and their class names, or None when absent."""
        if self.golden_y is None or len(self.golden_y) == 0 or self.golden_x is None:
            return None
        return self.golden_windows(), [self.classes[int(y)] for y in self.golden_y]

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
            **({"drift": self.drift.to_dict()} if self.drift is not None else {}),
        }


@dataclass
class ServedCheckpoint(CheckpointMeta):
    """A checkpoint read without torch: the metadata, the stored fp32 ``graph`` and the file's ``data``.

    ``graph`` is None for files written before graphs were stored (the worker then exports one with
    torch); ``data`` is the whole file, from which :func:`training.model.checkpoint.as_torch` reads the weights
    when a replica serves with torch after all.
    """

    graph: bytes | None = field(default=None, repr=False)
    data: bytes = field(default=b"", repr=False, compare=False)
    int8_graph: bytes | None = field(default=None, repr=False)

    def stored_int8(self) -> bytes | None:
        """The int8 graph stored in the file (None for files written before it was stored, or without a golden
        batch to calibrate it on)."""
        return self.int8_graph


def read_metadata(data: bytes) -> dict[str, Any]:
    """The ``bigru`` JSON document of checkpoint bytes (header only; the tensors are not read)."""
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


def meta_fields(meta: dict[str, Any], golden: dict[str, np.ndarray], data: bytes) -> dict[str, Any]:
    """The validated :class:`CheckpointMeta` fields of a file's metadata, golden arrays and bytes.

    Raises :class:`WireVersionError` when the file's wire version is not this code's
    (:data:`protocol.wire.WIRE_VERSION`) and :class:`CheckpointError` for anything else inconsistent.
    """
    try:
        config = ModelConfig.from_dict(meta["config"])
        norm = meta["normalization"]
        mean = np.asarray(norm["mean"], dtype=np.float32)
        std = np.asarray(norm["std"], dtype=np.float32)
        classes = [str(c) for c in meta["classes"]]
        wire = int(meta.get("wire_version", WIRE_VERSION))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint metadata incomplete: {e}") from e
    version = str(meta.get("version", ""))
    if wire != WIRE_VERSION:
        raise WireVersionError(f"checkpoint {version} was made for wire version {wire}; this code speaks "
                               f"wire version {WIRE_VERSION}")
    if mean.shape != (config.input_dim,) or std.shape != (config.input_dim,) or (std <= 0).any():
        raise CheckpointError("normalization does not match input_dim or has non-positive std")
    if len(classes) != config.num_classes:
        raise CheckpointError(f"{len(classes)} class names for {config.num_classes} classes")
    try:
        drift = None if meta.get("drift") is None else DriftReference.from_dict(meta["drift"], config.input_dim,
                                                                                config.num_classes)
    except DriftReferenceError as e:
        raise CheckpointError(f"checkpoint {version}: {e}") from e
    return {
        "config": config, "classes": classes, "mean": mean, "std": std, "version": version,
        "created_at": str(meta.get("created_at", "")), "metrics": dict(meta.get("metrics") or {}),
        "data_fingerprint": str(meta.get("data_fingerprint", "")), "wire_version": wire,
        "golden_x": golden.get("x"), "golden_lengths": golden.get("lengths"), "golden_y": golden.get("y"),
        "sha256": hashlib.sha256(data).hexdigest(), "drift": drift,
    }


def parse(data: bytes) -> ServedCheckpoint:
    """Parse and validate checkpoint bytes with numpy only (no torch, no pickle).

    Checks the metadata (config, classes, normalization, wire version) and that the file holds
    weights; whether the weights fit the config is checked where they are used (building the torch
    module, or the ONNX session and golden batch of the stored graph).
    """
    meta = read_metadata(data)
    from safetensors.numpy import load as st_load

    try:
        arrays = st_load(data)
    except Exception as e:  # safetensors raises its own error types for corrupt data
        raise CheckpointError(f"checkpoint tensors unreadable: {e}") from e
    if not any(k.startswith("model.") for k in arrays):
        raise CheckpointError("checkpoint holds no weights (model.* tensors)")
    golden = {k: arrays[f"golden.{k}"] for k in ("x", "lengths", "y") if f"golden.{k}" in arrays}
    graph, int8 = arrays.get(GRAPH), arrays.get(INT8_GRAPH)
    return ServedCheckpoint(**meta_fields(meta, golden, data),
                            graph=None if graph is None else np.ascontiguousarray(graph, np.uint8).tobytes(), data=data,
                            int8_graph=None if int8 is None else np.ascontiguousarray(int8, np.uint8).tobytes())


def read_file(path: str | Path) -> bytes:
    """The bytes of the checkpoint at ``path`` (a file, version directory or root; see :func:`resolve_path`)."""
    file = resolve_path(path)
    try:
        return file.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read {file}: {e}") from e


def load_served(path: str | Path) -> ServedCheckpoint:
    """Load a checkpoint without torch from a file, version directory or root directory (follows ``latest``)."""
    return parse(read_file(path))


# -- layout: the root, ``latest`` and version directories ---------------------------------------------


def version_file(root: str | Path, version: str) -> Path:
    """The checkpoint file of ``version`` under ``root``."""
    return Path(root) / version / FILENAME


def is_root(path: str | Path) -> bool:
    """True when ``path`` is a checkpoint root (a directory that is not itself a version directory)."""
    p = Path(path)
    return p.is_dir() and not (p / FILENAME).is_file()


def read_latest(root: str | Path) -> str | None:
    """The version ``root/latest`` names, or None when there is no readable, non-empty pointer."""
    try:
        return (Path(root) / LATEST).read_text().strip() or None
    except OSError:
        return None


def resolve_path(path: str | Path) -> Path:
    """Map a file, a version directory or a root with ``latest`` to the checkpoint file."""
    p = Path(path)
    if p.is_file():
        return p
    if (p / FILENAME).is_file():
        return p / FILENAME
    if (p / LATEST).is_file():
        version = read_latest(p) or ""
        if version_file(p, version).is_file():
            return version_file(p, version)
        raise CheckpointError(f"{p / LATEST} names {version!r}, which has no {FILENAME}")
    raise CheckpointError(f"no checkpoint at {p} (expected a file, a version directory or a root with 'latest')")


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a synced temp file and ``os.replace``: readers see old or new, whole."""
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


def write_version(root: str | Path, version: str, data: bytes) -> Path:
    """Write checkpoint bytes to ``root/<version>/checkpoint.safetensors`` atomically; returns the path."""
    path = version_file(root, version)
    atomic_write(path, data)
    return path


def set_latest_version(root: str | Path, version: str) -> None:
    """Point ``root/latest`` at ``version`` (atomically)."""
    if not version_file(root, version).is_file():
        raise CheckpointError(f"no checkpoint {version} under {root}")
    atomic_write(Path(root) / LATEST, (version + "\n").encode())
