"""``bigru-train export``: write the served ONNX graph and check it, int8 size/accuracy, serving cost.

The graph is :func:`training.model.onnx.onnx_bytes` (the one exporter). Parity is checked against the torch
model on random windows of several shapes and on real windows (the checkpoint's golden batch and,
with ``--data``, a dataset file).
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

from training.metrics import report
from training.model.checkpoint import Checkpoint, load_checkpoint
from training.model.data import Dataset
from training.model.formats import load_dataset
from training.model.onnx import INPUT, OPSET, ExportError, onnx_bytes, onnx_session, parity, raw_input_model

TIMING_BATCHES = (1, 64)


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
    wrapper = raw_input_model(ckpt).eval()
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
        quantized: nn.Module = quantize_dynamic(model, {nn.GRU, nn.LSTM, nn.Linear}, dtype=torch.qint8)
    return quantized


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
        from training.model.data import align_classes

        return align_classes(load_dataset(data), list(ckpt.classes))
    windows = ckpt.golden_windows()
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
                       "export_seconds": export_s, **parity(ckpt, session, ckpt.golden_windows() + list(ds.X))}
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
    from training.model.checkpoint import CheckpointError, resolve_path

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
        from training.experiments.reports import write_export_report

        write_export_report(res, Path(args.results))
    print(json.dumps(res) if args.json else json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
