"""Weight quantization schemes: one small registered object per scheme.

A scheme turns a float kernel into the values the layer computes with during
QAT. The int4 and int2 schemes (`"int4"`, `"int4_block32"`, `"int4_block64"`,
`"int4_block128"`, `"int2"`) put the kernel on exactly the grid litert-quantizer
writes into a `.tflite` file (`tfcompress.quantize.grid.litert_grid`), one
scale per output channel or per block of inputs, so
`tfcompress.export.to_tflite(qat, path, mode="int4")` stores the trained
weights unchanged, packed 2 (or 4) per byte. Exported with `mode="int8"`, the
converter stores those values as int8. The int8 and binary schemes end with an
8-bit symmetric fake-quant.

Example:

>>> from tfcompress.quantize import schemes
>>> schemes.get_scheme("int4").storage_bits
4
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tfcompress.quantize import _ops

if TYPE_CHECKING:
    import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class WeightScheme:
    """How kernels are fake-quantized.

    Attributes:
        name: the `weight_scheme=` string.
        description: one line for reports.
        storage_bits: bits per weight a packed format needs (TFLite uses 8).
        pre_quantize: `fn(w) -> w` applied before the final int8 fake-quant
            (channels on the last axis), or `None`.
        num_bits: the grid of `pre_quantize` for n-bit schemes (for reports).
        block_size: for litert-grid schemes, inputs per scale (0: one scale
            per output channel).
        litert_grid: the kernel goes onto litert-quantizer's grid
            (`num_bits`, `block_size`) and nothing else: `per_channel` is
            ignored, since the file's grid is per output channel or block.
    """

    name: str
    description: str
    storage_bits: int
    pre_quantize: Callable[..., Any] | None = None
    num_bits: int | None = None
    block_size: int = 0
    litert_grid: bool = False

    def quantize(self, w: tf.Tensor, per_channel: bool) -> tf.Tensor:
        """Fake-quantize kernel `w` (channels last); per-tensor int8 when not `per_channel`."""
        if self.litert_grid:
            from tfcompress.quantize.grid import litert_grid

            return litert_grid(w, self.num_bits, self.block_size)
        if self.pre_quantize is not None:
            w = self.pre_quantize(w, per_channel)
        return _ops.fake_quant_symmetric(w, 8, per_channel)


_SCHEMES: dict[str, WeightScheme] = {}


def register_scheme(scheme: WeightScheme) -> WeightScheme:
    """Add a `WeightScheme` (replacing one of the same name); returns it."""
    _SCHEMES[scheme.name] = scheme
    return scheme


def get_scheme(name: str | WeightScheme) -> WeightScheme:
    """The registered `WeightScheme` called `name` (a `WeightScheme` passes through)."""
    if isinstance(name, WeightScheme):
        return name
    try:
        return _SCHEMES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unsupported weight scheme {name!r}. Choose one of: {', '.join(available_schemes())} "
            "(n-bit weights for n in {8, 4, 2}, or 'binary'). "
            f"Received: weight_scheme={name!r}"
        ) from None


def scheme_for_bits(num_bits: int) -> WeightScheme:
    """The n-bit scheme for `num_bits` in {8, 4, 2}; 1 means binary."""
    names = {8: "int8", 4: "int4", 2: "int2", 1: "binary"}
    if num_bits not in names:
        raise ValueError(
            "num_bits must be 8, 4 or 2 (or 1 for binary weights); TFLite computes in int8 and "
            f"other widths are not supported. Received: num_bits={num_bits!r}"
        )
    return _SCHEMES[names[num_bits]]


def available_schemes() -> list[str]:
    """Names of the registered schemes."""
    return list(_SCHEMES)


def _binary(w, per_channel):
    # The scale is per output channel whatever the int8 granularity.
    return _ops.binarize(w)


register_scheme(WeightScheme("int8", "8-bit symmetric weights", 8))
register_scheme(
    WeightScheme(
        "int4",
        "4-bit symmetric weights (15 levels), one scale per "
        "output channel (litert-quantizer's grid)",
        4,
        num_bits=4,
        litert_grid=True,
    )
)
register_scheme(
    WeightScheme(
        "int2",
        "2-bit symmetric (ternary) weights, one scale per output channel (litert-quantizer's grid)",
        2,
        num_bits=2,
        litert_grid=True,
    )
)
register_scheme(
    WeightScheme("binary", "sign(w) * mean|w| per output channel", 1, _binary, num_bits=1)
)
# Blockwise for int4 only: LiteRT 2.3 cannot run blockwise int2 files (XNNPACK refuses
# them, the built-in kernels return zeros).
for _block in (32, 64, 128):
    register_scheme(
        WeightScheme(
            f"int4_block{_block}",
            f"4-bit symmetric weights, one scale per {_block} inputs of an output "
            "channel (litert-quantizer's blockwise grid)",
            4,
            num_bits=4,
            block_size=_block,
            litert_grid=True,
        )
    )
