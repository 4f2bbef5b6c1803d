"""ONNX export parity (random and real windows, dynamic axes) and int8 quantization."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.checkpoint import load_checkpoint
from training.data import synthetic
from training.export import export_onnx, golden_windows, onnx_session, parity, quantize, serialized_size
from training.export import main as export_main

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def onnx_model(checkpoint_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return export_onnx(load_checkpoint(checkpoint_root), tmp_path_factory.mktemp("onnx") / "model.onnx")


@pytest.mark.slow
def test_onnx_matches_torch_on_random_and_real_windows(checkpoint_root: Path, onnx_model: Path) -> None:
    ckpt = load_checkpoint(checkpoint_root)
    real = golden_windows(ckpt) + synthetic(50, 33, seed=9).X  # a length the export never saw
    res = parity(ckpt, onnx_session(onnx_model), real)
    assert res["real_windows"] == len(real) > 0
    assert res["random_max_abs_diff"] < 1e-4, res
    assert res["real_max_abs_diff"] < 1e-4, res


@pytest.mark.slow
def test_onnx_axes_are_dynamic_and_probs_sum_to_one(checkpoint_root: Path, onnx_model: Path) -> None:
    sess = onnx_session(onnx_model)
    shapes = {i.name: i.shape for i in sess.get_inputs()}
    assert isinstance(shapes["x"][0], str) and isinstance(shapes["x"][1], str) and shapes["x"][2] == 1
    for b, t in [(1, 1), (7, 200)]:
        logits, probs = sess.run(["logits", "probs"], {"x": np.random.default_rng(0).standard_normal((b, t, 1)).astype(np.float32)})
        assert logits.shape == (b, 2) and np.allclose(probs.sum(-1), 1.0, atol=1e-5)


def test_int8_quantization_is_smaller_and_close(checkpoint_root: Path) -> None:
    ckpt = load_checkpoint(checkpoint_root)
    model = ckpt.build_model()
    q = quantize(model)
    assert ".quantized.dynamic." in type(q.rnn).__module__ and ".quantized.dynamic." in type(q.head[1]).__module__
    assert serialized_size(q) < serialized_size(model)
    x = torch.from_numpy(((np.stack(synthetic(200, 20, seed=4).X) - ckpt.mean) / ckpt.std).astype(np.float32))
    with torch.inference_mode():
        agree = (model(x).argmax(-1) == q(x).argmax(-1)).float().mean().item()
    assert agree > 0.95


def test_export_command_writes_report(checkpoint_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = export_main(["--checkpoint", str(checkpoint_root), "--quantize", "--out", str(tmp_path), "--results",
                      str(tmp_path / "results"), "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["quantize"]["int8_bytes"] < res["quantize"]["fp32_bytes"] and res["eval_windows"] > 0
    assert {p.name for p in (tmp_path / "results").iterdir()} >= {"export.md", "export.json", "export.png"}
