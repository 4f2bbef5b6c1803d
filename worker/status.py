"""``bigru-worker status``: streams, lag, consumers and recent throughput/latency, once or watched.

Everything comes from Redis (stream/group info, heartbeats and the results streams), so the view
is the same from any host and works on a single Redis and on a cluster.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from typing import Any, TextIO

import numpy as np
import redis

from protocol.cluster import shard_nodes
from protocol.keys import Keys
from protocol.registry import read_pointer
from protocol.replies import as_str, group_info
from worker.drift_report import DriftSummary, drift_lines
from worker.health import beats


def _shard_info(r: redis.Redis, keys: Keys, shard: int, node: str | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    sk = keys.shard(shard)
    info: dict[str, Any] = {"shard": shard, "stream": sk.windows, "length": r.xlen(sk.windows),
                            "lag": None, "pending": None, "results": r.xlen(sk.results), "dead": r.xlen(sk.dead)}
    if node:
        info["node"] = node
    consumers: list[dict[str, Any]] = []
    g = group_info(r, sk.windows, keys.group)
    if g is not None:
        info.update(lag=g.get("lag"), pending=g.get("pending"), last_delivered=as_str(g["last-delivered-id"]))
        consumers = [{"name": as_str(c["name"]), "pending": int(c["pending"]), "idle_ms": int(c["idle"])}
                     for c in r.xinfo_consumers(sk.windows, keys.group)]
    return info, consumers


def _id_ms(entry_id: bytes | str) -> int:
    return int(as_str(entry_id).split("-")[0])


#: Shortest span a rate is taken over: results published in one batch share a millisecond, so a
#: burst's first-to-last span says little below this.
MIN_RATE_SPAN_S = 1.0


def recent_results(r: redis.Redis, keys: Keys, window_s: float = 60.0, sample: int = 20000,
                   now: float | None = None) -> dict[str, Any]:
    """Throughput and e2e p50/p99 of the results published in the last ``window_s`` seconds.

    The rate is over the span actually seen, not the whole window: ``span_s`` is the time from the
    first to the last result in the window (entry ids, all shards together), at least
    ``MIN_RATE_SPAN_S`` and at most ``window_s``, and ``throughput_per_s`` is the results in that
    span divided by it. So 3000 results that arrived within 3 s give 1000/s whether the window is
    10 s or 60 s; a steady stream over the whole window gives results / window. Reads at most
    ``sample`` newest entries per shard; when a shard has more, the rate counts only the results
    (of every shard) since the oldest one sampled on such a shard, so all shards cover one span.
    """
    now_ms = int((time.time() if now is None else now) * 1000)
    since = now_ms - int(window_s * 1000)
    start = since  # the span every shard's sample covers
    count, e2e, stamps = 0, [], []
    for sk in keys.all_shards():
        rows = r.xrevrange(sk.results, max="+", min=str(since), count=sample)
        if not rows:
            continue
        count += len(rows)
        ms = [_id_ms(i) for i, _ in rows]
        if len(rows) >= sample:
            start = max(start, ms[-1])
        stamps += ms
        e2e += [int(f[b"e2e_us"]) for _, f in rows if f.get(b"status") == b"ok" and b"e2e_us" in f]
    seen = [t for t in stamps if t >= start]
    span_s = min(max((max(seen) - min(seen)) / 1000, MIN_RATE_SPAN_S), window_s) if seen else None
    rate = len(seen) / span_s if span_s else 0.0
    doc: dict[str, Any] = {"window_s": window_s, "results": count, "throughput_per_s": round(rate, 1),
                           "span_s": None if span_s is None else round(span_s, 3),
                           "e2e_ms_p50": None, "e2e_ms_p99": None}
    if e2e:
        p50, p99 = np.percentile(np.array(e2e) / 1000, [50, 99])
        doc.update(e2e_ms_p50=round(float(p50), 2), e2e_ms_p99=round(float(p99), 2))
    return doc


def snapshot(r: redis.Redis, keys: Keys, window_s: float = 60.0) -> dict[str, Any]:
    """The status document (what ``status --json`` prints)."""
    now = time.time()
    nodes = shard_nodes(r, keys)
    shards: list[dict[str, Any]] = []
    per_consumer: dict[str, dict[str, Any]] = {}
    for s in range(keys.shards):
        info, consumers = _shard_info(r, keys, s, nodes.get(s))
        shards.append(info)
        for c in consumers:
            agg = per_consumer.setdefault(c["name"], {"name": c["name"], "pending": 0, "idle_ms": c["idle_ms"]})
            agg["pending"] += c["pending"]
            agg["idle_ms"] = min(agg["idle_ms"], c["idle_ms"])
    for name, hb in beats(r, keys).items():
        c = per_consumer.setdefault(name, {"name": name, "pending": 0, "idle_ms": None})
        c.update(host=hb.host, pid=hb.pid, model=hb.model, precision=hb.precision, served=hb.results, dead=hb.dead,
                 heartbeat_age_s=round(now - hb.ts, 1), breaker=hb.breaker, breaker_trips=hb.breaker_trips,
                 drift=None if hb.drift is None else hb.drift.to_doc())
    for name, c in per_consumer.items():
        c["alive"] = bool(r.exists(keys.heartbeat(name)))
        c.setdefault("model", None)
        c.setdefault("heartbeat_age_s", None)
    return {
        "ts": round(now, 3), "prefix": keys.prefix, "group": keys.group, "shards": shards,
        "consumers": sorted(per_consumer.values(), key=lambda c: c["name"]),
        "recent": recent_results(r, keys, window_s, now=now),
        "models": models(r, keys, [{"consumer": c["name"], "model": c["model"]} for c in per_consumer.values() if c["alive"]]),
        "loop": loop(r, keys),
    }


def loop(r: redis.Redis, keys: Keys) -> dict[str, Any] | None:
    """The continuous loop's state (docs/lifecycle.md#the-loop): the candidate and its last decision or check,
    the recorder's counters; None when no loop ever ran."""
    def text(key: str) -> dict[str, str]:
        return {as_str(k): as_str(v) for k, v in r.hgetall(key).items()}

    cand, rec = text(keys.model_candidate), text(keys.recorder)
    if not cand and not rec:
        return None
    decision = cand.get("decision") or cand.get("last_check")
    return {"candidate": cand.get("version"), "state": cand.get("state"),
            "decision": json.loads(decision) if decision else None,
            "recorder": {k: rec[k] for k in ("windows", "labels", "joined", "refused", "retained", "retained_bytes")
                         if k in rec}}


