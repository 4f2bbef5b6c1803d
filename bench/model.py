"""The benchmark's model: the default architecture with random weights, and model-only timing.

``python -m bench.model --checkpoint C --backend onnx --threads 1 --batches 1,2,4`` prints one JSON
line per batch size; it runs in its own process so thread settings match a worker replica's.
``--precision int8`` serves the int8 graph (onnx backend only; :func:`training.model.quantize.onnx_int8_bytes`),
which is calibrated on the checkpoint's golden batch: build the checkpoint with ``golden=`` > 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

#: The benchmark's window length T and feature count F.
T, F = 20, 1


def build_checkpoint(root: Path, seed: int = 0, length: int = T, golden: int = 0) -> Path:
    """Save the default model for [length, F] windows and 2 classes (what ``bigru-train`` builds), random weights.

    ``golden`` > 0 adds a golden batch of that many random windows labelled with the model's own fp32
    predictions (fp32 golden accuracy 1.0, so an int8 graph's golden accuracy is its label agreement);
    the int8 graph needs it to calibrate. Without one (the default), ``BIGRU_PRECISION=auto`` serves fp32.
    """
    import torch

    from training.model.checkpoint import Checkpoint, save_checkpoint
    from training.model.network import SequenceClassifier
    from training.run import default_model_config

    torch.manual_seed(seed)
    cfg = default_model_config(F, 2, length)
    model = SequenceClassifier(cfg)
    ckpt = Checkpoint(cfg, ["0", "1"], np.zeros(F, np.float32), np.ones(F, np.float32),
                      state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
                      metrics={"note": "random weights (speed benchmark)"})
    if golden > 0:
        gx = np.stack(windows(golden, seed=seed + 1, length=length))
        with torch.inference_mode():
            gy = ckpt.build_model("cpu")(torch.from_numpy(gx)).argmax(-1).numpy()
        ckpt.golden_x, ckpt.golden_lengths, ckpt.golden_y = gx, np.full(golden, length, np.int64), gy.astype(np.int64)
    save_checkpoint(ckpt, root)
    return root


def describe_model() -> str:
    """The bench model's architecture in words (the default for [T, F] windows, 2 classes)."""
    from training.run import default_model_config

    c = default_model_config(F, 2, T)
    stem = f"stem stride {c.downsample}, {c.conv_blocks} conv blocks x {c.channels} ch, " if c.channels else ""
    return (f"the default model: {stem}{'Bi' if c.bidirectional else ''}{c.cell.upper()} {c.layers} layer(s) x "
            f"{c.hidden} hidden, window_norm={c.window_norm}, pooling {'+'.join(c.pooling)}"
            f"{f', random-convolution branch ({c.rocket} features)' if c.rocket else ''}, T={T}, F={F}, "
            "2 classes, random weights")


def windows(n: int, seed: int = 0, length: int = T) -> list[np.ndarray]:
    """``n`` random [length, F] float32 windows."""
    rng = np.random.default_rng(seed)
    return list(rng.standard_normal((n, length, F)).astype(np.float32))


def time_batches(pred: Any, threads: int, batches: list[int], min_s: float) -> list[dict[str, object]]:
    """Forward throughput and per-call latency of a serving predictor at each batch size."""
    out: list[dict[str, object]] = []
    for b in batches:
        xs = windows(b, seed=b)
        pred.predict(xs)
        calls: list[float] = []
        cpu0, t_end = time.process_time(), time.perf_counter() + min_s
        while time.perf_counter() < t_end or len(calls) < 3:
            t0 = time.perf_counter()
            pred.predict(xs)
            calls.append(time.perf_counter() - t0)
        cpu = time.process_time() - cpu0
        total = sum(calls)
        out.append({
            "backend": pred.backend, "precision": pred.precision, "threads": threads,
            "batch": b, "calls": len(calls),
            "windows_per_s": round(b * len(calls) / total, 1),
            "latency_ms_p50": round(float(np.percentile(calls, 50)) * 1e3, 3),
            "latency_ms_p99": round(float(np.percentile(calls, 99)) * 1e3, 3),
            "cpu_us_per_window": round(cpu / (b * len(calls)) * 1e6, 2),
        })
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of the model-only child process."""
    p = argparse.ArgumentParser(prog="bench.model")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--backend", default="torch")
    p.add_argument("--precision", choices=["fp32", "int8"], default="fp32",
                   help="int8: the int8 graph (onnx backend only; needs the checkpoint's golden batch)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batches", default="1,64")
    p.add_argument("--min-s", type=float, default=0.3)
    p.add_argument("--wait-go", action="store_true", help="print 'ready', then wait for a line on stdin")
    a = p.parse_args(argv)
    import torch

    from training.model.checkpoint import load_checkpoint
    from worker.backends import make_predictor

    if a.threads:
        torch.set_num_threads(a.threads)
    from protocol.logs import configure
    from worker.onnx_backend import BackendError

    configure("INFO")  # structlog to stderr: stdout carries only 'ready' and the JSON rows
    try:
        pred = make_predictor(load_checkpoint(a.checkpoint), "cpu", a.backend, a.threads, a.precision)
    except BackendError as e:
        print(f"bench.model: {e}", file=sys.stderr)
        return 2
    if a.wait_go:  # parallel copies start timing together
        print("ready", flush=True)
        sys.stdin.readline()
    for row in time_batches(pred, a.threads, [int(b) for b in a.batches.split(",")], a.min_s):
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
