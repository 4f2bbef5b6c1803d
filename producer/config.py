"""Producer configuration (env prefix ``BIGRU_``, declared in ``protocol.redisconn``; flags override)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from protocol.idempotent import MAX_WINDOW_S
from protocol.outage import DEFAULT_OUTAGE_S, OutageBudget
from protocol.settings import StreamSettings


class ProducerSettings(StreamSettings):
    """Settings of ``bigru-producer`` and the :class:`producer.Producer` API (the connection and the
    streams' location are :class:`protocol.settings.StreamSettings`')."""

    pipeline_size: int = Field(
        500, ge=1, description="most entries per pipelined round trip (`publish_many`, `bigru-producer publish`)"
    )
    max_lag: int = Field(
        0, ge=0, description="refuse (or block) while the consumer group's lag exceeds this many entries (0: no limit)"
    )
    backpressure: Literal["refuse", "block"] = Field(
        "refuse", description="over `max_lag`: `refuse` (an error naming the lag and the limit) or `block`"
    )
    backpressure_timeout_s: float = Field(
        30.0, gt=0, description="with `backpressure=block`: give up (the same error) after this long"
    )
    lag_check_interval_ms: float = Field(50.0, ge=0, description="re-read the group's lag at most this often")
    producer_id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="set: publish idempotently as this producer (a "
        "retried write of the same client id within `idempotency_window_s` returns the first entry id); unset: off"
    )
    producer_outage_s: float = Field(
        DEFAULT_OUTAGE_S, ge=0, description="ride out a Redis outage (restart, failover) this long, retrying each "
        "round trip with backoff; past it `RedisOutageError` (the CLI exits 4 with one line). 0: fail at once. "
        "Without `producer_id` a write retried after a lost reply may be duplicated"
    )
    idempotency_window_s: int = Field(
        60, ge=1, le=MAX_WINDOW_S, description="with `producer_id`: how long a client id is remembered (seconds; "
        "each costs Redis about 165 bytes for that long)"
    )

    def outage(self) -> OutageBudget:
        """A fresh outage budget of ``producer_outage_s`` naming ``redis_url`` (one per client)."""
        return OutageBudget(self.producer_outage_s, url=self.redis_url)
