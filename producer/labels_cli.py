"""``bigru-producer label``: send the true class of served windows, one (``--cid C --label K``) or many
(``--file F``, ``-`` for stdin: one ``cid<TAB or comma>label`` per line)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import TextIO

from producer.config import ProducerSettings
from producer.labels import Sent, send_labels
from protocol.labels import LabelError

#: Flags of this command (they steer it, they set no settings field).
OPTIONS = frozenset({"cid", "label", "file", "src"})


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """The ``label`` subcommand's parser."""
    p = sub.add_parser("label", help="send true labels of served windows (docs/lifecycle.md#the-loop)")
    p.add_argument("--cid", help="the served window's client id")
    p.add_argument("--label", help="its true class (name, or index into the model's classes)")
    p.add_argument("--file", help="many at once: lines 'cid<TAB or ,>label' ('-': stdin)")
    p.add_argument("--src", default="", help="who labels (1-64 of [A-Za-z0-9_.:-]), stored with each label")


def _pairs(lines: TextIO) -> Iterator[tuple[str, str] | Sent]:
    for n, line in enumerate(lines, 1):
        line = line.rstrip("\n")
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t") if "\t" in line else line.rsplit(",", 1)
        if len(parts) != 2:
            yield Sent("", line, reason="malformed", detail=f"line {n}: expected 'cid<TAB or ,>label'")
            continue
        yield parts[0].strip(), parts[1].strip()


def cmd_label(args: argparse.Namespace, s: ProducerSettings) -> int:
    """Send the labels; one JSON line per label (``id`` or ``reason``); exit 1 when any was refused."""
    if (args.file is None) == (args.cid is None or args.label is None):
        print("bigru-producer label: give --cid and --label, or --file", file=sys.stderr)
        return 2
    if args.file is None:
        items: list[tuple[str, str] | Sent] = [(args.cid, args.label)]
    elif args.file == "-":
        items = list(_pairs(sys.stdin))
    else:
        with open(args.file, encoding="utf-8") as f:
            items = list(_pairs(f))
    try:
        sent = iter(send_labels(s.connect(), s.keys, [i for i in items if not isinstance(i, Sent)], src=args.src))
    except LabelError as e:  # a bad --src refuses every label
        print(f"bigru-producer label: {e}", file=sys.stderr)
        return 2
    refused = 0
    for item in items:
        res = item if isinstance(item, Sent) else next(sent)
        refused += not res.ok
        doc = {"cid": res.cid, "label": res.label, **({"id": res.id} if res.ok else {"refused": res.reason,
                                                                                      "detail": res.detail})}
        print(json.dumps(doc), flush=True)
    return 1 if refused else 0
