"""``bigru-worker redrive``: dead letters of a reason and time range go back onto the input stream and
are served, each exactly once, also with two redrives at once; other reasons and dead letters that
cannot be redriven stay (real Redis, a real WorkerLoop with a model that starts failing mid-load)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from bench.harness import LocalRedis
from producer.client import Producer
from protocol.keys import Keys
from protocol.results import encode_dead
from protocol.security import acl_rules
from tests.helpers import make_loop
from tests.integration.test_breaker import Flaky
from training.model.checkpoint import load_checkpoint
from worker import cli
from worker.predictor import TorchPredictor
from worker.redrive import RedriveError, Redriver, Selection, Summary, parse_time


@pytest.fixture(scope="module")
def predictor(checkpoint_root: Path) -> TorchPredictor:
    """One real predictor shared by the loops of a test."""
    return TorchPredictor(load_checkpoint(checkpoint_root))


def _cids(r: redis.Redis, keys: Keys) -> dict[str, str]:
    """Input id -> cid of every entry now in the input stream."""
    return {i.decode(): f.get(b"cid", b"").decode() for i, f in r.xrange(keys.shard(0).windows)}


def _results_by_cid(r: redis.Redis, keys: Keys) -> dict[str, int]:
    out: dict[str, int] = {}
    for _, f in r.xrange(keys.shard(0).results):
        cid = f[b"cid"].decode()
        out[cid] = out.get(cid, 0) + 1
    return out


def test_dead_letters_of_a_reason_and_time_range_are_redriven_and_served_exactly_once(
    r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path, predictor: TorchPredictor
) -> None:
    keys, sk = Keys(prefix, prefix), Keys(prefix, prefix).shard(0)
    prod = Producer(r, keys)
    # The old behaviour (breaker off): a model that fails mid-load dead-letters the rest of the stream.
    model = Flaky(predictor, fail_after=3)
    opts = {"predictor": model, "max_batch": 16, "breaker": False, "max_length": 30_000}
    prod.publish_many([np.zeros((20, 1), np.float32)] * 200, [f"a{i}" for i in range(200)])
    prod.publish(np.zeros((20_000, 1), np.float32), "big")  # 80 KB: kept whole in its predict_failed dead letter
    cids = _cids(r, keys)
    stats = make_loop(redis_url, prefix, checkpoint_root, **opts).run()  # type: ignore[arg-type]
    assert stats.results == 48 and stats.dead == 153
    cutoff = int(time.time() * 1000)
    time.sleep(0.01)
    prod.publish_many([np.zeros((20, 1), np.float32)] * 100, [f"b{i}" for i in range(100)])
    r.xadd(sk.windows, {b"v": b"1", b"x": b"junk"})  # another reason: never touched
    cids |= _cids(r, keys)
    stats = make_loop(redis_url, prefix, checkpoint_root, **opts).run()  # type: ignore[arg-type]
    assert stats.dead == 101
    # Dead letters that cannot be redriven: a truncated field, and a multi-window entry's dead windows.
    r.xadd(sk.dead, encode_dead({b"v": b"1", b"x": b"\0" * 100_000}, input_id="1-1", reason="predict_failed",
                                detail="d", worker="w", deliveries=1))
    r.xadd(sk.dead, encode_dead({b"v": b"1"}, input_id="1-2", reason="predict_failed", detail="d", worker="w",
                                deliveries=1) | {b"dead.windows": b"\x91\x00"})
    redriver = Redriver(r, keys)
    dry = redriver.run(Selection(frozenset({"predict_failed"}), until_ms=cutoff), dry_run=True)
    assert (dry.moved, r.xlen(sk.dead)) == (153, 256)
    first = redriver.run(Selection(frozenset({"predict_failed"}), until_ms=cutoff))
    assert first.moved == 153 and first.by_reason == {"predict_failed": 153} and not first.skipped
    # The rest, by two redrives at once: each dead letter moves once.
    sel = Selection(frozenset({"predict_failed"}), since_ms=cutoff + 1)
    sums: list[Summary] = []
    threads = [threading.Thread(target=lambda: sums.append(Redriver(redis.Redis.from_url(redis_url), keys).run(sel)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(s.moved for s in sums) == 100
    assert max(s.skipped["truncated"] for s in sums) == 1 and max(s.skipped["multi_window"] for s in sums) == 1
    moved = [new for s in [first, *sums] for _, new in s.moved_ids]
    assert len(moved) == len(set(moved)) == 253
    left = [f[b"dead.reason"].decode() for _, f in r.xrange(sk.dead)]
    assert len(left) == 3 and left.count("predict_failed") == 2  # the two skipped, and the other reason
    # The model is fixed: every redriven window is served once; every accepted window has one result.
    model.broken = False
    stats = make_loop(redis_url, prefix, checkpoint_root, **opts).run()  # type: ignore[arg-type]
    assert (stats.results, stats.dead) == (253, 0)
    by_cid = _results_by_cid(r, keys)
    good = {c for i, c in cids.items() if c}
    assert len(good) == 301 and all(by_cid.get(c) == 1 for c in good) and set(by_cid) == good


def test_redrive_runs_with_the_documented_acl_user_and_the_cli_prints_a_summary(
    r: redis.Redis, redis_server: LocalRedis, redis_url: str, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    keys, sk = Keys(prefix, prefix), Keys(prefix, prefix).shard(0)
    for reason in ("predict_failed", "max_deliveries", "bad_shape"):
        r.xadd(sk.dead, encode_dead({b"v": b"1", b"x": b"abc", b"cid": reason.encode()}, input_id="1-1", reason=reason,
                                    detail="d", worker="w", deliveries=1))
    user = f"{prefix}-redrive"
    r.execute_command("ACL", "SETUSER", user, *acl_rules("redrive", prefix), ">pw")
    try:
        acl = redis.Redis(port=redis_server.port, username=user, password="pw")
        got = Redriver(acl, keys).run(Selection(frozenset({"predict_failed"})))
        assert got.moved == 1
        with pytest.raises(redis.exceptions.NoPermissionError):
            acl.xadd(sk.dead, {"a": "1"})
        with pytest.raises(redis.exceptions.NoPermissionError):
            acl.xdel(sk.windows, "1-1")
    finally:
        r.execute_command("ACL", "DELUSER", user)
    argv = ["redrive", "--redis-url", redis_url, "--prefix", prefix, "--group", prefix, "--reason", "max_deliveries",
            "--reason", "bad_shape", "--since", "1h"]
    capsys.readouterr()
    assert cli.main([*argv, "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["moved"] == 2 and r.xlen(sk.dead) == 2
    assert cli.main([*argv, "--limit", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["moved"] == 1 and r.xlen(sk.dead) == 1
    assert {f[b"cid"] for _, f in r.xrange(sk.windows)} <= {b"predict_failed", b"max_deliveries", b"bad_shape"}
    assert all(not k.startswith(b"dead.") for _, f in r.xrange(sk.windows) for k in f)
    assert cli.main(["redrive", "--redis-url", redis_url, "--reason", "x", "--since", "yesterday"]) == 2
    assert cli.main(["redrive", "--redis-url", redis_url]) == 2


def test_parse_time_forms() -> None:
    assert parse_time("1764000000") == 1_764_000_000_000
    assert parse_time("2h", now=10_000.0) == 2_800_000
    assert parse_time("2026-01-01T00:00:00+00:00") == 1_767_225_600_000
    with pytest.raises(RedriveError):
        parse_time("soon")
