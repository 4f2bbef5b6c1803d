"""Worker configuration: one pydantic-settings class, built once in ``main()`` and passed down."""

from __future__ import annotations

import socket
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.keys import Keys
from worker.wire import Limits


class WorkerSettings(BaseSettings):
    """Every worker setting; environment variables use the ``BIGRU_`` prefix (``BIGRU_MAX_BATCH``)."""

    model_config = SettingsConfigDict(env_prefix="BIGRU_", env_file=".env", extra="ignore")

    redis_url: str = Field("redis://localhost:6379/0", description="Redis URL (redis:// or rediss://)")
    prefix: str = Field("bigru", min_length=1, description="key prefix")
    group: str = Field("bigru", min_length=1, description="consumer group name")
    shards: int = Field(1, ge=1, le=1024, description="number of shard streams")
    checkpoint: str = Field("checkpoints", description="checkpoint file, version dir or root with 'latest'")
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    backend: Literal["torch", "onnx", "auto"] = Field(
        "auto", description="model runtime: torch, onnx (ONNX Runtime, CPU) or auto (onnx on CPU when installed)"
    )
    replicas: int = Field(1, ge=1, le=256)
    torch_threads: int = Field(1, ge=0, description="intra-op threads per replica, torch or onnx (0: the runtime's default)")
    max_batch: int = Field(64, ge=1, le=65536)
    max_wait_ms: float = Field(5.0, ge=0)
    batch_wait: Literal["fixed", "slo"] = Field(
        "fixed", description="fixed: fill for up to max_wait_ms; slo: fill while the oldest window still meets slo_p99_ms"
    )
    slo_p99_ms: float = Field(10.0, gt=0, description="end-to-end latency target of batch_wait=slo")
    block_ms: int = Field(1000, ge=1, description="XREADGROUP BLOCK while idle")
    burst: bool = Field(False, description="drain the stream, then exit")
    burst_idle_ms: int = Field(500, ge=1, description="burst: exit after this long without input")
    worker_name: str | None = Field(None, description="consumer name base (default: host name)")
    claim_idle_ms: int = Field(30000, ge=100, description="reclaim entries idle this long from other consumers")
    reclaim_interval_ms: int = Field(5000, ge=100)
    max_deliveries: int = Field(5, ge=1)
    heartbeat_ttl_s: float = Field(15.0, gt=0)
    heartbeat_interval_s: float = Field(2.0, gt=0)
    results_maxlen: int = Field(1_000_000, ge=1)
    dead_maxlen: int = Field(100_000, ge=1)
    max_window_bytes: int = Field(4 * 1024 * 1024, ge=64)
    max_length: int = Field(10_000, ge=1)
    allow_nonfinite: bool = False
    log_level: str = "INFO"
    log_json: bool | None = Field(None, description="JSON logs (default: when stderr is not a TTY)")

    @model_validator(mode="after")
    def _check(self) -> WorkerSettings:
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis_url must start with redis://, rediss:// or unix://")
        return self

    @property
    def keys(self) -> Keys:
        """Key names for this prefix, group and shard count."""
        return Keys(self.prefix, self.group, self.shards)

    @property
    def limits(self) -> Limits:
        """Decoding limits."""
        return Limits(
            max_window_bytes=self.max_window_bytes, max_length=self.max_length, allow_nonfinite=self.allow_nonfinite
        )

    def consumer_name(self, replica: int) -> str:
        """Stable consumer name: host (or ``worker_name``) plus replica index."""
        return f"{self.worker_name or socket.gethostname()}-{replica}"
