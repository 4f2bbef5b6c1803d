"""Worker configuration: one pydantic-settings class, built once in ``main()`` and passed down, joined from
one pydantic model per group of settings (:data:`GROUPS`), each taken whole by the parts that read it."""

from __future__ import annotations

import socket
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from protocol.cluster import parse_shards
from protocol.keys import Keys
from protocol.limits import Limits  # numpy-free: `bigru-worker --check` (a probe) must start fast
from protocol.settings import StreamSettings


class Serving(BaseModel):
    """What a replica serves, and how many replicas a host runs (``worker.backends``, ``worker.supervisor``)."""

    consume_shards: str | None = Field(None, description="shards this worker consumes, e.g. `0,2-3` (unset: all)")
    checkpoint: str = Field(
        "checkpoints", description="checkpoint file, version directory, or root with a `latest` pointer"
    )
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="`cpu`, `cuda`, or `auto` (CUDA when available)")
    backend: Literal["torch", "onnx", "auto"] = Field(
        "auto", description="model runtime: `onnx` (ONNX Runtime, CPU), `torch`, or `auto` (onnx on CPU when installed)"
    )
    precision: Literal["fp32", "int8", "auto"] = Field(
        "auto", description="onnx backend: `auto` serves the int8 graph (int8 convolutions) when its golden-batch "
        "accuracy is within `reload_max_drop` of fp32's, else fp32; `int8` forces it (a warning when over the drop; "
        "fails without a golden batch); `fp32`. Torch serves fp32 (`int8` with torch is an error). See "
        "[docs/training.md](docs/training.md#onnx-and-int8)"
    )
    replicas: int = Field(1, ge=1, le=256, description="worker processes on this host (each restarted if it dies)")
    torch_threads: int = Field(
        1, ge=0, description="intra-op threads per replica, torch or onnx (0: the runtime's default)"
    )


class Batching(BaseModel):
    """How batches are read and filled (``worker.batching``, ``worker.reader``)."""

    max_batch: int = Field(
        64, ge=1, le=65536, description="windows per forward pass (a multi-window entry counts its windows)"
    )
    max_wait_ms: float = Field(
        5.0, ge=0, description="with `batch_wait=fixed`: wait at most this long after the first window for the batch to fill"
    )
    batch_wait: Literal["continuous", "fixed", "slo"] = Field(
        "continuous",
        description="once the model is idle: `continuous` serves what is in hand at once (the batch grew while the "
        "model computed the previous one); `fixed` waits up to `max_wait_ms`; `slo` waits while the oldest window "
        "still meets `slo_p99_ms`",
    )
    overlap: bool = Field(
        True, description="run the forward pass on its own thread, so reading, decoding, encoding and publishing "
        "overlap it"
    )
    slo_p99_ms: float = Field(10.0, gt=0, description="with `batch_wait=slo`: the end-to-end latency target")
    block_ms: int = Field(1000, ge=1, description="XREADGROUP BLOCK while idle")
    burst: bool = Field(False, description="drain the stream, then exit")
    burst_idle_ms: int = Field(500, ge=1, description="with `burst`: exit after this long without input")


class Claiming(BaseModel):
    """The consumer's name, claiming other consumers' entries, maintenance and the delivery limit (``worker.reader``, ``worker.maintenance``)."""

    worker_name: str | None = Field(
        None, description="consumer name base; consumers are `<name>-<replica>` (unset: the host name)"
    )
    claim_idle_ms: int = Field(30000, ge=100, description="reclaim other consumers' entries idle this long")
    reclaim_interval_ms: int = Field(
        5000, ge=100, description="how often to look for entries to reclaim (see `claim_idle_ms`)"
    )
    maintenance_interval_ms: int = Field(
        10000, ge=0, description="how often a replica trims the input and reaps dead consumers (0: never)"
    )
    trim_input: bool = Field(
        True, description="trim input entries every group has acknowledged (never unprocessed ones)"
    )
    reap_idle_ms: int = Field(
        300_000, ge=1000, description="delete consumers idle this long with nothing pending and no heartbeat"
    )
    max_deliveries: int = Field(5, ge=1, description="dead-letter an entry delivered more often than this")


