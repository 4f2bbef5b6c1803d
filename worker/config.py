"""Worker configuration: one pydantic-settings class, built once in ``main()`` and passed down."""

from __future__ import annotations

import socket
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from protocol.cluster import parse_shards
from protocol.keys import Keys
from protocol.redisconn import RedisConnSettings
from protocol.wire import Limits


class WorkerSettings(RedisConnSettings):
    """Every worker setting; environment variables use the ``BIGRU_`` prefix (``BIGRU_MAX_BATCH``)."""

    model_config = SettingsConfigDict(env_prefix="BIGRU_", env_file=".env", extra="ignore")

    prefix: str = Field("bigru", min_length=1, description="key prefix")
    group: str = Field("bigru", min_length=1, description="consumer group name")
    shards: int = Field(1, ge=1, le=1024, description="number of shard streams")
    consume_shards: str | None = Field(None, description="shards this worker consumes, e.g. '0,2-3' (default: all)")
    checkpoint: str = Field("checkpoints", description="checkpoint file, version dir or root with 'latest'")
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    backend: Literal["torch", "onnx", "auto"] = Field(
        "auto", description="model runtime: torch, onnx (ONNX Runtime, CPU) or auto (onnx on CPU when installed)"
    )
    precision: Literal["fp32", "int8", "auto"] = Field(
        "auto", description="onnx backend: fp32, int8 (int8 convolutions, forced) or auto (int8 when its golden-batch "
        "accuracy is within reload_max_drop of fp32's, else fp32); torch serves fp32"
    )
    replicas: int = Field(1, ge=1, le=256)
    torch_threads: int = Field(1, ge=0, description="intra-op threads per replica, torch or onnx (0: the runtime's default)")
    max_batch: int = Field(64, ge=1, le=65536)
    max_wait_ms: float = Field(5.0, ge=0, description="batch_wait=fixed: how long an idle model waits for a batch to fill")
    batch_wait: Literal["continuous", "fixed", "slo"] = Field(
        "continuous",
        description="once the model is idle: continuous: serve what is in hand at once (the batch grew while the model "
        "was busy); fixed: fill for up to max_wait_ms; slo: fill while the oldest window still meets slo_p99_ms",
    )
    overlap: bool = Field(
        True, description="run the model in its own thread, so reading, decoding and publishing overlap the forward pass"
    )
    slo_p99_ms: float = Field(10.0, gt=0, description="end-to-end latency target of batch_wait=slo")
    block_ms: int = Field(1000, ge=1, description="XREADGROUP BLOCK while idle")
    burst: bool = Field(False, description="drain the stream, then exit")
    burst_idle_ms: int = Field(500, ge=1, description="burst: exit after this long without input")
    worker_name: str | None = Field(None, description="consumer name base (default: host name)")
    claim_idle_ms: int = Field(30000, ge=100, description="reclaim entries idle this long from other consumers")
    reclaim_interval_ms: int = Field(5000, ge=100)
    maintenance_interval_ms: int = Field(10000, ge=0, description="input trimming/consumer reaping period (0: off)")
    trim_input: bool = Field(True, description="trim input entries every group has acknowledged")
    reap_idle_ms: int = Field(300_000, ge=1000, description="delete consumers idle this long with nothing pending")
    max_deliveries: int = Field(5, ge=1)
    heartbeat_ttl_s: float = Field(15.0, gt=0)
    heartbeat_interval_s: float = Field(2.0, gt=0)
    results_maxlen: int = Field(1_000_000, ge=1)
    dead_maxlen: int = Field(100_000, ge=1)
    max_window_bytes: int = Field(4 * 1024 * 1024, ge=64)
    max_length: int = Field(10_000, ge=1)
    allow_nonfinite: bool = False
    reload: bool = Field(True, description="hot-reload models announced in the registry / checkpoint root")
    reload_interval_s: float = Field(5.0, gt=0, description="periodic check of the latest pointer")
    reload_follow_dir: bool = Field(True, description="also follow the checkpoint root's 'latest' file")
    reload_min_accuracy: float = Field(0.5, ge=0, le=1, description="golden-batch accuracy floor")
    reload_max_drop: float = Field(0.02, ge=0, le=1, description="allowed golden accuracy drop vs the serving model")
    reload_allow_schema_change: bool = Field(False, description="accept a different feature count / class list")
    reload_require_golden: bool = Field(True, description="refuse checkpoints without a golden batch")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Prometheus port of replica 0 (replica i: port + i); 0 or unset: off"
    )
    metrics_addr: str = Field("0.0.0.0", description="address the metrics endpoint binds")
    log_level: str = "INFO"
    log_json: bool | None = Field(None, description="JSON logs (default: when stderr is not a TTY)")

    @field_validator("consume_shards")
    @classmethod
    def _check_shards(cls, v: str | None, info: ValidationInfo) -> str | None:
        parse_shards(v, info.data.get("shards", 1))
        return v

    @model_validator(mode="after")
    def _check(self) -> WorkerSettings:
        if self.metrics_port and self.metrics_port + self.replicas - 1 > 65535:
            raise ValueError("metrics_port + replicas - 1 exceeds 65535 (one metrics port per replica)")
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

    @property
    def assigned_shards(self) -> list[int]:
        """The shards this worker consumes (``consume_shards``, or all of them)."""
        return parse_shards(self.consume_shards, self.shards)

    def consumer_name(self, replica: int) -> str:
        """Stable consumer name: host (or ``worker_name``) plus replica index."""
        return f"{self.worker_name or socket.gethostname()}-{replica}"
