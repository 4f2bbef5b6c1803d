"""Producer configuration (env prefix ``BIGRU_``; flags override)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from protocol.keys import Keys
from protocol.redisconn import RedisConnSettings


class ProducerSettings(RedisConnSettings):
    """Settings of ``bigru-producer`` and the :class:`producer.Producer` API."""

    model_config = SettingsConfigDict(env_prefix="BIGRU_", env_file=".env", extra="ignore")

    prefix: str = Field("bigru", min_length=1)
    group: str = Field("bigru", min_length=1)
    shards: int = Field(1, ge=1, le=1024)
    pipeline_size: int = Field(500, ge=1, description="entries per pipelined round trip in publish_many")
    max_lag: int = Field(0, ge=0, description="refuse/block while the group's lag exceeds this (0: no limit)")
    backpressure: Literal["refuse", "block"] = Field("refuse", description="what to do over max_lag")
    backpressure_timeout_s: float = Field(30.0, gt=0, description="block mode: give up after this long")
    lag_check_interval_ms: float = Field(50.0, ge=0, description="re-read the lag at most this often")

    @property
    def keys(self) -> Keys:
        """Key names."""
        return Keys(self.prefix, self.group, self.shards)
