"""Where every role finds its keys: key prefix, consumer group and shard count, declared once.

:class:`PrefixSettings` extends :class:`protocol.redisconn.RedisConnSettings` (how to reach Redis,
and the one ``env_prefix``, ``BIGRU_``) with the key prefix: the registry commands' settings are these
(the registry's keys depend on the prefix only). :class:`StreamSettings` adds the consumer group and
the shard count: the worker's and the producer's settings extend it. So ``BIGRU_PREFIX``,
``BIGRU_GROUP`` and ``BIGRU_SHARDS`` mean the same to every role, and their defaults are
:class:`protocol.keys.Keys`'.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Collection
from typing import TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings

from protocol.keys import Keys
from protocol.redisconn import RedisConnSettings
from protocol.security import settings_error

S = TypeVar("S", bound=BaseSettings)


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


def settings_from_flags(cls: type[S], args: argparse.Namespace, commands: Collection[str] = ()) -> S:
    """``cls`` from the environment/.env, overridden by the flags that were given (``args`` entries that
    are not None), leaving out the subcommands' own options (``commands``)."""
    return cls(**{k: v for k, v in vars(args).items() if v is not None and k not in commands})


def cli_settings(prog: str, cls: type[S], args: argparse.Namespace, commands: Collection[str] = ()) -> S | None:
    """Every CLI's prologue: :func:`settings_from_flags`, or None once the reason they are invalid is printed
    to stderr as ``prog: invalid configuration: ...`` (without echoing values: :func:`protocol.security.settings_error`);
    the caller then exits 2."""
    try:
        return settings_from_flags(cls, args, commands)
    except ValidationError as e:
        print(f"{prog}: {settings_error(e)}", file=sys.stderr)
        return None
