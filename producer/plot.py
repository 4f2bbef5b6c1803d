"""``bigru-producer results --plot out.png``: latency histogram and throughput over time.

matplotlib is imported lazily (it comes with the ``train`` extra), so the producer itself does
not need it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from protocol.results import Result


class PlotError(RuntimeError):
    """The plot cannot be drawn (no results, or matplotlib missing)."""


def summarize(results: Sequence[Result]) -> dict[str, Any]:
    """Count, time span, throughput and e2e percentiles (ms) of ``results``."""
    ok = np.array([r.e2e_us for r in results if r.status == "ok"], dtype=np.float64) / 1000
    ts = np.array([r.ts_us for r in results], dtype=np.int64)
    span_s = float(ts.max() - ts.min()) / 1e6 if len(ts) > 1 else 0.0
    doc: dict[str, Any] = {"results": len(results), "ok": int(len(ok)), "span_s": round(span_s, 3),
                           "throughput_per_s": round(len(results) / span_s, 1) if span_s > 0 else None}
    for q in (50, 90, 99):
        doc[f"e2e_ms_p{q}"] = round(float(np.percentile(ok, q)), 3) if len(ok) else None
    return doc


def plot_results(results: Sequence[Result], path: str | Path, bin_s: float | None = None) -> dict[str, Any]:
    """Draw the e2e latency histogram and results/s over time into ``path`` (PNG, SVG, PDF ...).

    Returns :func:`summarize` of the results. ``bin_s`` is the throughput bin width (default:
    about 60 bins over the span, at least 10 ms).
    """
    if not results:
        raise PlotError("no results to plot")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise PlotError("plotting needs matplotlib: pip install 'bigru-stream[train]'") from e
    summary = summarize(results)
    e2e_ms = np.array([r.e2e_us for r in results if r.status == "ok"], dtype=np.float64) / 1000
    ts = np.array([r.ts_us for r in results], dtype=np.int64)
    t = (ts - ts.min()) / 1e6
    span = float(t.max())
    # Equal bins that end exactly at the last result, so the last one is not a partial bin.
    n_bins = max(1, round(span / (bin_s or max(span / 60, 0.01))))
    width = span / n_bins if span > 0 else (bin_s or 1.0)
    edges = np.linspace(0.0, n_bins * width, n_bins + 1)
    counts, _ = np.histogram(t, bins=edges)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    if len(e2e_ms):
        lo, hi = max(float(e2e_ms.min()), 1e-3), max(float(e2e_ms.max()), 1e-3) * 1.01
        bins = np.logspace(np.log10(lo), np.log10(hi), 50) if hi / lo > 20 else 50
        ax1.hist(e2e_ms, bins=bins, color="tab:blue")
        if not isinstance(bins, int):
            ax1.set_xscale("log")
        for q, style in ((50, "--"), (99, ":")):
            v = summary[f"e2e_ms_p{q}"]
            ax1.axvline(v, color="k", linestyle=style, label=f"p{q} {v:.2f} ms")
        ax1.legend()
    ax1.set_xlabel("end-to-end latency (ms)")
    ax1.set_ylabel("windows")
    ax1.set_title(f"latency of {summary['ok']} results")
    rate = counts / width
    ax2.plot(edges[:-1] + width / 2, rate, color="tab:green", marker="." if len(rate) < 20 else None)
    ax2.set_xlabel("time since first result (s)")
    ax2.set_ylabel("results / s")
    ax2.set_title(f"throughput (mean {summary['throughput_per_s'] or '-'}/s)")
    ax2.set_ylim(0, max(float(rate.max()) * 1.1, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return summary
