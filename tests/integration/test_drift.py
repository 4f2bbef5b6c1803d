"""Drift monitoring with a real worker loop on a real Redis: stable on training data, one shifted
feature detected within a stated number of windows, unknown for checkpoints without statistics."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from prometheus_client import generate_latest

from bench.lifecycle_task import N_FEATURES, WARM, Recorder, serve, train, windows
from producer.client import Producer
from protocol.keys import Keys
from tests.helpers import make_loop
from training.model.checkpoint import load_checkpoint
from training.model.checkpoint_file import load_served
from worker.drift import PSI_ACT, PSI_WATCH
from worker.reader import ensure_groups
from worker.status import render, snapshot

#: The stated detection bound: a 1-sigma shift in one feature crosses PSI 0.25 within this many windows.
DETECT_WITHIN = 5000


@pytest.fixture(scope="module")
def drift_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(tmp_path_factory.mktemp("drift"), seed=3)


def test_training_distribution_stays_stable_and_a_shifted_feature_is_detected(
        redis_url: str, prefix: str, drift_ckpt: Path) -> None:
    ckpt = load_checkpoint(drift_ckpt)
    assert ckpt.drift is not None and ckpt.drift.n_features == N_FEATURES
    rec = Recorder()
    base, _ = windows(WARM, seed=100)
    serve(redis_url, prefix, drift_ckpt, base, rec)
    stable = [rep for _, rep in rec.readings if rep.feature_psi]
    assert stable, "no full drift reading on the training distribution"
    last = stable[-1]
    assert max(last.feature_psi) < PSI_WATCH, last
    assert last.prediction_psi is not None and last.prediction_psi < PSI_WATCH, last
    assert last.top_prob_mean is not None and abs(last.top_prob_mean - ckpt.drift.top_prob_mean) < 0.1

    shifted, _ = windows(DETECT_WITHIN, seed=101)
    sigma = float(ckpt.std[1])
    for x in shifted:
        x[:, 1] += sigma
    start = rec.served_windows
    serve(redis_url, f"{prefix}b", drift_ckpt, shifted, rec)
    after = [(w - start, rep) for w, rep in rec.readings if w > start and rep.feature_psi]
    hits = [w for w, rep in after if rep.feature_psi[1] > PSI_ACT]
    assert hits, f"feature 1 never crossed {PSI_ACT}: {[round(rep.feature_psi[1], 3) for _, rep in after]}"
    assert hits[0] <= DETECT_WITHIN
    print(f"feature 1 shifted by 1 sigma: PSI > {PSI_ACT} after {hits[0]} windows")
    final = after[-1][1]
    assert final.feature_psi[1] > PSI_ACT and final.feature_psi[0] < PSI_WATCH and final.feature_psi[2] < PSI_WATCH, final
    text = generate_latest(rec.registry).decode()
    assert 'bigru_drift_feature_psi{feature="1",worker="drift-0"}' in text and "bigru_drift_known" in text


def test_status_shows_drift_from_the_heartbeat(redis_url: str, prefix: str, drift_ckpt: Path) -> None:
    r = redis.Redis.from_url(redis_url)
    xs, _ = windows(2048, seed=7)
    for x in xs:
        x[:, 2] += 3.0
    Producer(r, Keys(prefix, prefix)).publish_many(xs, per_entry=16)
    loop = make_loop(redis_url, prefix, drift_ckpt, consumer="st-0", drift_sample_every=2, drift_window=256)
    ensure_groups(r, Keys(prefix, prefix))
    while loop.step():
        pass
    loop.heartbeat(force=True)
    doc = snapshot(r, Keys(prefix, prefix))
    (c,) = [c for c in doc["consumers"] if c["name"] == "st-0"]
    assert c["drift"]["known"] and c["drift"]["max_feature"] == 2 and c["drift"]["max_psi"] > PSI_ACT
    text = render(doc)
    assert "act" in text and "features over 0.25: 2" in text


def test_checkpoint_without_statistics_serves_with_drift_unknown(redis_url: str, prefix: str,
                                                                 tmp_path: Path) -> None:
    root = train(tmp_path / "old", seed=4, n=200, drift=False)
    assert load_served(root).drift is None and load_checkpoint(root).drift is None
    r = redis.Redis.from_url(redis_url)
    xs, _ = windows(200, seed=8)
    Producer(r, Keys(prefix, prefix)).publish_many(xs, per_entry=50)  # big batches: fewer than one sample chunk
    loop = make_loop(redis_url, prefix, root, consumer="old-0")
    rec = Recorder()
    loop.observer = rec
    stats = loop.run()
    assert stats.results == 200  # it serves
    assert rec.readings and not rec.readings[-1][1].known
    assert "bigru_drift_known{worker=\"drift-0\"} 0.0" in generate_latest(rec.registry).decode()
    loop.heartbeat(force=True)
    doc = snapshot(r, Keys(prefix, prefix))
    assert "unknown" in render(doc)
