"""The model's architecture as data: :class:`ModelConfig`, without torch.

A checkpoint file's metadata holds a config; reading it (the worker's torch-free ONNX path, the
registry) needs this dataclass but not the module it describes (:mod:`training.model.network`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

#: Values of the fields that did not exist before the convolutional stem, for older checkpoints.
LEGACY: dict[str, Any] = {"window_norm": False, "downsample": 0, "channels": 0, "conv_blocks": 0, "kernel": 5,
                          "dilate": False, "members": 1, "patch": False, "rocket": 0, "rocket_length": 0,
                          "rocket_weight": 0.5, "rocket_sum": False, "rocket_stride": 1, "stats": False}


#: Recurrent cells; ``none`` is the ablation without one (pooling of the convolutional trunk).
CELLS = ("gru", "lstm", "none")


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
    networks whose class probabilities are averaged (one module, one ONNX graph). ``cell="none"``
    replaces the recurrent layer by pooling of the convolutional trunk alone (the ablation).
    ``rocket`` > 0 adds a fixed random-convolution branch of about that many features over windows of
    ``rocket_length`` steps (:mod:`training.model.rocket`) with a ridge read-out; the model's
    probabilities are ``rocket_weight`` of the branch's plus the rest of the network's, or with
    ``rocket_sum`` the network's logits are added to the branch's (the network is trained as a
    correction of the branch's leave-one-out logits). ``rocket_stride`` > 1: the branch reads the
    window averaged over that many steps (long windows).
    ``stats`` passes each window's raw level and scale (per-feature mean and log std) to the head.
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
    rocket: int = 0
    rocket_length: int = 0
    rocket_weight: float = 0.5
    rocket_sum: bool = False
    rocket_stride: int = 1
    stats: bool = False

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {CELLS}, got {self.cell!r}")
        if self.cell == "none" and not self.channels:
            raise ValueError("cell 'none' (no recurrent layer) needs the convolutional trunk (channels > 0)")
        if (self.rocket < 0 or (self.rocket and self.rocket_length < 1) or not 0.0 <= self.rocket_weight <= 1.0
                or self.rocket_stride < 1):
            raise ValueError(f"rocket needs rocket_length >= 1 and rocket_weight in [0, 1], got {self}")
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
