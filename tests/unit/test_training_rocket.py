"""The random-convolution branch: its layout, masking, closed-form ridge read-out, export, and the time budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.model.data import Dataset, fill_missing, stratified_split, synthetic
from training.model.rocket import KERNELS, RocketFeatures, layout
from training.ridge import fit_ridge
from training.run import default_model_config
from training.train import TrainConfig, fit, to_tensors


def test_layout_spends_the_feature_budget_over_dilations_up_to_the_length() -> None:
    dil, per = layout(10_000, 2000)
    assert dil[0] == 1 and dil == sorted(set(dil)) and dil[-1] <= (2000 - 1) // 8
    assert KERNELS * sum(per) == 84 * (10_000 // 84)
    assert layout(10_000, 20)[0] == [1, 2]  # short windows: few dilations, more biases each
    assert layout(10_000, 5)[0] == [1]


def test_features_are_the_same_alone_and_inside_a_padded_batch() -> None:
    rng = np.random.default_rng(0)
    windows = [rng.standard_normal((t, 2)).astype(np.float32) for t in (40, 23, 9)]
    f = RocketFeatures(2000, 40, 2)
    x = torch.zeros(3, 40, 2)
    for i, w in enumerate(windows):
        x[i, : len(w)] = torch.from_numpy(w)
    lengths = torch.tensor([40, 23, 9])
    f.fit(x, lengths, seed=1)
    batch = f(x, lengths)
    for i, w in enumerate(windows):
        alone = f(torch.from_numpy(w)[None])
        torch.testing.assert_close(batch[i : i + 1], alone)
    assert ((batch >= 0) & (batch <= 1 + 1e-6)).all() and batch.std() > 0.05  # proportions, and informative


def test_ridge_leave_one_out_matches_refitting_without_each_window() -> None:
    rng = np.random.default_rng(0)
    n, m, c = 40, 120, 3
    y = rng.integers(0, c, n)
    x = rng.standard_normal((n, m)) + 0.6 * np.eye(c)[y] @ rng.standard_normal((c, m))
    r = fit_ridge(x, y, c)
    mu, sd = x.mean(0), x.std(0)
    z = (x - mu) / sd
    t = -np.ones((n, c))
    t[np.arange(n), y] = 1
    right = 0
    for i in range(n):
        k = np.arange(n) != i
        zk, tk = z[k] - z[k].mean(0), t[k] - t[k].mean(0)
        w = np.linalg.solve(zk.T @ zk + r.alpha * np.eye(m), zk.T @ tk)
        right += int(((z[i] - z[k].mean(0)) @ w + t[k].mean(0)).argmax() == y[i])
    assert r.loo_accuracy == pytest.approx(right / n)
    assert r.loo_accuracy > 0.5 and r.temperature > 0
    # the folded read-out reproduces the standardized ridge's decisions on the training windows
    assert ((x @ r.coef + r.intercept).argmax(1) == y).mean() > 0.9


def test_missing_values_are_interpolated_in_time() -> None:
    w = np.array([[1.0], [np.nan], [3.0], [np.nan]], dtype=np.float32)
    np.testing.assert_allclose(fill_missing(w)[:, 0], [1, 2, 3, 3])
    ds = Dataset([w, np.ones((4, 1), np.float32)], np.array([0, 1]), ["a", "b"])
    x, _, _ = to_tensors(ds, np.zeros(1, np.float32), np.ones(1, np.float32))
    assert torch.isfinite(x).all() and float(x[0, 1, 0]) == 2.0


def _small_model_run(tcfg: TrainConfig) -> tuple[object, object]:
    ds = synthetic(200, 20, seed=0)
    tr, va = stratified_split(ds.y, 0.25, 0)
    cfg = default_model_config(1, 2, 20, {"hidden": 8, "channels": 8, "rocket": 840})
    return fit(ds.subset(tr), ds.subset(va), cfg, tcfg), ds


def test_a_model_with_the_branch_trains_exports_and_keeps_it_out_of_int8() -> None:
    pytest.importorskip("onnxruntime")
    from training.model.onnx import onnx_bytes, onnx_session, parity
    from training.model.quantize import onnx_int8_bytes

    res, ds = _small_model_run(TrainConfig(epochs=3, seed=0))
    ckpt = res.checkpoint  # type: ignore[attr-defined]
    assert ckpt.config.rocket == 840 and ckpt.metrics["rocket"]["loo_accuracy"] > 0.8
    model = ckpt.build_model()
    assert float(model.rocket.coef.abs().sum()) > 0  # the read-out was fitted and saved
    graph = onnx_bytes(ckpt)
    real = [np.asarray(w, np.float32) for w in ds.X[:16]]  # type: ignore[attr-defined]
    assert parity(ckpt, onnx_session(graph), real)["real_max_abs_diff"] < 1e-4
    import onnx

    q = onnx.load_from_string(onnx_int8_bytes(ckpt, graph))
    producers = {o: n for n in q.graph.node for o in n.output}
    rocket_convs = [n for n in q.graph.node if n.op_type == "Conv" and "/rocket/" in n.name]
    assert rocket_convs and all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear"
                                for n in rocket_convs for i in n.input)
    assert any(n.op_type == "DequantizeLinear" for n in q.graph.node)  # the trunk's convolutions are int8


def test_the_time_budget_cuts_the_epochs() -> None:
    res, _ = _small_model_run(TrainConfig(epochs=100_000, seed=0, time_budget=2.0))
    epochs = len(res.history)  # type: ignore[attr-defined]
    assert 1 <= epochs < 1000  # 100 000 epochs of 10 steps would take hours
    sps = res.checkpoint.metrics["seconds_per_step"]  # type: ignore[attr-defined]
    assert sps is None or sps > 0  # None: the machine was so slow that the overrun stop came before the probe
