"""quantize_model on Keras 3 models: structure, training, int8 export, agreement."""

import keras
import numpy as np
import pytest

from tfcompress import export, quantize, testing
from tfcompress.quantize import ActivationQuantizer, QuantizeWrapper


def test_returns_new_model_and_leaves_input_untouched(float_cnn):
    before = [w.copy() for w in float_cnn.get_weights()]
    classes = [type(layer).__name__ for layer in float_cnn.layers]
    qat = quantize.quantize_model(float_cnn)
    assert qat is not float_cnn
    assert [type(layer).__name__ for layer in float_cnn.layers] == classes
    for a, b in zip(before, float_cnn.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    wrapped = {
        layer.layer.name: layer for layer in qat.layers if isinstance(layer, QuantizeWrapper)
    }
    assert set(wrapped) == {"conv0", "conv1", "dense", "logits"}
    assert wrapped["conv0"].granularity == "per_channel"
    assert wrapped["dense"].granularity == "per_tensor"
    np.testing.assert_array_equal(
        wrapped["conv1"].layer.kernel.numpy(), float_cnn.get_layer("conv1").kernel.numpy()
    )
    assert any(isinstance(layer, ActivationQuantizer) for layer in qat.layers)  # input quant
    assert [r[0] for r in qat.quantize_report.quantized] == ["conv0", "conv1", "dense", "logits"]


def test_qat_converts_to_all_int8_without_representative_data(qat_cnn, qat_cnn_tflite, digits):
    info = export.inspect(qat_cnn_tflite)
    assert info.float_compute_ops() == []
    assert info.op_histogram["CONV_2D"] == 2 and info.op_histogram["FULLY_CONNECTED"] == 2
    result = export.verify(qat_cnn_tflite, qat_cnn, (digits.x_test, digits.y_test))
    assert result.top1_agreement >= 0.99, result


def test_qat_accuracy_close_to_float(float_cnn, qat_cnn, qat_cnn_tflite, digits, accuracy):
    float_acc = accuracy(float_cnn, digits.x_test, digits.y_test)
    qat_acc = accuracy(qat_cnn, digits.x_test, digits.y_test)
    tflite_acc = export.verify(
        qat_cnn_tflite, qat_cnn, (digits.x_test, digits.y_test)
    ).tflite_accuracy
    assert float_acc > 0.9
    # The benchmark reports the exact gap; the test leaves room for seeds/threads.
    assert qat_acc >= float_acc - 0.02 and tflite_acc >= float_acc - 0.02


def test_ranges_follow_training(qat_cnn):
    quantize.check_ranges_set(qat_cnn)
    q = qat_cnn.get_layer("quant_conv0").output_quantizer
    assert float(q.range_min.numpy()) == 0.0  # after ReLU
    assert float(q.range_max.numpy()) > 0.1


@pytest.fixture(scope="module")
def residual_cnn(digits, compile_classifier):
    L = keras.layers
    keras.utils.set_random_seed(1)
    inp = keras.Input((8, 8, 1), name="image")
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(inp)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(6.0, name="stem_relu")(x)
    y = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    y = L.BatchNormalization(name="dw_bn")(y)
    y = L.ReLU(name="dw_relu")(y)
    y = L.Conv2D(8, 1, name="pw")(y)
    x = L.Add(name="res")([x, y])
    x = L.Concatenate(name="cat")(
        [L.AveragePooling2D(2, name="avg")(x), L.MaxPooling2D(2, name="maxp")(x)]
    )
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Reshape((16,), name="reshape")(x)
    x = L.Dense(16, activation="relu6", name="fc")(x)
    out = L.Dense(10, name="logits")(x)
    model = compile_classifier(keras.Model(inp, out, name="residual_cnn"))
    model.fit(digits.x_train, digits.y_train, epochs=6, batch_size=32, verbose=0)
    return model


def test_batchnorm_is_folded_exactly(residual_cnn, digits):
    qat = quantize.quantize_model(residual_cnn)
    assert dict(qat.quantize_report.folded_batchnorm) == {"stem": "stem_bn", "dw": "dw_bn"}
    x = digits.x_test[:16]
    # The folded kernel and bias, in float, equal conv -> BN(inference).
    expected = keras.Model(residual_cnn.input, residual_cnn.get_layer("stem_bn").output)(x)
    kernel, bias = qat.get_layer("quant_stem").folded()
    folded = keras.ops.conv(x, kernel, padding="same") + bias
    np.testing.assert_allclose(folded, expected, atol=1e-4)


def test_residual_cnn_converts_all_int8(
    residual_cnn, digits, tmp_path, compile_classifier, convert_int8
):
    qat = compile_classifier(
        quantize.quantize_model(residual_cnn, representative_data=digits.x_train[:256]), lr=1e-3
    )
    qat.fit(digits.x_train, digits.y_train, epochs=1, batch_size=32, verbose=0)
    info = export.inspect(convert_int8(qat, tmp_path / "res.tflite"))
    assert info.float_compute_ops() == []
    hist = info.op_histogram
    for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "CONCATENATION", "MEAN", "FULLY_CONNECTED"):
        assert hist[op] >= 1, (op, info.summary())
    assert "BATCH_NORM" not in str(hist) and "MUL" not in hist  # folded, not a float MUL/ADD
    result = export.verify(tmp_path / "res.tflite", qat, digits.x_test)
    assert result.top1_agreement >= 0.97, result


