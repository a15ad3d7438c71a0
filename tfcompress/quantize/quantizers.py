"""tfmot's quantizer names, for `QuantizeConfig` subclasses written for tfmot.

A custom tfmot-style config returns `(weight, quantizer)` pairs from
`get_weights_and_quantizers`; tfcompress reads each quantizer's `num_bits`
(8, 4 or 2 for weights, 8 for activations) and lays the fake-quant out as the
TFLite converter needs it (per-channel convolution kernels, moving-average
activation ranges). tfmot's own quantizer objects are read the same way.

Example:

>>> from tfcompress.quantize import quantizers
>>> quantizers.LastValueQuantizer(num_bits=4, per_axis=False, symmetric=True,
...                               narrow_range=False).num_bits
4
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Quantizer:
    """What a tfmot quantizer says: its bit width and layout.

    Attributes:
        num_bits: bits per value.
        per_axis: one range per output channel.
        symmetric: a range symmetric around zero.
        narrow_range: leave out the lowest integer (tfmot's meaning).
    """

    num_bits: int = 8
    per_axis: bool = False
    symmetric: bool = False
    narrow_range: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.num_bits, bool) or not isinstance(self.num_bits, int):
            raise TypeError(f"num_bits must be an int. Received: num_bits={self.num_bits!r}")
        if not 2 <= self.num_bits <= 8:
            raise ValueError(
                f"num_bits must be between 2 and 8. Received: num_bits={self.num_bits!r}"
            )


class LastValueQuantizer(Quantizer):
    """tfmot's quantizer whose range is the last batch's min/max (weights)."""


class MovingAverageQuantizer(Quantizer):
    """tfmot's quantizer with a moving-average range (activations)."""


class AllValuesQuantizer(Quantizer):
    """tfmot's quantizer whose range covers every value seen."""


__all__ = ["AllValuesQuantizer", "LastValueQuantizer", "MovingAverageQuantizer", "Quantizer"]
