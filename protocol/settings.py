"""Where every role finds its keys: key prefix, consumer group and shard count, declared once.

:class:`PrefixSettings` extends :class:`protocol.redisconn.RedisConnSettings` (how to reach Redis,
and the one ``env_prefix``, ``BIGRU_``) with the key prefix: the registry commands' settings are these
(the registry's keys depend on the prefix only). :class:`StreamSettings` adds the consumer group and
the shard count: the worker's and the producer's settings extend it. So ``BIGRU_PREFIX``,
``BIGRU_GROUP`` and ``BIGRU_SHARDS`` mean the same to every role, and their defaults are
:class:`protocol.keys.Keys`'.
"""

from __future__ import annotations

from pydantic import Field

from protocol.keys import Keys
from protocol.redisconn import RedisConnSettings


class PrefixSettings(RedisConnSettings):
    """The connection plus the key prefix; :attr:`keys` names the keys under it (one shard, the default group)."""

    prefix: str = Field(Keys.prefix, min_length=1, description="key prefix: streams `{bigru}:windows`, "
                        "`{bigru}:results`, `{bigru}:dead` (`{bigru:N}:…` with shards), the registry's and the "
                        "workers' keys")

    @property
    def keys(self) -> Keys:
        """Key names for this prefix."""
        return Keys(self.prefix)


class StreamSettings(PrefixSettings):
    """The connection plus the streams' location; :attr:`keys` names every key under it."""

    group: str = Field(Keys.group, min_length=1, description="the workers' consumer group (the producer watches its lag)")
    shards: int = Field(Keys.shards, ge=1, le=1024, description="shard streams per logical stream (a window goes to "
                        "the shard its id's crc32 picks; round-robin without an id)")

    @property
    def keys(self) -> Keys:
        """Key names for this prefix, group and shard count."""
        return Keys(self.prefix, self.group, self.shards)
