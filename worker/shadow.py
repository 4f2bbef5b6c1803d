"""Shadow scoring: a candidate model version serves the live input streams without answering anyone.

A replica started with ``shadow_version`` (``bigru-worker --shadow-version V``) is an ordinary
worker loop on :meth:`protocol.keys.Keys.as_shadow` keys: it reads the same input streams through
its own consumer group (``<group>:shadow``), acknowledges only in that group, and publishes through
the same exactly-once script to ``{<tag>}:shadow:results`` (dead letters to ``{<tag>}:shadow:dead``),
capped by ``results_maxlen``. It never writes reply streams, never follows the registry's ``latest``
pointer, and producers' backpressure never sees its lag (they watch the primary group). Its crash
loses nothing of the primary: the groups share no pending entries. ``bigru-worker compare`` reads
both results streams; ``bigru-worker promote`` makes the candidate the registry's latest version and
ends the shadow group. The publish stage without reply streams is :mod:`worker.shadow_publisher`.
"""

from __future__ import annotations

import redis
import structlog

from protocol import registry
from protocol.shadow_group import create_group, end_shadow
from training.model.checkpoint_file import CheckpointError, parse
from worker.backends import ServingPredictor, make_predictor
from worker.config import WorkerSettings

__all__ = ["ShadowError", "create_group", "end_shadow", "shadow_predictor"]


class ShadowError(RuntimeError):
    """The shadow candidate cannot be served (not registered, unreadable)."""


def shadow_predictor(settings: WorkerSettings, r: redis.Redis) -> ServingPredictor:
    """The candidate ``settings.shadow_version``, fetched from the registry and warmed up; creates the
    shadow group (at the streams' end unless ``shadow_from_start``)."""
    version = settings.shadow_version
    assert version is not None
    keys = settings.keys
    try:
        ckpt = parse(registry.fetch(r, keys, version)[1])
    except (registry.RegistryError, CheckpointError) as e:
        raise ShadowError(f"shadow_version {version!r}: {e}") from e
    create_group(r, keys, "0" if settings.shadow_from_start else "$")
    pred = make_predictor(ckpt, settings.device, settings.backend, settings.torch_threads, settings.precision,
                          settings.reload_max_drop)
    structlog.get_logger("worker").info("shadow_candidate", version=pred.version, group=keys.group)
    return pred
