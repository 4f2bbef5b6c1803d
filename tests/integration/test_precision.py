"""Reduced-precision serving: the int8 graph, BIGRU_PRECISION (fp32/int8/auto), reload and bench at a precision."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
import structlog
from structlog.testing import capture_logs

from bench import model as bench_model
from producer.client import Producer
from producer.results import ResultsReader
from protocol.keys import Keys
from tests.zoo import Zoo, zoo_fixture  # noqa: F401  (the session's tiny checkpoints)
from training.model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from training.model.checkpoint_file import load_served
from training.model.onnx import onnx_bytes, onnx_session
from training.model.quantize import QuantizeError, onnx_int8_bytes, quantized_ops
from training.publish import publish_checkpoint
from worker import backends, cli
from worker.backends import make_predictor
from worker.config import WorkerSettings
from worker.gate import GateRules, accuracy, evaluate
from worker.loop import WorkerLoop
from worker.onnx_backend import BackendError, OnnxPredictor, onnx_available
from worker.reload import ReloadingSource, initial_predictor

pytestmark = pytest.mark.skipif(not onnx_available(), reason="onnxruntime not installed")


def _labels(graph: bytes, xs: list[np.ndarray]) -> np.ndarray:
    out: np.ndarray = onnx_session(graph).run(["probs"], {"x": np.stack(xs)})[0]
    return out


def _without_golden(ckpt: Checkpoint) -> Checkpoint:
    return dataclasses.replace(ckpt, golden_x=None, golden_lengths=None, golden_y=None)


def _near_boundary(ckpt: Checkpoint, n: int = 20_000) -> Checkpoint:
    """``ckpt`` with a golden batch of windows near its decision boundary, labelled with its own fp32 predictions.

    fp32 scores 1.0 on it by construction; int8's small probability shifts flip some of these labels.
    """
    rng = np.random.default_rng(0)
    cand = (rng.standard_normal((n, 20, 1)) * 1.1 + rng.uniform(-0.5, 0.5, (n, 1, 1))).astype(np.float32)
    fp32 = onnx_bytes(ckpt)
    p = _labels(fp32, list(cand))
    near = cand[np.abs(p[:, 1] - 0.5) < 0.05][:256]
    y = _labels(fp32, list(near)).argmax(1)
    return dataclasses.replace(ckpt, golden_x=near, golden_lengths=np.full(len(near), near.shape[1]), golden_y=y)


def test_int8_graph_quantizes_the_convolutions_and_keeps_the_golden_labels(checkpoint_root: Path) -> None:
    ckpt = load_checkpoint(checkpoint_root)
    fp32, int8 = onnx_bytes(ckpt), onnx_int8_bytes(ckpt)
    assert int8 == onnx_int8_bytes(ckpt, fp32)  # deterministic, and the same with the caller's fp32 graph
    assert quantized_ops(fp32) == {}
    ops = quantized_ops(int8)
    # each of the 3 Convs: Q->DQ on its input and output (fused into QLinearConv by ORT), DQ of weight and bias
    assert ops == {"QuantizeLinear": 6, "DequantizeLinear": 12}, ops
    golden = ckpt.golden_batch()
    assert golden is not None
    xs, y = golden
    p32, p8 = _labels(fp32, xs), _labels(int8, xs)
    assert p8.shape == p32.shape and np.isfinite(p8).all()
    # What the int8 gate promises, not a float tolerance (how far probabilities move depends on the
    # machine's instruction set: 0.16 on one machine where the labels all agreed): labels agree, the
    # golden batch's accuracy drops by at most the default reload_max_drop, and int8 really differs.
    assert (p8.argmax(1) == p32.argmax(1)).mean() >= 0.99
    assert (p8.argmax(1) == y).mean() >= (p32.argmax(1) == y).mean() - WorkerSettings().reload_max_drop
    assert np.abs(p8 - p32).max() > 0


def test_auto_serves_int8_within_the_drop_and_the_gate_judges_the_served_graph(checkpoint_root: Path) -> None:
    ckpt = load_checkpoint(checkpoint_root)
    with capture_logs() as logs:
        pred = make_predictor(ckpt, "cpu", "onnx", precision="auto", max_drop=0.02)
    assert isinstance(pred, OnnxPredictor) and pred.precision == "int8"
    assert pred.graph == onnx_int8_bytes(ckpt)
    acc = pred.golden_accuracy
    assert acc["int8"] >= acc["fp32"] - 0.02
    assert [e["event"] for e in logs if e["event"].startswith("int8")] == ["int8_serving"]
    golden = ckpt.golden_batch()
    assert golden is not None
    served = pred.predict(golden[0])  # the session serving is the int8 graph's, not fp32's
    assert np.allclose(served, _labels(onnx_int8_bytes(ckpt), golden[0]), atol=1e-6)
    assert not np.allclose(served, _labels(onnx_bytes(ckpt), golden[0]), atol=1e-4)
    assert accuracy(pred, *golden) == acc["int8"]
    fp32 = make_predictor(ckpt, "cpu", "onnx")
    assert fp32.precision == "fp32" and accuracy(fp32, *golden) == acc["fp32"]
    assert evaluate(ckpt, pred, fp32, GateRules()).accuracy == acc["int8"]


def test_int8_window_is_the_same_alone_and_in_any_batch(checkpoint_root: Path) -> None:
    pred = make_predictor(load_checkpoint(checkpoint_root), "cpu", "onnx", precision="int8")
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((t, 1)).astype(np.float32) for t in (20, 5, 20, 13, 40, 1, 20)]
    batch = pred.predict(xs)
    alone = np.concatenate([pred.predict([x]) for x in xs])
    assert np.allclose(batch, alone, atol=1e-6)  # static ranges: no per-batch quantization scale


def test_auto_falls_back_to_fp32_when_int8_loses_golden_accuracy(checkpoint_root: Path) -> None:
    ckpt = _near_boundary(load_checkpoint(checkpoint_root))
    golden = ckpt.golden_batch()
    assert golden is not None and len(golden[0]) >= 50
    xs, _ = golden
    int8_acc = float((_labels(onnx_int8_bytes(ckpt), xs).argmax(1) == ckpt.golden_y).mean())
    assert int8_acc < 1.0 - 0.02  # the premise: int8 flips more than the allowed drop of these labels
    with capture_logs() as logs:
        pred = make_predictor(ckpt, "cpu", "onnx", precision="auto", max_drop=0.02)
    assert pred.precision == "fp32" and isinstance(pred, OnnxPredictor)
    assert pred.golden_accuracy == {"fp32": 1.0, "int8": int8_acc}
    assert pred.graph == onnx_bytes(ckpt)
    (warn,) = [e for e in logs if e["event"] == "int8_rejected_serving_fp32"]
    assert warn["fp32_accuracy"] == 1.0 and warn["int8_accuracy"] == int8_acc and warn["log_level"] == "warning"
    # a drop large enough to cover it serves int8; precision int8 forces it, with a warning
    assert make_predictor(ckpt, "cpu", "onnx", precision="auto", max_drop=1.0 - int8_acc + 1e-9).precision == "int8"
    with capture_logs() as logs:
        assert make_predictor(ckpt, "cpu", "onnx", precision="int8", max_drop=0.02).precision == "int8"
    assert "int8_forced_over_drop" in [e["event"] for e in logs]


def test_without_golden_batch_auto_serves_fp32_and_int8_refuses(checkpoint_root: Path) -> None:
    ckpt = _without_golden(load_checkpoint(checkpoint_root))
    pred = make_predictor(ckpt, "cpu", "onnx", precision="auto")
    assert pred.precision == "fp32" and isinstance(pred, OnnxPredictor) and pred.golden_accuracy == {}
    with pytest.raises(QuantizeError, match="no golden batch"):
        onnx_int8_bytes(ckpt)
    with pytest.raises(BackendError, match="golden batch"):
        make_predictor(ckpt, "cpu", "onnx", precision="int8")
    with pytest.raises(BackendError, match="golden batch"):
        make_predictor(ckpt, "cpu", "auto", precision="int8")  # no silent fallback to torch fp32


def test_torch_serves_fp32_and_refuses_int8(checkpoint_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = load_checkpoint(checkpoint_root)
    pred = make_predictor(ckpt, "cpu", "torch", precision="auto")
    assert pred.backend == "torch" and pred.precision == "fp32"
    with pytest.raises(BackendError, match="precision 'int8' is served by the onnx backend"):
        make_predictor(ckpt, "cpu", "torch", precision="int8")
    monkeypatch.setattr(backends, "onnx_available", lambda: False)
    assert make_predictor(ckpt, "cpu", "auto", precision="auto").precision == "fp32"
    with pytest.raises(BackendError, match="onnxruntime is not installed"):
        make_predictor(ckpt, "cpu", "auto", precision="int8")


def test_precision_setting_default_and_bad_value_named_at_start(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("BIGRU_PRECISION", raising=False)
    assert WorkerSettings().precision == "auto"
    monkeypatch.setenv("BIGRU_PRECISION", "int8")
    assert WorkerSettings().precision == "int8"
    monkeypatch.setenv("BIGRU_PRECISION", "int4")
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert "invalid configuration" in err and "precision:" in err and "int4" not in err  # values are not echoed


def test_reload_builds_the_candidate_at_the_configured_precision(r: redis.Redis, redis_url: str, prefix: str,
                                                                 zoo: Zoo) -> None:
    keys = Keys(prefix, prefix)
    entry, _ = publish_checkpoint(r, keys, Zoo.data(zoo.good[0]))
    served: dict[str, str] = {}
    for precision in ("auto", "fp32"):
        s = WorkerSettings(redis_url=redis_url, prefix=prefix, group=prefix, checkpoint=str(zoo.base), backend="onnx",
                           precision=precision, reload_interval_s=3600, reload_follow_dir=False,
                           reload_max_drop=0.1, burst=True, burst_idle_ms=200)
        src = ReloadingSource(redis.Redis.from_url(redis_url), s, "test-0", initial_predictor(s, r))
        try:
            assert src.current.precision == ("int8" if precision == "auto" else "fp32")  # type: ignore[attr-defined]
            assert src.check() == entry.version
            loop = WorkerLoop(redis.Redis.from_url(redis_url), s, "test-0", src, stop=threading.Event())
            Producer(r, keys).publish_many([np.zeros((20, 1), np.float32)] * 4)
            assert loop.run().results == 4
            served[precision] = src.current.precision  # type: ignore[attr-defined]
            assert src.current.version == entry.version
        finally:
            src.close()
    assert served == {"auto": "int8", "fp32": "fp32"}
    assert {res.model for res in ResultsReader(r, keys).collect(8)} == {entry.version}


@pytest.fixture
def keep_structlog() -> Iterator[None]:
    """Restore the structlog configuration that bench.model's main() replaces (it logs to the captured stderr)."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.mark.usefixtures("keep_structlog")
