"""tf_keras models go to tfmot; annotation keeps chosen layers in float."""

import keras
import numpy as np
import pytest

from tfcompress import export, quantize, testing
from tfcompress.quantize import QuantizeConfig


def test_tf_keras_model_goes_to_tfmot(digits):
    model = testing.tf_keras_digits_cnn()
    qat = quantize.quantize_model(model)
    assert type(qat).__module__.startswith("tf_keras")
    kinds = {type(layer).__name__ for layer in qat.layers}
    assert {"QuantizeLayer", "QuantizeWrapperV2"} <= kinds
    assert quantize.is_quantization_aware(qat)
    quantize.check_ranges_set(qat)  # not checked for tfmot models: no error
    with pytest.raises(quantize.AlreadyQuantizedError):
        quantize.quantize_model(qat)


def test_tf_keras_skip_layers_and_options():
    model = testing.tf_keras_digits_cnn()
    qat = quantize.quantize_model(model, QuantizeConfig(skip_layers=("logits",)))
    assert type(qat.get_layer("logits")).__name__ == "Dense"
    np.testing.assert_array_equal(
        qat.get_layer("logits").kernel.numpy(), model.get_layer("logits").kernel.numpy()
    )
    with pytest.raises(ValueError, match="tfmot"):
        quantize.quantize_model(model, QuantizeConfig(weight_scheme="int4"))


def test_tf_keras_annotate_apply_and_scope(tmp_path):
    import tf_keras

    inp = tf_keras.Input((16,))
    h = quantize.quantize_annotate_layer(tf_keras.layers.Dense(8, name="body"))(inp)
    model = tf_keras.Model(inp, tf_keras.layers.Dense(2, name="head")(h))
    qat = quantize.quantize_apply(model)
    assert type(qat.get_layer("quant_body")).__name__ == "QuantizeWrapperV2"
    assert type(qat.get_layer("head")).__name__ == "Dense"
    path = str(tmp_path / "tfmot.h5")
    qat.save(path)
    with quantize.quantize_scope():
        loaded = tf_keras.models.load_model(path)
    assert quantize.is_quantization_aware(loaded)


def test_keep_a_layer_in_float_with_annotation(tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((16,), name="x")
    h = keras.layers.Dense(8, activation="relu", name="body")(inp)
    head = quantize.quantize_annotate_layer(keras.layers.Dense(3, name="head"), quantize=False)
    model = keras.Model(inp, head(h))
    x = np.random.default_rng(0).normal(size=(64, 16)).astype("float32")
    qat = quantize.quantize_model(model, representative_data=x)
    assert type(qat.get_layer("head")).__name__ == "Dense"
    assert qat.quantize_report.kept_float[0][0] == "head"

    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(qat)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    path = tmp_path / "mixed.tflite"
    path.write_bytes(converter.convert())
    fcs = [op for op in export.inspect(path).ops if op.name == "FULLY_CONNECTED"]
    assert sorted(op.compute_dtype for op in fcs) == ["float32", "int8"]


def test_quantize_apply_only_annotated():
    inp = keras.Input((16,))
    h = quantize.quantize_annotate_layer(keras.layers.Dense(8, name="body"))(inp)
    model = keras.Model(inp, keras.layers.Dense(2, name="head")(h))
    qat = quantize.quantize_apply(model)
    assert type(qat.get_layer("quant_body")).__name__ == "QuantizeWrapper"
    assert type(qat.get_layer("head")).__name__ == "Dense"


def test_annotate_argument_errors():
    import tf_keras

    with pytest.raises(ValueError, match="Received: quantize_config="):
        quantize.quantize_annotate_layer(keras.layers.Dense(2), quantize_config=object())
    with pytest.raises(ValueError, match="Received: weight_scheme="):
        quantize.quantize_annotate_layer(tf_keras.layers.Dense(2), weight_scheme="int4")
