"""The classifier: config validation, readout of both directions, packing invariance, determinism."""

from __future__ import annotations

import pytest
import torch

from training.model.data import stratified_split, synthetic
from training.model.network import ModelConfig, SequenceClassifier
from training.train import TrainConfig, auto_batch, fit

STEMS = [{"channels": 0, "downsample": 0, "conv_blocks": 0, "window_norm": False},  # the plain recurrent model
         {"channels": 8, "downsample": 1, "conv_blocks": 1},
         {"channels": 8, "downsample": 4, "conv_blocks": 2, "kernel": 3},
         {"channels": 8, "downsample": 2, "conv_blocks": 2, "kernel": 3, "dilate": True, "members": 2}]  # ensemble


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("pooling", [("last",), ("mean",), ("max",), ("last", "mean", "max")])
@pytest.mark.parametrize("stem", range(len(STEMS)))
def test_logits_alone_equal_logits_in_padded_batch(cell: str, bidirectional: bool, pooling: tuple[str, ...], stem: int) -> None:
    torch.manual_seed(0)
    model = SequenceClassifier(ModelConfig(input_dim=3, num_classes=4, cell=cell, bidirectional=bidirectional,
                                           hidden=8, layers=2, pooling=pooling, **STEMS[stem])).eval()
    lengths = [5, 12, 1, 9]
    windows = [torch.randn(n, 3) for n in lengths]
    batch = torch.zeros(len(windows), max(lengths), 3)
    for i, w in enumerate(windows):
        batch[i, : len(w)] = w
    batch_pad_garbage = batch.clone()
    for i, n in enumerate(lengths):
        batch_pad_garbage[i, n:] = 1e3  # whatever the padding holds must not matter
    with torch.inference_mode():
        in_batch = model(batch, torch.tensor(lengths))
        in_garbage = model(batch_pad_garbage, torch.tensor(lengths))
        alone = torch.cat([model(w[None], torch.tensor([len(w)])) for w in windows])
        alone_no_lengths = torch.cat([model(w[None]) for w in windows])
    assert torch.allclose(in_batch, alone, atol=1e-5), (in_batch - alone).abs().max()
    assert torch.allclose(in_garbage, alone, atol=1e-5)
    assert torch.allclose(alone_no_lengths, alone, atol=1e-6)


def test_last_readout_is_each_directions_final_state() -> None:
    torch.manual_seed(0)
    model = SequenceClassifier(ModelConfig(hidden=4, layers=1, pooling=("last",), dropout=0.0, **STEMS[0])).eval()
    x = torch.randn(2, 6, 1)
    out, _ = model.rnn(x)
    # forward direction: output at the last step; backward direction: output at the first step.
    expected = torch.cat([out[:, -1, :4], out[:, 0, 4:]], dim=-1)
    with torch.inference_mode():
        got = model(x)
        manual = model.head(expected)
    assert torch.allclose(got, manual, atol=1e-6)


def test_config_validation_and_round_trip() -> None:
    cfg = ModelConfig(input_dim=6, num_classes=4, cell="lstm", bidirectional=False, pooling=("mean", "max"), downsample=8)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    for bad in ({"cell": "rnn"}, {"pooling": ("sum",)}, {"pooling": ()}, {"num_classes": 1}, {"hidden": 0},
                {"downsample": 3}, {"kernel": 4}, {"channels": 0}, {"downsample": 0}, {"channels": -1}):
        with pytest.raises(ValueError):
            ModelConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ModelConfig.from_dict({**cfg.to_dict(), "unknown": 1})


def test_training_is_deterministic_on_cpu() -> None:
    torch.set_num_threads(1)
    ds = synthetic(300, 10, seed=5)
    tr, va = stratified_split(ds.y, 0.2, 5)
    runs = [fit(ds.subset(tr), ds.subset(va), ModelConfig(hidden=8, layers=1), TrainConfig(epochs=2, seed=5, jitter=0.05))
            for _ in range(2)]
    a, b = (r.checkpoint.state_dict for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["train_loss"] for h in runs[0].history] == [h["train_loss"] for h in runs[1].history]


