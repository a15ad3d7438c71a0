"""Layer coverage of the QAT transform (issues 17.2, 17.3, 14): each rule ends in int8 ops.

Small models on digits (images, or rows of an image as a sequence), trained
briefly so outputs carry signal, then QAT -> int8 file -> op dtypes and
agreement with the QAT model.
"""

import keras
import numpy as np
import pytest

from tfcompress import export, quantize
from tfcompress.quantize import LayerHandler, QuantizeConfig

L = keras.layers


def _trained(model, x, y, compile_classifier, epochs=3):
    compile_classifier(model)
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return model


def _qat_file(model, x, y, tmp_path, compile_classifier, convert_int8):
    qat = quantize.quantize_model(model, representative_data=x[:128])
    compile_classifier(qat, lr=1e-3)
    qat.fit(x, y, epochs=1, batch_size=32, verbose=0)
    path = convert_int8(qat, tmp_path / f"{model.name}.tflite")
    return qat, path, export.inspect(path)


def _agrees(path, qat, x, y, top1=0.95):
    result = export.verify(path, qat, (x, y))
    assert result.top1_agreement >= top1 and result.cosine >= 0.99, result


@pytest.mark.slow
def test_separable_and_transposed_convolutions_are_int8(
    digits, tmp_path, compile_classifier, convert_int8
):
    keras.utils.set_random_seed(4)
    inp = keras.Input((8, 8, 1))
    x = L.SeparableConv2D(8, 3, padding="same", activation="relu", name="sep")(inp)
    x = L.BatchNormalization(name="sep_bn")(x)  # not foldable into a separable conv
    x = L.Conv2DTranspose(8, 3, strides=2, padding="same", name="up")(x)
    x = L.SeparableConv2D(16, 3, strides=2, name="sep2")(x)
    x = L.GlobalMaxPooling2D(name="gmp")(x)
    model = keras.Model(inp, L.Dense(10, name="logits")(x), name="separable")
    _trained(model, digits.x_train, digits.y_train, compile_classifier)
    qat, path, info = _qat_file(
        model, digits.x_train, digits.y_train, tmp_path, compile_classifier, convert_int8
    )
    assert {"sep", "sep2", "up"} <= {r[0] for r in qat.quantize_report.quantized}
    hist = info.op_histogram
    # each separable conv: DEPTHWISE_CONV_2D + 1x1 CONV_2D; the BatchNorm: a 1x1 depthwise
    assert hist["DEPTHWISE_CONV_2D"] == 3 and hist["CONV_2D"] == 2, info.summary()
    assert hist["TRANSPOSE_CONV"] == 1
    assert info.float_compute_ops() == [], info.summary()
    transpose = next(op for op in info.ops if op.name == "TRANSPOSE_CONV")
    assert transpose.input_dtypes[1:3] == ("int8", "int8")  # weights and activations
    _agrees(path, qat, digits.x_test, digits.y_test)


@pytest.mark.slow
def test_sequence_layers_conv1d_separable1d_pooling_1d(
    digits, tmp_path, compile_classifier, convert_int8
):
    keras.utils.set_random_seed(5)
    x_train, x_test = digits.x_train[..., 0], digits.x_test[..., 0]  # 8 rows of 8 pixels
    inp = keras.Input((8, 8))
    x = L.Conv1D(16, 3, padding="same", activation="relu", name="conv1d")(inp)
    x = L.SeparableConv1D(16, 3, padding="same", name="sep1d")(x)
    x = L.MaxPooling1D(2, name="maxp")(x)
    x = L.AveragePooling1D(2, name="avgp")(x)
    x = L.GlobalAveragePooling1D(name="gap")(x)
    model = keras.Model(inp, L.Dense(10, name="logits")(x), name="seq1d")
    _trained(model, x_train, digits.y_train, compile_classifier, epochs=5)
    qat, path, info = _qat_file(
        model, x_train, digits.y_train, tmp_path, compile_classifier, convert_int8
    )
    assert info.op_histogram["CONV_2D"] == 2 and info.op_histogram["DEPTHWISE_CONV_2D"] == 1
    assert info.float_compute_ops() == [], info.summary()
    _agrees(path, qat, x_test, digits.y_test)


