"""Training loop: Adam + ReduceLROnPlateau, early stopping, gradient clipping."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from training.checkpoint import Checkpoint
from training.data import Dataset, fingerprint, normalization, pad
from training.model import ModelConfig, SequenceClassifier


@dataclass
class TrainConfig:
    """Optimisation settings."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.0
    patience: int = 8
    clip: float = 1.0
    seed: int = 0
    device: str = "cpu"
    golden_size: int = 256


@dataclass
class TrainResult:
    """A trained checkpoint and its per-epoch history."""

    checkpoint: Checkpoint
    history: list[dict[str, float]] = field(default_factory=list)
    seconds_per_epoch: float = 0.0


def _tensors(ds: Dataset, mean: np.ndarray, std: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, lengths = pad([np.nan_to_num((w - mean) / std) for w in ds.X])
    return torch.from_numpy(x), torch.from_numpy(lengths), torch.from_numpy(np.asarray(ds.y, dtype=np.int64))


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, lengths: torch.Tensor, y: torch.Tensor, batch: int = 1024) -> tuple[float, float, np.ndarray]:
    """Mean loss, accuracy and predictions of ``model`` on a tensor dataset."""
    model.eval()
    dev = next(model.parameters()).device
    losses, preds = [], []
    for i in range(0, len(x), batch):
        logits = model(x[i : i + batch].to(dev), lengths[i : i + batch])
        losses.append(nn.functional.cross_entropy(logits, y[i : i + batch].to(dev), reduction="sum").item())
        preds.append(logits.argmax(-1).cpu())
    p = torch.cat(preds).numpy()
    return sum(losses) / len(x), float((p == y.numpy()).mean()), p


def fit(train: Dataset, val: Dataset, mcfg: ModelConfig, tcfg: TrainConfig, progress: bool = False) -> TrainResult:
    """Train a model on ``train``, early-stopping on ``val``; returns the best checkpoint."""
    torch.manual_seed(tcfg.seed)
    rng = np.random.default_rng(tcfg.seed)
    mean, std = normalization(train)
    xt, lt, yt = _tensors(train, mean, std)
    xv, lv, yv = _tensors(val, mean, std)
    model = SequenceClassifier(mcfg).to(tcfg.device)
    opt = torch.optim.Adam(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=max(1, tcfg.patience // 3))
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    history: list[dict[str, float]] = []
    bad_epochs = 0
    t0 = time.perf_counter()
    for epoch in range(tcfg.epochs):
        model.train()
        perm = rng.permutation(len(xt))
        total = 0.0
        for i in range(0, len(perm), tcfg.batch_size):
            idx = torch.from_numpy(perm[i : i + tcfg.batch_size])
            logits = model(xt[idx].to(tcfg.device), lt[idx])
            loss = nn.functional.cross_entropy(logits, yt[idx].to(tcfg.device))
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), tcfg.clip)
            opt.step()
            total += loss.item() * len(idx)
        vloss, vacc, _ = evaluate(model, xv, lv, yv)
        sched.step(vloss)
        history.append({"epoch": epoch + 1, "train_loss": total / len(xt), "val_loss": vloss, "val_accuracy": vacc})
        if progress:
            print(f"epoch {epoch + 1}: train_loss={total / len(xt):.4f} val_loss={vloss:.4f} val_acc={vacc:.4f}")
        if best is None or vloss < best[0]:
            best = (vloss, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
            bad_epochs = 0
        else:
            bad_epochs += 1
            if bad_epochs >= tcfg.patience:
                break
    spe = (time.perf_counter() - t0) / max(1, len(history))
    assert best is not None
    model.load_state_dict(best[1])
    _, vacc, _ = evaluate(model, xv, lv, yv)
    gidx = rng.permutation(len(val))[: tcfg.golden_size]
    gx, gl = pad([val.X[i] for i in gidx])
    metrics: dict[str, Any] = {"val_accuracy": vacc, "epochs": len(history), "seconds_per_epoch": spe}
    ckpt = Checkpoint(
        config=mcfg,
        classes=list(train.classes),
        mean=mean,
        std=std,
        state_dict=best[1],
        metrics=metrics,
        data_fingerprint=fingerprint(train),
        golden_x=gx,
        golden_lengths=gl,
        golden_y=np.asarray(val.y)[gidx],
    )
    return TrainResult(ckpt, history, spe)
