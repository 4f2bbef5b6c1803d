"""Experiment result files: markdown + JSON + PNG under a results directory."""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std())


def pct(values: list[float]) -> str:
    """``mean ± std`` of fractions, in percent."""
    m, s = mean_std(values)
    return f"{100 * m:.2f} ± {100 * s:.2f}" if len(values) > 1 else f"{100 * m:.2f}"


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    """Where and when a result was measured."""
    import torch

    return {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.machine(), "threads": torch.get_num_threads(),
            "device": "cpu"}


def write(out_dir: Path, name: str, markdown: str, data: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``name.md`` and ``name.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / f"{name}.md", out_dir / f"{name}.json"
    md.write_text(markdown.rstrip() + "\n")
    js.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return md, js


def _kib(n: float | None) -> str:
    return f"{n / 1024:.1f}" if n is not None else "n/a"


def _num(x: float | None, fmt: str) -> str:
    return format(x, fmt) if x is not None else "n/a"


def write_export_report(res: dict[str, Any], out_dir: Path) -> None:
    """``export.md``/``.json``/``.png``: the served graph's size, forward time, parity, int8 size/accuracy.

    ``res`` is what ``bigru-train export`` measured: the served model's sections at the top level and,
    with ``--baseline-checkpoint``, the same sections under ``baseline`` plus new/old ``ratio``.
    """
    from training.experiments.plots import plot_bars

    res = {**res, "environment": environment()}
    out_dir.mkdir(parents=True, exist_ok=True)
    models = [("new", res)] + ([("old (baseline)", res["baseline"])] if "baseline" in res else [])
    names = [f"{label} `{m['checkpoint']}`" for label, m in models]
    ratio = res.get("ratio")
    lines = [f"# Export: the served ONNX graph, serving cost and int8\n\nEvaluated on {res['eval_set']} "
             f"({res['eval_windows']} windows). Command: `{res.get('command', 'bigru-train export --onnx --quantize')}`.\n"]
    lines += [f"- {n}: " + ", ".join(f"{k}={v}" for k, v in m["config"].items()) for n, (_, m) in zip(names, models)]
    lines.append("")
    if "onnx" in res:
        o, t = res["onnx"], res["timing"]
        lines.append("## Serving cost\n")
        lines.append(f"`model.onnx` is `training.export.onnx_bytes` (TorchScript exporter, opset {o['opset']}), the "
                     "bytes the worker's ONNX backend serves: input `x` [batch, time, F] raw (normalization inside the "
                     "graph), outputs `logits` and `probs`, dynamic `batch` and `time` axes. Forward time per window: "
                     f"random windows of length {t['length']}, one thread (ONNX Runtime with the worker's session "
                     f"settings; torch eager under `inference_mode`), median of 9 timed runs after warm-up.\n")
        headers = ["model", "parameters", "checkpoint file (KiB)", "model.onnx (KiB)", "ONNX µs/window b1",
                   "ONNX µs/window b64", "torch µs/window b1", "torch µs/window b64"]
        keys = ["onnx_us_b1", "onnx_us_b64", "torch_us_b1", "torch_us_b64"]
        rows = [[n, f"{m['size']['parameters']:,}", _kib(m["size"]["checkpoint_bytes"]), _kib(m["onnx"]["bytes"]),
                 *(_num(m["timing"].get(k), ".1f") for k in keys)] for n, (_, m) in zip(names, models)]
        if ratio:
            rows.append(["**ratio new/old**", *(_num(ratio.get(k), ".2f") for k in (
                "size.parameters", "size.checkpoint_bytes", "onnx.bytes", *(f"timing.{k}" for k in keys)))])
        lines += [md_table(headers, rows), ""]
        lines.append("## ONNX parity (max |onnx - torch| over logits, on the served graph)\n")
        lines.append(md_table(["model", f"random windows, shapes (B, T) {o['random_shapes']}", "real windows"], [
            [n, f"{m['onnx']['random_max_abs_diff']:.2e}",
             f"{m['onnx']['real_max_abs_diff']:.2e} ({m['onnx']['real_windows']})" if m["onnx"]["real_max_abs_diff"] is not None else "n/a"]
            for n, (_, m) in zip(names, models)]))
        lines.append("")
    if "quantize" in res:
        lines.append("## Dynamic int8 quantization (torch `quantize_dynamic`: GRU/LSTM + Linear; other layers stay fp32)\n")
        rows = [[n, _kib(q["fp32_bytes"]), _kib(q["int8_bytes"]), f"{q['size_ratio']:.2f}", f"{100 * q['fp32_accuracy']:.2f}",
                 f"{100 * q['int8_accuracy']:.2f}", f"{100 * q['accuracy_change']:+.2f}", ", ".join(q["layers"]["int8"]) or "none",
                 ", ".join(q["layers"]["fp32"]) or "none"] for n, q in ((n, m["quantize"]) for n, (_, m) in zip(names, models))]
        if ratio and "quantize.int8_bytes" in ratio:
            rows.append(["**ratio new/old**", _num(ratio.get("size.fp32_bytes"), ".2f"), _num(ratio["quantize.int8_bytes"], ".2f"),
                         "", "", "", "", "", ""])
        lines.append(md_table(["model", "fp32 state_dict (KiB)", "int8 state_dict (KiB)", "size ratio", "fp32 accuracy (%)",
                               "int8 accuracy (%)", "change (points)", "int8 layers", "fp32 layers"], rows))
    if "timing" in res:
        groups = {f"{b} b{n}": {nm: (m["timing"][f"{k}_us_b{n}"], 0.0) for nm, (_, m) in zip(names, models)}
                  for k, b in (("onnx", "ONNX"), ("torch", "torch")) for n in res["timing"]["batches"]}
        plot_bars({g: {k.replace("`", ""): v for k, v in s.items()} for g, s in groups.items()},
                  "µs per window", "Forward time per window (1 thread)", out_dir / "export.png")
    elif "quantize" in res:
        q = res["quantize"]
        plot_bars({"size (KiB)": {"fp32": (q["fp32_bytes"] / 1024, 0.0), "int8": (q["int8_bytes"] / 1024, 0.0)}},
                  "KiB", "Serialized model size", out_dir / "export.png")
    write(out_dir, "export", "\n".join(lines), res)