def test_bench_model_reports_int8_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with_golden = bench_model.build_checkpoint(tmp_path / "g", golden=64)
    args = ["--checkpoint", str(with_golden), "--backend", "onnx", "--batches", "1,8", "--min-s", "0.01"]
    assert bench_model.main([*args, "--precision", "int8"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(x["backend"], x["precision"], x["batch"]) for x in rows] == [("onnx", "int8", 1), ("onnx", "int8", 8)]
    assert bench_model.main(args) == 0
    assert {json.loads(line)["precision"] for line in capsys.readouterr().out.splitlines()} == {"fp32"}
    assert bench_model.main(["--checkpoint", str(bench_model.build_checkpoint(tmp_path / "n")), "--backend", "onnx",
                             "--precision", "int8"]) == 2
    assert "golden batch" in capsys.readouterr().err


def test_the_file_stores_the_int8_graph_and_a_replica_serves_it_without_quantizing(
    checkpoint_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = load_checkpoint(checkpoint_root)
    path = save_checkpoint(ckpt, tmp_path / "root")
    served = load_served(path)
    assert served.stored_int8() == onnx_int8_bytes(ckpt)  # built by the one quantizer, at save time
    assert ckpt.stored_int8() is None  # an in-memory checkpoint holds no file's graphs

    def refuse(*a: object, **k: object) -> bytes:
        raise AssertionError("a replica with a stored int8 graph must not quantize")

    monkeypatch.setattr("training.model.quantize.onnx_int8_bytes", refuse)
    pred = make_predictor(served, "cpu", "onnx", precision="auto", max_drop=0.02)
    assert isinstance(pred, OnnxPredictor) and pred.precision == "int8" and pred.graph == served.stored_int8()
    assert set(pred.golden_accuracy) == {"fp32", "int8"}  # the same gate judged it
    older = load_served(save_checkpoint(ckpt, tmp_path / "old", graph=False))
    assert older.stored_int8() is None and older.graph is None
