"""Checkpoints: self-describing round trip, atomic writes, the ``latest`` pointer, refusal of bad files."""

from __future__ import annotations

import json
import os
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from training.model.checkpoint import (
    FILENAME,
    WIRE_VERSION,
    Checkpoint,
    CheckpointError,
    from_bytes,
    load_checkpoint,
    save_checkpoint,
    set_latest_version,
    to_bytes,
)
from training.model.network import ModelConfig, SequenceClassifier


def make_ckpt(seed: int = 0, golden: bool = True) -> Checkpoint:
    torch.manual_seed(seed)
    cfg = ModelConfig(input_dim=3, num_classes=3, cell="lstm", hidden=6, layers=1, pooling=("last", "max"))
    model = SequenceClassifier(cfg)
    rng = np.random.default_rng(seed)
    return Checkpoint(
        config=cfg,
        classes=["a", "b", "c"],
        mean=np.array([0.5, -1.0, 2.0], dtype=np.float32),
        std=np.array([1.0, 2.0, 0.5], dtype=np.float32),
        state_dict={k: v.clone() for k, v in model.state_dict().items()},
        metrics={"val_accuracy": 0.9, "test_accuracy": 0.85, "epochs": 3},
        data_fingerprint="ab" * 32,
        golden_x=rng.standard_normal((4, 7, 3)).astype(np.float32) if golden else None,
        golden_lengths=np.array([7, 3, 5, 1]) if golden else None,
        golden_y=np.array([0, 2, 1, 0]) if golden else None,
    )


def test_round_trip_keeps_everything_a_worker_needs() -> None:
    ckpt = make_ckpt()
    data = to_bytes(ckpt)
    back = from_bytes(data)
    assert back.config == ckpt.config and back.classes == ckpt.classes and back.input_dim == 3
    assert np.array_equal(back.mean, ckpt.mean) and np.array_equal(back.std, ckpt.std)
    assert back.version == ckpt.version and back.version.startswith("v") and back.created_at == ckpt.created_at
    assert back.metrics == ckpt.metrics and back.data_fingerprint == ckpt.data_fingerprint
    assert back.wire_version == WIRE_VERSION and back.sha256 == ckpt.sha256
    assert back.golden_x is not None and np.array_equal(back.golden_x, ckpt.golden_x)
    assert np.array_equal(back.golden_lengths, ckpt.golden_lengths) and np.array_equal(back.golden_y, ckpt.golden_y)
    assert all(torch.equal(back.state_dict[k], v) for k, v in ckpt.state_dict.items())
    x = torch.randn(2, 7, 3)
    with torch.inference_mode():
        assert torch.equal(back.build_model()(x), ckpt.build_model()(x))
    meta = back.describe()
    for key in ("config", "classes", "normalization", "input_dim", "wire_version", "metrics", "data_fingerprint",
                "version", "created_at", "format"):
        assert key in meta


def test_no_golden_batch_round_trips() -> None:
    back = from_bytes(to_bytes(make_ckpt(golden=False)))
    assert back.golden_x is None and back.golden_y is None


