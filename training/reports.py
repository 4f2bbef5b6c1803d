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


def write_export_report(res: dict[str, Any], out_dir: Path) -> None:
    """``export.md``/``.json``/``.png``: ONNX parity and int8 size/accuracy change."""
    from training.plots import plot_bars

    res = {**res, "environment": environment()}
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# Export: ONNX and int8\n\nCheckpoint `{res['checkpoint']}`, evaluated on {res['eval_set']} "
             f"({res['eval_windows']} windows). Command: `{res.get('command', 'bigru-train export --onnx --quantize')}`.\n"]
    if "onnx" in res:
        o = res["onnx"]
        lines.append("## ONNX parity (max |onnx - torch| over logits)\n")
        lines.append(md_table(["inputs", "max abs diff"], [
            [f"random windows, shapes (B, T) {o['random_shapes']}", f"{o['random_max_abs_diff']:.2e}"],
            [f"real windows ({o['real_windows']})", f"{o['real_max_abs_diff']:.2e}" if o["real_max_abs_diff"] is not None else "n/a"],
        ]))
        lines.append(f"\nmodel.onnx: {o['bytes'] / 1024:.1f} KiB, dynamic `batch` and `time` axes, normalization inside the graph.\n")
    if "quantize" in res:
        q = res["quantize"]
        lines.append("## Dynamic int8 quantization (GRU/LSTM + Linear)\n")
        lines.append(md_table(["model", "size (KiB)", "accuracy (%)"], [
            ["fp32", f"{q['fp32_bytes'] / 1024:.1f}", f"{100 * q['fp32_accuracy']:.2f}"],
            ["int8", f"{q['int8_bytes'] / 1024:.1f}", f"{100 * q['int8_accuracy']:.2f}"],
        ]))
        lines.append(f"\nSize ratio {q['size_ratio']:.2f}, accuracy change {100 * q['accuracy_change']:+.2f} points.\n")
        plot_bars({"size (KiB)": {"fp32": (q["fp32_bytes"] / 1024, 0.0), "int8": (q["int8_bytes"] / 1024, 0.0)}},
                  "KiB", "Serialized model size", out_dir / "export.png")
    write(out_dir, "export", "\n".join(lines), res)
