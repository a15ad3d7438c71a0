"""Stripped pruned models export to TFLite; zeros show up as gzip savings."""

import os

import keras
import numpy as np
import pytest

from tfcompress import export, prune


@pytest.fixture(scope="module")
def stripped_80(trained_cnn, digits):
    pruned = prune.prune_low_magnitude(
        trained_cnn, prune.ConstantSparsity(0.8, 0, frequency=1), skip=None
    )
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(
        digits.x_train[:128],
        digits.y_train[:128],
        batch_size=32,
        verbose=0,
        callbacks=[prune.UpdatePruningStep()],
    )
    return prune.strip_pruning(pruned)


def test_float_tflite_is_3x_smaller_gzipped(trained_cnn, stripped_80, tmp_path, digits):
    dense = export.to_tflite(trained_cnn, os.path.join(tmp_path, "dense.tflite"))
    sparse = export.to_tflite(stripped_80, os.path.join(tmp_path, "pruned.tflite"))
    assert sparse.bytes == pytest.approx(dense.bytes, rel=0.02)  # zeros are still stored
    assert dense.gzip_bytes / sparse.gzip_bytes >= 3.0
    info = export.inspect(sparse.path)
    assert info.op_histogram["CONV_2D"] == 2 and info.op_histogram["FULLY_CONNECTED"] == 2
    check = export.verify(sparse.path, stripped_80, digits.x_test[:64], min_agreement=0.99)
    assert check.max_abs_diff < 1e-4


def test_sparse_encoding(stripped_80, tmp_path, digits):
    result = prune.to_sparse_tflite(stripped_80, os.path.join(tmp_path, "sparse.tflite"))
    assert result.sparse_tensors >= 2
    assert "DENSIFY" in export.inspect(result.path).op_histogram
    export.verify(result.path, stripped_80, digits.x_test[:64], min_agreement=0.99)


def test_sparse_export_refuses_a_wrapped_model(trained_cnn, tmp_path):
    pruned = prune.prune_low_magnitude(trained_cnn)
    with pytest.raises(ValueError, match="strip_pruning"):
        prune.to_sparse_tflite(pruned, os.path.join(tmp_path, "x.tflite"))
    assert not os.listdir(tmp_path)


def test_exported_weights_hold_the_zeros(stripped_80, tmp_path):
    path = os.path.join(tmp_path, "pruned.tflite")
    export.to_tflite(stripped_80, path)
    from ai_edge_litert import interpreter as litert

    interpreter = litert.Interpreter(model_path=path)
    zeros = total = 0
    for detail in interpreter.get_tensor_details():
        if len(detail["shape"]) >= 2 and detail["dtype"] == np.float32:
            try:
                value = interpreter.get_tensor(detail["index"])
            except ValueError:
                continue
            zeros += int((value == 0).sum())
            total += value.size
    assert total > 9000 and zeros / total == pytest.approx(0.8, abs=0.02)