def test_sequential_mlp_and_softmax_head(tmp_path, convert_int8):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((16,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(4, activation="softmax"),
        ],
        name="seq",
    )
    x = np.random.default_rng(0).normal(size=(128, 16)).astype("float32")
    qat = quantize.quantize_model(model, representative_data=x)
    # softmax is moved out of the Dense so the FULLY_CONNECTED output has its own range
    assert any(layer.name.endswith("_softmax") for layer in qat.layers)
    info = export.inspect(convert_int8(qat, tmp_path / "seq.tflite"))
    assert info.float_compute_ops() == [] and info.op_histogram["SOFTMAX"] == 1
    assert export.verify(tmp_path / "seq.tflite", qat, x).top1_agreement >= 0.95


def test_tiny_mlp_qat_exports_int8(tmp_path, convert_int8):
    model = testing.tiny_mlp()
    x = np.random.default_rng(1).normal(size=(64, 16)).astype("float32")
    qat = quantize.quantize_model(model, representative_data=x)
    info = export.inspect(convert_int8(qat, tmp_path / "mlp.tflite"))
    assert info.is_fully_integer()


def test_save_load_round_trip_and_keeps_training(qat_cnn, digits, tmp_path, compile_classifier):
    path = tmp_path / "qat.keras"
    qat_cnn.save(path)
    loaded = keras.saving.load_model(path)
    x = digits.x_test[:64]
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), qat_cnn.predict(x, verbose=0))
    assert quantize.is_quantization_aware(loaded)
    quantize.check_ranges_set(loaded)
    compile_classifier(loaded, lr=1e-3).fit(
        digits.x_train[:64], digits.y_train[:64], epochs=1, verbose=0
    )


def test_int8_io_for_qat(qat_cnn, digits, tmp_path):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(qat_cnn)
    quantize.configure_converter(converter, tf, int8_io=True)
    path = tmp_path / "io.tflite"
    path.write_bytes(converter.convert())
    info = export.inspect(path)
    assert info.inputs[0].dtype == "int8" and info.outputs[0].dtype == "int8"
    assert export.verify(path, qat_cnn, digits.x_test).top1_agreement >= 0.99


def test_to_tflite_int8_accepts_qat_model_without_data(qat_cnn, digits, tmp_path):
    result = export.to_tflite(qat_cnn, tmp_path / "m.tflite", mode="int8")
    assert result.quantization_aware and result.calibration_samples is None
    assert "ranges from quantization-aware training" in str(result)
    info = export.inspect(result.path)
    assert info.float_compute_ops() == [] and info.is_fully_integer()
    assert export.verify(result.path, qat_cnn, digits.x_test).top1_agreement >= 0.99

    io = export.to_tflite(qat_cnn, tmp_path / "io.tflite", mode="int8", int8_io=True)
    assert [t.dtype for t in export.inspect(io.path).inputs] == ["int8"]


def test_to_tflite_refuses_a_qat_model_that_never_saw_data(trained_cnn, tmp_path):
    fresh = quantize.quantize_model(trained_cnn)
    with pytest.raises(quantize.RangesNotSetError):
        export.to_tflite(fresh, tmp_path / "m.tflite", mode="int8")
    assert list(tmp_path.iterdir()) == []


_MIRRORED = """
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from tfcompress import quantize, testing
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    qat = quantize.quantize_model(testing.tiny_mlp())
    qat.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
rng = np.random.default_rng(0)
x, y = rng.normal(size=(64, 16)).astype("float32"), rng.integers(0, 4, 64)
qat.fit(x, y, epochs=1, batch_size=16, verbose=0)
quantize.check_ranges_set(qat)
print("OK", float(qat.get_layer("quant_hidden0").output_quantizer.range_max.numpy()))
"""


def test_fit_under_mirrored_strategy():
    """Two logical CPUs must be set before TF starts, hence a fresh process."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _MIRRORED], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "OK" in done.stdout
    assert float(done.stdout.split("OK")[1]) > 0
