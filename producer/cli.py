"""``bigru-producer``: publish windows (``publish``), read results (``results``), and classify windows,
waiting for their results (``classify``)."""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

from producer import labels_cli, segments_cli, stream_cli
from producer.backpressure import BackpressureError
from producer.client import ClassifyError, Entry, Producer
from producer.config import ProducerSettings
from producer.entries import shape_runs
from producer.group_reader import GroupResultsReader
from producer.results import ResultsReader
from producer.sources import LabeledWindow, from_file, synthetic
from protocol import logs
from protocol.outage import RedisOutageError
from protocol.results import Result
from protocol.settings import cli_settings, settings_from_flags
from training.model.data import DataError

#: Flags that steer a command rather than set a :class:`ProducerSettings` field.
COMMAND_OPTIONS = frozenset({"command", "source", "count", "rate", "length", "seed", "id_prefix", "per_entry",
                             "follow", "json", "start", "plot", "reader_group", "consumer", "claim_idle_ms",
                             "timeout"}) | stream_cli.OPTIONS | segments_cli.OPTIONS | labels_cli.OPTIONS


def _setting(p: argparse.ArgumentParser, name: str, **kw: Any) -> None:
    """``--name`` for the settings field ``name``: its help is the field's description, its default None."""
    help_ = (ProducerSettings.model_fields[name].description or "").replace("%", "%%")
    p.add_argument("--" + name.replace("_", "-"), dest=name, default=None, help=help_, **kw)


def build_parser() -> argparse.ArgumentParser:
    """Argument parser for both subcommands (settings flags default to None: unset ones fall back to
    the environment and ``.env``)."""
    p = argparse.ArgumentParser(prog="bigru-producer", description=__doc__)
    _setting(p, "redis_url")
    _setting(p, "prefix")
    _setting(p, "shards", type=int)
    _setting(p, "producer_outage_s", type=float)
    sub = p.add_subparsers(dest="command", required=True)
    pub = sub.add_parser("publish", help="publish windows and exit")
    pub.add_argument("--source", default="synthetic", help="'synthetic', or a .npz / .ts / .tsv / .csv file")
    pub.add_argument("--count", type=int, help="windows to publish (default: 1000, or the whole file)")
    pub.add_argument("--rate", type=float, help="open-loop rate in windows/s (default: as fast as possible)")
    pub.add_argument("--length", type=int, default=20, help="synthetic: timesteps per window")
    pub.add_argument("--seed", type=int, default=0)
    pub.add_argument("--id-prefix", default="w", help="client ids are <prefix>-<index>")
    _setting(pub, "max_lag", type=int)
    _setting(pub, "producer_id")
    _setting(pub, "idempotency_window_s", type=int)
    pub.add_argument("--block", dest="backpressure", action="store_const", const="block", default=None,
                     help="over --max-lag, wait instead of refusing (backpressure=block)")
    pub.add_argument("--per-entry", type=int, default=1, metavar="N",
                     help="pack up to N consecutive equal-length windows into one multi-window entry (their "
                          "client ids become the entry's cids; a window's meta.label is not sent with N > 1)")
    res = sub.add_parser("results", help="read the results stream")
    res.add_argument("--follow", action="store_true", help="keep reading new results")
    res.add_argument("--count", type=int, help="stop after this many results")
    res.add_argument("--json", action="store_true", help="one JSON object per line")
    res.add_argument("--from", dest="start", default="0-0", help="stream id to start after ('$': only new)")
    res.add_argument("--plot", metavar="FILE", help="draw latency histogram and throughput into FILE (.png); "
                     "prints a JSON summary instead of the results")
    res.add_argument("--group", dest="reader_group", metavar="NAME",
                     help="read as a consumer of this consumer group (created if missing, at the start of the "
                          "streams, or at their end with --from '$'); each result entry is acknowledged after it "
                          "is printed, so replicas sharing NAME each get a share and a crashed one's entries are "
                          "delivered again")
    res.add_argument("--consumer", metavar="C",
                     help="with --group: this reader's consumer name, stable across restarts and distinct per "
                          "replica (default: the host name)")
    res.add_argument("--claim-idle-ms", type=int, metavar="N",
                     help="with --group: take over entries unacknowledged this long at other consumers "
                          "(default 30000)")
    cls = sub.add_parser("classify", help="classify windows and print their results in order (reply streams)")
    cls.add_argument("source", help="'synthetic', or a .npz / .ts / .tsv / .csv file")
    cls.add_argument("--count", type=int, help="windows to classify (default: 10 synthetic, or the whole file)")
    cls.add_argument("--length", type=int, default=20, help="synthetic: timesteps per window")
    cls.add_argument("--seed", type=int, default=0)
    cls.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for every result")
    cls.add_argument("--json", action="store_true", help="one JSON object per line")
    stream_cli.add_parser(sub, _setting)
    segments_cli.add_parser(sub)
    labels_cli.add_parser(sub)
    return p