@pytest.mark.parametrize("damage", ["truncate", "flip_header", "empty", "not_bigru"])
def test_damaged_bytes_are_refused(damage: str) -> None:
    data = to_bytes(make_ckpt())
    if damage == "truncate":
        bad = data[: len(data) // 2]
    elif damage == "flip_header":
        bad = data[:8] + b"!" + data[9:]
    elif damage == "empty":
        bad = b""
    else:
        from safetensors.torch import save

        bad = save({"w": torch.zeros(2)}, metadata={"other": "x"})
    with pytest.raises(CheckpointError):
        from_bytes(bad)


def test_inconsistent_metadata_is_refused() -> None:
    ckpt = make_ckpt()
    ckpt.classes = ["a", "b"]
    with pytest.raises(CheckpointError, match="class names"):
        to_bytes(ckpt)
    ckpt = make_ckpt()
    ckpt.state_dict = {k: v for k, v in ckpt.state_dict.items() if not k.startswith("head")}
    with pytest.raises(CheckpointError, match="weights do not match"):
        from_bytes(to_bytes(ckpt))


def test_save_layout_and_latest_pointer(tmp_path: Path) -> None:
    first = make_ckpt(0)
    p1 = save_checkpoint(first, tmp_path)
    assert p1 == tmp_path / first.version / FILENAME
    assert (tmp_path / "latest").read_text().strip() == first.version
    second = make_ckpt(1)
    save_checkpoint(second, tmp_path, set_latest=False)
    assert load_checkpoint(tmp_path).version == first.version  # not promoted yet
    set_latest_version(tmp_path, second.version)
    assert load_checkpoint(tmp_path).version == second.version
    assert load_checkpoint(tmp_path / first.version).version == first.version
    assert load_checkpoint(p1).version == first.version
    with pytest.raises(CheckpointError, match="no checkpoint"):
        set_latest_version(tmp_path, "v-missing")
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nowhere")
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = make_ckpt()
    path = save_checkpoint(ckpt, tmp_path)
    before = path.read_bytes()

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    again = make_ckpt()
    again.version = ckpt.version  # overwrite the same file
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(again, tmp_path)
    assert path.read_bytes() == before
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_readers_never_see_a_partial_checkpoint(tmp_path: Path) -> None:
    """A reader following ``latest`` while versions are written and promoted only ever loads whole files."""
    save_checkpoint(make_ckpt(0), tmp_path)
    stop = threading.Event()
    errors: list[Exception] = []
    loads = [0]

    def reader() -> None:
        while not stop.is_set():
            try:
                load_checkpoint(tmp_path)
                loads[0] += 1
            except Exception as e:  # any failure is a partial read
                errors.append(e)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(1, 15):
            save_checkpoint(make_ckpt(i), tmp_path)
    finally:
        stop.set()
        t.join()
    assert not errors and loads[0] > 0


def test_round_trip_of_the_convolutional_stem_config_and_its_batchnorm_statistics() -> None:
    """The stem's stride, channels and the BatchNorm running statistics survive a save/load."""
    torch.manual_seed(3)
    cfg = ModelConfig(input_dim=2, num_classes=3, downsample=4, channels=8, conv_blocks=1, kernel=3, hidden=5)
    model = SequenceClassifier(cfg).train()
    model(torch.randn(6, 40, 2), torch.tensor([40, 33, 9, 40, 2, 17]))  # moves the running statistics
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert not torch.equal(state["convs.0.bn.running_mean"], torch.zeros(8))
    ckpt = Checkpoint(config=cfg, classes=["a", "b", "c"], mean=np.zeros(2, np.float32), std=np.ones(2, np.float32),
                      state_dict=state)
    back = from_bytes(to_bytes(ckpt))
    assert back.config == cfg and back.config.downsample == 4 and back.config.window_norm
    assert torch.equal(back.state_dict["convs.0.bn.running_var"], state["convs.0.bn.running_var"])
    x, lengths = torch.randn(3, 40, 2), torch.tensor([40, 5, 21])
    with torch.inference_mode():
        assert torch.equal(back.build_model()(x, lengths), model.eval()(x, lengths))


def test_checkpoint_of_an_older_release_loads_as_the_plain_recurrent_model() -> None:
    """A config without the stem's fields (written before it existed) still loads and serves."""
    torch.manual_seed(4)
    legacy = ModelConfig(input_dim=1, num_classes=2, layers=2, channels=0, downsample=0, conv_blocks=0, window_norm=False,
                         dilate=False, patch=False)
    ckpt = Checkpoint(config=legacy, classes=["0", "1"], mean=np.zeros(1, np.float32), std=np.ones(1, np.float32),
                      state_dict={k: v.clone() for k, v in SequenceClassifier(legacy).state_dict().items()})
    data = to_bytes(ckpt)
    meta = json.loads(json.loads(data[8 : 8 + struct.unpack("<Q", data[:8])[0]])["__metadata__"]["bigru"])
    old_keys = {"input_dim", "num_classes", "cell", "bidirectional", "hidden", "layers", "dropout", "pooling"}
    meta["config"] = {k: v for k, v in meta["config"].items() if k in old_keys}
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    old = st_save(st_load(data), metadata={"bigru": json.dumps(meta)})
    back = from_bytes(old)
    assert back.config == legacy and len(back.build_model().convs) == 0
