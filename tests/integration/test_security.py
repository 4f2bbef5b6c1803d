"""Least-privilege ACL users, TLS end to end, password sources that never reach the logs, and
checkpoints that are never unpickled — all against real redis-server processes."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pytest
import redis
from pydantic import ValidationError

from bench.harness import LocalRedis
from producer.backpressure import Backpressure
from producer.client import Producer
from producer.config import ProducerSettings
from producer.results import ResultsReader
from protocol.idempotent import IdempotentWriter
from protocol.keys import Keys
from protocol.security import Role, acl_rules, acl_setuser, settings_error
from tests.helpers import make_loop
from tests.tlscerts import make_tls_set
from training.model.checkpoint import CheckpointError, load_checkpoint
from worker.config import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
DENIED = redis.exceptions.NoPermissionError


@pytest.fixture
def acl_users(r: redis.Redis, redis_server: LocalRedis, prefix: str) -> Iterator[dict[Role, redis.Redis]]:
    """A worker, a producer and a reader user for ``prefix`` with the documented rules."""
    roles: list[Role] = ["worker", "producer", "reader"]
    clients: dict[Role, redis.Redis] = {}
    for role in roles:
        pw = uuid.uuid4().hex
        r.execute_command("ACL", "SETUSER", f"{prefix}-{role}", *acl_rules(role, prefix), f">{pw}")
        clients[role] = redis.Redis(port=redis_server.port, username=f"{prefix}-{role}", password=pw)
    yield clients
    for role, c in clients.items():
        c.close()
        r.execute_command("ACL", "DELUSER", f"{prefix}-{role}")


def _dryrun(r: redis.Redis, user: str, *cmd: str) -> bool:
    return bool(r.execute_command("ACL", "DRYRUN", user, *cmd) == b"OK")


def test_acl_users_run_the_pipeline_and_nothing_else(
    r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path, acl_users: dict[Role, redis.Redis]
) -> None:
    keys = Keys(prefix, prefix)
    sk = keys.shard(0)
    prod_r, work_r, read_r = acl_users["producer"], acl_users["worker"], acl_users["reader"]
    r.set(f"{prefix}:model:latest", "v1")  # the registry pointer the worker may read
    # Producer: publish with the backpressure gate (reads the group's lag).
    loop = make_loop(redis_url, prefix, checkpoint_root, client=work_r, maintenance_interval_ms=1, reap_idle_ms=1000)
    producer = Producer(prod_r, keys, backpressure=Backpressure(prod_r, keys, max_lag=1000))
    ids = producer.publish_many([np.zeros((20, 1), np.float32)] * 50)
    assert producer.backpressure is not None and producer.backpressure.lag(fresh=True) == 50
    # Worker: group, read, claim, publish script, heartbeat, trim, reap, clean exit — all as the worker user.
    stats = loop.run()
    assert stats.results == 50
    assert loop.maintenance.run_once().trimmed_to  # XINFO/XPENDING/XTRIM inside the script are allowed
    assert work_r.get(f"{prefix}:model:latest") == b"v1"
    got = ResultsReader(read_r, keys).collect(50, timeout_s=5)
    assert {res.input_id for res in got} == set(ids)
    assert r.xlen(sk.windows) == 0  # trimmed: every entry was acknowledged
    assert r.xinfo_groups(sk.windows)[0]["consumers"] == 0  # consumer removed on clean exit

    # Denied, by real attempts.
    other = f"other{prefix}"
    attempts: dict[Role, list[tuple[str, ...]]] = {
        "worker": [("FLUSHALL",), ("CONFIG", "GET", "*"), ("KEYS", "*"), ("GET", other), ("SET", f"{prefix}:model:latest", "evil"),
                   ("XADD", f"{{{other}}}:windows", "*", "a", "1"), ("XGROUP", "DESTROY", sk.windows, prefix),
                   ("DEL", sk.windows), ("EVAL", "return 1", "0"), ("SCRIPT", "FLUSH"), ("SHUTDOWN",), ("ACL", "LIST")],
        "producer": [("FLUSHALL",), ("CONFIG", "SET", "appendonly", "no"), ("KEYS", "*"), ("XADD", sk.results, "*", "a", "1"),
                     ("XREADGROUP", "GROUP", prefix, "x", "STREAMS", sk.windows, ">"), ("XACK", sk.windows, prefix, ids[0]),
                     ("DEL", sk.windows), ("XTRIM", sk.windows, "MAXLEN", "0"), ("GET", f"{prefix}:model:latest"),
                     ("EVALSHA", "0" * 40, "1", sk.results), ("EVAL", "return 1", "0"), ("SCRIPT", "FLUSH"),
                     ("SET", sk.windows, "x"), ("GET", f"{prefix}:idmp:p:x"), ("SCAN", "0")],
        "reader": [("FLUSHALL",), ("KEYS", "*"), ("XADD", sk.results, "*", "a", "1"), ("XADD", sk.windows, "*", "a", "1"),
                   ("XRANGE", sk.windows, "-", "+"), ("DEL", sk.results)],
    }
    for role, cmds in attempts.items():
        for cmd in cmds:
            with pytest.raises(DENIED):
                acl_users[role].execute_command(*cmd)
            assert not _dryrun(r, f"{prefix}-{role}", *cmd), (role, cmd)
    # ... and what each role needs is allowed (ACL DRYRUN), including shard streams.
    allowed: dict[Role, list[tuple[str, ...]]] = {
        "worker": [("XADD", f"{{{prefix}:3}}:results", "*", "a", "1"), ("SCRIPT", "LOAD", "return 1"),
                   ("HGETALL", f"{prefix}:models"), ("GET", f"{prefix}:model:v1"), ("XREAD", "STREAMS", f"{prefix}:model:events", "0")],
        "producer": [("XADD", f"{{{prefix}:7}}:windows", "*", "a", "1"), ("XINFO", "GROUPS", sk.windows)],
        "reader": [("XREAD", "STREAMS", f"{{{prefix}:2}}:results", "0"), ("XRANGE", sk.dead, "-", "+")],
    }
    for role, cmds in allowed.items():
        for cmd in cmds:
            assert _dryrun(r, f"{prefix}-{role}", *cmd), (role, cmd)
    assert r.dbsize() > 0  # nothing was flushed


def test_acl_producer_publishes_idempotently(r: redis.Redis, prefix: str, acl_users: dict[Role, redis.Redis]) -> None:
    """The producer user loads the idempotent-XADD script itself and runs it on its dedup keys."""
    keys = Keys(prefix, prefix, shards=2)
    prod_r = acl_users["producer"]
    producer = Producer(prod_r, keys, idempotence=IdempotentWriter(keys, "p1", 60))
    ids = producer.publish_many([np.zeros((20, 1), np.float32)] * 20, [f"w-{i}" for i in range(20)])
    assert producer.idempotence is not None and producer.idempotence.mode == "script"
    assert producer.publish_many([np.zeros((20, 1), np.float32)] * 20, [f"w-{i}" for i in range(20)]) == ids
    assert sum(r.xlen(sk.windows) for sk in keys.all_shards()) == 20
    # Its dedup keys, and only those, besides the input streams: a script cannot reach other keys.
    user = f"{prefix}-producer"
    assert _dryrun(r, user, "EVALSHA", "0" * 40, "2", keys.shard(1).windows, keys.shard(1).idmp("p1", "a"), "60")
    assert not _dryrun(r, user, "EVALSHA", "0" * 40, "2", keys.shard(1).results, keys.shard(1).idmp("p1", "a"))
    assert not _dryrun(r, user, "SET", keys.shard(1).windows, "x")


def test_security_doc_acl_lines_grant_exactly_the_tested_rules() -> None:
    """The ACL SETUSER lines in docs/security.md, pasted into redis-cli, create the users tested above."""
    text = (ROOT / "docs" / "security.md").read_text()
    lines = {m.group(1): m.group(0) for m in re.finditer(r"^ACL SETUSER bigru-(\w+) .*$", text, re.M)}
    assert set(lines) == set(get_args(Role))  # every role (trainer and keda too, for Kubernetes)
    with LocalRedis() as srv:
        admin = srv.client()
        for role, line in lines.items():
            assert line == acl_setuser(role, f"bigru-{role}")  # type: ignore[arg-type]
            subprocess.run(["redis-cli", "-p", str(srv.port), *line.split()], check=True, capture_output=True, timeout=10)
            admin.execute_command("ACL", "SETUSER", f"ref-{role}", *acl_rules(role), "><password>")  # type: ignore[arg-type]
            doc_user = admin.execute_command("ACL", "GETUSER", f"bigru-{role}")
            assert doc_user == admin.execute_command("ACL", "GETUSER", f"ref-{role}")


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A throwaway CA, server and client certificates, and an unrelated CA."""
    return make_tls_set(tmp_path_factory.mktemp("tls"))