class Liveness(BaseModel):
    """The heartbeat (``worker.liveness``)."""

    heartbeat_ttl_s: float = Field(
        15.0, gt=0, description="heartbeat key lifetime: a replica is stale this long after its last refresh"
    )
    heartbeat_interval_s: float = Field(2.0, gt=0, description="how often a replica refreshes its heartbeat")
    stall_s: float = Field(
        120.0, gt=0, description="the heartbeat is refreshed from a thread during long batches, until the loop has "
        "made no progress and one batch has computed for this long (then `--check` fails)"
    )


class Publishing(BaseModel):
    """Where outputs go and how long the streams grow (``worker.publisher``)."""

    results_maxlen: int = Field(1_000_000, ge=1, description="approximate cap of the results stream")
    dead_maxlen: int = Field(100_000, ge=1, description="approximate cap of the dead-letter stream")
    reply_maxlen: int = Field(
        10_000, ge=1, description="approximate cap of each reply stream (`{bigru}:reply:<name>`, an input's `reply` field)"
    )
    reply_ttl_s: int = Field(300, ge=1, description="a reply stream expires this long after its last write")
    results_shared: bool = Field(
        True, description="also write the outputs of entries that name a reply stream to the shared results and "
        "dead-letter streams (false: only to the reply stream)"
    )


class InputLimits(BaseModel):
    """What input is accepted (:attr:`limits`, ``protocol.limits.Limits``) and a batch's byte budget."""

    max_window_bytes: int = Field(Limits.max_window_bytes, ge=64, description="largest accepted `x` field, in bytes")
    max_batch_bytes: int = Field(
        256 * 1024 * 1024, ge=64, description="byte budget of one batch's entries: a read asks for at most the "
        "bytes left divided by `max_window_bytes`, so a flood of large entries cannot multiply a replica's memory"
    )
    max_length: int = Field(Limits.max_length, ge=1, description="largest accepted T (timesteps per window)")
    allow_nonfinite: bool = Field(Limits.allow_nonfinite, description="accept NaN/inf values")

    @property
    def limits(self) -> Limits:
        """Decoding limits."""
        return Limits(
            max_window_bytes=self.max_window_bytes, max_length=self.max_length, allow_nonfinite=self.allow_nonfinite
        )


class Reloading(BaseModel):
    """Hot reload and its gate (``worker.reload``, ``worker.gate``)."""

    reload: bool = Field(
        True, description="hot-reload new model versions announced in the registry or the checkpoint root (see "
        "[Hot reload](#hot-reload))"
    )
    reload_interval_s: float = Field(
        5.0, gt=0, description="periodic check of the registry's `latest` pointer (besides announcements and SIGHUP)"
    )
    reload_follow_dir: bool = Field(True, description="also follow `latest` in the `checkpoint` root directory")
    reload_min_accuracy: float = Field(
        0.5, ge=0, le=1, description="refuse a version whose golden-batch accuracy is below this"
    )
    reload_max_drop: float = Field(
        0.02, ge=0, le=1,
        description="refuse a version more than this below the serving model's accuracy on the same golden batch",
    )
    reload_allow_schema_change: bool = Field(False, description="accept a different feature count or class list")
    reload_require_golden: bool = Field(True, description="refuse checkpoints that carry no golden batch")


class Breaking(BaseModel):
    """The model breaker (``worker.breaker``, ``worker.guard``)."""

    breaker: bool = Field(
        True, description="stop taking work when the model itself fails, instead of dead-lettering every window "
        "(see [docs/reliability.md](docs/reliability.md#10-a-broken-model-the-breaker))"
    )
    breaker_failure_ratio: float = Field(
        0.5, gt=0, le=1, description="a batch is suspect when at least this share of its windows fail alone; a "
        "suspect batch whose probe (golden batch, else recently served windows) fails too opens the breaker"
    )
    breaker_backoff_ms: int = Field(1000, ge=1, description="first probe of an open breaker after this long (doubling)")
    breaker_backoff_max_ms: int = Field(60_000, ge=1, description="longest wait between two probes of an open breaker")
    breaker_reload_batches: int = Field(
        100, ge=0, description="a model that breaks within this many batches after a hot reload is refused and the "
        "previous version served again"
    )


