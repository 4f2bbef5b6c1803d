"""The model's architecture as data: :class:`ModelConfig`, without torch.

A checkpoint file's metadata holds a config; reading it (the worker's torch-free ONNX path, the
registry) needs this dataclass but not the module it describes (:mod:`training.model.network`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

#: Values of the fields that did not exist before the convolutional stem, for older checkpoints.
LEGACY: dict[str, Any] = {"window_norm": False, "downsample": 0, "channels": 0, "conv_blocks": 0, "kernel": 5,
                          "dilate": False, "members": 1, "patch": False}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a :class:`SequenceClassifier`.

    ``pooling`` picks the recurrent readout: ``last`` is the final hidden state of each direction
    (forward after the last real step, backward after the first), ``mean``/``max`` add masked
    pooling over all outputs. ``downsample`` (a power of two; 0 = no stem) is the time stride of
    the convolutional stem, chosen from the training windows' length (see ``training.recipe``);
    ``channels`` > 0 adds the stem and the convolutional branch, whose masked mean joins the readout.
    ``patch`` (for ``downsample`` > 4) starts the stem with one convolution of stride
    ``s = downsample / 4`` over patches of ``2s + 1`` steps and keeps two stride-2 layers (instead of
    log2(downsample) stride-2 layers at full resolution: far cheaper on long series). ``dilate`` gives the branch's ``conv_blocks`` dilations 2, 4, 8, ... (a wider view at the same
    cost). ``members`` > 1 makes the model an ensemble of that many independently initialised
    networks whose class probabilities are averaged (one module, one ONNX graph).
    """

    input_dim: int = 1
    num_classes: int = 2
    cell: str = "gru"
    bidirectional: bool = True
    hidden: int = 64
    layers: int = 1
    dropout: float = 0.1
    pooling: tuple[str, ...] = ("mean", "max")
    window_norm: bool = True
    downsample: int = 1
    channels: int = 64
    conv_blocks: int = 2
    kernel: int = 5
    dilate: bool = True
    members: int = 1
    patch: bool = True

    def __post_init__(self) -> None:
        if self.cell not in ("gru", "lstm"):
            raise ValueError(f"cell must be 'gru' or 'lstm', got {self.cell!r}")
        bad = set(self.pooling) - {"last", "mean", "max"}
        if bad or not self.pooling:
            raise ValueError(f"pooling must be a non-empty subset of last/mean/max, got {self.pooling}")
        if self.input_dim < 1 or self.num_classes < 2 or self.hidden < 1 or self.layers < 1 or self.members < 1:
            raise ValueError(f"invalid sizes in {self}")
        if self.downsample < 0 or (self.downsample & (self.downsample - 1)) != 0:
            raise ValueError(f"downsample must be 0 or a power of two, got {self.downsample}")
        if self.channels < 0 or self.conv_blocks < 0 or self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"channels/conv_blocks must be >= 0 and kernel odd, got {self}")
        if (self.channels == 0) != (self.downsample == 0) or (self.channels == 0 and self.conv_blocks):
            raise ValueError("the stem needs both channels > 0 and downsample >= 1 (or both 0, no convolutions)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        d = asdict(self)
        d["pooling"] = list(self.pooling)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, keys older checkpoints lack take :data:`LEGACY`."""
        d = {**LEGACY, **d}
        if "pooling" in d:
            d["pooling"] = tuple(d["pooling"])
        return cls(**d)
