"""The sequence classifier: a config dataclass and the module, nothing else."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a :class:`SequenceClassifier`.

    ``pooling`` picks the readout: ``last`` is the final hidden state of each direction
    (forward after the last real step, backward after the first), ``mean``/``max`` add masked
    pooling over all outputs.
    """

    input_dim: int = 1
    num_classes: int = 2
    cell: str = "gru"
    bidirectional: bool = True
    hidden: int = 64
    layers: int = 2
    dropout: float = 0.1
    pooling: tuple[str, ...] = ("last", "mean")

    def __post_init__(self) -> None:
        if self.cell not in ("gru", "lstm"):
            raise ValueError(f"cell must be 'gru' or 'lstm', got {self.cell!r}")
        bad = set(self.pooling) - {"last", "mean", "max"}
        if bad or not self.pooling:
            raise ValueError(f"pooling must be a non-empty subset of last/mean/max, got {self.pooling}")
        if self.input_dim < 1 or self.num_classes < 2 or self.hidden < 1 or self.layers < 1:
            raise ValueError(f"invalid sizes in {self}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        d = asdict(self)
        d["pooling"] = list(self.pooling)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        d = dict(d)
        if "pooling" in d:
            d["pooling"] = tuple(d["pooling"])
        return cls(**d)


class SequenceClassifier(nn.Module):
    """(Bi)GRU/LSTM over [B, T, F] windows with per-window lengths, returning logits [B, C]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        rnn_cls = nn.GRU if cfg.cell == "gru" else nn.LSTM
        self.rnn = rnn_cls(
            cfg.input_dim,
            cfg.hidden,
            num_layers=cfg.layers,
            batch_first=True,
            bidirectional=cfg.bidirectional,
            dropout=cfg.dropout if cfg.layers > 1 else 0.0,
        )
        dirs = 2 if cfg.bidirectional else 1
        feat = cfg.hidden * dirs * len(cfg.pooling)
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(feat, cfg.num_classes))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for ``x`` [B, T, F]; ``lengths`` [B] (CPU int64) marks real steps, the rest is padding."""
        b, t, _ = x.shape
        dirs = 2 if self.cfg.bidirectional else 1
        if lengths is None or bool((lengths == t).all()):
            out, h = self.rnn(x)
            mask = None
        else:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out_p, h = self.rnn(packed)
            out, _ = pad_packed_sequence(out_p, batch_first=True, total_length=t)
            mask = (torch.arange(t, device=x.device)[None, :] < lengths.to(x.device)[:, None]).unsqueeze(-1)
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
        return self.head(torch.cat(feats, dim=-1))
