"""The windower's model (docs/streams.md): hop-aligned windows, gaps, late samples, quiet keys, replays."""

from __future__ import annotations

import numpy as np
import pytest

from producer.streaming import span_of, window_values
from producer.windower import StreamWindow, Windower, WindowerError, WindowSpec, expected_windows

MS = 1000


def _push_all(w: Windower, key: str, idx: np.ndarray, chunk: int = 1) -> list[StreamWindow]:
    out: list[StreamWindow] = []
    for lo in range(0, len(idx), chunk):
        part = idx[lo: lo + chunk]
        out += w.push(key, part * MS, np.stack([part, -part], axis=1).astype(np.float32))
    return out


@pytest.mark.parametrize("chunk", [1, 3, 7, 100])
def test_windows_every_hop_with_values_times_and_ids_whatever_the_push_size(chunk: int) -> None:
    w = Windower(WindowSpec(8, 4, MS))
    out = _push_all(w, "dev", np.arange(30), chunk)
    assert [o.start for o in out] == [0, 4, 8, 12, 16, 20]
    assert [o.seq for o in out] == [0, 1, 2, 3, 4, 5]
    for o in out:
        np.testing.assert_array_equal(o.x[:, 0], np.arange(o.start, o.start + 8))
        np.testing.assert_array_equal(o.x[:, 1], -np.arange(o.start, o.start + 8))
        assert (o.t0_us, o.t1_us) == (o.start * MS, (o.start + 7) * MS)
        assert o.cid == f"dev:{o.start}" and o.missing == 0
    assert w.counts.windows == 6 and w.counts.samples == 30


def test_windows_start_at_absolute_multiples_of_hop() -> None:
    w = Windower(WindowSpec(8, 4, MS))
    out = _push_all(w, "d", np.arange(5, 30), chunk=4)  # the first sample seen is index 5
    assert [o.start for o in out] == [8, 12, 16, 20]
    assert expected_windows(np.arange(5, 30), w.spec) == 4


def test_short_gap_is_padded_and_filled_long_gap_restarts() -> None:
    spec = WindowSpec(8, 4, MS, max_gap=2)
    w = Windower(spec)
    idx = np.r_[np.arange(0, 10), np.arange(12, 30), np.arange(40, 60)]  # gap of 2 (padded), then 9 (restart)
    out = _push_all(w, "d", idx, chunk=5)
    assert w.counts.padded == 2 and w.counts.restarts == 1
    padded = [o for o in out if o.missing]
    assert [o.start for o in padded] == [4, 8]
    # filled as training fills: linear inside the window, carried at its end (10 and 11 are the padding)
    np.testing.assert_allclose(window_values(padded[0])[:, 0], [4, 5, 6, 7, 8, 9, 9, 9])
    np.testing.assert_allclose(window_values(padded[1])[:, 0], np.arange(8, 16))
    starts = [o.start for o in out]
    assert 24 not in starts and 28 not in starts and 32 not in starts  # no window spans the long gap
    assert starts[-4:] == [40, 44, 48, 52]
    assert len(out) == expected_windows(idx, spec)


def test_late_and_duplicate_samples_are_dropped_and_counted() -> None:
    w = Windower(WindowSpec(4, 2, MS))
    idx = np.array([0, 1, 2, 2, 1, 3, 4, 0, 5])
    out = _push_all(w, "d", idx)
    assert w.counts.duplicate == 1 and w.counts.late == 2
    assert [o.start for o in out] == [0, 2]
    np.testing.assert_array_equal(out[1].x[:, 0], [2, 3, 4, 5])


def test_jittered_timestamps_land_on_the_grid() -> None:
    w = Windower(WindowSpec(4, 4, 10 * MS))
    rng = np.random.default_rng(0)
    t = np.arange(20) * 10 * MS + rng.integers(-4000, 4000, 20)
    out = w.push("d", t, np.ones(20))
    assert [o.start for o in out] == [0, 4, 8, 12, 16] and w.counts.late == w.counts.duplicate == 0


def test_quiet_key_partial_window_is_dropped_not_padded() -> None:
    w = Windower(WindowSpec(8, 4, MS, idle_s=0.05))
    assert len(_push_all(w, "quiet", np.arange(10))) == 1  # window 0..7, then 8 and 9 are a partial
    _push_all(w, "busy", np.arange(10, 200))
    assert w.expire() == ["quiet"]
    assert w.counts.partial_dropped == 2 and "quiet" not in w.keys
    assert _push_all(w, "quiet", np.arange(200, 205)) == []  # back after the silence: a fresh start, no fake window


def test_restarted_gateway_cuts_the_same_windows_again() -> None:
    spec = WindowSpec(8, 4, MS)
    first = Windower(spec)
    before = _push_all(first, "d", np.arange(0, 50), chunk=6)
    replay = Windower(spec)  # the gateway restarts and replays from sample 31 on
    after = _push_all(replay, "d", np.arange(31, 70), chunk=6)
    old = {o.cid: o for o in before}
    again = [o for o in after if o.cid in old]
    assert [o.cid for o in again] == ["d:32", "d:36", "d:40"]
    for o in again:
        np.testing.assert_array_equal(o.x, old[o.cid].x)
        assert span_of(o) == span_of(old[o.cid])
    assert len({o.cid for o in before} | {o.cid for o in after}) == expected_windows(np.arange(70), spec)


def test_keys_are_independent_and_bad_input_is_named() -> None:
    w = Windower(WindowSpec(4, 2, MS))
    w.push("a", np.arange(3) * MS, np.zeros((3, 2)))
    assert w.push("b", np.arange(4) * MS, np.zeros((4, 2)))[0].key == "b"
    with pytest.raises(WindowerError, match="3 channels"):
        w.push("a", 3 * MS, np.zeros(3))
    with pytest.raises(WindowerError, match="hop"):
        WindowSpec(4, 5, MS)
    with pytest.raises(WindowerError, match="max_gap"):
        WindowSpec(4, 2, MS, max_gap=4)
