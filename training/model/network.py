"""The sequence classifier module (its config dataclass lives in :mod:`training.model.config`, torch-free).

The network, for windows ``x`` [B, T, F] with per-window lengths::

    inputs  = [x, per-window z-normalised x]          (``window_norm``; 2F channels)
    stem    = log2(downsample) x (Conv1d k5 stride 2, BN, ReLU), or one Conv1d k5 at stride 1;
              with ``patch`` and downsample > 4, the first of them is one Conv1d of stride s = downsample / 4
              over patches of 2s + 1 steps, then two stride-2 layers (cheap on long series)
    trunk   = conv_blocks x (Conv1d k, BN, ReLU)       (the convolutional branch; dilations 2, 4, ... with ``dilate``)
    rnn     = (Bi)GRU/LSTM over the trunk's features (``cell="none"``: the trunk's own pooling, the ablation)
    readout = [masked mean of the trunk] + rnn pooling (last states of each direction, mean, max)
              [+ each window's level and log scale per feature, with ``stats``]
    head    = Dropout, Linear -> logits
    members = ``members`` such networks; the logits are the log of their mean class probabilities
    rocket  = with ``rocket`` > 0, a fixed random-convolution branch with a ridge read-out
              (:mod:`training.model.rocket`); the logits are the log of
              ``rocket_weight * p_rocket + (1 - rocket_weight) * p_network``

Every layer masks the padding of shorter windows, so a window's logits are the same alone and
inside a padded batch; the equal-length path (no ``lengths``) is what the ONNX graph serves.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from training.model.config import LEGACY, ModelConfig
from training.model.rocket import RocketHead

__all__ = ["LEGACY", "ConvLayer", "MaskedBatchNorm1d", "ModelConfig", "RawInputModel", "SequenceClassifier"]


#: With ``patch``, the stride-2 layers the stem keeps after its patch convolution.
PATCH_HALVINGS = 2


def _mask(lengths: torch.Tensor | None, t: int, device: torch.device) -> torch.Tensor | None:
    """[B, 1, T] boolean mask of real steps, or None when every window fills ``t``."""
    if lengths is None:
        return None
    return (torch.arange(t, device=device)[None, :] < lengths.to(device)[:, None]).unsqueeze(1)


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm over [B, C, T] whose training statistics count real steps only (eval: plain BN)."""

    def forward_masked(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Normalise ``x``; ``mask`` [B, 1, T] marks real steps (None: all are)."""
        if mask is None or not self.training:
            return super().forward(x)
        m = mask.to(x.dtype)
        n = m.sum().clamp_min(1.0)
        mean = (x * m).sum(dim=(0, 2)) / n
        var = (((x - mean[None, :, None]) * m) ** 2).sum(dim=(0, 2)) / n
        with torch.no_grad():
            assert self.running_mean is not None and self.running_var is not None
            assert self.num_batches_tracked is not None
            self.num_batches_tracked += 1
            # momentum None: a cumulative average, as nn.BatchNorm1d (how BN statistics are recomputed)
            w = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean.detach(), w)
            self.running_var.lerp_(var.detach() * n / (n - 1).clamp_min(1.0), w)
        y = (x - mean[None, :, None]) / torch.sqrt(var[None, :, None] + self.eps)
        return y * self.weight[None, :, None] + self.bias[None, :, None]


class ConvLayer(nn.Module):
    """Conv1d ("same" padding, optional stride 2 or dilation) + masked BatchNorm + ReLU; zeroes the padding after."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, dilation: int = 1) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv1d(cin, cout, kernel, stride=stride, padding=dilation * (kernel // 2), dilation=dilation,
                              bias=False)
        self.bn = MaskedBatchNorm1d(cout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[B, C, T] -> [B, C', ceil(T / stride)] and the new lengths."""
        y = self.conv(x)
        if lengths is not None and self.stride > 1:
            lengths = torch.div(lengths + self.stride - 1, self.stride, rounding_mode="floor")
        mask = _mask(lengths, y.shape[-1], y.device)
        y = torch.relu(self.bn.forward_masked(y, mask))
        return (y if mask is None else y * mask), lengths


class SequenceClassifier(nn.Module):
    """Convolutional stem and branch + (Bi)GRU/LSTM over [B, T, F] windows with lengths, returning logits [B, C].

    With ``cfg.members`` K > 1 this module is the first of K networks and ``others`` holds the rest
    (so a one-member model's weights keep their names); :meth:`member_logits` gives each network's
    logits for training, :meth:`forward` the log of their mean class probabilities.
    """

    def __init__(self, cfg: ModelConfig, member: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.others = nn.ModuleList([] if member else [SequenceClassifier(cfg, member=True) for _ in range(cfg.members - 1)])
        cin = cfg.input_dim * (2 if cfg.window_norm else 1)
        convs: list[ConvLayer] = []
        if cfg.channels:
            halvings = max(0, cfg.downsample.bit_length() - 1)
            if cfg.patch and halvings > PATCH_HALVINGS:  # one conv of stride s over patches of 2s + 1 steps
                s = cfg.downsample >> PATCH_HALVINGS
                convs.append(ConvLayer(cin, cfg.channels, 2 * s + 1, s))
                cin, halvings = cfg.channels, PATCH_HALVINGS
            strides = [2] * halvings or [1]
            for s in strides:
                convs.append(ConvLayer(cin, cfg.channels, cfg.kernel, s))
                cin = cfg.channels
            for i in range(cfg.conv_blocks):
                convs.append(ConvLayer(cin, cfg.channels, cfg.kernel, 1, 2 ** (i + 1) if cfg.dilate else 1))
        self.convs = nn.ModuleList(convs)
        self.rnn: nn.Module | None = None
        if cfg.cell == "none":
            feat = cin * len(cfg.pooling) + cfg.channels
        else:
            rnn_cls = nn.GRU if cfg.cell == "gru" else nn.LSTM
            self.rnn = rnn_cls(
                cin,
                cfg.hidden,
                num_layers=cfg.layers,
                batch_first=True,
                bidirectional=cfg.bidirectional,
                dropout=cfg.dropout if cfg.layers > 1 else 0.0,
            )
            feat = cfg.hidden * (2 if cfg.bidirectional else 1) * len(cfg.pooling) + cfg.channels
        feat += 2 * cfg.input_dim if cfg.stats else 0
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(feat, cfg.num_classes))
        self.rocket = None if member or not cfg.rocket else RocketHead(
            cfg.rocket, cfg.rocket_length, cfg.input_dim, cfg.num_classes, cfg.rocket_stride)

    def _inputs(self, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """``x`` with its per-window z-normalised copy as extra channels (padding stays zero)."""
        if not self.cfg.window_norm:
            return x
        mask = _mask(lengths, x.shape[1], x.device)
        if mask is None:
            mean = x.mean(dim=1, keepdim=True)
            var = ((x - mean) ** 2).mean(dim=1, keepdim=True)
            z = (x - mean) / torch.sqrt(var + 1e-4)
        else:
            m = mask.transpose(1, 2).to(x.dtype)  # [B, T, 1]
            n = m.sum(dim=1, keepdim=True)
            x = x * m
            mean = x.sum(dim=1, keepdim=True) / n
            var = (((x - mean) * m) ** 2).sum(dim=1, keepdim=True) / n
            z = (x - mean) / torch.sqrt(var + 1e-4) * m
        return torch.cat([x, z], dim=-1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for ``x`` [B, T, F]; ``lengths`` [B] (CPU int64) marks real steps, the rest is padding."""
        if not len(self.others) and self.rocket is None:
            return self._single(x, lengths)
        members = self.member_logits(x, lengths)
        if self.rocket is not None and self.cfg.rocket_sum:
            r = self.rocket(x, lengths)
            members = [z + r for z in members]
        probs = torch.stack([torch.softmax(z, dim=-1) for z in members]).mean(dim=0)
        if self.rocket is not None and not self.cfg.rocket_sum:
            w = self.cfg.rocket_weight
            probs = w * torch.softmax(self.rocket(x, lengths), dim=-1) + (1 - w) * probs
        return torch.log(probs.clamp_min(1e-12))

    def member_logits(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Each member network's logits [B, C] (one entry for a single network)."""
        others: list[SequenceClassifier] = list(self.others)  # type: ignore[arg-type]
        return [self._single(x, lengths), *(m._single(x, lengths) for m in others)]

    def _single(self, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """This network's own logits (without the other members)."""
        if lengths is not None and bool((lengths == x.shape[1]).all()):
            lengths = None
        level = self._level(x, lengths) if self.cfg.stats else None
        x = self._inputs(x, lengths)
        feats: list[torch.Tensor] = []
        if len(self.convs):
            h = x.transpose(1, 2)  # [B, C, T]
            if lengths is not None:  # zero whatever the padding holds
                h = h * _mask(lengths, h.shape[-1], h.device)  # type: ignore[operator]
            for layer in self.convs:
                h, lengths = layer(h, lengths)
            if lengths is None:
                feats.append(h.mean(dim=-1))
            else:
                feats.append(h.sum(dim=-1) / lengths.to(h.device)[:, None].to(h.dtype))
            x = h.transpose(1, 2)
        feats[:0] = self._recurrent(x, lengths)
        if level is not None:
            feats.append(level)
        logits: torch.Tensor = self.head(torch.cat(feats, dim=-1))
        return logits

    @staticmethod
    def _level(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """[B, 2F]: each window's mean and log std per feature over its real steps (normalized units)."""
        if lengths is None:
            mean = x.mean(dim=1)
            var = ((x - mean[:, None]) ** 2).mean(dim=1)
        else:
            m = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths.to(x.device)[:, None]).to(x.dtype)[..., None]
            n = m.sum(dim=1)
            mean = (x * m).sum(dim=1) / n
            var = (((x - mean[:, None]) * m) ** 2).sum(dim=1) / n
        return torch.cat([mean, 0.5 * torch.log(var + 1e-4)], dim=-1)

    def _recurrent(self, x: torch.Tensor, lengths: torch.Tensor | None) -> list[torch.Tensor]:
        """The rnn's pooled readouts over ``x`` [B, T, C]."""
        b, t, _ = x.shape
        dirs = 2 if self.cfg.bidirectional else 1
        whole = lengths is None or bool((lengths == t).all())
        mask = None if whole else _mask(lengths, t, x.device).transpose(1, 2)  # type: ignore[union-attr]
        if self.rnn is None:  # the ablation: the trunk's features pooled as they are
            out = x
            last = x[:, -1] if lengths is None or whole else x[torch.arange(b), lengths.to(x.device) - 1]
        else:
            if whole:
                out, h = self.rnn(x)
            else:
                packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)  # type: ignore[union-attr]
                out_p, h = self.rnn(packed)
                out, _ = pad_packed_sequence(out_p, batch_first=True, total_length=t)
            if isinstance(h, tuple):  # LSTM: (h_n, c_n)
                h = h[0]
            # h: [layers * dirs, B, H]; the last layer's directions are the final dirs rows.
            last = h[-dirs:].transpose(0, 1).reshape(b, -1)
        feats = []
        for p in self.cfg.pooling:
            if p == "last":
                feats.append(last)
            elif p == "mean":
                if mask is None or lengths is None:
                    feats.append(out.mean(dim=1))
                else:
                    feats.append((out * mask).sum(dim=1) / lengths.to(x.device)[:, None].to(out.dtype))
            else:
                feats.append(out.max(dim=1).values if mask is None else out.masked_fill(~mask, float("-inf")).max(dim=1).values)
        return feats


class RawInputModel(nn.Module):
    """Normalization + classifier: raw equal-length windows [B, T, F] -> (logits, probs).

    The classifier is called as ``model(x)`` only (no lengths: its equal-length path), so any module
    whose forward maps [B, T, F] to logits [B, C] can be wrapped; this is what the ONNX graph holds
    (:func:`training.model.onnx.onnx_bytes`).
    """

    def __init__(self, model: nn.Module, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        self.model = model
        self.mean: torch.Tensor
        self.inv_std: torch.Tensor
        self.register_buffer("mean", torch.from_numpy(np.asarray(mean, np.float32)))
        self.register_buffer("inv_std", torch.from_numpy((1.0 / np.asarray(std)).astype(np.float32)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and class probabilities of raw windows ``x``."""
        logits = self.model((x - self.mean) * self.inv_std)
        return logits, torch.softmax(logits, dim=-1)
