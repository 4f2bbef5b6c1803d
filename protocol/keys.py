"""Every Redis key name the system uses, in one place.

The input, results and dead-letter streams of one shard share a hash tag (``{...}``) so the
atomic publish script touches a single Redis Cluster slot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

#: A reply stream name (the ``reply`` field of an input entry) or a producer id: ASCII, 1 to 64 of ``[A-Za-z0-9_.:-]``.
REPLY_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


@dataclass(frozen=True)
class ShardKeys:
    """The three streams of one shard."""

    shard: int
    windows: str
    results: str
    dead: str

    @property
    def tag(self) -> str:
        """The shard's hash tag, e.g. ``{bigru}`` or ``{bigru:3}``."""
        return self.windows.rsplit(":", 1)[0]

    def reply(self, name: str) -> str:
        """Reply stream ``{<tag>}:reply:<name>`` of an input entry whose ``reply`` field is ``name``
        (same hash tag as the input, so the publish script stays in one Redis Cluster slot)."""
        if not REPLY_NAME.fullmatch(name):
            raise ValueError(f"bad reply name {name!r}: 1-64 characters of [A-Za-z0-9_.:-]")
        return f"{self.tag}:reply:{name}"

    def idmp(self, producer: str, iid: str) -> str:
        """Dedup key ``{<tag>}:idmp:<producer>:<iid>`` of an idempotent write (holds the first entry id;
        same hash tag as the input stream, so the idempotent-XADD script stays in one Redis Cluster slot)."""
        if not REPLY_NAME.fullmatch(producer):
            raise ValueError(f"bad producer id {producer!r}: 1-64 characters of [A-Za-z0-9_.:-]")
        if not iid:
            raise ValueError("empty idempotency id")
        return f"{self.tag}:idmp:{producer}:{iid}"


@dataclass(frozen=True)
class Keys:
    """Key names under ``prefix``; ``shards`` > 1 splits the logical stream into shard streams."""

    prefix: str = "bigru"
    group: str = "bigru"
    shards: int = 1
    shadow: bool = False  # a shadow pool's view (see :meth:`as_shadow`)

    def as_shadow(self) -> Keys:
        """The keys of a shadow pool scoring a candidate on the same input streams: consumer group
        ``<group>:shadow``, results ``{<tag>}:shadow:results``, dead letters ``{<tag>}:shadow:dead``,
        heartbeats under ``<prefix>:shadow:`` (registry keys unchanged)."""
        return self if self.shadow else replace(self, group=f"{self.group}:shadow", shadow=True)

    def as_primary(self) -> Keys:
        """The primary pool's keys (``self`` unless this is a shadow view)."""
        return replace(self, group=self.group.removesuffix(":shadow"), shadow=False) if self.shadow else self

    def tag(self, shard: int) -> str:
        """The hash tag of a shard's streams."""
        if not 0 <= shard < self.shards:
            raise ValueError(f"shard {shard} outside 0..{self.shards - 1}")
        return f"{{{self.prefix}}}" if self.shards == 1 else f"{{{self.prefix}:{shard}}}"

    def shard(self, shard: int) -> ShardKeys:
        """Keys of shard ``shard``."""
        t = self.tag(shard)
        if self.shadow:
            return ShardKeys(shard, f"{t}:windows", f"{t}:shadow:results", f"{t}:shadow:dead")
        return ShardKeys(shard, f"{t}:windows", f"{t}:results", f"{t}:dead")

    def all_shards(self) -> list[ShardKeys]:
        """Keys of every shard, in shard order."""
        return [self.shard(s) for s in range(self.shards)]

    @property
    def segments(self) -> str:
        """Stream of the segments ``bigru-producer segments --group`` writes (one entry per closed segment;
        shard 0's hash tag, so its transaction with shard 0's results stays in one Redis Cluster slot)."""
        return f"{self.tag(0)}:segments"

    def segmenter_state(self, group: str) -> str:
        """The segmenter state of the results reader group ``group`` (JSON, written with its acknowledgements)."""
        if not REPLY_NAME.fullmatch(group):
            raise ValueError(f"bad reader group {group!r}: 1-64 characters of [A-Za-z0-9_.:-]")
        return f"{self.tag(0)}:segmenter:{group}"

    def heartbeat(self, consumer: str) -> str:
        """Per-replica heartbeat key (expires when the replica stops refreshing it)."""
        return f"{self.prefix}:shadow:hb:{consumer}" if self.shadow else f"{self.prefix}:hb:{consumer}"

    @property
    def workers(self) -> str:
        """Hash of consumer name -> last heartbeat JSON, for status views."""
        return f"{self.prefix}:shadow:workers" if self.shadow else f"{self.prefix}:workers"

    @property
    def models(self) -> str:
        """Hash of model version -> registry entry JSON."""
        return f"{self.prefix}:models"

    def model_blob(self, version: str) -> str:
        """Checkpoint bytes of a registered model version."""
        return f"{self.prefix}:model:{version}"

    @property
    def model_latest(self) -> str:
        """Hash naming the version workers should serve: ``version``, ``seq`` (bumped on every move), ``action``."""
        return f"{self.prefix}:model:latest"

    @property
    def model_events(self) -> str:
        """Stream announcing published/promoted/refused model versions."""
        return f"{self.prefix}:model:events"

    @property
    def model_candidate(self) -> str:
        """Hash describing the continuous loop's candidate: ``version``, ``state`` (shadowing | promoted |
        rejected | vetoed), ``since``, ``override`` (a human's ``veto``/``force``), the last decision JSON."""
        return f"{self.prefix}:model:candidate"

    @property
    def labels(self) -> str:
        """Stream of true labels for served windows (``bigru-producer label``; docs/wire-format.md#labels)."""
        return f"{self.prefix}:labels"

    @property
    def labels_refused(self) -> str:
        """Stream of labels the recorder could not use, each with its reason (``unknown_cid``, ``late``, ...)."""
        return f"{self.prefix}:labels:refused"

    @property
    def recorder_group(self) -> str:
        """The recorder's own consumer group on the input streams (and on the labels stream)."""
        return f"{self.as_primary().group}:recorder"

    @property
    def recorder(self) -> str:
        """Hash of the recorder's counters (retained windows, bytes, labels joined/refused, files written)."""
        return f"{self.prefix}:recorder"

    @property
    def loop(self) -> str:
        """Hash of ``bigru-train watch``'s state (labels since the last retrain, drift held since, last run)."""
        return f"{self.prefix}:loop"

    def model_refusals(self, version: str) -> str:
        """Hash of consumer name -> JSON note of why that worker refused ``version``."""
        return f"{self.prefix}:model-refusals:{version}"
