"""A fixed random-convolution feature branch (MiniRocket, Dempster et al. 2021) and its linear read-out.

The transform looks at every timestep at many scales: 84 fixed kernels of length 9 (weights -1, and
2 at three of the nine taps), each at up to :data:`MAX_DILATIONS` dilations spread exponentially up
to the window's length, half of them zero-padded ("same") and half not ("valid"), alternating. Each
(kernel, dilation) output is compared with a few biases drawn from quantiles of that output on
training windows; a feature is the proportion of positive values (PPV) over time. Multivariate
windows: every (kernel, dilation) reads the sum of a seeded random subset of the channels.

Nothing here is learnt by gradient: the biases are fitted on training data (:meth:`RocketFeatures.fit`)
and the read-out is a ridge classifier fitted in closed form by the trainer
(:mod:`training.ridge`), both stored as buffers, so the served graph (ONNX) carries them. The layout
(dilations, features per dilation, buffer shapes) follows from ``(features, length, channels)`` alone,
so a checkpoint rebuilds the module from its config before loading the buffers.

Everything is masked for padded batches: a window's features are the same alone and inside a padded
batch, and the equal-length path (no lengths) is what the ONNX graph serves. Left out of int8
quantization (its bias thresholds flip under it): see :data:`training.model.quantize.FP32_SCOPES`.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import nn

#: The 84 kernels: the three taps of weight 2 out of 9 (the other six are -1).
KERNEL_TAPS = np.array(list(itertools.combinations(range(9), 3)), dtype=np.int64)
KERNELS = len(KERNEL_TAPS)
KERNEL_LENGTH = 9
#: Dilations per kernel at most (MiniRocket's default).
MAX_DILATIONS = 32
_PHI = (np.sqrt(5) + 1) / 2


def layout(features: int, length: int) -> tuple[list[int], list[int]]:
    """Dilations and the number of biases (features per kernel) at each, for ``features`` over windows of ``length``.

    MiniRocket's ``_fit_dilations``: dilations 2**e for e spaced evenly up to log2((length - 1) / 8),
    deduplicated, the per-kernel feature count shared among them.
    """
    per_kernel = max(1, features // KERNELS)
    n_dil = min(per_kernel, MAX_DILATIONS)
    multiplier = per_kernel / n_dil
    max_exponent = np.log2(max(1.0, (length - 1) / (KERNEL_LENGTH - 1)))
    dil, counts = np.unique(np.logspace(0, max_exponent, n_dil, base=2).astype(np.int64), return_counts=True)
    per_dil = (counts * multiplier).astype(np.int64)
    remainder = per_kernel - int(per_dil.sum())
    i = 0
    while remainder > 0:
        per_dil[i] += 1
        remainder -= 1
        i = (i + 1) % len(per_dil)
    return [int(d) for d in dil], [int(c) for c in per_dil]


def _weights() -> torch.Tensor:
    """[84, 1, 9] kernel weights."""
    w = -np.ones((KERNELS, 1, KERNEL_LENGTH), dtype=np.float32)
    for k, taps in enumerate(KERNEL_TAPS):
        w[k, 0, taps] = 2.0
    return torch.from_numpy(w)


class RocketFeatures(nn.Module):
    """[B, T, F] windows (normalized, zero padding) -> [B, n_features] proportions of positive values.

    ``stride`` > 1 first averages every ``stride`` steps (a long window's cost falls with it; the
    dilations then span ``length / stride`` steps).
    """

    def __init__(self, features: int, length: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        self.dilations, self.per_dilation = layout(features, max(1, length // stride))
        self.n_features = KERNELS * sum(self.per_dilation)
        self.weight: torch.Tensor
        self.register_buffer("weight", _weights())
        # Per dilation: which channels each kernel sums [F, 84], and its biases [84, n_d].
        for i, n in enumerate(self.per_dilation):
            self.register_buffer(f"select{i}", torch.ones(channels, KERNELS))
            self.register_buffer(f"bias{i}", torch.zeros(KERNELS, n))
            # MiniRocket alternates: kernel k at dilation i pools its padded output when (i + k) is even,
            # else only the positions whose receptive field lies inside the window.
            valid = torch.tensor([(i + k) % 2 == 1 for k in range(KERNELS)])
            self.register_buffer(f"valid{i}", valid[None, :, None], persistent=False)

    def _conv(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """[B, F, T] -> [B, 84, T]: every kernel at dilation ``i`` ("same" zero padding) on its channel sum."""
        d = self.dilations[i]
        select: torch.Tensor = getattr(self, f"select{i}")
        mixed = torch.einsum("bft,fk->bkt", x, select)
        return nn.functional.conv1d(mixed, self.weight, padding=d * (KERNEL_LENGTH // 2), dilation=d, groups=KERNELS)

    def _pooled(self, h: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[B, F, T] averaged over every ``stride`` steps (a partial last group is dropped), and the new lengths."""
        if self.stride == 1:
            return h, lengths
        if h.shape[-1] < self.stride:  # shorter than one group: pad it to one (zeros, as padding is)
            h = nn.functional.pad(h, (0, self.stride - h.shape[-1]))
        h = nn.functional.avg_pool1d(h, self.stride, self.stride)
        if lengths is not None:
            lengths = torch.div(lengths, self.stride, rounding_mode="floor").clamp_min(1)
        return h, lengths

    def _counted(self, i: int, t: int, lengths: torch.Tensor | None, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """[B or 1, 84, T] booleans of the positions each kernel pools over, and [B or 1, 84, 1] their count."""
        pad = self.dilations[i] * (KERNEL_LENGTH // 2)
        pos = torch.arange(t, device=device)[None, :]
        n = torch.full((1, 1), t, device=device) if lengths is None else lengths.to(device)[:, None]
        real = pos < n  # [B, T]
        inner = (pos >= pad) & (pos < n - pad)
        valid: torch.Tensor = getattr(self, f"valid{i}")
        m = (valid & inner[:, None, :]) | (~valid & real[:, None, :])  # [B, 84, T]
        return m, m.sum(dim=-1, keepdim=True).clamp_min(1).to(torch.float32)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """PPV features of ``x`` [B, T, F]; ``lengths`` marks real steps (the padding must be zeros)."""
        h, lengths = self._pooled(x.transpose(1, 2), lengths)
        out = []
        for i in range(len(self.dilations)):
            c = self._conv(h, i)  # [B, 84, T]
            m, count = self._counted(i, c.shape[-1], lengths, x.device)
            c = torch.where(m, c, torch.full_like(c, float("-inf")))  # positions left out never count
            bias: torch.Tensor = getattr(self, f"bias{i}")
            # [B, 84, n_i, T]: time last, so the count runs over contiguous memory
            hits = (c[:, :, None, :] > bias[None, :, :, None]).to(x.dtype).sum(dim=-1)
            out.append((hits / count).flatten(1))
        return torch.cat(out, dim=1)

    @torch.no_grad()
    def fit(self, x: torch.Tensor, lengths: torch.Tensor, seed: int) -> None:
        """Draw the channel subsets and fit the biases on training windows ``x`` [N, T, F] (zero padding).

        As MiniRocket: for each (dilation, kernel) one random training window's convolution output, its
        quantiles at a low-discrepancy sequence ((j * golden ratio) mod 1) are the biases.
        """
        rng = np.random.default_rng(seed)
        f = x.shape[-1]
        quantiles = (np.arange(1, self.n_features + 1) * _PHI) % 1
        q = 0
        for i, n in enumerate(self.per_dilation):
            select = np.zeros((f, KERNELS), dtype=np.float32)
            for k in range(KERNELS):
                # MiniRocket's multivariate channel draw: 2**U(0, log2(min(F, 9) + 1)) channels.
                m = int(2 ** rng.uniform(0, np.log2(min(f, KERNEL_LENGTH) + 1)))
                select[rng.choice(f, size=max(1, min(f, m)), replace=False), k] = 1.0
            getattr(self, f"select{i}").copy_(torch.from_numpy(select))
            pick = torch.from_numpy(rng.integers(0, len(x), size=KERNELS))
            h, picked = self._pooled(x[pick].transpose(1, 2), lengths[pick])
            assert picked is not None
            c = self._conv(h, i)  # [84 windows, 84 kernels, T]
            biases = np.zeros((KERNELS, n), dtype=np.float32)
            for k in range(KERNELS):
                row = c[k, k, : int(picked[k])].numpy()
                biases[k] = np.quantile(row, quantiles[q : q + n])
                q += n
            getattr(self, f"bias{i}").copy_(torch.from_numpy(biases))


class RocketHead(nn.Module):
    """The fixed branch plus its linear read-out: [B, T, F] -> class scores [B, C] (weights set by the trainer)."""

    def __init__(self, features: int, length: int, channels: int, classes: int, stride: int = 1) -> None:
        super().__init__()
        self.features = RocketFeatures(features, length, channels, stride)
        self.coef: torch.Tensor
        self.intercept: torch.Tensor
        self.register_buffer("coef", torch.zeros(self.features.n_features, classes))
        self.register_buffer("intercept", torch.zeros(classes))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of the ridge read-out (scores scaled by the fitted temperature)."""
        feats: torch.Tensor = self.features(x, lengths)
        return feats @ self.coef + self.intercept
