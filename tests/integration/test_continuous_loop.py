"""The continuous loop on a real redis-server, once, end to end with a tiny model: serve shifted traffic, label
part of it late (with bad labels among them), record and join, retrain on a rule, shadow the candidate,
and let McNemar's test promote it; nothing lost, nothing answered twice."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import redis

from bench.harness.localredis import LocalRedis
from producer.client import Producer
from protocol import registry
from protocol.keys import Keys
from tests.helpers import make_loop
from training.loop_settings import LoopSettings
from training.model.checkpoint import save_checkpoint
from training.model.data import Dataset, stratified_split, synthetic
from training.promotion import candidate
from training.publish import publish_checkpoint
from training.recorder import Recorder
from training.run import RunOptions, default_model_config
from training.train import TrainConfig, fit
from training.watch import Watcher
from worker.config import WorkerSettings
from worker.loop import WorkerLoop
from worker.shadow import shadow_predictor
from worker.status import render, snapshot
from worker.types import StaticModel

TINY = {"hidden": 8, "layers": 1, "rocket": 0, "channels": 0}
SHIFT = 1.0  # one standard deviation of class 0


def shifted(n: int, seed: int) -> Dataset:
    ds = synthetic(n, 20, seed)
    return Dataset([x + SHIFT for x in ds.X], ds.y, ds.classes, "shifted")


def _primary(tmp: Path) -> Path:
    ds = synthetic(400, 20, 1)
    tr, va = stratified_split(ds.y, 0.25, 1)
    res = fit(ds.subset(tr), ds.subset(va), default_model_config(1, 2, 20, TINY), TrainConfig(epochs=4))
    return save_checkpoint(res.checkpoint, tmp / "primary", set_latest=False)


def _serve(url: str, prefix: str, r: redis.Redis, ds: Dataset, first: int, ckpt: Path,
           shadow: str | None = None) -> None:
    """Publish ``ds`` (cids ``w<first + i>``, 8 windows an entry) and serve it with the primary (and a shadow,
    whose group starts at the streams' end, before the windows are published)."""
    shadow_loop = None
    if shadow is not None:
        s = WorkerSettings(redis_url=url, prefix=prefix, group=prefix, shadow_version=shadow, burst=True,
                           burst_idle_ms=200)
        sr = redis.Redis.from_url(url)
        shadow_loop = WorkerLoop(sr, s, s.consumer_name(0), StaticModel(shadow_predictor(s, sr)), stop=threading.Event())
    Producer(r, Keys(prefix, prefix)).publish_many(list(ds.X), ids=[f"w{first + i}" for i in range(len(ds))],
                                                   per_entry=8)
    make_loop(url, prefix, ckpt, consumer="p-0").run()
    if shadow_loop is not None:
        shadow_loop.run()


def test_one_loop_end_to_end(redis_url: str, prefix: str, tmp_path: Path) -> None:
    r = redis.Redis.from_url(redis_url)
    keys = Keys(prefix, prefix)
    path = _primary(tmp_path)
    primary, _ = publish_checkpoint(r, keys, path.read_bytes(), set_latest=True, notify=False)
    s = LoopSettings(redis_url=redis_url, prefix=prefix, group=prefix, live_dir=str(tmp_path / "live"),
                     watch_out=str(tmp_path / "runs"), watch_min_labels=120, watch_min_gap_s=0,
                     recorder_flush_windows=50, recorder_label_wait_s=0.5, promote_min_pairs=60,
                     promote_max_pairs=240, promote_min_wait_s=0, shadow_replicas=0)
    rec = Recorder(r, s, "rec-0")
    # The shift: the class means move by one standard deviation after deployment.
    _serve(redis_url, prefix, r, shifted(300, 7), 0, path)
    rec.step(block_ms=50)
    rec.step(block_ms=50)
    assert rec.counts.windows == 300
    truth = shifted(300, 7).y
    sent = Producer(r, keys).label([(f"w{i}", str(truth[i])) for i in range(0, 300, 2)])  # half are labelled
    assert all(x.ok for x in sent)
    bad = Producer(r, keys).label([("w0", "1" if truth[0] == 0 else "0"), ("w2", str(truth[2])), ("nope", "0"),
                                   ("w3", "7")])
    assert [x.ok for x in bad] == [True, True, True, False] and bad[3].reason == "bad_class"  # refused at once
    rec.step(block_ms=50)
    rec.joiner.expire(2**62)  # "nope" never arrives
    rec.step(block_ms=50)
    rec.flush()
    reasons = sorted(f[b"reason"].decode() for _, f in r.xrange(keys.labels_refused))
    assert reasons == ["conflict", "duplicate", "unknown_cid"]
    assert int(r.hget(keys.recorder, "joined") or 0) == 150 and list((tmp_path / "live").glob("live-*.json"))

    tcfg = TrainConfig(epochs=6, time_budget=20)
    watch = Watcher(r, s, RunOptions(n=400, plots=False, model=TINY), tcfg)
    out = watch.step()
    assert out is not None and "retrained" in out, out
    cand = candidate(r, keys)
    assert cand["state"] == "shadowing" and cand["version"] == out["retrained"]["version"]
    assert registry.read_pointer(r, keys).version == primary.version  # type: ignore[union-attr]  # never latest

    # The candidate in shadow on new traffic, labels arriving for a share of it.
    _serve(redis_url, prefix, r, shifted(240, 8), 1000, path, shadow=cand["version"])
    truth2 = shifted(240, 8).y
    Producer(r, keys).label([(f"w{1000 + i}", str(truth2[i])) for i in range(240)])
    decision = watch.step()
    assert decision is not None and decision["decision"]["outcome"] == "promote", decision
    d = decision["decision"]
    assert d["c"] > d["b"] and d["p_better"] < d["alpha"] and d["candidate_accuracy"] > d["primary_accuracy"]
    assert registry.read_pointer(r, keys).version == cand["version"]  # type: ignore[union-attr]
    assert candidate(r, keys)["state"] == "promoted" and json.loads(candidate(r, keys)["decision"])["pairs"] == d["pairs"]
    events = [f[b"event"].decode() for _, f in r.xrange(keys.model_events)]
    assert events[-3:] == ["candidate", "promoted", "decision"]
    groups = {g["name"].decode() for g in r.xinfo_groups(keys.shard(0).windows)}
    assert groups == {prefix, keys.recorder_group}  # the shadow group is ended
    doc = snapshot(r, keys)  # bigru-worker status shows the decision with its numbers
    assert doc["loop"]["state"] == "promoted" and doc["loop"]["decision"]["outcome"] == "promote"
    assert f"loop: candidate {cand['version']} promoted (promote: {d['pairs']} pairs" in render(doc)
    # Every served window answered exactly once by the primary.
    cids = [c for _, f in r.xrange(keys.shard(0).results) for c in _cids(f)]
    assert len(cids) == 540 and len(set(cids)) == 540


def _cids(fields: dict[bytes, bytes]) -> list[str]:
    from protocol.results import decode_any_result

    return [res.cid for res in decode_any_result(fields)]


def test_a_human_veto_keeps_the_serving_model_and_force_promotes(redis_url: str, prefix: str, tmp_path: Path) -> None:
    from training.promotion import Judge, override, propose
    from training.watch import rule_of

    r = redis.Redis.from_url(redis_url)
    keys = Keys(prefix, prefix)
    path = _primary(tmp_path)
    primary, _ = publish_checkpoint(r, keys, path.read_bytes(), set_latest=True, notify=False)
    s = LoopSettings(redis_url=redis_url, prefix=prefix, group=prefix)
    propose(r, keys, primary.version, reason="test")
    override(r, keys, "veto", "operator")
    d = Judge(r, keys, rule_of(s)).step()
    assert d is not None and d.outcome == "reject" and "veto" in d.reason
    assert candidate(r, keys)["state"] == "vetoed"
    assert registry.read_pointer(r, keys).version == primary.version  # type: ignore[union-attr]
    with pytest.raises(registry.RegistryError, match="no candidate in shadow"):
        override(r, keys, "force", "operator")  # nothing left to force
    seq = registry.read_pointer(r, keys).seq  # type: ignore[union-attr]
    propose(r, keys, primary.version, reason="test")
    override(r, keys, "force", "operator")
    d = Judge(r, keys, rule_of(s)).step()
    assert d is not None and d.outcome == "promote" and "human force (operator)" in d.reason
    assert candidate(r, keys)["state"] == "promoted"
    assert registry.read_pointer(r, keys).seq == seq + 1  # type: ignore[union-attr]  # latest moved


def test_labeller_and_recorder_acl_users_do_their_part_and_nothing_else(
        r: redis.Redis, redis_server: LocalRedis, prefix: str, tmp_path: Path) -> None:
    import uuid

    from protocol.security import acl_rules

    keys = Keys(prefix, prefix)
    path = _primary(tmp_path)
    publish_checkpoint(r, keys, path.read_bytes(), set_latest=True, notify=False)
    users: dict[str, redis.Redis] = {}
    for role in ("labeller", "recorder"):
        pw = uuid.uuid4().hex
        r.execute_command("ACL", "SETUSER", f"{prefix}-{role}", *acl_rules(role, prefix), f">{pw}")
        users[role] = redis.Redis(port=redis_server.port, username=f"{prefix}-{role}", password=pw)
    s = LoopSettings(redis_url=redis_server.url, prefix=prefix, group=prefix, live_dir=str(tmp_path / "live"),
                     recorder_flush_windows=1)
    rec = Recorder(users["recorder"], s, "rec-0")
    Producer(r, keys).publish_many(list(synthetic(4, 20, 3).X), ids=["a0", "a1", "a2", "a3"])
    sent = Producer(users["labeller"], keys).label([("a1", "1"), ("zz", "9")])
    assert sent[0].ok and sent[1].reason == "bad_class"
    rec.step(block_ms=10)
    rec.step(block_ms=10)
    assert rec.counts.windows == 4 and int(r.hget(keys.recorder, "joined") or 0) == 1
    with pytest.raises(redis.exceptions.NoPermissionError):
        users["labeller"].xadd(keys.shard(0).windows, {"v": "1"})
    with pytest.raises(redis.exceptions.NoPermissionError):
        users["recorder"].xadd(keys.labels, {"v": "1"})
    with pytest.raises(redis.exceptions.NoPermissionError):
        users["recorder"].xtrim(keys.shard(0).windows, maxlen=0)


def test_label_cli_answers_each_label_and_loses_none(redis_url: str, prefix: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import hashlib

    from producer.cli import main as producer_main

    r = redis.Redis.from_url(redis_url)
    keys = Keys(prefix, prefix)
    blob = b"not read by the labeller"
    registry.register(r, keys, blob, registry.Entry("v1", hashlib.sha256(blob).hexdigest(), len(blob), "", 0.0, 1,
                                                    ["walking", "running"], {}, 0))
    registry.promote(r, keys, "v1", notify=False)
    f = tmp_path / "labels.tsv"
    f.write_text("w-1\twalking\nw-2,1\nw-3\tflying\njunk line\n\tx\n")
    flags = ["--redis-url", redis_url, "--prefix", prefix]
    assert producer_main([*flags, "label", "--file", str(f)]) == 1  # some were refused
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x.get("refused") for x in lines] == [None, None, "bad_class", "malformed", "malformed"]
    assert lines[1]["label"] == "running"  # an index becomes the class name
    stored = [(e[b"cid"], e[b"label"]) for _, e in r.xrange(keys.labels)]
    assert stored == [(b"w-1", b"walking"), (b"w-2", b"running")]
    assert producer_main([*flags, "label", "--cid", "w-9", "--label", "walking", "--src", "op-1"]) == 0
    assert producer_main([*flags, "label", "--cid", "w-9"]) == 2  # --label missing
    assert r.xlen(keys.labels) == 3