def test_plateau_schedule_and_early_stopping() -> None:
    torch.set_num_threads(1)
    ds = synthetic(200, 8, seed=2)
    tr, va = stratified_split(ds.y, 0.3, 2)
    res = fit(ds.subset(tr), ds.subset(va), ModelConfig(hidden=4, layers=1),
              TrainConfig(epochs=50, patience=2, schedule="plateau", lr=0.5, seed=2))
    assert len(res.history) < 50  # a huge learning rate stops improving quickly
    assert len(res.history) - res.best_epoch == 2


def test_auto_batch() -> None:
    assert auto_batch(40) == 16 and auto_batch(390) == 39 and auto_batch(1600) == 64 and auto_batch(100_000) == 64
    assert auto_batch(10) == 10


def test_config_of_an_older_checkpoint_is_the_plain_recurrent_model() -> None:
    old = {"input_dim": 1, "num_classes": 2, "cell": "gru", "bidirectional": True, "hidden": 64, "layers": 2,
           "dropout": 0.1, "pooling": ["last", "mean"]}  # what checkpoints held before the convolutional stem
    cfg = ModelConfig.from_dict(old)
    assert (cfg.channels, cfg.downsample, cfg.conv_blocks, cfg.window_norm) == (0, 0, 0, False)
    model = SequenceClassifier(cfg)
    assert len(model.convs) == 0 and model.rnn.input_size == 1 and model.rnn.num_layers == 2


@pytest.mark.parametrize(("downsample", "steps"), [(1, 37), (2, 19), (8, 5)])
def test_stem_shortens_the_sequence_the_rnn_sees(downsample: int, steps: int) -> None:
    model = SequenceClassifier(ModelConfig(downsample=downsample, channels=4, conv_blocks=1, hidden=4)).eval()
    seen: list[int] = []
    model.rnn.register_forward_hook(lambda _m, args, _o: seen.append(args[0].shape[1]))
    with torch.inference_mode():
        out = model(torch.randn(3, 37, 1))
    assert out.shape == (3, 2) and seen == [steps]


def test_window_norm_makes_the_window_branch_invariant_to_gain_and_offset() -> None:
    """With window_norm the second half of the inputs is the window's own z-score, whatever its level."""
    model = SequenceClassifier(ModelConfig(input_dim=2, hidden=4, channels=4)).eval()
    x = torch.randn(3, 30, 2)
    a = model._inputs(x, None)
    b = model._inputs(x * 5.0 + 3.0, None)
    assert a.shape == (3, 30, 4)
    assert torch.allclose(a[..., 2:], b[..., 2:], atol=1e-3) and not torch.allclose(a[..., :2], b[..., :2])
    lengths = torch.tensor([30, 10, 1])
    c = model._inputs(x, lengths)
    assert torch.allclose(c[1, :10, 2:], model._inputs(x[1:2, :10], None)[0, :, 2:], atol=1e-5)
    assert (c[1, 10:] == 0).all() and torch.isfinite(c).all()


def test_masked_batchnorm_statistics_ignore_padding() -> None:
    """In training, padding must not shift the batch statistics (so short windows train like long ones)."""
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=4, channels=4, conv_blocks=0, dropout=0.0)
    a, b = SequenceClassifier(cfg), SequenceClassifier(cfg)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 10, 1)
    padded = torch.cat([x, torch.full((2, 15, 1), 7.0)], dim=1)
    a.train()(x)
    b.train()(padded, torch.tensor([10, 10]))
    bn_a, bn_b = a.convs[0].bn, b.convs[0].bn
    assert torch.allclose(bn_a.running_mean, bn_b.running_mean, atol=1e-6)
    assert torch.allclose(bn_a.running_var, bn_b.running_var, atol=1e-5)


def test_auto_patience_stops_early_only_with_a_large_validation_set() -> None:
    from training.train import AUTO_PATIENCE, AUTO_PATIENCE_MIN_VAL, auto_patience

    assert auto_patience(-1, AUTO_PATIENCE_MIN_VAL) == AUTO_PATIENCE
    assert auto_patience(-1, AUTO_PATIENCE_MIN_VAL - 1) == 0  # an archive's 10 validation windows: full budget
    assert auto_patience(3, 10) == 3 and auto_patience(0, 10_000) == 0
    with pytest.raises(ValueError):
        TrainConfig(patience=-2)