def cmd_classify(args: argparse.Namespace, s: ProducerSettings) -> int:
    """Classify the source's windows with :meth:`Producer.classify`; one line per window, in order.

    Windows that timed out or were dead-lettered are printed as such (exit status 1).
    """
    if args.source == "synthetic":
        windows = [w.x for w in synthetic(args.count or 10, args.length, args.seed)]
    else:
        windows = [w.x for w in from_file(args.source, args.count)]
    producer = Producer.from_settings(s)
    err: ClassifyError | None = None
    try:
        results: list[Any] = list(producer.classify(windows, timeout=args.timeout))
    except ClassifyError as e:
        err, results = e, list(e.results)
    for i, r in enumerate(results):
        if r is None:
            assert err is not None
            status = f"dead:{err.dead[i]}" if i in err.dead else "timeout"
            print(json.dumps({"cid": str(i), "status": status}) if args.json else f"{i} {status}", flush=True)
        elif args.json:
            print(json.dumps(r.__dict__), flush=True)
        else:
            print(f"{r.cid} {r.status} label={r.class_name} p={max(r.probs, default=0):.3f} model={r.model}", flush=True)
    if err is not None:
        print(f"bigru-producer: {err}", file=sys.stderr)
        return 1
    return 0


#: Shortest pause of a paced publisher: what falls due meanwhile goes out in one pipelined round trip
#: (sleeping until each window's own due time costs a system call and a round trip per window).
MIN_SLEEP_S = 0.001


def _paced(entries: Iterator[list[LabeledWindow]], rate: float | None,
           size: int = 500) -> Iterator[list[list[LabeledWindow]]]:
    """Chunks (up to ``size`` entries) of entries due now: open loop at ``rate`` windows/s (an entry
    is due when its first window is), or as fast as possible."""
    t0 = time.perf_counter()
    sent = 0
    chunk: list[list[LabeledWindow]] = []
    for e in entries:
        if rate:
            due = t0 + sent / rate
            now = time.perf_counter()
            if due > now:
                if chunk:
                    yield chunk
                    chunk = []
                time.sleep(max(due - now, MIN_SLEEP_S))
        chunk.append(e)
        sent += len(e)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _entry(group: list[LabeledWindow], first: int, id_prefix: str) -> Entry:
    """The entry of ``group``, its windows numbered from ``first`` (client ids ``{id_prefix}-{n}``); a
    window alone carries its label as ``meta.label``."""
    cids = [f"{id_prefix}-{first + i}" for i in range(len(group))]
    label = group[0].label if len(group) == 1 else None
    return Entry.of_windows([w.x for w in group], cids, meta={"label": label} if label is not None else None)


def cmd_publish(args: argparse.Namespace, s: ProducerSettings) -> int:
    """Publish the chosen source: each due chunk in one round trip through :meth:`Producer.publish_entries`."""
    if args.per_entry < 1:
        print("bigru-producer: --per-entry must be at least 1", file=sys.stderr)
        return 2
    producer = Producer.from_settings(s)
    if args.source == "synthetic":
        windows = synthetic(args.count or 1000, args.length, args.seed)
    else:
        windows = from_file(args.source, args.count)
    t0 = time.perf_counter()
    n = entries = 0
    for chunk in _paced(shape_runs(windows, args.per_entry, lambda w: w.x.shape), args.rate, producer.pipeline_size):
        batch: list[Entry] = []
        first = n
        for group in chunk:
            batch.append(_entry(group, first, args.id_prefix))
            first += len(group)
        try:
            producer.publish_entries(batch)
        except BackpressureError as e:
            print(json.dumps({"published": n, "entries": entries, "error": str(e), "lag": e.lag, "max_lag": e.limit}))
            return 3
        except RedisOutageError as e:
            print(f"bigru-producer: {e}; {n} windows were published before", file=sys.stderr)
            return EXIT_OUTAGE
        n = first
        entries += len(chunk)
    dt = time.perf_counter() - t0
    print(json.dumps({"published": n, "entries": entries, "seconds": round(dt, 3),
                      "rate": round(n / dt, 1) if dt > 0 else None}))
    return 0


