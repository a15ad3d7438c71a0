"""Honest storage accounting for low-bit weights, and embedding tables trained on their grid.

`storage_report` says what the quantized kernels of a QAT model take as
float32, int8 and packed n-bit. The int4 / int2 schemes train on
litert-quantizer's grid (`tfcompress.quantize.grid`) and export packed
through `tfcompress.export.lowbit`; binary weights export as int8.

`TablesOnGrid` is a callback that trains embedding tables (Keras
`Embedding`, keras-hub's position embeddings) on the int4 / int2 grid the
exporter stores them on (one scale per column), straight-through: a table
that would lose accuracy rounded after training learns to live with it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from tfcompress.quantize.grid import (  # noqa: F401  (re-exported)
    BLOCK_SIZES,
    LOW_BITS,
    effective_block_size,
    litert_grid,
)

if TYPE_CHECKING:
    import tensorflow as tf


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


def _is_table_layer(layer: Any) -> bool:
    if isinstance(layer, keras.layers.Embedding):  # keras-hub's ReversibleEmbedding too
        return True
    try:
        from keras_hub.layers import PositionEmbedding
    except ImportError:  # keras-hub is optional
        return False
    return isinstance(layer, PositionEmbedding)


class TablesOnGrid(keras.callbacks.Callback):
    """Trains embedding tables on the low-bit grid they are exported on (straight-through).

    Before each training step every chosen table holds its grid values
    (`litert_grid(shadow, num_bits)`: symmetric, one scale per column, the
    grid `tfcompress.export.lowbit` stores tables on), so the forward pass
    and the gradients see the rounded table; after the step the update is
    added to a float shadow copy, which keeps the small steps rounding would
    lose. When training ends the tables hold their grid values, and
    `export.to_tflite(model, path, mode="int4")` (with `layers=` giving the
    tables the same width) stores them unchanged.

    Keras `Embedding` layers (keras-hub's `ReversibleEmbedding` included)
    and keras-hub `PositionEmbedding` layers are tables.

    Args:
        model: the model whose tables to train (the student, not a
            `Distiller` around it).
        num_bits: 4 or 2.
        layers: names or glob patterns of the table layers; `None` takes
            every table layer of the model.

    Example:

    ```python
    callback = TablesOnGrid(student, num_bits=2, layers=["token_embedding"])
    student.fit(x, y, epochs=2, callbacks=[callback])
    lowbit.to_lowbit_tflite(student, "s.tflite", mode="int4",
                            layers={"token_embedding": "int2"})
    ```
    """

    def __init__(
        self, model: keras.Model, num_bits: int = 4, layers: Sequence[str] | None = None
    ) -> None:
        super().__init__()
        if num_bits not in LOW_BITS:
            raise ValueError(
                f"TablesOnGrid trains tables on the int4 or int2 grid: num_bits must be one of "
                f"{LOW_BITS}. Received: num_bits={num_bits!r}"
            )
        if isinstance(layers, str):
            layers = [layers]
        flatten = getattr(model, "_flatten_layers", None)
        found = list(flatten(include_self=False, recursive=True) if flatten else model.layers)
        tables = [layer for layer in found if _is_table_layer(layer)]
        if not tables:
            raise ValueError(
                f"Model '{model.name}' has no embedding table (a keras.layers.Embedding or a "
                "keras-hub PositionEmbedding) to train on the grid. Received: "
                f"model={model.name!r}"
            )
        names = [layer.name for layer in tables]
        for pattern in layers or ():
            if not fnmatch.filter(names, pattern):
                raise ValueError(
                    f"layers names {pattern!r}, which matches no table layer of model "
                    f"'{model.name}' (tables: {', '.join(names)}). Received: layers={layers!r}"
                )
        chosen = [
            layer
            for layer in tables
            if layers is None or any(fnmatch.fnmatchcase(layer.name, p) for p in layers)
        ]
        self.num_bits = int(num_bits)
        self.tables = [w for layer in chosen for w in layer.weights if len(w.shape) >= 2]
        self._shadows: list[tf.Variable] | None = None
        self._grids: list[tf.Tensor] = []

    def _grid(self, shadow: tf.Variable) -> tf.Tensor:
        return litert_grid(shadow, self.num_bits)

    def _to_grid(self) -> None:
        import tensorflow as tf

        if self._shadows is None:
            self._shadows = [
                tf.Variable(tf.convert_to_tensor(t.value), trainable=False) for t in self.tables
            ]
        self._grids = [self._grid(shadow) for shadow in self._shadows]
        for table, grid in zip(self.tables, self._grids):
            table.assign(grid)

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self._to_grid()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        import tensorflow as tf

        for table, shadow, grid in zip(self.tables, self._shadows or [], self._grids):
            shadow.assign_add(tf.convert_to_tensor(table.value) - grid)

    def on_test_begin(self, logs: dict | None = None) -> None:
        if self._shadows is not None:  # validation during fit() sees the grid tables
            self._to_grid()

    def on_train_end(self, logs: dict | None = None) -> None:
        if self._shadows is not None:
            self._to_grid()