@pytest.mark.slow
def test_tls_only_server_serves_the_pipeline_and_refuses_an_untrusted_ca(
    tls_files: dict[str, str], tmp_path: Path, worker_env: dict[str, str], prefix: str
) -> None:
    password = "tls-" + uuid.uuid4().hex
    pw_file = tmp_path / "redis-password"
    pw_file.write_text(password + "\n")
    with LocalRedis(tls=tls_files, password=password) as srv:
        assert srv.url.startswith("rediss://")
        common: dict[str, Any] = {"redis_url": srv.url, "redis_ca_file": tls_files["ca"], "redis_password_file": str(pw_file),
                  "prefix": prefix, "group": prefix}
        # Producer with a client certificate, worker without one (the server accepts both).
        ps = ProducerSettings(**common, redis_cert_file=tls_files["client_cert"], redis_key_file=tls_files["client_key"])
        keys = ps.keys
        ids = Producer.from_settings(ps).publish_many([np.zeros((20, 1), np.float32)] * 40)
        env = dict(worker_env, BIGRU_REDIS_URL=srv.url, BIGRU_REDIS_CA_FILE=tls_files["ca"],
                   BIGRU_REDIS_PASSWORD_FILE=str(pw_file))
        out = subprocess.run([sys.executable, "-m", "worker.cli", "--burst"], env=env, capture_output=True, timeout=120)
        assert out.returncode == 0, out.stderr.decode()[-2000:]
        assert password.encode() not in out.stderr + out.stdout
        got = ResultsReader(ps.connect(), keys).collect(40, timeout_s=10)
        assert sorted(res.input_id for res in got) == sorted(ids)
        # A client that trusts another CA is refused during the handshake ...
        bad = ProducerSettings(**{**common, "redis_ca_file": tls_files["other_ca"]})
        with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
            bad.connect(retries=0).ping()
        # ... and plaintext gets nowhere on the TLS port.
        with pytest.raises(redis.ConnectionError):
            redis.Redis(port=srv.port, password=password, socket_timeout=2).ping()