#: ``results --json``: the Python attribute names that differ from the wire's field names.
_WIRE_NAMES = {"input_id": "in", "class_name": "class", "ts_us": "ts"}


def result_json(r: Result) -> dict[str, Any]:
    """One ``results --json`` line: a (per-window) result under the wire's field names (``in``,
    ``class``, ``ts``, ...; docs/wire-format.md), plus ``index`` and ``reason`` for a window of a
    multi-window entry, and ``span`` (the wire's map ``key``, ``seq``, ``t0``, ``t1``) for a stream window."""
    out = {_WIRE_NAMES.get(k, k): v for k, v in vars(r).items() if k != "span"}
    if r.span is not None:
        out["span"] = r.span.as_map()
    return out


def _results(args: argparse.Namespace, s: ProducerSettings) -> Iterator[Result]:
    """The per-window results to show: from a plain reader, or through the consumer group ``--group``
    (an entry is acknowledged when the next one is asked for, i.e. after its results were shown)."""
    if args.reader_group is None:
        yield from ResultsReader(s.connect(), s.keys, start=args.start, outage=s.outage()).iter(
            count=args.count, follow=args.follow)
        return
    reader = GroupResultsReader(s.connect(), s.keys, args.reader_group, args.consumer or socket.gethostname(),
                                start="$" if args.start == "$" else "0",
                                claim_idle_ms=30_000 if args.claim_idle_ms is None else args.claim_idle_ms,
                                outage=s.outage())
    for _, results in reader.iter(count=args.count, follow=args.follow):
        yield from results


def cmd_results(args: argparse.Namespace, s: ProducerSettings) -> int:
    """Print results as text or JSON lines."""
    if args.reader_group is None and (args.consumer is not None or args.claim_idle_ms is not None):
        print("bigru-producer: --consumer and --claim-idle-ms need --group", file=sys.stderr)
        return 2
    if args.reader_group is not None and args.start not in ("0-0", "0", "$"):
        print("bigru-producer: with --group, --from is '0' (default) or '$' (where a new group starts)",
              file=sys.stderr)
        return 2
    if args.plot:
        return _plot(_results(args, s), args)
    try:
        for r in _results(args, s):
            if args.json:
                print(json.dumps(result_json(r)), flush=True)
            else:
                print(f"{r.input_id} cid={r.cid} {r.status} label={r.class_name} p={max(r.probs, default=0):.3f} "
                      f"model={r.model} e2e={r.e2e_us / 1000:.2f}ms", flush=True)
    except KeyboardInterrupt:
        pass
    return 0


def _plot(source: Iterator[Result], args: argparse.Namespace) -> int:
    from producer.plot import PlotError, plot_results

    results = []
    try:
        for r in source:
            results.append(r)
    except KeyboardInterrupt:
        pass
    try:
        summary = plot_results(results, args.plot)
    except PlotError as e:
        print(f"bigru-producer: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"plot": args.plot, **summary}))
    return 0


#: Exit status when Redis stayed unreachable past ``producer_outage_s``.
EXIT_OUTAGE = 4


def settings_from_args(args: argparse.Namespace) -> ProducerSettings:
    """Settings from the environment/.env, overridden by the flags that were given."""
    return settings_from_flags(ProducerSettings, args, COMMAND_OPTIONS)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    s = cli_settings("bigru-producer", ProducerSettings, args, COMMAND_OPTIONS)
    if s is None:
        return 2
    logs.configure()  # log events (an outage's start and end among them) go to stderr, never into the output
    try:
        if args.command == "classify":
            return cmd_classify(args, s)
        if args.command in ("stream", "segments"):
            return stream_cli.cmd_stream(args, s) if args.command == "stream" else segments_cli.cmd_segments(args, s)
        if args.command == "label":
            return labels_cli.cmd_label(args, s)
        return cmd_publish(args, s) if args.command == "publish" else cmd_results(args, s)
    except RedisOutageError as e:
        print(f"bigru-producer: {e}", file=sys.stderr)
        return EXIT_OUTAGE
    except DataError as e:  # a source file that is missing or malformed: the line-numbered reason, no traceback
        print(f"bigru-producer: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
