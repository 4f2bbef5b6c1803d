"""How a producer's entry reaches its input stream: a plain ``XADD``, or the idempotent write of
:mod:`protocol.idempotent` when the producer has a producer id."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import redis

from protocol.idempotent import IdempotentWriter
from protocol.idempotent import entry_id as _entry_id
from protocol.keys import ShardKeys

_T = TypeVar("_T")


def reloads_script(fn: Callable[..., _T]) -> Callable[..., _T]:
    """Decorate a producer method (``self.r``, ``self.idempotence``) to run it again once after
    reloading the idempotent-XADD script when the server had lost it (``NOSCRIPT``, e.g. after a
    restart): safe, since a write that did land returns its first id (a ``classify`` call writes to
    one shard, so none of its writes landed)."""

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> _T:
        try:
            return fn(self, *args, **kwargs)
        except redis.exceptions.NoScriptError:
            if self.idempotence is None:
                raise
            self.idempotence.reload(self.r)
            return fn(self, *args, **kwargs)

    return wrapper


def write(idem: IdempotentWriter | None, target: Any, sk: ShardKeys, fields: Mapping[Any, Any],
          iid: str | None) -> Any:
    """Append (pipeline) or send (client) the write of ``fields`` to ``sk``'s input stream: a plain
    ``XADD``, or with ``idem`` the idempotent write keyed by ``iid``, else by a random id (which still
    covers redis-py's own re-send after a dropped connection, not a re-publish by the caller)."""
    if idem is None:
        return target.xadd(sk.windows, fields)
    return idem.add(target, sk, fields, iid or uuid.uuid4().hex)


def entry_id(reply: Any) -> str:
    """The entry id of a write's reply (plain or idempotent)."""
    return _entry_id(reply)[0]
