"""The one ONNX exporter: parity (random and real windows, dynamic axes), the worker serving the same
bytes as ``bigru-train export``, serving cost with a baseline, and int8 quantization."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from training.export import main as export_main
from training.export import quantize, quantized_layers, serialized_size
from training.model.checkpoint import Checkpoint, load_checkpoint
from training.model.data import pad, synthetic
from training.model.onnx import ExportError, onnx_bytes, onnx_session, parity

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def graph(checkpoint_root: Path) -> bytes:
    torch.set_num_threads(1)
    return onnx_bytes(load_checkpoint(checkpoint_root))


def _windows(lengths: list[int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((t, 1)) * 2 + 0.3).astype(np.float32) for t in lengths]


@pytest.mark.slow
def test_onnx_matches_torch_on_random_and_real_windows(checkpoint_root: Path, graph: bytes) -> None:
    ckpt = load_checkpoint(checkpoint_root)
    real = ckpt.golden_windows() + synthetic(50, 33, seed=9).X  # a length the export never saw
    res = parity(ckpt, onnx_session(graph), real)
    assert res["real_windows"] == len(real) > 0
    assert res["random_max_abs_diff"] < 1e-4, res
    assert res["real_max_abs_diff"] < 1e-4, res


@pytest.mark.slow
def test_onnx_axes_are_dynamic_and_probs_sum_to_one(graph: bytes) -> None:
    sess = onnx_session(graph)
    shapes = {i.name: i.shape for i in sess.get_inputs()}
    assert isinstance(shapes["x"][0], str) and isinstance(shapes["x"][1], str) and shapes["x"][2] == 1
    assert [o.name for o in sess.get_outputs()] == ["logits", "probs"]
    for b, t in [(1, 1), (7, 200)]:
        logits, probs = sess.run(["logits", "probs"], {"x": np.random.default_rng(0).standard_normal((b, t, 1)).astype(np.float32)})
        assert logits.shape == (b, 2) and np.allclose(probs.sum(-1), 1.0, atol=1e-5)


def test_export_is_deterministic(checkpoint_root: Path, graph: bytes) -> None:
    assert onnx_bytes(load_checkpoint(checkpoint_root)) == graph


@pytest.mark.slow
def test_worker_serves_the_exported_bytes_and_matches_the_packed_torch_path(
        checkpoint_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from worker.onnx_backend import OnnxPredictor

    ckpt = load_checkpoint(checkpoint_root)
    assert export_main(["--checkpoint", str(checkpoint_root), "--onnx", "--out", str(tmp_path), "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    pred = OnnxPredictor(ckpt)
    assert (tmp_path / "model.onnx").read_bytes() == pred.graph  # parity was measured on what is served
    assert res["onnx"]["bytes"] == len(pred.graph) and res["onnx"]["random_max_abs_diff"] < 1e-4

    xs = _windows([5, 20, 13, 40, 1, 20, 13, 33], seed=3)
    x, lengths = pad([(w - ckpt.mean) / ckpt.std for w in xs])
    with torch.inference_mode():
        want = torch.softmax(ckpt.build_model()(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(lengths)), -1).numpy()
    got = pred.predict(xs)
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-4


class ConvGRU(nn.Module):
    """A model unlike SequenceClassifier: per-window normalisation, Conv1d + BatchNorm1d stem, masked pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv1d(1, 8, 5, padding=2), nn.BatchNorm1d(8), nn.ReLU())
        self.rnn = nn.GRU(8, 8, batch_first=True, bidirectional=True)
        self.head = nn.Linear(16 + 16 + 8, 2)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        x = x - x.mean(dim=1, keepdim=True)
        c = self.stem(x.transpose(1, 2)).transpose(1, 2)
        out, h = self.rnn(c)
        n = torch.full((b,), t, dtype=torch.int64) if lengths is None else lengths
        mask = (torch.arange(t)[None, :] < n[:, None]).unsqueeze(-1)
        mean = (out * mask).sum(dim=1) / n[:, None].to(out.dtype)
        peak = c.masked_fill(~mask, float("-inf")).max(dim=1).values
        return self.head(torch.cat([h[-2:].transpose(0, 1).reshape(b, -1), mean, peak], dim=-1))


def _with_model(ckpt: Checkpoint, model: nn.Module) -> Checkpoint:
    other = dataclasses.replace(ckpt, version="convgru")
    other.build_model = lambda device="cpu": model.eval()  # type: ignore[method-assign]
    return other


@pytest.mark.slow
def test_exporter_is_model_agnostic(checkpoint_root: Path) -> None:
    torch.manual_seed(0)
    model = ConvGRU().eval()
    model.stem[1].running_mean.normal_()
    model.stem[1].running_var.uniform_(0.5, 2.0)
    ckpt = _with_model(load_checkpoint(checkpoint_root), model)
    res = parity(ckpt, onnx_session(onnx_bytes(ckpt)), _windows([20, 20, 7, 64]))
    assert res["random_max_abs_diff"] < 1e-4 and res["real_max_abs_diff"] < 1e-4, res
    layers = quantized_layers(quantize(model))
    assert layers == {"int8": ["GRU", "Linear"], "fp32": ["BatchNorm1d", "Conv1d"]}


def test_export_failure_is_a_typed_error(checkpoint_root: Path) -> None:
    class Untraceable(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise NotImplementedError("no ONNX for this")

    with pytest.raises(ExportError, match="convgru failed: NotImplementedError: no ONNX") as e:
        onnx_bytes(_with_model(load_checkpoint(checkpoint_root), Untraceable()))
    assert isinstance(e.value.__cause__, NotImplementedError)


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


@pytest.mark.slow
def test_serving_cost_report_with_a_baseline(checkpoint_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = export_main(["--checkpoint", str(checkpoint_root), "--onnx", "--quantize", "--baseline-checkpoint",
                      str(checkpoint_root), "--length", "24", "--out", str(tmp_path), "--results", str(tmp_path / "r"), "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for m in (res, res["baseline"]):
        t = m["timing"]
        assert t["length"] == 24 and all(t[f"{k}_us_b{b}"] > 0 for k in ("onnx", "torch") for b in (1, 64))
        assert m["size"]["parameters"] > 0 and m["onnx"]["real_max_abs_diff"] < 1e-4
    assert res["ratio"]["size.checkpoint_bytes"] == res["ratio"]["onnx.bytes"] == 1.0  # the same checkpoint twice
    assert res["ratio"]["timing.onnx_us_b64"] > 0
    md = (tmp_path / "r" / "export.md").read_text()
    assert "ratio new/old" in md and "ONNX µs/window b64" in md and "old (baseline)" in md
    assert (tmp_path / "r" / "export.png").stat().st_size > 0


def test_bad_checkpoint_is_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert export_main(["--checkpoint", str(tmp_path / "none"), "--onnx"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
