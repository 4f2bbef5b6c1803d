"""Hot reload in one process: registry, gate, forward-only moves, rollback, triggers (real redis-server)."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from producer.client import Producer
from producer.results import ResultsReader
from protocol import registry
from protocol.keys import Keys
from tests.helpers import wait_for
from tests.zoo import Zoo, zoo_fixture  # noqa: F401  (the session's tiny checkpoints)
from training import registry_cli
from training.model.checkpoint import FILENAME, CheckpointError, set_latest_version
from training.publish import entry_for, publish_checkpoint
from worker.config import WorkerSettings
from worker.gate import GateRules, Refused, judge
from worker.loop import WorkerLoop
from worker.reload import ReloadingSource, initial_predictor
from worker.status import snapshot as status

MakeSource = Callable[..., ReloadingSource]




def settings(url: str, prefix: str, ckpt: Path, **kw: object) -> WorkerSettings:
    """Worker settings with the gate used by every reload test."""
    opts: dict[str, object] = {"reload_min_accuracy": 0.7, "reload_max_drop": 0.1, "reload_interval_s": 3600, **kw}
    return WorkerSettings(redis_url=url, prefix=prefix, group=prefix, checkpoint=str(ckpt), **opts)  # type: ignore[arg-type]


@pytest.fixture
def make_source(redis_url: str, prefix: str) -> Iterator[MakeSource]:
    """Factory of ReloadingSources (closed after the test)."""
    made: list[ReloadingSource] = []

    def make(ckpt: Path, **kw: object) -> ReloadingSource:
        s = settings(redis_url, prefix, ckpt, **kw)
        r = redis.Redis.from_url(redis_url)
        src = ReloadingSource(r, s, "test-0", initial_predictor(s, r))
        made.append(src)
        return src

    yield make
    for src in made:
        src.close()




def test_published_version_is_served_from_the_next_batch(r: redis.Redis, redis_url: str, prefix: str, zoo: Zoo,
                                                         make_source: MakeSource) -> None:
    keys = Keys(prefix, prefix)
    src = make_source(zoo.base)
    base = src.current.version
    entry, ptr = publish_checkpoint(r, keys, Zoo.data(zoo.good[0]))
    assert ptr is not None and ptr.version == entry.version == Zoo.version(zoo.good[0])
    assert src.check() == entry.version
    assert src.current.version == base  # verified off the hot path; not swapped until the loop polls
    s = settings(redis_url, prefix, zoo.base, burst=True, burst_idle_ms=200)
    loop = WorkerLoop(redis.Redis.from_url(redis_url), s, "test-0", src, stop=threading.Event())
    Producer(r, keys).publish_many([np.zeros((20, 1), np.float32)] * 10)
    assert loop.run().results == 10
    assert {res.model for res in ResultsReader(r, keys).collect(10)} == {entry.version}
    assert status(r, keys)["models"]["latest"] == entry.version
    loop.heartbeat(force=True)
    assert status(r, keys)["models"]["serving"] == {"test-0": entry.version}


def test_bad_checkpoints_are_refused_and_noted(r: redis.Redis, prefix: str, zoo: Zoo, make_source: MakeSource) -> None:
    keys = Keys(prefix, prefix)
    src = make_source(zoo.base)
    base = src.current.version
    cases = {zoo.wrong_features: "incompatible_features", zoo.shuffled: "below_floor"}
    for root, reason in cases.items():
        entry, _ = publish_checkpoint(r, keys, Zoo.data(root))
        assert src.check() is None
        src.poll()
        assert src.current.version == base
        assert src.refused[entry.version] == reason
        assert registry.refusals(r, keys, entry.version)["test-0"]["reason"] == reason
    # Bytes truncated in the registry after publishing: the sha256 check refuses them.
    data = Zoo.data(zoo.good[1])
    entry, _ = publish_checkpoint(r, keys, data)
    r.set(keys.model_blob(entry.version), data[: len(data) // 2])
    assert src.check() is None and src.refused[entry.version] == "sha256_mismatch"
    events = [(f[b"event"], f[b"version"].decode()) for _, f in r.xrange(keys.model_events)]
    assert (b"refused", entry.version) in events
    src.poll()
    assert src.current.version == base
    # The pointer is unchanged, so nothing is retried until it moves again.
    assert src.check() is None
    # Serving continues and a good version is still accepted afterwards.
    good, _ = publish_checkpoint(r, keys, Zoo.data(zoo.good[2]))
    assert src.check() == good.version
    src.poll()
    assert src.current.version == good.version


def test_checkpoint_directory_is_followed_and_truncated_file_refused(tmp_path: Path, zoo: Zoo, make_source: MakeSource) -> None:
    root = tmp_path / "ckpts"
    shutil.copytree(zoo.base, root)
    src = make_source(root)
    base = src.current.version
    assert src.check() is None  # latest unchanged
    bad_version = Zoo.version(zoo.good[2])
    (root / bad_version).mkdir()
    data = Zoo.data(zoo.good[2])
    (root / bad_version / FILENAME).write_bytes(data[: len(data) - 1000])
    set_latest_version(root, bad_version)
    assert src.check() is None and src.refused[bad_version] == "corrupt"
    src.poll()
    assert src.current.version == base
    good_version = Zoo.version(zoo.good[0])
    shutil.copytree(zoo.good[0] / good_version, root / good_version)
    set_latest_version(root, good_version)
    assert src.check() == good_version
    src.poll()
    assert src.current.version == good_version


def test_versions_move_forward_unless_promoted(r: redis.Redis, prefix: str, zoo: Zoo, make_source: MakeSource) -> None:
    keys = Keys(prefix, prefix)
    src = make_source(zoo.base)
    v0, v1, v2 = (Zoo.version(g) for g in zoo.good)
    for root in (zoo.good[0], zoo.good[2]):
        publish_checkpoint(r, keys, Zoo.data(root))
        src.check()
        src.poll()
    assert src.current.version == v2
    publish_checkpoint(r, keys, Zoo.data(zoo.good[1]))  # an older version published later: not followed
    assert src.check() is None
    src.poll()
    assert src.current.version == v2
    ptr = registry.promote(r, keys, v0)  # an explicit rollback is followed
    assert ptr.action == "promoted" and registry.read_pointer(r, keys) == ptr
    assert src.check() == v0
    src.poll()
    assert src.current.version == v0


def test_announcement_periodic_check_and_forced_check(r: redis.Redis, prefix: str, zoo: Zoo, make_source: MakeSource) -> None:
    keys = Keys(prefix, prefix)

    def served(src: ReloadingSource, version: str) -> bool:
        src.poll()  # what the loop does between batches
        return src.current.version == version

    slow = make_source(zoo.base).start()  # periodic check once an hour
    time.sleep(0.3)  # the watcher is blocking on the events stream
    publish_checkpoint(r, keys, Zoo.data(zoo.good[0]))
    assert wait_for(lambda: served(slow, Zoo.version(zoo.good[0])), 10), "announcement did not trigger a check"
    publish_checkpoint(r, keys, Zoo.data(zoo.good[1]), notify=False)  # a missed announcement
    time.sleep(1.0)
    assert served(slow, Zoo.version(zoo.good[0]))
    slow.request_check()  # what SIGHUP does
    assert wait_for(lambda: served(slow, Zoo.version(zoo.good[1])), 10)
    fast = make_source(zoo.base, reload_interval_s=0.3).start()
    assert wait_for(lambda: served(fast, Zoo.version(zoo.good[1])), 10)
    publish_checkpoint(r, keys, Zoo.data(zoo.good[2]), notify=False)
    assert wait_for(lambda: served(fast, Zoo.version(zoo.good[2])), 10), "periodic check did not find the version"


def test_gate_refuses_a_model_much_worse_than_the_serving_one() -> None:
    rules = GateRules(min_accuracy=0.6, max_drop=0.05)
    judge(0.92, 0.95, rules)
    judge(0.65, None, rules)
    with pytest.raises(Refused) as e:
        judge(0.85, 0.95, rules)
    assert e.value.reason == "worse_than_serving"
    with pytest.raises(Refused) as e:
        judge(0.55, 0.5, rules)
    assert e.value.reason == "below_floor"


def test_registry_rejects_bad_publishes_and_unknown_promotes(r: redis.Redis, redis_url: str, prefix: str, zoo: Zoo,
                                                             tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = Keys(prefix, prefix)
    data = Zoo.data(zoo.good[0])
    entry = entry_for(data)
    assert registry.register(r, keys, data, entry) is True
    assert registry.register(r, keys, data, entry) is False  # idempotent
    with pytest.raises(registry.RegistryError, match="not a valid checkpoint"):
        publish_checkpoint(r, keys, data[:-500])
    with pytest.raises(registry.RegistryError, match="not registered"):
        registry.promote(r, keys, "v19700101T000000000-deadbeef")
    assert registry.read_pointer(r, keys) is None  # nothing above moved latest
    truncated = tmp_path / FILENAME
    truncated.write_bytes(data[:1000])
    flags = ["--redis-url", redis_url, "--prefix", prefix]
    assert registry_cli.main(["publish", str(truncated), *flags]) == 1
    assert "truncated" in capsys.readouterr().err
    assert registry_cli.main(["promote", "nope", *flags]) == 1
    assert registry_cli.main(["publish", str(zoo.good[0]), "--json", *flags]) == 0
    assert entry.version in capsys.readouterr().out
    assert registry_cli.main(["models", "--json", *flags]) == 0
    assert f'"version": "{entry.version}"' in capsys.readouterr().out


def test_worker_without_a_local_checkpoint_starts_from_the_registry(r: redis.Redis, redis_url: str, prefix: str,
                                                                   zoo: Zoo, tmp_path: Path) -> None:
    s = settings(redis_url, prefix, tmp_path / "missing")
    with pytest.raises(CheckpointError):
        initial_predictor(s, r)  # nothing local, nothing registered
    publish_checkpoint(r, Keys(prefix, prefix), Zoo.data(zoo.good[1]))
    assert initial_predictor(s, r).version == Zoo.version(zoo.good[1])
    with pytest.raises(CheckpointError):
        initial_predictor(settings(redis_url, prefix, tmp_path / "missing", reload=False), r)
