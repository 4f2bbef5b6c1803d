"""Least-privilege Redis ACL rules for each role, and secret-safe reporting of settings errors.

``acl_rules(role, prefix)`` is the single source of the ``ACL SETUSER`` lines documented in
``docs/security.md``; ``acl_setuser(role, user, prefix=...)`` returns one such line, e.g. for another
prefix (there is no CLI command for it). The tests check that the documented lines equal
``acl_setuser``'s, apply the rules to a real redis-server and check that the pipeline works and
everything else is denied.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ValidationError

Role = Literal["worker", "producer", "reader", "redrive", "trainer", "keda", "labeller", "recorder", "loop"]

#: Connection housekeeping every role needs (redis-py ignores a refused CLIENT SETINFO).
_CONNECTION = ["+ping", "+select"]


def _streams(prefix: str, *names: str) -> list[str]:
    # One shard: {prefix}:name; several: {prefix:N}:name.
    return [p for n in names for p in (f"~{{{prefix}}}:{n}", f"~{{{prefix}:*}}:{n}")]


def _selector(*rules: str) -> str:
    return "(" + " ".join(rules) + ")"


def acl_rules(role: Role, prefix: str = "bigru") -> list[str]:
    """The ``ACL SETUSER <user>`` rules for ``role`` (without the user name and password).

    Redis 7 selectors (the parenthesised rules) tie commands to keys: e.g. the worker may XADD
    only to the results and dead-letter streams, and DEL/SET only its heartbeat keys.
    """
    base = ["reset", "on", "-@all", *_CONNECTION, "resetchannels"]
    if role == "worker":
        return [
            *base,
            # WAIT after the publish script (BIGRU_WAIT_REPLICAS; keyless, @connection).
            "+wait",
            # Consume the input stream through the group; trim what every group acknowledged.
            "+xreadgroup", "+xack", "+xclaim", "+xautoclaim", "+xpending", "+xtrim", "+xlen",
            "+xgroup|create", "+xgroup|delconsumer", "+xinfo|groups", "+xinfo|consumers", "+script|load",
            *_streams(prefix, "windows"),
            # The publish/trim/reap scripts name the input, results, dead-letter and reply streams.
            _selector("+evalsha", *_streams(prefix, "windows", "results", "dead", "reply:*")),
            # Results and dead letters (and replies) are appended by the publish script...
            _selector("+xadd", *_streams(prefix, "results", "dead", "reply:*")),
            # ...which also refreshes a reply stream's expiry.
            _selector("+expire", *_streams(prefix, "reply:*")),
            # Heartbeat keys and the workers hash (also read by `bigru-worker --check`).
            _selector("+get", "+set", "+del", "+exists", "+hset", "+hdel", "+hkeys", "+hget", "+hgetall",
                      f"~{prefix}:hb:*", f"~{prefix}:workers"),
            # The model registry (version hash, checkpoint blobs, latest pointer, events stream): read only.
            _selector("+get", "+hget", "+hgetall", "+hkeys", "+exists", "+xread", "+xrange", "+xrevrange",
                      f"%R~{prefix}:model*"),
            # ...except the note a worker leaves when it refuses a version.
            _selector("+hset", f"~{prefix}:model-refusals:*"),
        ]
    if role == "producer":
        # XADD to the input stream; read the group's lag (XRANGE counts it when XINFO cannot).
        # Producer.classify reads and deletes its reply stream.
        # Idempotent publishing (protocol.idempotent): COMMAND DOCS picks the path; the script path runs
        # EVALSHA on an input stream and its dedup keys, whose GET/SET run inside the script; the
        # native path (Redis >= 8.6) reads XINFO STREAM (and needs +xcfgset added there, a command 7.x
        # does not know). WAIT after its writes with BIGRU_WAIT_REPLICAS.
        return [*base, "+wait", "+xadd", "+xinfo|groups", "+xinfo|stream", "+xlen", "+xrange", "+command|docs",
                "+script|load", *_streams(prefix, "windows"),
                _selector("+xread", "+del", *_streams(prefix, "reply:*")),
                _selector("+evalsha", *_streams(prefix, "windows", "idmp:*")),
                _selector("+get", "+set", *_streams(prefix, "idmp:*"))]
    if role == "reader":
        return [*base, "+xread", "+xrange", "+xrevrange", "+xlen", *_streams(prefix, "results", "dead")]
    if role == "redrive":
        # Read dead letters; the redrive script deletes one and re-adds its fields to the input stream.
        return [*base, "+xrange", "+xlen", "+script|load", *_streams(prefix, "dead"),
                _selector("+evalsha", *_streams(prefix, "dead", "windows")),
                _selector("+xdel", *_streams(prefix, "dead")),
                _selector("+xadd", *_streams(prefix, "windows"))]
    if role == "trainer":
        # `bigru-train --publish`: blob (SET), entry (HGET/HSET), the `latest` pointer (an EVAL running
        # HINCRBY + HSET on one key), the announcement (XADD ... MAXLEN); reads to check what exists.
        return [*base, "+get", "+set", "+exists", "+hget", "+hset", "+hgetall", "+hkeys", "+hincrby", "+eval",
                "+xadd", "+xrange", "+xrevrange", f"~{prefix}:models", f"~{prefix}:model:*"]
    if role == "keda":
        # KEDA's redis-streams scaler: INFO (it checks the server version before reading lag),
        # XINFO GROUPS (lag), XPENDING (pending count), XLEN (a stream without the group); read-only keys.
        return [*base, "+info", "+xinfo|groups", "+xpending", "+xlen",
                *(f"%R{k}" for k in _streams(prefix, "windows"))]
    if role in ("labeller", "recorder", "loop"):
        return _loop_rules(role, prefix, base)
    raise ValueError(f"unknown role {role!r}; expected worker, producer, reader, redrive, trainer, keda, labeller, "
                     "recorder or loop")


def _as_selectors(rules: list[str]) -> list[str]:
    """Another role's rules inside selectors, so that its root commands keep to its own keys."""
    root = [x for x in rules if not x.startswith("(")]
    return [_selector(*root), *(x for x in rules if x.startswith("("))] if root else rules


