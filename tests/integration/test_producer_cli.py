"""``bigru-producer publish`` goes through ``Producer.publish_entries``, the producer's one sending path."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import redis

from producer import cli
from producer.client import Entry, Producer
from producer.sources import LabeledWindow, from_file
from protocol.entries import decode_multi, decode_window
from protocol.keys import Keys
from protocol.wire import Limits

TS = str(Path(__file__).parents[1] / "data" / "ItalyPowerDemand_TRAIN.ts")


def _windows(r: redis.Redis, keys: Keys) -> dict[int, list[dict[bytes, bytes]]]:
    return {s: [f for _, f in r.xrange(keys.shard(s).windows)] for s in range(keys.shards)}


def test_single_window_entries_carry_cid_and_label_on_their_shard(
    r: redis.Redis, redis_url: str, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = Keys(prefix, prefix, 3)
    assert cli.main(["--redis-url", redis_url, "--prefix", prefix, "--shards", "3", "publish", "--source", TS,
                     "--count", "30", "--id-prefix", "q"]) == 0
    assert json.loads(capsys.readouterr().out)["published"] == 30
    want = {f"q-{i}": w for i, w in enumerate(from_file(TS, 30))}
    got = 0
    for shard, entries in _windows(r, keys).items():
        for f in entries:
            w = decode_window(f, Limits())
            assert zlib.crc32(w.cid.encode()) % 3 == shard
            assert w.meta == {"label": want[w.cid].label}
            np.testing.assert_array_equal(w.x, want[w.cid].x.astype(np.float32))
            got += 1
    assert got == 30


def test_multi_window_entries_carry_cids_and_no_label(
    r: redis.Redis, redis_url: str, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = Keys(prefix, prefix, 2)
    assert cli.main(["--redis-url", redis_url, "--prefix", prefix, "--shards", "2", "publish", "--source", TS,
                     "--count", "10", "--per-entry", "4"]) == 0
    assert json.loads(capsys.readouterr().out) | {"seconds": 0, "rate": 0} == {
        "published": 10, "entries": 3, "seconds": 0, "rate": 0}
    fields = [f for entries in _windows(r, keys).values() for f in entries]
    multis = [decode_multi(f, Limits(), 1) for f in fields]
    assert sorted(m.n for m in multis) == [2, 4, 4]
    assert sorted(c for m in multis for c in m.cids or []) == sorted(f"w-{i}" for i in range(10))
    assert all(b"meta" not in f for f in fields)


def test_each_due_chunk_is_one_publish_entries_call_of_pipeline_size(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[int] = []
    send = Producer.publish_entries

    def counting(self: Producer, entries: list[Entry]) -> list[str]:
        calls.append(len(entries))
        return send(self, entries)

    monkeypatch.setattr(Producer, "publish_entries", counting)
    monkeypatch.setenv("BIGRU_PIPELINE_SIZE", "100")
    assert cli.main(["--redis-url", redis_url, "--prefix", prefix, "publish", "--count", "250", "--length", "4"]) == 0
    assert calls == [100, 100, 50]
    assert json.loads(capsys.readouterr().out)["entries"] == 250


def test_paced_chunks_sleep_at_least_min_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    sleeps: list[float] = []

    def sleep(d: float) -> None:
        sleeps.append(d)
        clock[0] += d

    monkeypatch.setattr(cli.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(cli.time, "sleep", sleep)
    groups = [[LabeledWindow(np.zeros((4, 1), np.float32))] for _ in range(5)]
    # 100 000 windows/s: the second entry is due after 10 µs, but a paced producer sleeps 1 ms at
    # least and then sends everything that fell due meanwhile in one chunk.
    chunks = list(cli._paced(iter(groups), 100_000.0))
    assert [len(c) for c in chunks] == [1, 4] and sleeps == [cli.MIN_SLEEP_S]


@pytest.mark.parametrize("content", [None, "garbage\n", "@problemName x\n@data\n1,x,3:a\n"],
                         ids=["missing", "no-header", "bad-line"])
def test_a_wrong_source_file_is_one_line_and_exit_2(redis_url: str, prefix: str, tmp_path: Path, content: str | None,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A missing or malformed file gets the loader's (line-numbered) reason, not a traceback."""
    src = tmp_path / "windows.ts"
    if content is not None:
        src.write_text(content)
    for command in (["publish", "--source", str(src)], ["classify", str(src)]):
        assert cli.main(["--redis-url", redis_url, "--prefix", prefix, *command]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"bigru-producer: {src}"), err
