"""Training on long recordings: windows labelled by their middle sample, split by time blocks or devices
with a one-window gap, never by random window; the recording file formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.model.data import DataError
from training.model.recording import Recording, load_recording, save_recording_csv
from training.recordings import Cut, block_split, cut_windows, random_window_split
from training.run import RunOptions, load_run_data


def _recording(devices: int = 1, n: int = 400, seed: int = 0) -> Recording:
    rng = np.random.default_rng(seed)
    t = np.tile(np.arange(n) * 100_000, devices)
    dev = np.repeat([f"d{i}" for i in range(devices)], n).astype(object)
    y = np.tile((np.arange(n) // 50) % 3, devices)
    x = np.stack([np.arange(n * devices, dtype=np.float32), rng.normal(size=n * devices).astype(np.float32)], axis=1)
    return Recording(t, x, dev, y, ["a", "b", "c"], ["idx", "noise"], "rec")


def test_windows_take_the_label_of_their_middle_sample() -> None:
    rec = _recording()
    ds = cut_windows(rec, Cut(20, 5))
    assert len(ds) == (400 - 20) // 5 + 1 and rec.y is not None
    for x, y in zip(ds.X, ds.y):
        first = int(x[0, 0])
        assert y == rec.y[first + 10]


@pytest.mark.parametrize("devices", [1, 3])
def test_time_blocks_leave_a_window_between_train_val_and_test(devices: int) -> None:
    rec = _recording(devices)
    cut = Cut(20, 5)
    train, val, test = block_split(rec, cut, 0.2, 0.2)
    assert len(train) and len(val) and len(test)
    rows = {name: {int(v) for x in ds.X for v in x[:, 0]} for name, ds in (("train", train), ("val", val),
                                                                             ("test", test))}
    assert not rows["train"] & rows["test"] and not rows["train"] & rows["val"] and not rows["val"] & rows["test"]
    for dev in range(devices):  # the gap: a window's length between training rows and test rows of a device
        lo = dev * 400
        tr = max(r for r in rows["train"] if lo <= r < lo + 400)
        te = min(r for r in rows["test"] if lo <= r < lo + 400)
        va = min(r for r in rows["val"] if lo <= r < lo + 400)
        assert va - tr > cut.window and te - max(r for r in rows["val"] if lo <= r < lo + 400) > cut.window


def test_device_split_holds_out_whole_devices() -> None:
    rec = _recording(4)
    train, val, test = block_split(rec, Cut(20, 5), 0.2, 0.25, split="device", seed=3)
    dev_of = lambda ds: {int(x[0, 0]) // 400 for x in ds.X}  # noqa: E731
    assert len(dev_of(test)) == 1 and not dev_of(test) & (dev_of(train) | dev_of(val))
    with pytest.raises(DataError, match="two devices"):
        block_split(_recording(1), Cut(20, 5), 0.2, 0.2, split="device")


def test_random_window_split_leaks_neighbours_the_block_split_does_not() -> None:
    rec = _recording()
    train, test = random_window_split(rec, Cut(20, 5), 0.2, seed=1)
    shared = {int(v) for x in train.X for v in x[:, 0]} & {int(v) for x in test.X for v in x[:, 0]}
    assert shared  # overlapping windows on both sides


def test_recording_csv_roundtrip_and_trainer_loading(tmp_path: Path) -> None:
    rec = _recording(2, 300)
    path = tmp_path / "rec.csv"
    save_recording_csv(rec, path)
    back = load_recording(path)
    assert back.devices == ["d0", "d1"] and back.classes == ["a", "b", "c"] and back.channels == ["idx", "noise"]
    np.testing.assert_allclose(back.of_device("d1").x[:, 0], rec.x[300:, 0], rtol=1e-5)
    assert back.rate_hz() == pytest.approx(10.0)
    data = load_run_data(RunOptions(data=str(path), window=20, hop=10), seed=0)
    assert data.test is not None and len(data.train) > len(data.test) > 0
    assert data.train.lengths.tolist() == [20] * len(data.train)


def test_recording_errors_name_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("t,a,label\n0.0,1,x\n0.1,oops,x\n")
    with pytest.raises(DataError, match=r"bad.csv:3: column 'a'"):
        load_recording(bad)
    untimed = tmp_path / "untimed.csv"
    untimed.write_text("a,label\n1,x\n2,x\n")
    with pytest.raises(DataError, match="sampling rate"):
        load_recording(untimed)
    assert load_recording(untimed, rate_hz=50).t_us.tolist() == [0, 20_000]