class Lifecycle(BaseModel):
    """The model's life in production: shadow scoring, tracing, drift (docs/lifecycle.md)."""

    shadow_version: str | None = Field(
        None, description="serve this registered model version as a shadow pool: its own consumer group on the "
        "same input streams, results to `{bigru}:shadow:results`, no reply streams, no reloads (see "
        "[docs/lifecycle.md](docs/lifecycle.md#shadow-scoring))"
    )
    shadow_from_start: bool = Field(
        False, description="a new shadow group starts at the beginning of the input streams (default: new entries)"
    )
    tracing: bool = Field(
        False, description="record OpenTelemetry spans per batch, linked to each input's `traceparent` (needs the "
        "`tracing` extra; see [docs/lifecycle.md](docs/lifecycle.md#tracing))"
    )
    tracing_exporter: Literal["otlp", "console", "none", "global"] = Field(
        "otlp", description="with `tracing`: `otlp` (OTLP/HTTP, `OTEL_EXPORTER_OTLP_*`), `console`, `none` (spans "
        "made, not exported) or `global` (the process's tracer provider)"
    )
    drift_sample_every: int = Field(
        8, ge=0, description="drift monitoring samples every this many served windows against the checkpoint's "
        "training statistics (0: off; see [docs/lifecycle.md](docs/lifecycle.md#drift))"
    )
    drift_window: int = Field(512, ge=16, description="sampled windows in the rolling drift sample")


class Observability(BaseModel):
    """Metrics and logs (``worker.metrics``, ``protocol.logs``)."""

    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Prometheus endpoint of replica 0 (replica i: port + i); 0 or unset: off"
    )
    metrics_addr: str = Field("0.0.0.0", description="address the metrics endpoint binds")
    log_level: str = Field("INFO", description="structlog level")
    log_json: bool | None = Field(None, description="JSON logs (unset: when stderr is not a TTY)")


#: The groups in the order their variables are listed (``docs/configuration.md``): pydantic collects a class's
#: fields base by base from the last, so :class:`WorkerSettings` names them last first.
GROUPS: tuple[type[BaseModel], ...] = (Serving, Batching, Claiming, Liveness, Publishing, InputLimits, Reloading, Breaking,
                                       Lifecycle, Observability)


class WorkerSettings(Observability, Lifecycle, Breaking, Reloading, InputLimits, Publishing, Liveness, Claiming, Batching,
                     Serving, StreamSettings):
    """Every worker setting; environment variables use the ``BIGRU_`` prefix (``BIGRU_MAX_BATCH``).

    The connection and the streams' location (prefix, group, shards, :attr:`keys`) are
    :class:`protocol.settings.StreamSettings`'; the worker's own settings are declared once each in the
    groups above (:data:`GROUPS`), which WorkerSettings joins: a part takes its group whole (typed as the
    group: ``worker.batching.make_batch_wait`` a :class:`Batching`, ``Publisher.from_settings`` a
    :class:`Publishing`, ...), and the variables stay flat (``BIGRU_MAX_BATCH``, not a nested name).
    """

    @field_validator("consume_shards")
    @classmethod
    def _check_shards(cls, v: str | None, info: ValidationInfo) -> str | None:
        parse_shards(v, info.data.get("shards", 1))
        return v

    @model_validator(mode="after")
    def _check(self) -> WorkerSettings:
        if self.metrics_port and self.metrics_port + self.replicas - 1 > 65535:
            raise ValueError("metrics_port + replicas - 1 exceeds 65535 (one metrics port per replica)")
        if self.max_batch_bytes < self.max_window_bytes:
            raise ValueError(f"max_batch_bytes ({self.max_batch_bytes}) must be at least max_window_bytes "
                             f"({self.max_window_bytes}): one batch must hold one window of the largest accepted size")
        return self

    @property
    def keys(self) -> Keys:
        """Key names for this prefix, group and shard count (a shadow pool's view with ``shadow_version``)."""
        keys = super().keys
        return keys.as_shadow() if self.shadow_version else keys

    @property
    def assigned_shards(self) -> list[int]:
        """The shards this worker consumes (``consume_shards``, or all of them)."""
        return parse_shards(self.consume_shards, self.shards)

    def consumer_name(self, replica: int) -> str:
        """Stable consumer name: host (or ``worker_name``) plus replica index."""
        role = "-shadow" if self.shadow_version else ""
        return f"{self.worker_name or socket.gethostname()}{role}-{replica}"


def default(name: str) -> Any:
    """The default of the worker setting ``name``: the parts' own defaults (``worker.publisher``,
    ``worker.gate``, ``worker.breaker``) are these, so each is written once, here."""
    return WorkerSettings.model_fields[name].default
