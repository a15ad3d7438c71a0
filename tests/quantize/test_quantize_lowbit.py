"""n-bit and binary weights: the grid, training with fit(), export, honest storage."""

import numpy as np
import pytest

from tfcompress import export, quantize, testing
from tfcompress.quantize import QuantizeConfig


def _levels(kernel, axis_channels=True):
    k = kernel.reshape(-1, kernel.shape[-1]) if axis_channels else kernel.reshape(-1, 1)
    return max(len(np.unique(np.round(k[:, c], 6))) for c in range(k.shape[1]))


@pytest.mark.parametrize("scheme,levels", [("int8", 255), ("int4", 15), ("int2", 3), ("binary", 2)])
def test_kernel_grid(scheme, levels, float_cnn):
    qat = quantize.quantize_model(float_cnn, QuantizeConfig(weight_scheme=scheme))
    conv = qat.get_layer("quant_conv1").quantized_kernel().numpy()  # per channel
    dense = qat.get_layer("quant_dense").quantized_kernel().numpy()  # per tensor
    assert _levels(conv) <= levels
    if scheme == "binary":
        k = float_cnn.get_layer("conv1").kernel.numpy()
        np.testing.assert_allclose(
            np.abs(conv).max(axis=(0, 1, 2)), np.abs(k).mean(axis=(0, 1, 2)), rtol=0.01
        )
    else:  # int4/int2 use litert-quantizer's grid: per output channel whatever the granularity
        assert _levels(dense, axis_channels=scheme != "int8") <= levels


@pytest.fixture(scope="module")
def int4_trained(float_cnn, digits, compile_classifier):
    qat = quantize.quantize_model(float_cnn, QuantizeConfig(weight_scheme="int4"))
    qat = compile_classifier(qat, lr=1e-3)
    qat.fit(digits.x_train, digits.y_train, epochs=2, batch_size=32, verbose=0)
    return qat


def test_int4_trains_and_exports(int4_trained, float_cnn, digits, accuracy, convert_int8, tmp_path):
    assert (
        accuracy(int4_trained, digits.x_test, digits.y_test)
        >= accuracy(float_cnn, digits.x_test, digits.y_test) - 0.05
    )
    path = convert_int8(int4_trained, tmp_path / "int4.tflite")
    assert export.inspect(path).float_compute_ops() == []
    assert export.verify(path, int4_trained, digits.x_test).top1_agreement >= 0.97


def test_binary_trains_with_fit(digits, compile_classifier, accuracy, convert_int8, tmp_path):
    model = compile_classifier(testing.digits_cnn(), lr=3e-3)
    model.fit(digits.x_train, digits.y_train, epochs=4, batch_size=32, verbose=0)
    qat = compile_classifier(
        quantize.quantize_model(model, QuantizeConfig(weight_scheme="binary")), lr=1e-3
    )
    before = qat.get_layer("quant_dense").layer.kernel.numpy().copy()
    history = qat.fit(digits.x_train, digits.y_train, epochs=3, batch_size=32, verbose=0)
    assert not np.array_equal(before, qat.get_layer("quant_dense").layer.kernel.numpy())
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert accuracy(qat, digits.x_test, digits.y_test) > 0.5  # well above chance (0.1)
    path = convert_int8(qat, tmp_path / "binary.tflite")
    assert export.inspect(path).float_compute_ops() == []


def test_storage_report_is_honest(float_cnn):
    n = sum(
        int(np.prod(float_cnn.get_layer(n).kernel.shape))
        for n in ("conv0", "conv1", "dense", "logits")
    )
    reports = {
        s: quantize.storage_report(
            quantize.quantize_model(float_cnn, QuantizeConfig(weight_scheme=s))
        )
        for s in ("int8", "int4", "binary")
    }
    assert reports["int8"].float32_bytes == 4 * n
    assert reports["int4"].int8_bytes == reports["int8"].int8_bytes  # TFLite stores int8
    assert reports["int4"].packed_bytes < 0.6 * reports["int8"].packed_bytes
    assert reports["binary"].packed_bytes < 0.2 * reports["int8"].packed_bytes
    assert "packed" in str(reports["int4"])


def test_per_layer_scheme_through_annotation(digits):
    import keras

    inp = keras.Input((16,))
    h = quantize.quantize_annotate_layer(keras.layers.Dense(8, name="body"), weight_scheme="int2")(
        inp
    )
    out = keras.layers.Dense(2, name="head")(h)
    qat = quantize.quantize_model(keras.Model(inp, out))
    assert qat.get_layer("quant_body").weight_scheme == "int2"
    assert qat.get_layer("quant_head").weight_scheme == "int8"
