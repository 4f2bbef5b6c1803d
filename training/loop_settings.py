"""Settings of the continuous loop (``bigru-train record`` and ``bigru-train watch``), declared once.

The connection and the streams' location are :class:`protocol.settings.StreamSettings`' (``BIGRU_REDIS_URL``,
``BIGRU_PREFIX``, ``BIGRU_GROUP``, ``BIGRU_SHARDS``); the retrain itself takes the trainer's own settings
(``BIGRU_TRAIN_*``, :class:`training.settings.TrainSettings`). docs/lifecycle.md#the-loop explains each rule.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from protocol.settings import StreamSettings


class LoopSettings(StreamSettings):
    """The recorder, the retrain rule and the promotion test (env prefix ``BIGRU_``)."""

    recorder_retain_s: float = Field(3600.0, gt=0, description="the recorder keeps a served window this long "
                                     "waiting for its label")
    recorder_max_windows: int = Field(500_000, ge=1, description="the recorder keeps at most this many served windows "
                                      "(the oldest go first)")
    recorder_max_mb: float = Field(256.0, gt=0, description="the recorder keeps at most this many MiB of window data "
                                   "(the oldest go first)")
    recorder_label_wait_s: float = Field(30.0, ge=0, description="a label whose window the recorder has not seen yet "
                                         "waits this long before it is refused as `unknown_cid`")
    recorder_flush_windows: int = Field(256, ge=1, description="labelled windows per dataset file the recorder writes")
    recorder_flush_s: float = Field(30.0, gt=0, description="the recorder writes a dataset file at least this often "
                                    "while it holds labelled windows")
    live_dir: str = Field("live", min_length=1, description="folder of the labelled live windows (`live-*.npz` and "
                          "their provenance `.json`)")
    watch_min_labels: int = Field(500, ge=0, description="retrain after this many new labelled windows (0 = never "
                                  "for labels)")
    watch_drift_psi: float = Field(0.25, gt=0, description="retrain when a replica's max feature PSI stays at or above "
                                   "this for `watch_drift_hold_s` (and enough labels arrived: `watch_drift_min_labels`)")
    watch_drift_hold_s: float = Field(300.0, ge=0, description="how long the drift level must hold before it retrains")
    watch_drift_min_labels: int = Field(100, ge=0, description="labelled windows since the last retrain that a "
                                        "drift-triggered retrain needs")
    watch_every_s: float = Field(0.0, ge=0, description="retrain on a schedule, every this many seconds (0 = off)")
    watch_min_gap_s: float = Field(60.0, ge=0, description="never start a retrain sooner than this after the last one")
    watch_live_weight: float = Field(0.8, ge=0, le=1, description="the labelled live windows' share of the retrain's "
                                     "windows (they are repeated up to it; the original data fill the rest)")
    watch_drift_live_weight: float = Field(1.0, ge=0, le=1, description="the live windows' share when drift called the "
                                           "retrain (1: live windows only, since the original data no longer describe "
                                           "the inputs)")
    watch_max_live: int = Field(20_000, ge=1, description="the newest labelled live windows a retrain uses at most")
    watch_out: str = Field("checkpoints/live", min_length=1, description="where `watch` writes its candidates' runs")
    watch_poll_s: float = Field(2.0, gt=0, description="how often `watch` checks its rule and the shadow evidence")
    shadow_replicas: int = Field(1, ge=0, description="shadow replicas `watch` starts for its candidate (`bigru-worker "
                                 "--shadow-version`); 0 = an operator runs them")
    promote_confidence: float = Field(0.95, gt=0.5, lt=1, description="McNemar's test must show the candidate better "
                                      "(or worse) at this confidence, over all its looks")
    promote_min_pairs: int = Field(200, ge=10, description="labelled windows scored by both models before the first look")
    promote_max_pairs: int = Field(3200, ge=10, description="labelled windows at the last look (looks at min, 2 min, "
                                   "4 min, ...)")
    promote_min_wait_s: float = Field(30.0, ge=0, description="no decision sooner than this after the candidate starts "
                                      "its shadow")
    promote_max_wait_s: float = Field(3600.0, gt=0, description="reject a candidate not shown better this long after "
                                      "its shadow started")

    @model_validator(mode="after")
    def _ordered(self) -> LoopSettings:
        if self.promote_max_pairs < self.promote_min_pairs:
            raise ValueError(f"promote_max_pairs ({self.promote_max_pairs}) must be at least promote_min_pairs "
                             f"({self.promote_min_pairs})")
        if self.promote_max_wait_s < self.promote_min_wait_s:
            raise ValueError(f"promote_max_wait_s ({self.promote_max_wait_s}) must be at least promote_min_wait_s "
                             f"({self.promote_min_wait_s})")
        return self