def test_step_budget_sets_the_epoch_count() -> None:
    torch.set_num_threads(1)
    ds = synthetic(120, 6, seed=1)
    tr, va = stratified_split(ds.y, 0.25, 1)
    res = fit(ds.subset(tr), ds.subset(va), ModelConfig(hidden=4, channels=4),
              TrainConfig(steps=30, batch_size=16, seed=1, patience=0))
    assert len(res.history) == 5 == res.best_epoch  # 90 windows = 6 steps an epoch -> 5 epochs, last kept


def test_ensemble_forward_is_the_log_of_the_members_mean_probabilities() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=4, channels=4, conv_blocks=1, members=3, num_classes=3)
    model = SequenceClassifier(cfg).eval()
    x = torch.randn(5, 17, 1)
    with torch.inference_mode():
        members = model.member_logits(x)
        got = model(x)
    assert len(members) == 3 and not torch.allclose(members[0], members[1])  # independently initialised
    expected = torch.log(torch.stack([torch.softmax(z, -1) for z in members]).mean(0))
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.allclose(torch.softmax(got, -1).sum(-1), torch.ones(5), atol=1e-5)
    single = SequenceClassifier(ModelConfig(hidden=4, channels=4, conv_blocks=1))
    assert not any(k.startswith("others.") for k in single.state_dict())  # one network keeps its weight names
    assert sum(k.startswith("others.1.") for k in model.state_dict()) == sum(1 for _ in single.state_dict())


def test_dilated_blocks_widen_the_view() -> None:
    model = SequenceClassifier(ModelConfig(channels=4, conv_blocks=3, dilate=True, hidden=4))
    assert [layer.conv.dilation[0] for layer in model.convs] == [1, 2, 4, 8]
    plain = SequenceClassifier(ModelConfig(channels=4, hidden=4, dilate=False))
    assert [layer.conv.dilation[0] for layer in plain.convs] == [1, 1, 1]


def test_weight_average_is_what_the_checkpoint_keeps() -> None:
    """With a decay close to 1 the average stays at the first step's weights (Adam: one lr from the initial
    ones), while the trained weights move on."""
    torch.set_num_threads(1)
    ds = synthetic(64, 6, seed=2)
    tr, va = stratified_split(ds.y, 0.25, 2)
    cfg = ModelConfig(hidden=4, channels=4, conv_blocks=1)
    torch.manual_seed(3)
    init = SequenceClassifier(cfg).state_dict()
    kept = fit(ds.subset(tr), ds.subset(va), cfg, TrainConfig(steps=20, seed=3, patience=0, lr=0.05, ema=0.999999)).checkpoint
    raw = fit(ds.subset(tr), ds.subset(va), cfg, TrainConfig(steps=20, seed=3, patience=0, lr=0.05)).checkpoint
    w = "head.1.weight"
    assert float((kept.state_dict[w] - init[w]).abs().max()) <= 0.05 * 1.01
    assert float((raw.state_dict[w] - init[w]).abs().max()) > 0.1
    with pytest.raises(ValueError, match="ema"):
        TrainConfig(ema=1.0)


def test_one_cycle_schedule_peaks_at_lr_and_anneals() -> None:
    torch.set_num_threads(1)
    ds = synthetic(64, 6, seed=2)
    tr, va = stratified_split(ds.y, 0.25, 2)
    res = fit(ds.subset(tr), ds.subset(va), ModelConfig(hidden=4, channels=4, conv_blocks=0),
              TrainConfig(steps=40, batch_size=16, seed=1, patience=0, schedule="onecycle", lr=0.01, warmup=0.25))
    lrs = [h["lr"] for h in res.history]
    assert max(lrs) == pytest.approx(0.01, rel=0.05) and lrs[-1] < 1e-4 and lrs[0] < 0.005
    # a fixed-budget run validates only now and then (the last epoch always)
    assert "val_loss" in res.history[-1] and sum("val_loss" in h for h in res.history) <= len(res.history)
