"""The publish stage of a shadow replica (``worker.shadow``): the same exactly-once script, no reply streams."""

from __future__ import annotations

from dataclasses import replace

from worker.config import WorkerSettings
from worker.publisher import Publisher
from worker.types import Output


class ShadowPublisher(Publisher):
    """The publish stage of a shadow replica: the same script, without reply streams."""

    def send(self, outputs: list[Output]) -> list[tuple[int, int]]:
        """As :meth:`Publisher.send`, with every output's reply stream dropped."""
        return super().send(_no_replies(outputs))

    def publish(self, outputs: list[Output]) -> int:
        """As :meth:`Publisher.publish`, with every output's reply stream dropped."""
        return super().publish(_no_replies(outputs))


def _no_replies(outputs: list[Output]) -> list[Output]:
    return [replace(o, reply=None) if o.reply else o for o in outputs]


def publisher_class(settings: WorkerSettings) -> type[Publisher]:
    """The publish stage's class for ``settings``: :class:`ShadowPublisher` for a shadow replica."""
    return ShadowPublisher if settings.shadow_version else Publisher