@pytest.fixture(scope="module")
def password_server() -> Iterator[tuple[LocalRedis, str]]:
    """A plain redis-server that requires a password."""
    password = "pw-" + uuid.uuid4().hex
    with LocalRedis(password=password) as srv:
        yield srv, password


def test_password_from_url_environment_or_file(
    password_server: tuple[LocalRedis, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    srv, password = password_server
    host = f"127.0.0.1:{srv.port}/0"
    assert ProducerSettings(redis_url=f"redis://:{password}@{host}").connect().ping()
    monkeypatch.setenv("BIGRU_REDIS_PASSWORD", password)
    assert ProducerSettings(redis_url=f"redis://{host}").connect().ping()
    monkeypatch.delenv("BIGRU_REDIS_PASSWORD")
    f = tmp_path / "pw"
    f.write_text(password + "\n")
    monkeypatch.setenv("BIGRU_REDIS_PASSWORD_FILE", str(f))
    assert WorkerSettings(redis_url=f"redis://{host}").connect().ping()
    with pytest.raises(redis.AuthenticationError):
        ProducerSettings(redis_url=f"redis://{host}", redis_password_file=None, redis_password="wrong").connect().ping()
    # Two sources at once is ambiguous: refused at start, naming both, without echoing the secret.
    with pytest.raises(ValidationError) as ei:
        ProducerSettings(redis_url=f"redis://:{password}@{host}")
    msg = settings_error(ei.value)
    assert "password in redis_url" in msg and "redis_password_file" in msg and password not in msg
    with pytest.raises(ValidationError, match="redis_ca_file"):
        ProducerSettings(redis_url=f"redis://{host}", redis_password_file=None, redis_ca_file=str(f))
    assert password not in repr(ProducerSettings(redis_url=f"redis://{host}", redis_password_file=None, redis_password=password))


@pytest.mark.slow
def test_passwords_never_appear_in_logs(password_server: tuple[LocalRedis, str], worker_env: dict[str, str], prefix: str) -> None:
    srv, password = password_server
    Producer(srv.client(), Keys(prefix, prefix)).publish_many([np.zeros((20, 1), np.float32)] * 10)
    url = f"redis://:{password}@127.0.0.1:{srv.port}/0"
    ok = subprocess.run([sys.executable, "-m", "worker.cli", "--burst", "--redis-url", url],
                        env=dict(worker_env, BIGRU_LOG_LEVEL="DEBUG"), capture_output=True, timeout=120)
    assert ok.returncode == 0, ok.stderr.decode()[-2000:]
    logs = (ok.stdout + ok.stderr).decode()
    assert srv.client().xlen(Keys(prefix, prefix).shard(0).results) == 10
    assert f"redis://:***@127.0.0.1:{srv.port}/0" in logs and password not in logs
    # A wrong password fails the start; the error names no secret either.
    wrong = "wrong-" + uuid.uuid4().hex
    bad = subprocess.run([sys.executable, "-m", "worker.cli", "--burst"],
                         env=dict(worker_env, BIGRU_REDIS_URL=f"redis://127.0.0.1:{srv.port}/0", BIGRU_REDIS_PASSWORD=wrong),
                         capture_output=True, timeout=120)
    assert bad.returncode != 0 and re.search(rb"(?i)auth|password", bad.stderr)
    assert wrong.encode() not in bad.stdout + bad.stderr
    # A bad setting next to a password in the URL: the field is named, the URL is not echoed.
    cfg = subprocess.run([sys.executable, "-m", "worker.cli", "--max-batch", "0"], env=dict(worker_env, BIGRU_REDIS_URL=url),
                         capture_output=True, timeout=60)
    assert cfg.returncode == 2 and b"max_batch" in cfg.stderr and password.encode() not in cfg.stderr


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {os.environ.get('BIGRU_PICKLE_MARKER', '/nonexistent/x')}",))


def test_pickle_checkpoint_is_refused_without_running_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "pwned"
    monkeypatch.setenv("BIGRU_PICKLE_MARKER", str(marker))
    payloads = {
        "raw.pickle": pickle.dumps({"state_dict": _Exploit()}),
        "torch-save.pt": None,
    }
    import torch

    torch.save({"model": _Exploit()}, tmp_path / "torch-save.pt")
    (tmp_path / "raw.pickle").write_bytes(payloads["raw.pickle"] or b"")
    for name in payloads:
        with pytest.raises(CheckpointError):
            load_checkpoint(tmp_path / name)
    assert not marker.exists()


def test_redacted_hides_passwords_in_userinfo_and_query() -> None:
    from protocol.redisconn import redacted

    assert redacted("rediss://bigru-worker:s3cret@h:6380/0") == "rediss://bigru-worker:***@h:6380/0"
    assert redacted("unix:///run/redis.sock?db=0&password=s3cret") == "unix:///run/redis.sock?db=0&password=***"
    assert redacted("redis://h:6379/0") == "redis://h:6379/0"


def test_registry_cli_bad_config_does_not_echo_the_password() -> None:
    import os
    import subprocess
    import sys

    env = dict(os.environ, BIGRU_REDIS_URL="redis://u:s3cret-pw@127.0.0.1:1/0", BIGRU_REDIS_PASSWORD="other")
    out = subprocess.run([sys.executable, "-m", "training.cli", "promote", "v1"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2
    assert "password" in out.stderr and "s3cret-pw" not in out.stderr + out.stdout
