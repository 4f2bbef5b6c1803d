"""``bigru-train export``: ONNX export with parity checks, and dynamic int8 quantization.

The ONNX graph takes raw windows ``x`` [batch, time, F] (both axes dynamic), applies the
checkpoint's normalization and returns ``logits`` and ``probs``. Every window of one call must have
the same length (ONNX has no packed sequences); batch unequal windows by length, or run them one by
one. Parity is checked against the torch model on random windows of several shapes and on real
windows (the checkpoint's golden batch and, with ``--data``, a dataset file).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.checkpoint import Checkpoint, load_checkpoint
from training.data import Dataset, load_dataset
from training.metrics import report

RANDOM_SHAPES = ((1, 1), (1, 20), (3, 7), (8, 20), (32, 57), (5, 150))


class RawInputModel(nn.Module):
    """Normalization + classifier: raw equal-length windows [B, T, F] -> (logits, probs)."""

    def __init__(self, ckpt: Checkpoint, model: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model if model is not None else ckpt.build_model("cpu")
        self.mean: torch.Tensor
        self.inv_std: torch.Tensor
        self.register_buffer("mean", torch.from_numpy(ckpt.mean.astype(np.float32)))
        self.register_buffer("inv_std", torch.from_numpy((1.0 / ckpt.std).astype(np.float32)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and class probabilities of raw windows ``x``."""
        logits = self.model((x - self.mean) * self.inv_std)
        return logits, torch.softmax(logits, dim=-1)


def export_onnx(ckpt: Checkpoint, path: Path) -> Path:
    """Write the ONNX model (opset from the dynamo exporter; dynamic batch and time axes)."""
    wrapper = RawInputModel(ckpt).eval()
    example = torch.zeros(2, 8, ckpt.input_dim)
    dims = {"x": {0: torch.export.Dim("batch", min=1), 1: torch.export.Dim("time", min=1)}}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (example,), str(path), input_names=["x"], output_names=["logits", "probs"],
                          dynamic_shapes=dims, dynamo=True, verbose=False)
    return path


def onnx_session(path: Path) -> Any:
    """An onnxruntime CPU session for ``path``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _groups_by_length(windows: list[np.ndarray]) -> list[np.ndarray]:
    by_len: dict[int, list[np.ndarray]] = {}
    for w in windows:
        by_len.setdefault(w.shape[0], []).append(w)
    return [np.stack(v).astype(np.float32) for v in by_len.values()]


def golden_windows(ckpt: Checkpoint) -> list[np.ndarray]:
    """The checkpoint's golden batch as a list of raw [T_i, F] windows."""
    if ckpt.golden_x is None or ckpt.golden_lengths is None:
        return []
    return [ckpt.golden_x[i, : int(n)] for i, n in enumerate(ckpt.golden_lengths)]


def parity(ckpt: Checkpoint, session: Any, real: list[np.ndarray], seed: int = 0) -> dict[str, Any]:
    """Max |onnx - torch| over logits, on random windows and on ``real`` windows (grouped by length)."""
    wrapper = RawInputModel(ckpt).eval()
    rng = np.random.default_rng(seed)
    rand = [(rng.standard_normal((b, t, ckpt.input_dim)) * ckpt.std + ckpt.mean).astype(np.float32) for b, t in RANDOM_SHAPES]

    def max_diff(batches: list[np.ndarray]) -> float:
        worst = 0.0
        for xb in batches:
            with torch.inference_mode():
                ref = wrapper(torch.from_numpy(xb))[0].numpy()
            got = session.run(["logits"], {"x": xb})[0]
            worst = max(worst, float(np.abs(got - ref).max()))
        return worst

    real_batches = _groups_by_length(real)
    return {
        "random_max_abs_diff": max_diff(rand),
        "random_shapes": [list(s) for s in RANDOM_SHAPES],
        "real_max_abs_diff": max_diff(real_batches) if real_batches else None,
        "real_windows": len(real),
    }