@pytest.mark.slow
def test_volumes_conv3d_cropping3d_global_pooling_3d(
    digits, tmp_path, compile_classifier, convert_int8
):
    keras.utils.set_random_seed(6)
    x_train = np.repeat(digits.x_train[:, None], 4, axis=1)  # (n, 4, 8, 8, 1)
    x_test = np.repeat(digits.x_test[:, None], 4, axis=1)
    inp = keras.Input((4, 8, 8, 1))
    x = L.Conv3D(8, 3, padding="same", activation="relu", name="conv3d")(inp)
    x = L.Cropping3D(1, name="crop")(x)
    avg = L.GlobalAveragePooling3D(name="gap3d")(x)
    mx = L.GlobalMaxPooling3D(name="gmp3d")(x)
    x = L.Concatenate(name="cat")([avg, mx])
    model = keras.Model(inp, L.Dense(10, name="logits")(x), name="volumes")
    _trained(model, x_train, digits.y_train, compile_classifier)
    qat, path, info = _qat_file(
        model, x_train, digits.y_train, tmp_path, compile_classifier, convert_int8
    )
    report = qat.quantize_report
    assert report.kept_float == () and "conv3d" in {r[0] for r in report.quantized}
    # TFLite has no int8 CONV_3D kernel: it runs in float on the fake-quantized weights.
    assert [op.name for op in info.float_compute_ops()] == ["CONV_3D"]
    assert info.compute_dtypes()["FULLY_CONNECTED"] == {"int8"}
    _agrees(path, qat, x_test, digits.y_test)


@pytest.mark.slow
def test_functional_multi_head_attention_runs_int8_matmuls(
    digits, tmp_path, compile_classifier, convert_int8
):
    keras.utils.set_random_seed(7)
    x_train, x_test = digits.x_train[..., 0], digits.x_test[..., 0]
    inp = keras.Input((8, 8))
    h = L.Dense(16, name="embed")(inp)
    a = L.MultiHeadAttention(2, 8, name="mha")(h, h)
    h = L.LayerNormalization(name="ln")(L.Add(name="res")([h, a]))
    x = L.GlobalAveragePooling1D(name="gap")(h)
    model = keras.Model(inp, L.Dense(10, name="logits")(x), name="attention")
    _trained(model, x_train, digits.y_train, compile_classifier, epochs=5)
    qat, path, info = _qat_file(
        model, x_train, digits.y_train, tmp_path, compile_classifier, convert_int8
    )
    assert "mha" in {r[0] for r in qat.quantize_report.quantized}
    dtypes = info.compute_dtypes()
    assert dtypes["FULLY_CONNECTED"] == {"int8"} and dtypes["BATCH_MATMUL"] == {"int8"}
    assert info.op_histogram["FULLY_CONNECTED"] == 6  # embed, q, k, v, attention out, logits
    _agrees(path, qat, x_test, digits.y_test, top1=0.9)


def test_nested_sequential_is_inlined(digits, tmp_path, compile_classifier, convert_int8):
    keras.utils.set_random_seed(8)
    block = keras.Sequential(
        [
            keras.Input((8, 8, 8)),
            L.Conv2D(8, 3, padding="same", name="block_conv"),
            L.ReLU(name="block_relu"),
        ],
        name="block",
    )
    inp = keras.Input((8, 8, 1))
    x = block(L.Conv2D(8, 1, name="stem")(inp))
    x = L.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inp, L.Dense(10, name="logits")(x), name="nested")
    _trained(model, digits.x_train, digits.y_train, compile_classifier)
    qat, path, info = _qat_file(
        model, digits.x_train, digits.y_train, tmp_path, compile_classifier, convert_int8
    )
    assert "block_conv" in {r[0] for r in qat.quantize_report.quantized}
    assert info.compute_dtypes()["CONV_2D"] == {"int8"} and info.op_histogram["CONV_2D"] == 2
    # the input model's nested block keeps its own weights
    assert block.get_layer("block_conv") is not qat.get_layer("quant_block_conv").layer
    _agrees(path, qat, digits.x_test, digits.y_test)


class Scale(keras.layers.Layer):
    """Multiplies by `factor`, a call keyword (like `reverse=` of keras-hub's embedding)."""

    def call(self, x, factor=1.0):
        return x * factor


