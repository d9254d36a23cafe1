"""Symmetric int8 weights with one float32 scale per channel (docs/FORMAT.md, "int8 weights").

A channel is an output channel of a linear layer (a row of the torch weight `[out, in]`) or a row of an
embedding table. Its scale is `max |w| / 127`, its values `round(w / scale)` in [-127, 127] (never -128, so
the range is symmetric and negating a value cannot overflow). Dequantized, a weight is `q * scale`: what
ONNX's DequantizeLinear (zero point 0) computes, and what the kernels compute in registers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from rt3c.core.checks import finite_array
from rt3c.core.errors import SettingError, UserError

WeightType = Literal["float32", "int8"]
WEIGHT_TYPES: tuple[str, ...] = get_args(WeightType)

INT8_LIMIT = 127

MAX_RELATIVE_ERROR = 0.05
"""Refuse int8 for a tensor whose quantization error exceeds this share of its weights:
`||dequantized - w||_F / ||w||_F`. Per-channel int8 of trained weights measures about 0.01: minilm-l6's
linear layers at most 0.021, its word embeddings 0.007, its worst tensor the 2-row token type table at 0.034.
Above 0.05, many channels hold one weight that dwarfs the rest, which then round to zero."""


def weight_type(value: str) -> WeightType:
    """`value` checked as one of WEIGHT_TYPES (the setting `weights`)."""
    if value not in WEIGHT_TYPES:
        raise SettingError(
            "weights", f"unknown weight type; expected one of {', '.join(WEIGHT_TYPES)}", value
        )
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class Quantized:
    values: np.ndarray
    """int8, the shape of the quantized tensor."""
    scale: np.ndarray
    """float32 [channels]."""

    def dequantized(self) -> np.ndarray:
        """float32: each value times its channel's scale (channels along axis 0)."""
        shape = (-1,) + (1,) * (self.values.ndim - 1)
        return self.values.astype(np.float32) * self.scale.reshape(shape)


def quantize_channels(
    weight: np.ndarray, where: str, *, kept: np.ndarray | None = None, zero_channels: bool = False
) -> Quantized:
    """`weight` (float, channels along axis 0) as int8 with a scale per channel; with `kept` (a bool mask
    of its shape), only the kept weights are stored: the others quantize to 0 and do not widen a scale.

    Refused, naming `where`: values that are not finite; a channel of `weight` that is all zeros unless
    `zero_channels` (an all-zero output channel of a dense linear layer is a dead unit, most likely a broken
    export; an embedding's padding row and a block-pruned layer's rows are zero by design); an error above
    MAX_RELATIVE_ERROR.
    """
    weight = np.asarray(weight, dtype=np.float32)
    finite_array(weight, where)
    zero = ~np.any(weight.reshape(len(weight), -1) != 0, axis=1)
    if np.any(zero) and not zero_channels:
        raise UserError(
            f"{where}: channel {int(np.argmax(zero))} is all zeros ({int(zero.sum())} such channels), "
            "which has no int8 scale"
        )
    flat = (weight if kept is None else np.where(kept, weight, np.float32(0))).reshape(len(weight), -1)
    peak = np.max(np.abs(flat), axis=1) if flat.size else np.zeros(len(flat), np.float32)
    # A channel with nothing kept has no scale of its own; 1 keeps it finite (its values are all 0).
    scale = np.where(peak == 0, 1.0, peak / INT8_LIMIT).astype(np.float32)
    values = np.clip(np.rint(flat / scale[:, None]), -INT8_LIMIT, INT8_LIMIT).astype(np.int8)
    quantized = Quantized(values.reshape(weight.shape), scale)
    norm = float(np.linalg.norm(flat))
    error = float(np.linalg.norm(quantized.dequantized().reshape(flat.shape) - flat)) / norm if norm else 0.0
    if error > MAX_RELATIVE_ERROR:
        raise UserError(
            f"{where}: int8 weights would be off by {error:.3f} of the weights' norm (bound "
            f"{MAX_RELATIVE_ERROR}); keep this model's weights float32"
        )
    return quantized
