"""QAT files that are fully integer and faithful (issue 18.1, 18.2; issue 17.1 elementwise layers).

Every model here is trained briefly on digits first (so biases and BatchNorm
statistics move away from their initial values and outputs carry signal),
quantized, trained one QAT epoch, exported without representative data, and
checked op by op with `export.inspect` and against the QAT model with
`export.verify`.
"""

import keras
import numpy as np
import pytest

from tfcompress import export, quantize

L = keras.layers


def _train(model, digits, compile_classifier, epochs=3):
    compile_classifier(model)
    model.fit(digits.x_train, digits.y_train, epochs=epochs, batch_size=32, verbose=0)
    return model


def _qat_file(model, digits, tmp_path, compile_classifier, convert_int8, config=None):
    qat = quantize.quantize_model(model, config, representative_data=digits.x_train[:128])
    compile_classifier(qat, lr=1e-3)
    qat.fit(digits.x_train, digits.y_train, epochs=1, batch_size=32, verbose=0)
    path = convert_int8(qat, tmp_path / f"{model.name}.tflite")
    return qat, path, export.inspect(path)


def _only_edges_float(info):
    """Every op but the first QUANTIZE and the last DEQUANTIZE computes on int8."""
    inner = [op for op in info.ops if op.name not in ("QUANTIZE", "DEQUANTIZE")]
    return [op for op in inner if not str(op.compute_dtype).startswith("int")]


@pytest.mark.slow
def test_dense_on_feature_maps_with_nonzero_bias_is_one_int8_fully_connected(
    digits, tmp_path, compile_classifier, convert_int8
):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inp)
    x = L.Dense(16, activation="relu", name="token_fc")(x)  # rank-4 input
    x = L.Reshape((64, 16), name="tokens")(x)
    x = L.Dense(8, name="token_fc2")(x)  # rank-3 input, linear
    x = L.GlobalAveragePooling1D(name="gap")(x)
    out = L.Dense(10, name="logits")(x)
    model = _train(keras.Model(inp, out, name="dense_maps"), digits, compile_classifier)
    for name in ("token_fc", "token_fc2"):
        assert np.abs(model.get_layer(name).bias.numpy()).max() > 1e-3  # biases moved
    qat, path, info = _qat_file(model, digits, tmp_path, compile_classifier, convert_int8)
    assert info.compute_dtypes()["FULLY_CONNECTED"] == {"int8"}, info.summary()
    assert info.op_histogram["FULLY_CONNECTED"] == 3
    assert "ADD" not in info.op_histogram  # every bias fused into its FULLY_CONNECTED
    assert _only_edges_float(info) == []
    result = export.verify(path, qat, (digits.x_test, digits.y_test))
    assert result.top1_agreement >= 0.97 and result.cosine >= 0.99, result


@pytest.mark.slow
def test_batchnorm_after_concatenate_becomes_an_int8_depthwise_conv(
    digits, tmp_path, compile_classifier, convert_int8
):
    keras.utils.set_random_seed(1)
    inp = keras.Input((8, 8, 1))
    a = L.Conv2D(8, 3, padding="same", name="a")(inp)
    b = L.Conv2D(8, 1, name="b")(inp)
    x = L.Concatenate(name="cat")([a, b])
    x = L.BatchNormalization(name="pre_bn")(x)  # DenseNet's pre-activation BN: not foldable
    x = L.ReLU(name="relu")(x)
    x = L.Conv2D(16, 3, name="c")(x)
    x = L.BatchNormalization(name="c_bn")(x)  # foldable
    x = L.GlobalAveragePooling2D(name="gap")(x)
    out = L.Dense(10, name="logits")(x)
    model = _train(keras.Model(inp, out, name="densenet_like"), digits, compile_classifier)
    assert np.abs(model.get_layer("pre_bn").moving_mean.numpy()).max() > 1e-2
    qat, path, info = _qat_file(model, digits, tmp_path, compile_classifier, convert_int8)
    assert dict(qat.quantize_report.folded_batchnorm) == {"c": "c_bn"}
    hist = info.op_histogram
    assert hist["DEPTHWISE_CONV_2D"] == 1 and hist["CONV_2D"] == 3, info.summary()
    assert "MUL" not in hist and "ADD" not in hist  # no BatchNorm lowered to MUL + ADD
    assert _only_edges_float(info) == []
    result = export.verify(path, qat, (digits.x_test, digits.y_test))
    assert result.top1_agreement >= 0.97 and result.cosine >= 0.99, result


def _hard_sigmoid(x):
    return L.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)  # as keras.applications.MobileNetV3 writes it


@pytest.mark.slow
def test_elementwise_layers_of_mobilenet_v3_and_efficientnet_are_int8(
    digits, tmp_path, compile_classifier, convert_int8
):
    keras.utils.set_random_seed(2)
    inp = keras.Input((8, 8, 1))
    x = L.Rescaling(2.0, offset=-1.0, name="rescale")(inp)
    x = L.Normalization(mean=0.0, variance=0.5, name="norm")(x)
    x = L.Conv2D(16, 3, padding="same", name="stem")(x)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.Activation("hard_swish", name="hswish")(x)
    se = L.GlobalAveragePooling2D(keepdims=True, name="se_pool")(x)
    se = L.Conv2D(4, 1, activation="relu", name="se_reduce")(se)
    se = _hard_sigmoid(L.Conv2D(16, 1, name="se_expand")(se))
    x = L.Multiply(name="se_mul")([x, se])
    x = L.Conv2D(16, 3, activation="swish", name="swish_conv")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    out = L.Dense(10, name="logits")(x)
    model = _train(keras.Model(inp, out, name="mbv3_like"), digits, compile_classifier)
    qat, path, info = _qat_file(model, digits, tmp_path, compile_classifier, convert_int8)
    report = qat.quantize_report
    assert report.kept_float == ()
    assert {"rescale", "norm", "hswish", "se_mul"} <= {r[0] for r in report.quantized}
    assert _only_edges_float(info) == [], info.summary()
    result = export.verify(path, qat, (digits.x_test, digits.y_test))
    assert result.top1_agreement >= 0.95 and result.cosine >= 0.99, result
