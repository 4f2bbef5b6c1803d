"""Producer configuration (env prefix ``BIGRU_``; flags override)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.keys import Keys


class ProducerSettings(BaseSettings):
    """Settings of ``bigru-producer`` and the :class:`producer.Producer` API."""

    model_config = SettingsConfigDict(env_prefix="BIGRU_", env_file=".env", extra="ignore")

    redis_url: str = "redis://localhost:6379/0"
    prefix: str = Field("bigru", min_length=1)
    group: str = Field("bigru", min_length=1)
    shards: int = Field(1, ge=1, le=1024)
    pipeline_size: int = Field(500, ge=1, description="entries per pipelined round trip in publish_many")

    @property
    def keys(self) -> Keys:
        """Key names."""
        return Keys(self.prefix, self.group, self.shards)
