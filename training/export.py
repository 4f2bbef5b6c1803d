"""``bigru-train export``: the one ONNX exporter (served and parity-checked), int8, serving cost.

:func:`onnx_bytes` is the only ONNX export in the project: ``bigru-train export --onnx`` writes its
bytes to ``model.onnx`` and checks parity on a session built from them, and the worker's ONNX
backend (:class:`worker.onnx_backend.OnnxPredictor`) builds its session from the same bytes at start.
The graph takes raw windows ``x`` [batch, time, F] (both axes dynamic), applies the checkpoint's
normalization and returns ``logits`` and ``probs``. Every window of one call must have the same length
(ONNX has no packed sequences); batch unequal windows by length, or run them one by one. Parity is
checked against the torch model on random windows of several shapes and on real windows (the
checkpoint's golden batch and, with ``--data``, a dataset file).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.checkpoint import Checkpoint, load_checkpoint
from training.data import Dataset, load_dataset
from training.metrics import report

#: ONNX opset of the served graph (the TorchScript exporter maps nn.GRU/nn.LSTM onto ONNX's GRU/LSTM ops).
OPSET = 17
INPUT = "x"
OUTPUTS = ("logits", "probs")
RANDOM_SHAPES = ((1, 1), (1, 20), (3, 7), (8, 20), (32, 57), (5, 150))
TIMING_BATCHES = (1, 64)


class ExportError(RuntimeError):
    """The checkpoint's model cannot be exported to ONNX."""


class RawInputModel(nn.Module):
    """Normalization + classifier: raw equal-length windows [B, T, F] -> (logits, probs).

    The classifier is called as ``model(x)`` only (no lengths: its equal-length path), so any module
    whose forward maps [B, T, F] to logits [B, C] can be exported.
    """

    def __init__(self, ckpt: Checkpoint, model: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model if model is not None else ckpt.build_model("cpu")
        self.mean: torch.Tensor
        self.inv_std: torch.Tensor
        self.register_buffer("mean", torch.from_numpy(np.asarray(ckpt.mean, np.float32)))
        self.register_buffer("inv_std", torch.from_numpy((1.0 / np.asarray(ckpt.std)).astype(np.float32)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and class probabilities of raw windows ``x``."""
        logits = self.model((x - self.mean) * self.inv_std)
        return logits, torch.softmax(logits, dim=-1)


def onnx_bytes(ckpt: Checkpoint) -> bytes:
    """The served ONNX graph of ``ckpt``: raw ``x`` [batch, time, F] -> ``logits``, ``probs`` [batch, C].

    TorchScript-based exporter (``dynamo=False``), opset :data:`OPSET`: recurrent layers become ONNX
    GRU/LSTM operators, which onnxruntime runs fast; the bytes are deterministic for a checkpoint and
    the export takes well under a second. (The dynamo exporter measured the same ONNX Runtime forward
    time, but its bytes differ run to run and it takes seconds; torch deprecates the TorchScript
    exporter, and the parity tests say when switching becomes necessary.) Raises :class:`ExportError`
    when the exporter fails.
    """
    wrapper = RawInputModel(ckpt).eval()
    example = torch.zeros((2, 8, ckpt.input_dim), dtype=torch.float32)
    axes = {INPUT: {0: "batch", 1: "time"}, **{name: {0: "batch"} for name in OUTPUTS}}
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            # The annotation says path; with dynamo=False the exporter writes to file objects too.
            torch.onnx.export(wrapper, (example,), buf,  # type: ignore[arg-type]
                              input_names=[INPUT], output_names=list(OUTPUTS), dynamic_axes=axes,
                              opset_version=OPSET, dynamo=False)
    except Exception as e:  # the exporter raises many types (torch, onnx, onnxscript)
        raise ExportError(f"ONNX export of checkpoint {ckpt.version} failed: {type(e).__name__}: {e}") from e
    return buf.getvalue()


def onnx_session(graph: bytes, threads: int = 1) -> Any:
    """An onnxruntime CPU session for ``graph`` with the worker's settings (``threads`` intra-op threads).

    Raises ``ImportError`` without onnxruntime and onnxruntime's own errors for a graph it refuses.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning intra-op threads burn the cores that Redis and the other replicas need.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])


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
            got = session.run(["logits"], {INPUT: xb})[0]
            worst = max(worst, float(np.abs(got - ref).max()))
        return worst

    real_batches = _groups_by_length(real)
    return {
        "random_max_abs_diff": max_diff(rand),
        "random_shapes": [list(s) for s in RANDOM_SHAPES],
        "real_max_abs_diff": max_diff(real_batches) if real_batches else None,
        "real_windows": len(real),
    }


def median_seconds(fn: Callable[[], object], repeats: int = 9, target: float = 0.05) -> float:
    """Median seconds per call of ``fn``: warm-up, then ``repeats`` timed runs of ~``target`` s each."""
    t0, warm = time.perf_counter(), 0
    while warm < 5 or time.perf_counter() - t0 < target:
        fn()
        warm += 1
    n = max(1, round(target * warm / (time.perf_counter() - t0)))
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t) / n)
    return statistics.median(runs)


def forward_times(ckpt: Checkpoint, session: Any, length: int, batches: tuple[int, ...] = TIMING_BATCHES,
                  seed: int = 0) -> dict[str, Any]:
    """Forward time per window (µs) of ``session`` (ONNX Runtime) and of the torch model, batches of ``length``.

    Both see the same raw windows and compute the same thing (normalization, model, softmax); torch runs
    eager under ``inference_mode`` with its current thread count (the command sets 1).
    """
    wrapper = RawInputModel(ckpt).eval()
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"length": length, "batches": list(batches), "torch_threads": torch.get_num_threads()}
    for b in batches:
        x = (rng.standard_normal((b, length, ckpt.input_dim)) * ckpt.std + ckpt.mean).astype(np.float32)
        xt = torch.from_numpy(x)

        def run_onnx(x: np.ndarray = x) -> object:
            return session.run(["probs"], {INPUT: x})

        def run_torch(xt: torch.Tensor = xt) -> object:
            with torch.inference_mode():
                return wrapper(xt)

        out[f"onnx_us_b{b}"] = 1e6 * median_seconds(run_onnx) / b
        out[f"torch_us_b{b}"] = 1e6 * median_seconds(run_torch) / b
    return out


