"""A batch's ``ok`` single-window results, encoded from arrays in one pass (the worker's hot path).

Each result is the flat list ``[name, value, name, value, ...]`` of :data:`protocol.results.RESULT_FIELDS`
(then ``meta`` and ``span`` when the input had them), byte-identical to
:func:`protocol.results.encode_result` of the same result: the values every result of the batch shares
(version, status, model, worker, ``infer_us``, ``ts``, ``batch``) and each class's label fields are
encoded once, the probabilities of the whole batch by one numpy pass, the latencies as arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgpack
import numpy as np

from protocol.results import SHARED_FIELDS, Timing, shared_fields
from protocol.wire import VERSION

#: One msgpack float 64 (marker ``0xcb`` then the big-endian double): what ``msgpack.packb`` writes for a Python float.
_F64 = np.dtype([("m", "u1"), ("v", ">f8")])


def pack_rows(probs: np.ndarray) -> list[bytes]:
    """``msgpack.packb(row.tolist())`` of every row of ``probs`` ``[n, C]`` (as float64), in one numpy pass."""
    n, c = probs.shape
    cells = np.empty((n, c), dtype=_F64)
    cells["m"] = 0xCB
    cells["v"] = probs
    head = bytes([0x90 | c]) if c < 16 else b"\xdc" + c.to_bytes(2, "big")
    body, row = cells.tobytes(), 9 * c
    return [head + body[i: i + row] for i in range(0, n * row, row)]


def decimals(values: np.ndarray) -> list[bytes]:
    """Non-negative integers as ASCII decimal bytes (``str(v).encode()``), one C pass."""
    out: list[bytes] = values.astype("S20").tolist()
    return out


class OkResults:
    """Encodes the ``ok`` results of one batch (see the module docstring)."""

    def __init__(self, classes: Sequence[str], model: str, worker: str, infer_us: int, pub_us: int, batch: int) -> None:
        self.pub_us = pub_us
        self._classes = [(str(i).encode(), c.encode()) for i, c in enumerate(classes)]
        shared = shared_fields(model, worker, Timing(0, 0, infer_us, 0, pub_us, batch))
        self._shared = [shared[k] for k in SHARED_FIELDS]
        self._packer = msgpack.Packer(use_bin_type=True)
        self.pack = self._packer.pack  #: msgpack as :func:`protocol.wire.pack` writes it (``meta``)

    def encode_many(self, ids: Sequence[str], cids: Sequence[str], labels: Sequence[int], probs: np.ndarray,
                    ts_us: np.ndarray, read_us: np.ndarray, batch_us: int) -> list[list[bytes]]:
        """The flat fields of ``len(ids)`` results (``probs`` ``[n, C]``, ``labels`` their argmax, ``ts_us`` and
        ``read_us`` int64 arrays); append ``meta``/``span`` pairs to a result whose input had them."""
        queue = decimals(np.maximum(read_us - ts_us, 0))
        wait = decimals(np.maximum(batch_us - read_us, 0))
        e2e = decimals(np.maximum(self.pub_us - ts_us, 0))
        rows = pack_rows(probs)
        classes = self._classes
        model, worker, infer, ts, batch = (self._shared[i] for i in (0, 1, 4, 6, 7))
        return [
            [b"v", VERSION, b"in", i.encode(), b"cid", c.encode(), b"status", b"ok", b"label", classes[k][0],
             b"class", classes[k][1], b"probs", p, b"model", model, b"worker", worker, b"queue_us", q, b"wait_us", w,
             b"infer_us", infer, b"e2e_us", e, b"ts", ts, b"batch", batch]
            for i, c, k, p, q, w, e in zip(ids, cids, labels, rows, queue, wait, e2e)
        ]
