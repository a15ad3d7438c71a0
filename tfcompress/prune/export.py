"""Export of pruned models: TFLite with the converter's sparse-tensor encoding."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
from typing import TYPE_CHECKING

from tfcompress import _flavor, _io

if TYPE_CHECKING:
    import keras


@dataclasses.dataclass(frozen=True)
class SparseExportResult:
    """What `to_sparse_tflite` wrote.

    Attributes:
        path: the `.tflite` file.
        bytes: file size.
        gzip_bytes: size after `gzip -9`.
        sparse_tensors: constant tensors stored in the sparse format.
    """

    path: str
    bytes: int
    gzip_bytes: int
    sparse_tensors: int


def to_sparse_tflite(model: keras.Model, path: str | os.PathLike) -> SparseExportResult:
    """Convert a stripped pruned model with `tf.lite.Optimize.EXPERIMENTAL_SPARSITY`.

    The converter stores sufficiently sparse float weights in a compressed
    sparse format and LiteRT's sparse kernels can run them. Whether that is
    faster depends on the ops and the sparsity: measure with
    `tfcompress.export.benchmark` (benchmarks/prune.py does).

    Args:
        model: a stripped model (`strip_pruning(pruned)`), Keras 3 or tf_keras.
        path: the `.tflite` file to write; its folder must exist.

    Returns:
        A `SparseExportResult`.

    Example:

    >>> result = to_sparse_tflite(strip_pruning(pruned), "pruned_sparse.tflite")
    >>> result.sparse_tensors
    """
    import tensorflow as tf

    from tfcompress.prune.callbacks import pruning_wrappers

    flavor = _flavor.flavor_of(model)
    _flavor.check_built(model, what="sparse TFLite export")
    if flavor != _flavor.TF_KERAS and pruning_wrappers(model):
        raise ValueError(
            f"Model '{model.name}' still has pruning wrappers (masks and step counters). "
            "Export strip_pruning(model) instead."
        )
    out = _io.check_output_path(path, what="TFLite file")
    with contextlib.redirect_stdout(io.StringIO()):  # the converter prints its SavedModel
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
        data = converter.convert()
    _io.atomic_write_bytes(out, data)
    return SparseExportResult(out, len(data), _io.gzip_size(data), _count_sparse(out))


def _count_sparse(path):
    try:
        from ai_edge_litert import interpreter as litert

        interpreter = litert.Interpreter(model_path=path)
    except Exception:  # the count is informative only
        return -1
    return sum(1 for t in interpreter.get_tensor_details() if t.get("sparsity_parameters"))