class Offset(keras.layers.Layer):
    """A weighted layer whose `get_config` emits a derived field `from_config` rejects."""

    def build(self, input_shape):
        self.offset = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x + self.offset

    def get_config(self):
        return {**super().get_config(), "derived_size": 8}


class Frozen(Offset):
    """A weighted layer that cannot be rebuilt from its config at all."""

    @classmethod
    def from_config(cls, config):
        raise TypeError("Frozen cannot be rebuilt")


def test_call_keywords_pass_through_and_failing_from_config_is_handled_and_reported():
    quantize.register_layer(Scale, LayerHandler("output"))
    inp = keras.Input((8,))
    h = L.Dense(8, name="fc")(inp)
    h = Scale(name="scale")(h, factor=3.0)
    h = Offset(name="offset")(h)
    h = Frozen(name="frozen")(h)
    model = keras.Model(inp, L.Dense(3, name="head")(h))
    x = np.random.default_rng(0).normal(size=(16, 8)).astype("float32")
    qat = quantize.quantize_model(model, representative_data=x)
    report = qat.quantize_report
    assert "scale" in {r[0] for r in report.quantized}
    fallbacks = {r[0]: r for r in report.shared}
    assert sorted(fallbacks) == ["frozen", "offset"] and "frozen" in str(report)
    # a derived config field is dropped and the layer rebuilt: its own weights
    assert "rebuilt without ['derived_size']" in fallbacks["offset"][2]
    assert qat.get_layer("offset") is not model.get_layer("offset")
    # a layer that cannot be rebuilt at all is reused, and the report says so
    assert "shared with the input model" in fallbacks["frozen"][2]
    assert qat.get_layer("frozen") is model.get_layer("frozen")
    assert {("offset", "Offset"), ("frozen", "Frozen")} <= {(r[0], r[1]) for r in report.kept_float}
    inner = keras.Model(qat.input, qat.get_layer("quant_scale").output)
    fc = keras.Model(model.input, model.get_layer("fc").output)
    np.testing.assert_allclose(inner(x), 3.0 * fc(x), rtol=0.05, atol=0.15)  # factor=3 kept
    np.testing.assert_allclose(qat(x), model(x), rtol=0.05, atol=0.25)


def test_strict_mode_refuses_the_unknown_layer():
    inp = keras.Input((8,))
    model = keras.Model(inp, Offset(name="offset")(L.Dense(8, name="fc")(inp)))
    with pytest.raises(quantize.UnsupportedLayerError, match="'offset'.*register_layer"):
        quantize.quantize_model(model, QuantizeConfig(strict=True))


class Shift(keras.layers.Layer):
    """A custom layer whose config leaves out what it computes."""

    def __init__(self, shift=0.0, **kwargs):
        super().__init__(**kwargs)
        self.shift = shift

    def call(self, x):
        return x + self.shift


def test_only_keras_layers_with_equal_configs_and_arguments_are_computed_once():
    # Twins (same class, config and call arguments on one tensor) are computed once, as
    # TensorFlow merges them before conversion; a custom layer's config may not say what
    # it computes, and other call arguments compute something else.
    quantize.register_layer(Shift, LayerHandler("output"))
    quantize.register_layer(Scale, LayerHandler("output"))
    inp = keras.Input((8,))
    h = L.Dense(8, name="fc")(inp)
    branches = [
        L.ReLU(name="relu_a")(h),
        L.ReLU(name="relu_b")(h),
        Shift(1.0, name="shift_a")(h),
        Shift(5.0, name="shift_b")(h),
        Scale(name="scale_a")(h, factor=2.0),
        Scale(name="scale_b")(h, factor=3.0),
    ]
    model = keras.Model(inp, L.Concatenate(name="cat")(branches))
    x = np.random.default_rng(0).normal(size=(16, 8)).astype("float32")

    qat = quantize.quantize_model(model, representative_data=x)

    names = {layer.name for layer in qat.layers}
    assert len({"quant_relu_a", "quant_relu_b"} & names) == 1
    assert {"quant_shift_a", "quant_shift_b", "quant_scale_a", "quant_scale_b"} <= names
    np.testing.assert_allclose(qat(x), model(x), rtol=0.05, atol=0.3)