def quantize(model: nn.Module) -> nn.Module:
    """Dynamic int8 quantization of the GRU/LSTM and Linear layers (CPU inference)."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {nn.GRU, nn.LSTM, nn.Linear}, dtype=torch.qint8)


def quantized_layers(q: nn.Module) -> dict[str, list[str]]:
    """Layer types of a dynamically quantized model: ``int8`` (quantized) and ``fp32`` (left float, e.g. Conv1d)."""
    int8: set[str] = set()
    fp32: set[str] = set()

    def visit(m: nn.Module) -> None:
        if ".quantized." in type(m).__module__:
            int8.add(type(m).__name__)  # its packed-parameter children are part of it
            return
        if any(True for _ in m.parameters(recurse=False)):
            fp32.add(type(m).__name__)
        for child in m.children():
            visit(child)

    visit(q)
    return {"int8": sorted(int8), "fp32": sorted(fp32)}


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


def measure(ckpt: Checkpoint, file: Path, ds: Dataset, onnx: bool, quant: bool,
            length: int) -> tuple[dict[str, Any], bytes | None]:
    """Size, served ONNX graph (parity, forward times at ``length``) and int8 results of one checkpoint.

    Returns the results and the ONNX graph (``None`` without ``onnx``).
    """
    model = ckpt.build_model("cpu")
    res: dict[str, Any] = {"checkpoint": ckpt.version, "config": ckpt.config.to_dict(), "size": {
        "parameters": sum(p.numel() for p in model.parameters()), "checkpoint_bytes": file.stat().st_size,
        "fp32_bytes": serialized_size(model)}}
    graph = None
    if onnx:
        t0 = time.perf_counter()
        graph = onnx_bytes(ckpt)
        export_s = time.perf_counter() - t0
        session = onnx_session(graph)
        res["onnx"] = {"bytes": len(graph), "sha256": hashlib.sha256(graph).hexdigest(), "opset": OPSET,
                       "export_seconds": export_s, **parity(ckpt, session, golden_windows(ckpt) + list(ds.X))}
        res["timing"] = forward_times(ckpt, session, length)
    if quant:
        q = quantize(model)
        fp, qa = accuracy(model, ckpt, ds), accuracy(q, ckpt, ds)
        fs, qs = res["size"]["fp32_bytes"], serialized_size(q)
        res["quantize"] = {"fp32_bytes": fs, "int8_bytes": qs, "size_ratio": qs / fs, "fp32_accuracy": fp["accuracy"],
                           "int8_accuracy": qa["accuracy"], "accuracy_change": qa["accuracy"] - fp["accuracy"],
                           "layers": quantized_layers(q)}
    return res, graph


def ratios(new: dict[str, Any], old: dict[str, Any]) -> dict[str, float]:
    """new/old for every size and forward time both measurements have."""
    pairs = [("size", k) for k in new["size"]] + [("onnx", "bytes"), ("quantize", "int8_bytes")]
    pairs += [("timing", k) for k in new.get("timing", {}) if k.endswith(tuple(f"_b{b}" for b in TIMING_BATCHES))]
    out = {}
    for section, key in pairs:
        a, b = new.get(section, {}).get(key), old.get(section, {}).get(key)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
            out[f"{section}.{key}"] = a / b
    return out


def main(argv: list[str]) -> int:
    """The ``export`` subcommand."""
    p = argparse.ArgumentParser(prog="bigru-train export", description="ONNX export (parity-checked), serving cost, int8")
    p.add_argument("--checkpoint", default="checkpoints", help="checkpoint file, version directory or root")
    p.add_argument("--onnx", action="store_true", help="write model.onnx (the graph the worker serves), check parity, time it")
    p.add_argument("--quantize", action="store_true", help="dynamic int8 quantization: size and accuracy change")
    p.add_argument("--data", help="labelled windows (.ts/.npz/.csv) for real-window parity and accuracy")
    p.add_argument("--baseline-checkpoint", help="a second checkpoint measured the same way (e.g. the previous "
                   "default), shown next to the first with new/old ratios")
    p.add_argument("--length", type=int, help="window length for forward timing (default: median of the eval set)")
    p.add_argument("--out", help="directory for model.onnx and the report (default: the checkpoint's directory)")
    p.add_argument("--results", help="also write export.md/.json/.png into this directory (e.g. results/)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not (args.onnx or args.quantize):
        p.error("nothing to do: pass --onnx and/or --quantize")
    if args.length is not None and args.length < 1:
        p.error("--length must be at least 1")
    torch.set_num_threads(1)
    from training.checkpoint import CheckpointError, resolve_path

    try:
        ckpt, file = load_checkpoint(args.checkpoint), resolve_path(args.checkpoint)
        out = Path(args.out) if args.out else file.parent
        ds = eval_set(ckpt, args.data)
        base = None
        if args.baseline_checkpoint:
            b = load_checkpoint(args.baseline_checkpoint)
            base = (b, resolve_path(args.baseline_checkpoint), eval_set(b, args.data))
        length = args.length or int(np.median([w.shape[0] for w in ds.X]))
        res: dict[str, Any] = {"eval_set": ds.name, "eval_windows": len(ds),
                               "command": " ".join(["bigru-train", "export", *argv])}
        served, graph = measure(ckpt, file, ds, args.onnx, args.quantize, length)
        res.update(served)
        if graph is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "model.onnx").write_bytes(graph)
            res["onnx"]["path"] = str(out / "model.onnx")
        if base is not None:
            res["baseline"] = measure(*base, args.onnx, args.quantize, length)[0]
            res["ratio"] = ratios(res, res["baseline"])
    except (CheckpointError, ExportError, ValueError) as e:  # DataError is a ValueError
        print(f"bigru-train export: {e}", file=sys.stderr)
        return 2
    if args.results:
        from training.reports import write_export_report

        write_export_report(res, Path(args.results))
    print(json.dumps(res) if args.json else json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
