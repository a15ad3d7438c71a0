"""PQAT (keep a pruned model's zeros) and CQAT (keep a clustered model's values)."""

import json

import keras
import numpy as np
import pytest

from tfcompress import cluster, export, quantize
from tfcompress.quantize import QuantizeConfig


def _int8_kernel(path, name_part, rows):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(str(path))
    interpreter.allocate_tensors()
    for t in interpreter.get_tensor_details():
        if (
            t["dtype"] == np.int8
            and name_part in t["name"]
            and len(t["shape"]) == 2
            and t["shape"][0] == rows
        ):
            return interpreter.get_tensor(t["index"])
    raise AssertionError(f"no int8 kernel {name_part} in {path}")


@pytest.fixture(scope="module")
def pruned(float_cnn):
    model = keras.models.clone_model(float_cnn)
    model.set_weights(float_cnn.get_weights())
    for layer in model.layers:
        if hasattr(layer, "kernel"):
            k = layer.kernel.numpy()
            layer.kernel.assign(np.where(np.abs(k) < np.quantile(np.abs(k), 0.5), 0.0, k))
    return model


def test_pqat_keeps_zeros_through_fit_and_into_int8(
    pruned, digits, compile_classifier, convert_int8, tmp_path
):
    qat = compile_classifier(
        quantize.quantize_model(
            pruned, QuantizeConfig(preserve_sparsity=True), representative_data=digits.x_train[:128]
        ),
        lr=1e-3,
    )
    qat.fit(digits.x_train, digits.y_train, epochs=1, batch_size=32, verbose=0)
    assert np.mean(qat.get_layer("quant_dense").quantized_kernel().numpy() == 0) >= 0.5
    path = convert_int8(qat, tmp_path / "pqat.tflite")
    assert export.inspect(path).float_compute_ops() == []
    assert np.mean(_int8_kernel(path, "quant_dense", 32) == 0) >= 0.5


def test_plain_qat_loses_the_zeros(pruned, digits, compile_classifier):
    qat = compile_classifier(quantize.quantize_model(pruned), lr=1e-3)
    qat.fit(digits.x_train[:256], digits.y_train[:256], epochs=1, batch_size=32, verbose=0)
    assert np.mean(qat.get_layer("quant_dense").quantized_kernel().numpy() == 0) < 0.45


def test_cqat_keeps_clusters_into_int8(
    float_cnn, digits, compile_classifier, convert_int8, tmp_path
):
    clustered = cluster.strip_clustering(cluster.cluster_weights(float_cnn, 16))
    qat = compile_classifier(
        quantize.quantize_model(
            clustered,
            QuantizeConfig(preserve_clusters=True),
            representative_data=digits.x_train[:128],
        ),
        lr=1e-3,
    )
    assert qat.get_layer("quant_dense").preserve_clusters <= 16
    qat.fit(digits.x_train, digits.y_train, epochs=1, batch_size=32, verbose=0)
    assert len(np.unique(qat.get_layer("quant_dense").quantized_kernel().numpy())) <= 16
    path = convert_int8(qat, tmp_path / "cqat.tflite")
    assert export.inspect(path).float_compute_ops() == []
    assert len(np.unique(_int8_kernel(path, "quant_dense", 32))) <= 16


def test_cqat_refuses_an_unclustered_model(float_cnn):
    with pytest.raises(ValueError, match="not clustered"):
        quantize.quantize_model(float_cnn, QuantizeConfig(preserve_clusters=True))


def test_preserve_round_trips_through_keras_file(pruned, tmp_path):
    qat = quantize.quantize_model(
        pruned,
        QuantizeConfig(preserve_sparsity=True),
        representative_data=np.ones((4, 8, 8, 1), "float32"),
    )
    qat.save(tmp_path / "pqat.keras")
    loaded = keras.saving.load_model(tmp_path / "pqat.keras")
    np.testing.assert_array_equal(
        loaded.get_layer("quant_dense").sparsity_mask.numpy(),
        qat.get_layer("quant_dense").sparsity_mask.numpy(),
    )
    # (JSON turns the tuples of build_config into lists)
    assert json.loads(json.dumps(loaded.get_layer("quant_dense").get_config())) == json.loads(
        json.dumps(qat.get_layer("quant_dense").get_config())
    )
