"""Honest storage accounting for low-bit and binary weights.

`storage_report` says what the quantized kernels of a QAT model take as
float32, int8 and packed n-bit. The int4 / int2 schemes train on
litert-quantizer's grid (`tfcompress.quantize.grid`) and export packed
through `tfcompress.export.lowbit`; binary weights export as int8.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from tfcompress.quantize.grid import (  # noqa: F401  (re-exported)
    BLOCK_SIZES,
    LOW_BITS,
    effective_block_size,
    litert_grid,
)

if TYPE_CHECKING:
    import keras


@dataclasses.dataclass(frozen=True)
class StorageReport:
    """Kernel storage of a QAT model under different formats, in bytes.

    Attributes:
        rows: `(layer, scheme, weights, float32_bytes, int8_bytes, packed_bytes)`.
        float32_bytes / int8_bytes / packed_bytes: totals over quantized kernels
            (`packed` = `storage_bits` per weight + a float32 scale per channel).
    """

    rows: tuple[tuple[str, str, int, int, int, int], ...]

    @property
    def float32_bytes(self) -> int:
        return sum(r[3] for r in self.rows)

    @property
    def int8_bytes(self) -> int:
        return sum(r[4] for r in self.rows)

    @property
    def packed_bytes(self) -> int:
        return sum(r[5] for r in self.rows)

    def __str__(self) -> str:
        lines = [
            f"kernels: float32 {self.float32_bytes:,} B, int8 (what TFLite stores) "
            f"{self.int8_bytes:,} B, packed {self.packed_bytes:,} B"
        ]
        lines += [f"  {r[0]}: {r[1]}, {r[2]:,} weights -> {r[5]:,} B packed" for r in self.rows]
        return "\n".join(lines)


def storage_report(model: keras.Model) -> StorageReport:
    """Bytes the quantized kernels of a QAT model take as float32, int8 and packed n-bit.

    Args:
        model: a Keras 3 model from `quantize_model`.

    Returns:
        A `StorageReport`.

    Example:

    >>> qat = quantize_model(model, QuantizeConfig(weight_scheme="int4"))
    >>> storage_report(qat).packed_bytes  # about half of .int8_bytes
    """
    from tfcompress.quantize.composite import QuantizeComposite
    from tfcompress.quantize.layers import QuantizeWrapper
    from tfcompress.quantize.schemes import get_scheme

    rows: list[tuple[str, str, int, int, int, int]] = []
    for layer in model.layers:
        if isinstance(layer, QuantizeComposite):  # inner kernels: per tensor
            scheme = get_scheme(layer.weight_scheme)
            for sub, kernel in layer.kernels():
                n = int(np.prod(kernel.shape))
                scales = int(kernel.shape[-1]) if scheme.name == "binary" else 1
                packed = int(np.ceil(n * scheme.storage_bits / 8)) + 4 * scales
                rows.append(
                    (
                        f"{layer.layer.name}/{sub.name}",
                        scheme.name,
                        n,
                        4 * n,
                        n + 4 * scales,
                        packed,
                    )
                )
            continue
        if not isinstance(layer, QuantizeWrapper) or layer.weight_scheme is None:
            continue
        kernel = getattr(layer.layer, layer.kernel_attr)
        n = int(np.prod(kernel.shape))
        channels = int(kernel.shape[-1])
        if layer.granularity == "depthwise":
            channels = int(kernel.shape[-1] * kernel.shape[-2])
        scheme = get_scheme(layer.weight_scheme)
        scales = channels if layer.granularity != "per_tensor" or scheme.name == "binary" else 1
        packed = int(np.ceil(n * scheme.storage_bits / 8)) + 4 * scales
        if scheme.litert_grid:  # float32 scale per channel, or float16 per block
            block = effective_block_size(kernel.shape, scheme.block_size)
            packed = int(np.ceil(n * scheme.storage_bits / 8)) + (
                2 * n // block if block else 4 * int(kernel.shape[-1])
            )
        rows.append((layer.layer.name, scheme.name, n, 4 * n, n + 4 * scales, packed))
    return StorageReport(tuple(rows))
