"""Measure int8 variants of the served ONNX graph against fp32: quantized ops, speed, golden accuracy and drift.

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/quantize_variants.py CHECKPOINT [--data TEST_FILE] [--length 20]

One ONNX Runtime thread (the worker's session settings), T=``--length`` random windows at batch 1, 8, 64
and 256 (median µs per window), accuracy and max |probability change| against fp32 on the golden batch
(and on ``--data``). The served variant is ``served`` (:func:`training.model.quantize.onnx_int8_bytes`); the
others are the alternatives it was chosen over. Prints JSON lines, then a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

BATCHES = (1, 8, 64, 256)


def variants(fp32: Path, calib: Callable[[], Any]) -> dict[str, Callable[[Path], None]]:
    """The quantizer settings compared (output path -> writes the graph)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    def dyn(**kw: Any) -> Callable[[Path], None]:
        return lambda out: quantize_dynamic(str(fp32), str(out), **kw)

    def stat(fmt: Any, **kw: Any) -> Callable[[Path], None]:
        return lambda out: quantize_static(str(fp32), str(out), calib(), quant_format=fmt, activation_type=QuantType.QUInt8,
                                           weight_type=QuantType.QInt8, **kw)

    s8 = QuantType.QInt8
    return {
        "dynamic s8 (Conv, Gemm)": dyn(weight_type=s8),
        "dynamic u8 (Conv, Gemm)": dyn(weight_type=QuantType.QUInt8),
        "dynamic s8 Conv only": dyn(weight_type=s8, op_types_to_quantize=["Conv"]),
        "dynamic s8 Gemm only": dyn(weight_type=s8, op_types_to_quantize=["Gemm", "MatMul"]),
        "dynamic s8 per_channel": dyn(weight_type=s8, per_channel=True),
        "dynamic s8 reduce_range": dyn(weight_type=s8, reduce_range=True),
        "static QOperator (all ops)": stat(QuantFormat.QOperator),
        "static QOperator Conv only": stat(QuantFormat.QOperator, op_types_to_quantize=["Conv"]),
        "static QDQ (all ops)": stat(QuantFormat.QDQ),
        "static QDQ (all ops) per_channel": stat(QuantFormat.QDQ, per_channel=True),
        "static QDQ Conv only": stat(QuantFormat.QDQ, op_types_to_quantize=["Conv"]),
    }


def main(argv: list[str]) -> int:
    """Measure and print."""
    p = argparse.ArgumentParser(prog="quantize_variants")
    p.add_argument("checkpoint")
    p.add_argument("--data", help="labelled windows aligned to the checkpoint's classes (held-out accuracy)")
    p.add_argument("--length", type=int, default=20)
    a = p.parse_args(argv)
    import logging

    import onnx
    from onnxruntime.quantization import CalibrationDataReader

    from training.export import median_seconds
    from training.model.checkpoint import load_checkpoint
    from training.model.data import align_classes
    from training.model.formats import load_dataset
    from training.model.onnx import onnx_bytes, onnx_session
    from training.model.quantize import calibration_batches, onnx_int8_bytes

    logging.disable(logging.WARNING)
    ckpt = load_checkpoint(a.checkpoint)
    gw, gy = ckpt.golden_windows(), np.asarray(ckpt.golden_y)
    test = align_classes(load_dataset(a.data), list(ckpt.classes)) if a.data else None

    class Golden(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calibration_batches(ckpt))

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self._it, None)
            return None if x is None else {"x": x}

    tmp = Path(tempfile.mkdtemp(prefix="qvariants-"))
    fp32 = onnx_bytes(ckpt)
    (tmp / "fp32.onnx").write_bytes(fp32)
    graphs = {"fp32": fp32, "served: static QDQ Conv only per_channel": onnx_int8_bytes(ckpt, fp32)}
    for i, (name, make) in enumerate(variants(tmp / "fp32.onnx", Golden).items()):
        make(tmp / f"{i}.onnx")
        graphs[name] = (tmp / f"{i}.onnx").read_bytes()

    def probs(sess: Any, ws: list[np.ndarray]) -> np.ndarray:
        out = np.empty((len(ws), len(ckpt.classes)), np.float32)
        by: dict[int, list[int]] = {}
        for j, w in enumerate(ws):
            by.setdefault(w.shape[0], []).append(j)
        for idx in by.values():
            out[idx] = sess.run(["probs"], {"x": np.stack([ws[j] for j in idx]).astype(np.float32)})[0]
        return out

    rng = np.random.default_rng(0)
    xs = {b: (rng.standard_normal((b, a.length, ckpt.input_dim)) * ckpt.std + ckpt.mean).astype(np.float32) for b in BATCHES}
    rows: list[dict[str, Any]] = []
    ref: dict[str, np.ndarray] = {}
    for name, g in graphs.items():
        ops = sorted({n.op_type for n in onnx.load_from_string(g).graph.node} & {
            "ConvInteger", "MatMulInteger", "QLinearConv", "QGemm", "QuantizeLinear", "DequantizeLinear"})
        sess = onnx_session(g, 1)
        row: dict[str, Any] = {"variant": name, "ops": ",".join(ops) or "-"}
        for b, x in xs.items():
            def call(sess: Any = sess, x: np.ndarray = x) -> object:
                return sess.run(["probs"], {"x": x})

            row[f"us_b{b}"] = 1e6 * median_seconds(call, repeats=7, target=0.1) / b
        for key, ws, y in [("golden", gw, gy)] + ([("test", list(test.X), test.y)] if test is not None else []):
            pr = probs(sess, ws)
            ref.setdefault(key, pr)
            row[f"{key}_acc"] = float((pr.argmax(1) == y).mean())
            row[f"{key}_max_dp"] = float(np.abs(pr - ref[key]).max())
        rows.append(row)
        print(json.dumps(row), flush=True)
    cols = ["variant", "ops"] + [f"us_b{b}" for b in BATCHES] + [k for k in rows[0] if k.endswith(("_acc", "_max_dp"))]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for row in rows:
        cells = [f"{row[c]:.1f} ({rows[0][c] / row[c]:.2f}×)" if c.startswith("us_") else
                 f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c]) for c in cols]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
