"""The batch result encoder writes exactly what the one-result encoder writes."""

import msgpack
import numpy as np
import pytest

from protocol.result_batch import OkResults, decimals, pack_rows
from protocol.results import Result, encode_result
from worker.types import flat


@pytest.mark.parametrize("c", [1, 2, 15, 16, 40])
def test_pack_rows_equals_msgpack_of_python_floats(c: int) -> None:
    rng = np.random.default_rng(c)
    probs = rng.random((7, c)).astype(np.float32).astype(np.float64)
    probs[0, 0], probs[1, -1] = 0.0, -0.0
    if c > 2:
        probs[2, 1], probs[3, 2] = np.inf, 1e-300
    assert pack_rows(probs) == [msgpack.packb(row) for row in probs.tolist()]


def test_decimals_match_str() -> None:
    v = np.array([0, 7, 10, 123456789, 2**62], dtype=np.int64)
    assert decimals(v) == [str(int(x)).encode() for x in v]


def test_encode_many_is_byte_identical_to_encode_result() -> None:
    classes = ["walk", "run", "sit"]
    enc = OkResults(classes, "m-3", "w-1", 1234, 1_764_230_400_500_000, 64)
    rng = np.random.default_rng(1)
    probs = rng.random((5, 3))
    labels = probs.argmax(1).tolist()
    ts = np.array([1_764_230_400_000_000 + i for i in range(5)], dtype=np.int64)
    read = ts + np.array([10, 0, -5, 3, 99])  # a read before ts (clock skew) clamps to 0
    ids, cids = [f"{i}-0" for i in range(5)], ["", "a", "é", "b", ""]
    got = enc.encode_many(ids, cids, labels, probs, ts, read, 1_764_230_400_100_000)
    for i in range(5):
        r = Result(input_id=ids[i], cid=cids[i], status="ok", label=labels[i], class_name=classes[labels[i]],
                   probs=probs[i].tolist(), model="m-3", worker="w-1",
                   queue_us=max(0, int(read[i] - ts[i])), wait_us=max(0, 1_764_230_400_100_000 - int(read[i])),
                   infer_us=1234, e2e_us=max(0, 1_764_230_400_500_000 - int(ts[i])), ts_us=1_764_230_400_500_000,
                   batch=64)
        assert got[i] == flat(encode_result(r))
