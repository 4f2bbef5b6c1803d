"""``bigru-producer stream``: cut windows from a long recording (or live samples on standard input) per
device and publish them (docs/streams.md).

A file (``.csv`` / ``.npz``, :mod:`training.model.recording`) is replayed in event-time order, every
device's samples interleaved as they would arrive, at the recording's own rate (``--speed 1``), N
times it (``--speed N``) or as fast as possible (``--speed 0``). ``-`` reads CSV lines (a header, then
one sample a line) from standard input and pushes each sample as it arrives.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from producer.backpressure import BackpressureError
from producer.client import Producer
from producer.config import ProducerSettings
from producer.streaming import Samples, StreamPublisher
from producer.windower import DEFAULT_IDLE_S, Windower, WindowerError, WindowSpec
from protocol.outage import RedisOutageError
from training.model.recording import DEVICE_COLUMN, TIME_COLUMN, Recording, load_recording, read_csv

#: The command's own options (not :class:`ProducerSettings` fields).
OPTIONS = frozenset({"window", "hop", "speed", "rate_hz", "max_gap", "idle_s", "device_column", "time_column",
                     "chunk"})
#: Exit status when the stream stopped on backpressure (as ``publish``).
EXIT_BACKPRESSURE = 3


def add_parser(sub: Any, setting: Callable[..., None]) -> None:
    """Add ``stream`` to the subcommands (``setting`` adds a settings flag, as ``publish`` has them)."""
    p = sub.add_parser("stream", help="cut windows from a long recording or live samples per device and publish them")
    p.add_argument("--source", required=True, help="a .csv / .npz recording, or '-' for CSV lines on standard input")
    p.add_argument("--window", type=int, required=True, help="samples per window")
    p.add_argument("--hop", type=int, required=True, help="samples between window starts")
    p.add_argument("--speed", type=float, default=1.0,
                   help="files: replay at N times the recording's rate (0: as fast as possible)")
    p.add_argument("--rate-hz", type=float, help="nominal sampling rate (default: from the file's time column)")
    p.add_argument("--max-gap", type=int, help="pad gaps of up to this many missing samples (default: window // 8); "
                   "a longer gap restarts the device's window")
    p.add_argument("--idle-s", type=float, default=DEFAULT_IDLE_S,
                   help="forget a device silent this long in event time (its partial window is dropped)")
    p.add_argument("--device-column", default=DEVICE_COLUMN, help="CSV column naming the device (optional)")
    p.add_argument("--time-column", default=TIME_COLUMN, help="CSV column of event times in seconds (optional)")
    p.add_argument("--chunk", type=int, default=2000, help="--speed 0: samples pushed per round of publishing")
    setting(p, "max_lag", type=int)
    setting(p, "producer_id")
    setting(p, "idempotency_window_s", type=int)
    p.add_argument("--block", dest="backpressure", action="store_const", const="block", default=None,
                   help="over --max-lag, wait instead of refusing (backpressure=block)")
    p.add_argument("--per-entry", type=int, default=1, metavar="N",
                   help="pack up to N consecutive windows of a device into one multi-window entry")


def file_batches(rec: Recording, speed: float, chunk: int) -> Iterator[list[Samples]]:
    """The recording's samples in event-time order, grouped per device, in rounds: what falls due at
    ``speed`` times the recording's rate (0: ``chunk`` samples a round, no waiting)."""
    n = len(rec)
    t0_wall, t0_ev = time.perf_counter(), int(rec.t_us[0]) if n else 0
    lo = 0
    while lo < n:
        if speed > 0:
            due_ev = t0_ev + (time.perf_counter() - t0_wall) * speed * 1e6
            hi = int(np.searchsorted(rec.t_us, due_ev, side="right"))
            if hi <= lo:
                wait = (int(rec.t_us[lo]) - due_ev) / (speed * 1e6)
                time.sleep(min(max(wait, 0.0005), 0.5))
                continue
        else:
            hi = min(n, lo + chunk)
        rows = slice(lo, hi)
        dev = rec.device[rows]
        batch: list[Samples] = []
        for d in dict.fromkeys(dev.tolist()):
            sel = np.flatnonzero(dev == d)
            batch.append((str(d), rec.t_us[rows][sel], rec.x[rows][sel]))
        yield batch
        lo = hi


def stdin_batches(rate_hz: float | None, device_column: str, time_column: str) -> Iterator[list[Samples]]:
    """Samples from CSV lines on standard input, one batch per line as it arrives (a line without a time
    takes the device's next slot at ``rate_hz``)."""
    _, rows = read_csv(sys.stdin, "<stdin>", device_column=device_column, time_column=time_column)
    counts: dict[str, int] = {}
    for dev, t, _, vals in rows:
        if t is None:
            if not rate_hz:
                raise WindowerError("<stdin>: no time column; give --rate-hz")
            k = counts.get(dev, 0)
            counts[dev] = k + 1
            t_us = round(k * 1e6 / rate_hz)
        else:
            t_us = round(t * 1e6)
        yield [(dev, np.array([t_us], np.int64), vals[None, :])]


def cmd_stream(args: argparse.Namespace, s: ProducerSettings) -> int:
    """Replay/stream the source's samples through a :class:`StreamPublisher`; print a JSON summary."""
    try:
        if args.source == "-":
            if not args.rate_hz:
                print("bigru-producer: stream from standard input needs --rate-hz (the nominal sampling rate)",
                      file=sys.stderr)
                return 2
            rate = args.rate_hz
            batches = stdin_batches(args.rate_hz, args.device_column, args.time_column)
        else:
            rec = load_recording(args.source, args.rate_hz, device_column=args.device_column,
                                 time_column=args.time_column)
            rate = args.rate_hz or rec.rate_hz()
            batches = file_batches(rec, args.speed, args.chunk)
        spec = WindowSpec.at_rate(args.window, args.hop, rate, args.max_gap, args.idle_s)
        pub = StreamPublisher(Producer.from_settings(s), Windower(spec), per_entry=args.per_entry)
    except (WindowerError, ValueError) as e:
        print(f"bigru-producer: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    status = 0
    try:
        for batch in batches:
            pub.push_many(batch)
        pub.close()
    except BackpressureError as e:
        print(f"bigru-producer: {e}", file=sys.stderr)
        status = EXIT_BACKPRESSURE
    except KeyboardInterrupt:
        pub.close()
    except RedisOutageError:
        print(json.dumps(_summary(pub, t0)), flush=True)
        raise
    print(json.dumps(_summary(pub, t0)), flush=True)
    return status


def _summary(pub: StreamPublisher, t0: float) -> dict[str, Any]:
    c = pub.windower.counts
    dt = time.perf_counter() - t0
    return {"samples": c.samples, "windows": c.windows, "published": pub.counts.windows, "entries": pub.counts.entries,
            "late": c.late, "duplicate": c.duplicate, "padded": c.padded, "restarts": c.restarts,
            "partial_dropped": c.partial_dropped, "seconds": round(dt, 3)}