def _loop_rules(role: Role, prefix: str, base: list[str]) -> list[str]:
    """The continuous loop's roles (docs/lifecycle.md#the-loop)."""
    classes = _selector("+hget", "+hgetall", f"%R~{prefix}:model:latest", f"%R~{prefix}:models")
    if role == "labeller":
        # Append to the labels stream; read the serving model's classes to refuse a label outside them.
        return [*base, _selector("+xadd", f"~{prefix}:labels"), classes]
    if role == "recorder":
        # Its own group on the input streams and the labels stream; refusals; its counters; the classes.
        return [*base, _selector("+xreadgroup", "+xack", "+xgroup|create", *_streams(prefix, "windows"),
                                 f"~{prefix}:labels"),
                _selector("+xadd", f"~{prefix}:labels:refused"), _selector("+hset", f"~{prefix}:recorder"), classes]
    # loop (bigru-train watch): the trainer's registry rights, the evidence (results of both pools, labels,
    # heartbeats, the recorder's counters) read only, its own state, ending the shadow group; plus the worker's
    # rules, since it runs its candidate's shadow replicas with its own connection.
    return [*base, *_as_selectors(acl_rules("trainer", prefix)[len(base):]),
            *_as_selectors(acl_rules("worker", prefix)[len(base):]),
            _selector("+xrange", "+xread", *_streams(prefix, "results", "shadow:results"), f"%R~{prefix}:labels"),
            _selector("+hget", "+hgetall", "+hvals", f"%R~{prefix}:recorder", f"%R~{prefix}:workers"),
            _selector("+hset", "+hgetall", "+del", f"~{prefix}:loop", f"~{prefix}:shadow:workers", f"~{prefix}:shadow:hb:*"),
            _selector("+xgroup|destroy", "+xgroup|create", *_streams(prefix, "windows"))]


def acl_setuser(role: Role, user: str, password_placeholder: str = "<password>", prefix: str = "bigru") -> str:
    """One ``ACL SETUSER`` command line, as documented (``>password`` placeholder)."""
    return " ".join(["ACL SETUSER", user, *acl_rules(role, prefix), f">{password_placeholder}"])


def settings_error(e: ValidationError) -> str:
    """A settings validation error naming each bad field, without echoing input values (which may
    hold passwords, e.g. in ``redis_url``)."""
    lines = []
    for err in e.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"]) or "settings"
        lines.append(f"  {loc}: {err['msg']}")
    return "invalid configuration:\n" + "\n".join(lines)
