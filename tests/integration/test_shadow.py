"""Shadow scoring against a real Redis: a candidate from the registry reads the live input streams
through its own consumer group, writes only ``{tag}:shadow:results``, and ``compare`` judges it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis

from bench.lifecycle_task import train, windows
from producer.backpressure import Backpressure
from producer.client import Producer
from producer.entries import Entry
from protocol.keys import Keys
from protocol.registry import read_pointer
from tests.chaos_support import Outputs, kill9_holding_batch, live, start_worker, stop, wait_until
from tests.helpers import make_loop
from training.model.checkpoint import FILENAME
from training.publish import publish_checkpoint
from worker import cli
from worker.compare import read_pairs, summarize
from worker.config import WorkerSettings
from worker.loop import WorkerLoop
from worker.reader import ensure_groups
from worker.shadow import shadow_predictor
from worker.types import StaticModel


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("shadow")
    return {"primary": train(tmp / "primary", seed=5), "other": train(tmp / "other", seed=6, flip=True)}


def _register(r: redis.Redis, keys: Keys, root: Path, set_latest: bool) -> str:
    version = (root / "latest").read_text().strip()
    publish_checkpoint(r, keys, (root / version / FILENAME).read_bytes(), set_latest=set_latest, notify=False)
    return version


def _shadow_loop(url: str, prefix: str, version: str, **extra: object) -> WorkerLoop:
    s = WorkerSettings(redis_url=url, prefix=prefix, group=prefix, shadow_version=version, burst=True,
                       burst_idle_ms=200, **extra)  # type: ignore[arg-type]
    r = redis.Redis.from_url(url)
    return WorkerLoop(r, s, s.consumer_name(0), StaticModel(shadow_predictor(s, r)), stop=threading.Event())


def _labelled(r: redis.Redis, keys: Keys, n: int, seed: int) -> list[str]:
    xs, y = windows(n, seed)
    prod = Producer(r, keys)
    return [prod.publish(x, f"w{i}", meta={"label": ["a", "b"][int(c)]}) for i, (x, c) in enumerate(zip(xs, y))]


def test_a_copy_of_the_primary_agrees_fully_and_touches_nothing_of_the_primary(
        redis_url: str, prefix: str, models: dict[str, Path]) -> None:
    r = redis.Redis.from_url(redis_url)
    keys = Keys(prefix, prefix)
    version = _register(r, keys, models["primary"], set_latest=True)
    ensure_groups(r, keys)  # the primary pool's group, as a running pool has it
    shadow = _shadow_loop(redis_url, prefix, version)  # creates its group at the streams' end
    ids = _labelled(r, keys, 400, seed=11)
    Producer(r, keys).publish_entries([Entry(windows(1, 12)[0][0], cid="rq", reply="job-1")])
    shadow.run()
    sk, shadow_sk = keys.shard(0), keys.as_shadow().shard(0)
    # The shadow acknowledged only in its own group: the primary's is untouched, and backpressure
    # (which watches the primary group) sees the primary's lag, not the shadow's.
    primary_group = {g["name"].decode(): g for g in r.xinfo_groups(sk.windows)}[prefix]
    assert primary_group["lag"] == 401 and primary_group["pending"] == 0
    assert r.xlen(shadow_sk.results) == 401 and r.xlen(sk.results) == 0
    assert r.xlen(sk.reply("job-1")) == 0  # a shadow never answers anyone
    make_loop(redis_url, prefix, models["primary"], consumer="p-0").run()
    assert r.xlen(sk.results) == 401 and r.xlen(sk.reply("job-1")) == 1
    shadow_lagging = _shadow_loop(redis_url, prefix, version)
    _labelled(r, keys, 50, seed=12)  # the shadow has not read these: its group lags by 50
    gate = Backpressure(r, keys, max_lag=10)
    make_loop(redis_url, prefix, models["primary"], consumer="p-0").run()
    gate.wait()  # no BackpressureError: the primary group has no lag
    shadow_lagging.run()

    pairs, unmatched = read_pairs(r, keys, windows=10_000)
    doc = summarize(pairs, unmatched)
    assert doc["pairs"] == 451 and unmatched == 0 and len(ids) == 400
    assert doc["agreement"] == 1.0 and all(c["agreement"] == 1.0 for c in doc["per_class"].values())
    assert doc["labelled"] == 450 and doc["accuracy"]["primary"] == doc["accuracy"]["candidate"]
    assert doc["verdict"] == "equivalent" and doc["candidate_models"] == [version]


def test_a_candidate_trained_on_other_data_disagrees_and_is_not_promoted(
        redis_url: str, prefix: str, models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    r = redis.Redis.from_url(redis_url)
    keys = Keys(prefix, prefix)
    primary = _register(r, keys, models["primary"], set_latest=True)
    other = _register(r, keys, models["other"], set_latest=False)
    shadow = _shadow_loop(redis_url, prefix, other)
    _labelled(r, keys, 400, seed=13)
    shadow.run()
    make_loop(redis_url, prefix, models["primary"], consumer="p-0").run()
    doc = summarize(*read_pairs(r, keys, windows=400))
    assert doc["pairs"] == 400
    assert doc["agreement"] < 0.5, doc  # the flipped class signal: mostly the opposite class
    assert doc["accuracy"]["primary"] > 0.8 > doc["accuracy"]["candidate"], doc["accuracy"]
    assert doc["verdict"] == "worse" and not doc["promotable"]
    flags = ["--redis-url", redis_url, "--prefix", prefix, "--group", prefix]
    assert cli.main(["promote", *flags]) == 1
    assert read_pointer(r, keys).version == primary  # type: ignore[union-attr]
    assert cli.main(["compare", *flags, "--windows", "400"]) == 0
    assert "verdict: worse" in capsys.readouterr().out
    # Forced, the candidate becomes latest and the shadow group is ended.
    assert cli.main(["promote", *flags, "--force"]) == 0
    assert read_pointer(r, keys).version == other  # type: ignore[union-attr]
    groups = {g["name"].decode() for g in r.xinfo_groups(keys.shard(0).windows)}
    assert groups == {prefix}


@pytest.mark.chaos
def test_kill9_of_a_shadow_replica_loses_and_duplicates_nothing(
        r: redis.Redis, prefix: str, worker_env: dict[str, str], models: dict[str, Path], tmp_path: Path) -> None:
    keys = Keys(prefix, prefix)
    version = _register(r, keys, models["primary"], set_latest=True)
    env = {**worker_env, "BIGRU_SHADOW_VERSION": version, "BIGRU_CLAIM_IDLE_MS": "1000",
           "BIGRU_RECLAIM_INTERVAL_MS": "200", "BIGRU_HEARTBEAT_INTERVAL_S": "0.5", "BIGRU_MAX_BATCH": "32"}
    shadow = keys.as_shadow()
    ensure_groups(r, keys)
    a = start_worker(env, "a", tmp_path / "a.log")
    b = start_worker(env, "b", tmp_path / "b.log")
    out = Outputs(r, shadow)
    n = 6000
    try:
        wait_until(lambda: live(r, shadow, "a-shadow-0", "b-shadow-0"), 90, "both shadow replicas")
        xs, _ = windows(n, seed=14)
        prod = Producer(r, keys)
        ids: list[str] = []

        def produce() -> None:
            for lo in range(0, n, 200):
                ids.extend(prod.publish_many(xs[lo:lo + 200]))
                time.sleep(0.02)

        t = threading.Thread(target=produce)
        t.start()
        wait_until(lambda: r.xlen(shadow.shard(0).results) >= 1000, 60, "1000 shadow results", interval=0.005)
        held = kill9_holding_batch(a, r, shadow, "a-shadow-0")
        t.join()
        wait_until(lambda: out.poll() >= 0 and len(out.results) + len(out.dead) >= n, 60, "every window scored")
        time.sleep(0.5)  # let any duplicate surface
        out.poll()
    finally:
        for p in (a, b):
            stop(p)
    assert held, "the killed replica held no batch"
    assert set(out.results) == set(ids) and not out.dead
    assert max(out.results.values()) == 1  # no duplicates
    # The primary group never saw the shadow: all n windows are still to be served, then served once.
    assert {g["name"].decode(): g["lag"] for g in r.xinfo_groups(keys.shard(0).windows)}[prefix] == n
    make_loop(worker_env["BIGRU_REDIS_URL"], prefix, models["primary"], consumer="p-0").run()
    primary = Outputs(r, keys)
    primary.poll()
    assert set(primary.results) == set(ids) and max(primary.results.values()) == 1
