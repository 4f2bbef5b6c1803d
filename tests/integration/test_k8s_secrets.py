"""scripts/k8s_secrets.py against a real server: the ACL file it writes for the bundled Redis loads, the
default user is off, and each role's user can do its job in the pods of deploy/kubernetes (the init Job,
the trainer publishing to the registry, a worker serving from it, KEDA reading lag and pending) and is
refused what it does not need."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import yaml

from bench.harness import LocalRedis
from producer.client import Producer
from protocol.keys import Keys
from scripts.k8s_secrets import ROLES, main, secrets_docs, setuser_lines
from tests.helpers import make_loop
from training.registry_cli import RegistrySettings, publish_path
from worker import cli
from worker.config import WorkerSettings
from worker.reload import initial_predictor

PASSWORDS = {role: f"pw-{role}-0123456789" for role in ROLES}


class AclRedis(LocalRedis):
    """A server whose default user is off: its admin client is the ``bigru-admin`` user."""

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis(port=self.port, username="bigru-admin", password=PASSWORDS["admin"],
                           socket_connect_timeout=0.5, **kwargs)


def _user_url(srv: LocalRedis, role: str) -> str:
    return f"redis://bigru-{role}:{PASSWORDS[role]}@127.0.0.1:{srv.port}/0"


def _user(srv: LocalRedis, role: str) -> redis.Redis:
    return redis.Redis.from_url(_user_url(srv, role))


@pytest.fixture
def acl_server(tmp_path: Path) -> Any:
    acl = next(d for d in secrets_docs(PASSWORDS) if d["metadata"]["name"] == "bigru-redis-acl")  # type: ignore[index]
    path = tmp_path / "users.acl"
    path.write_text(acl["stringData"]["users.acl"])  # type: ignore[index]
    with AclRedis(args=["--aclfile", str(path)]) as srv:
        yield srv


def test_script_prints_valid_secrets_with_fresh_passwords(tmp_path: Path) -> None:
    runs = []
    for _ in range(2):
        buf = io.StringIO()
        with redirect_stdout(buf):
            assert main(["--external", "--acl-commands", str(tmp_path / "acl.txt")]) == 0
        runs.append({d["metadata"]["name"]: d for d in yaml.safe_load_all(buf.getvalue())})
    assert set(runs[0]) == {f"bigru-redis-{r}" for r in ROLES}  # --external: no ACL file Secret
    assert runs[0]["bigru-redis-worker"]["stringData"]["password"] != runs[1]["bigru-redis-worker"]["stringData"]["password"]
    assert (tmp_path / "acl.txt").stat().st_mode & 0o077 == 0  # the SETUSER lines hold passwords
    from tests.k8s_support import validate

    for d in runs[0].values():
        validate(d)
    bundled = {d["metadata"]["name"]: d for d in secrets_docs(PASSWORDS)}
    acl_text = bundled["bigru-redis-acl"]["stringData"]["users.acl"]  # type: ignore[index]
    assert not any(pw in acl_text for pw in PASSWORDS.values())  # hashes only


def test_default_user_is_off(acl_server: LocalRedis) -> None:
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=acl_server.port).ping()


def test_each_role_does_its_job_and_no_more(acl_server: LocalRedis, checkpoint_root: Path, capsys: Any) -> None:
    keys = Keys("bigru", "bigru", 2)
    # The init Job, as the worker user.
    assert cli.main(["init", "--redis-url", _user_url(acl_server, "worker"), "--shards", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["streams"] == [sk.windows for sk in keys.all_shards()]
    assert cli.main(["init", "--redis-url", _user_url(acl_server, "worker"), "--shards", "2"]) == 0  # idempotent
    capsys.readouterr()
    assert all(g["name"] == b"bigru" and g["lag"] == 0 for sk in keys.all_shards()
               for g in acl_server.client().xinfo_groups(sk.windows))
    # The trainer Job publishes to the registry...
    doc = publish_path(RegistrySettings(redis_url=_user_url(acl_server, "trainer"), prefix="bigru"), checkpoint_root)
    assert doc["latest"]
    # ...and a worker with no local checkpoint starts from it, through its own user.
    ws = WorkerSettings(redis_url=_user_url(acl_server, "worker"), checkpoint="/nonexistent", shards=2)
    assert initial_predictor(ws, _user(acl_server, "worker")).version == doc["version"]
    ids = Producer(_user(acl_server, "producer"), keys).publish_many([np.zeros((20, 1), np.float32)] * 40)
    assert len(ids) == 40
    keda = _user(acl_server, "keda")
    assert int(keda.info("server")["redis_version"].split(".")[0]) >= 7  # KEDA's version check before lag
    assert sum(g["lag"] for sk in keys.all_shards() for g in keda.xinfo_groups(sk.windows)) == 40
    assert all(keda.xpending(sk.windows, "bigru")["pending"] == 0 for sk in keys.all_shards())
    assert sum(keda.xlen(sk.windows) for sk in keys.all_shards()) == 40
    stats = make_loop(acl_server.url, "bigru", checkpoint_root, client=_user(acl_server, "worker"), shards=2).run()
    assert stats.results == 40
    assert sum(g["lag"] + g["pending"] for sk in keys.all_shards() for g in keda.xinfo_groups(sk.windows)) == 0
    refused = [
        (keda, "XADD", keys.shard(0).windows, "*", "x", "1"),
        (keda, "XREADGROUP", "GROUP", "bigru", "k", "COUNT", "1", "STREAMS", keys.shard(0).windows, ">"),
        (keda, "XINFO", "GROUPS", keys.shard(0).results),
        (keda, "GET", "bigru:model:latest"),
        (_user(acl_server, "trainer"), "XADD", keys.shard(0).windows, "*", "x", "1"),
        (_user(acl_server, "trainer"), "FLUSHALL"),
        (_user(acl_server, "worker"), "SET", "bigru:model:latest", "evil"),
        (_user(acl_server, "producer"), "XGROUP", "DESTROY", keys.shard(0).windows, "bigru"),
    ]
    for client, *cmd in refused:
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command(*cmd)


def test_external_setuser_lines_create_the_same_users(redis_server: LocalRedis) -> None:
    admin = redis_server.client()
    lines = setuser_lines(PASSWORDS, "bigru").splitlines()
    try:
        for line in lines:
            admin.execute_command(*line.split(" ")[:1], *line.split(" ")[1:])
        keda = redis.Redis.from_url(f"redis://bigru-keda:{PASSWORDS['keda']}@127.0.0.1:{redis_server.port}/0")
        assert keda.xlen("{bigru:0}:windows") == 0
        with pytest.raises(redis.exceptions.NoPermissionError):
            keda.set("x", "1")
    finally:
        for role in ROLES:
            admin.acl_deluser(f"bigru-{role}")