def models(r: redis.Redis, keys: Keys, replicas: list[dict[str, Any]]) -> dict[str, Any]:
    """The registry's ``latest`` pointer and the version each live replica (``consumer``, ``model``) serves."""
    ptr = read_pointer(r, keys)
    serving = {str(rep.get("consumer")): rep.get("model") for rep in replicas}
    latest = None if ptr is None else ptr.version
    return {"latest": latest, "latest_seq": None if ptr is None else ptr.seq, "serving": serving,
            "behind": sorted(c for c, v in serving.items() if latest is not None and v != latest)}


def _fmt(v: Any, unit: str = "") -> str:
    return "-" if v is None else f"{v}{unit}"


def render(doc: dict[str, Any]) -> str:
    """A human-readable table of a status document."""
    lines = [f"bigru status  prefix={doc['prefix']} group={doc['group']} shards={len(doc['shards'])}  "
             f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(doc['ts']))}", ""]
    with_node = any("node" in s for s in doc["shards"])
    lines.append(f"{'shard':>5} {'length':>9} {'lag':>9} {'pending':>8} {'results':>9} {'dead':>6}"
                 + ("  node" if with_node else ""))
    for s in doc["shards"]:
        lines.append(f"{s['shard']:>5} {s['length']:>9} {_fmt(s['lag']):>9} {_fmt(s['pending']):>8} {s['results']:>9} "
                     f"{s['dead']:>6}" + (f"  {s.get('node', '')}" if with_node else ""))
    lines += ["", f"{'consumer':<24} {'state':<7} {'pending':>8} {'idle':>9} {'heartbeat':>10}  model"]
    for c in doc["consumers"]:
        idle = "-" if c["idle_ms"] is None else f"{c['idle_ms'] / 1000:.1f}s"
        state = "stale" if not c["alive"] else "ready" if c.get("breaker", "closed") == "closed" else c["breaker"]
        precision = f" ({c['precision']})" if c.get("precision") else ""
        lines.append(f"{c['name']:<24} {state:<7} {c['pending']:>8} {idle:>9} {_fmt(c['heartbeat_age_s'], 's'):>10}  "
                     f"{_fmt(c['model'])}{precision}")
    lines += drift_lines([(c["name"], DriftSummary.from_doc(c["drift"])) for c in doc["consumers"]
                          if c.get("alive") and c.get("drift")])
    rec = doc["recent"]
    span = rec.get("span_s")
    over = "" if span is None else f" over {span:.1f}s (first to last result, at least {MIN_RATE_SPAN_S:.0f}s)"
    lines += ["", f"last {rec['window_s']:.0f}s: {rec['results']} results, {rec['throughput_per_s']}/s{over}, "
                  f"e2e p50 {_fmt(rec['e2e_ms_p50'], ' ms')}, p99 {_fmt(rec['e2e_ms_p99'], ' ms')}"]
    m = doc.get("models") or {}
    if m.get("latest"):
        behind = ", ".join(m["behind"]) or "none"
        lines.append(f"registry latest: {m['latest']} (seq {m['latest_seq']}); replicas behind: {behind}")
    lp = doc.get("loop")
    if lp:
        d = lp["decision"] or {}
        lines.append(f"loop: candidate {_fmt(lp['candidate'])} {_fmt(lp['state'])}"
                     + (f" ({d.get('outcome')}: {d.get('pairs')} pairs, b {d.get('b')} c {d.get('c')}, "
                        f"p {d.get('p_better')}; {d.get('reason')})" if d else ""))
        rc = lp["recorder"]
        if rc:
            lines.append(f"recorder: {rc.get('windows', 0)} windows seen, {rc.get('retained', 0)} retained, "
                         f"{rc.get('joined', 0)} labelled, refused {rc.get('refused', '{}')}")
    return "\n".join(lines)


def run(r: redis.Redis, keys: Keys, *, as_json: bool = False, watch: bool = False, interval: float = 2.0,
        out: TextIO = sys.stdout) -> int:
    """Print the status once, or every ``interval`` seconds until interrupted (``watch``)."""
    if watch and threading.current_thread() is threading.main_thread():
        # A shell starts background jobs with SIGINT ignored, and Python keeps an ignored SIGINT:
        # without this, `status --watch &` could only be stopped with SIGTERM or SIGKILL.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        while True:
            doc = snapshot(r, keys)
            if as_json:
                out.write(json.dumps(doc, default=str) + "\n")
            else:
                if watch:  # clear the screen on a terminal, separate the views otherwise
                    out.write("\x1b[H\x1b[2J" if out.isatty() else "\n")
                out.write(render(doc) + "\n")
            out.flush()
            if not watch:
                return 0
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0