def quantize(model: nn.Module) -> nn.Module:
    """Dynamic int8 quantization of the GRU/LSTM and Linear layers (CPU inference)."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {nn.GRU, nn.LSTM, nn.Linear}, dtype=torch.qint8)


def serialized_size(model: nn.Module) -> int:
    """Bytes of ``torch.save(state_dict)``: comparable across float and quantized models."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def accuracy(model: nn.Module, ckpt: Checkpoint, ds: Dataset) -> dict[str, Any]:
    """Accuracy and macro F1 of ``model`` (float or quantized) on ``ds``."""
    from training.train import predict, to_tensors

    x, lengths, y = to_tensors(ds, ckpt.mean, ckpt.std)
    pred = predict(model, x, lengths).argmax(-1).numpy()
    r = report(y.numpy(), pred, list(ckpt.classes))
    return {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"], "windows": r["windows"]}


def eval_set(ckpt: Checkpoint, data: str | None) -> Dataset:
    """``--data`` (aligned to the checkpoint's classes) or the golden batch."""
    if data:
        from training.data import align_classes

        return align_classes(load_dataset(data), list(ckpt.classes))
    windows = golden_windows(ckpt)
    if not windows or ckpt.golden_y is None:
        raise ValueError("the checkpoint has no golden batch; pass --data to measure accuracy")
    return Dataset(windows, np.asarray(ckpt.golden_y, dtype=np.int64), list(ckpt.classes), name="golden batch")


def main(argv: list[str]) -> int:
    """The ``export`` subcommand."""
    p = argparse.ArgumentParser(prog="bigru-train export", description="ONNX export (parity-checked) and int8 quantization")
    p.add_argument("--checkpoint", default="checkpoints", help="checkpoint file, version directory or root")
    p.add_argument("--onnx", action="store_true", help="write model.onnx and check parity")
    p.add_argument("--quantize", action="store_true", help="dynamic int8 quantization: size and accuracy change")
    p.add_argument("--data", help="labelled windows (.ts/.npz/.csv) for real-window parity and accuracy")
    p.add_argument("--out", help="directory for model.onnx and the report (default: the checkpoint's directory)")
    p.add_argument("--results", help="also write export.md/.json/.png into this directory (e.g. results/)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not (args.onnx or args.quantize):
        p.error("nothing to do: pass --onnx and/or --quantize")
    torch.set_num_threads(1)
    from training.checkpoint import CheckpointError, resolve_path

    try:
        ckpt = load_checkpoint(args.checkpoint)
        out = Path(args.out) if args.out else resolve_path(args.checkpoint).parent
        ds = eval_set(ckpt, args.data)
    except (CheckpointError, ValueError) as e:  # DataError is a ValueError
        print(f"bigru-train export: {e}", file=sys.stderr)
        return 2
    res: dict[str, Any] = {"checkpoint": ckpt.version, "eval_set": ds.name, "eval_windows": len(ds),
                           "command": " ".join(["bigru-train", "export", *argv])}
    model = ckpt.build_model("cpu")
    if args.onnx:
        t0 = time.perf_counter()
        path = export_onnx(ckpt, out / "model.onnx")
        res["onnx"] = {"path": str(path), "bytes": path.stat().st_size, "export_seconds": time.perf_counter() - t0,
                       **parity(ckpt, onnx_session(path), golden_windows(ckpt) + list(ds.X))}
    if args.quantize:
        q = quantize(model)
        fp, qa = accuracy(model, ckpt, ds), accuracy(q, ckpt, ds)
        fs, qs = serialized_size(model), serialized_size(q)
        res["quantize"] = {"fp32_bytes": fs, "int8_bytes": qs, "size_ratio": qs / fs, "fp32_accuracy": fp["accuracy"],
                           "int8_accuracy": qa["accuracy"], "accuracy_change": qa["accuracy"] - fp["accuracy"]}
    if args.results:
        from training.reports import write_export_report

        write_export_report(res, Path(args.results))
    print(json.dumps(res) if args.json else json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
