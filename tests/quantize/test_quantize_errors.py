"""Bad input: one clear error each."""

import keras
import numpy as np
import pytest

from tfcompress import quantize, testing
from tfcompress.errors import UnsupportedModelError
from tfcompress.quantize import (
    AlreadyQuantizedError,
    QuantizeConfig,
    RangesNotSetError,
    UnsupportedLayerError,
)


class Scale(keras.layers.Layer):
    """A custom layer the transform has no rule for."""

    def call(self, x):
        return x * 2.0


def _model_with_custom_layer():
    inp = keras.Input((8,), name="x")
    h = keras.layers.Dense(8, name="fc")(inp)
    h = Scale(name="my_scale")(h)
    return keras.Model(inp, keras.layers.Dense(3, name="head")(h))


def test_strict_mode_names_the_unsupported_layer_and_says_what_to_do():
    with pytest.raises(UnsupportedLayerError) as e:
        quantize.quantize_model(_model_with_custom_layer(), QuantizeConfig(strict=True))
    message = str(e.value)
    assert "'my_scale'" in message and "Scale" in message
    assert "skip_layers=('my_scale',)" in message and "quantize=False" in message
    assert "register_layer" in message and "Received: " in message


def test_unknown_layer_is_kept_float_by_default_and_reported():
    qat = quantize.quantize_model(
        _model_with_custom_layer(), representative_data=np.ones((8, 8), "float32")
    )
    assert type(qat.get_layer("my_scale")).__name__ == "Scale"
    rows = {row[0]: row for row in qat.quantize_report.kept_float}
    assert rows["my_scale"][1] == "Scale" and "no int8 rule" in rows["my_scale"][2]
    assert "my_scale" in str(qat.quantize_report)
    assert {r[0] for r in qat.quantize_report.quantized} == {"fc", "head"}


def test_skip_layers_keeps_the_unsupported_layer_in_float():
    model = _model_with_custom_layer()
    qat = quantize.quantize_model(
        model,
        QuantizeConfig(skip_layers=("my_scale",)),
        representative_data=np.ones((8, 8), "float32"),
    )
    assert type(qat.get_layer("my_scale")).__name__ == "Scale"
    assert ("my_scale", "Scale", "QuantizeConfig.skip_layers") in qat.quantize_report.kept_float
    # the Dense after the float layer gets its own input quantizer
    assert "my_scale_quant" in [layer.name for layer in qat.layers]


def test_unknown_skip_layer_name():
    with pytest.raises(ValueError, match="does not have"):
        quantize.quantize_model(testing.tiny_mlp(), QuantizeConfig(skip_layers=("nope",)))


def test_subclassed_model():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.fc = keras.layers.Dense(2)

        def call(self, x):
            return self.fc(x)

    net = Net()
    net(np.ones((1, 4), "float32"))
    net.build((None, 4))
    with pytest.raises(UnsupportedModelError, match="subclassed"):
        quantize.quantize_model(net)


def test_not_a_model():
    with pytest.raises(UnsupportedModelError):
        quantize.quantize_model(object())


def test_already_quantized_ours(qat_cnn):
    with pytest.raises(AlreadyQuantizedError, match="already has fake-quant"):
        quantize.quantize_model(qat_cnn)


def test_already_quantized_by_keras_model_quantize():
    model = testing.tiny_mlp()
    model.quantize("int8")
    with pytest.raises(AlreadyQuantizedError, match="model.quantize"):
        quantize.quantize_model(model)


@pytest.mark.parametrize("bad", ["int3", "int16", 8, None])
def test_unsupported_weight_scheme(bad):
    with pytest.raises(ValueError, match="Received: weight_scheme="):
        QuantizeConfig(weight_scheme=bad)


@pytest.mark.parametrize("bits", [3, 5, 16, 0])
def test_unsupported_num_bits(bits):
    with pytest.raises(ValueError, match=f"Received: num_bits={bits}"):
        quantize.schemes.scheme_for_bits(bits)


def test_bad_config_values():
    with pytest.raises(ValueError, match="calibration"):
        QuantizeConfig(calibration="kl")
    with pytest.raises(ValueError, match="ema_decay"):
        QuantizeConfig(ema_decay=1.0)
    with pytest.raises(TypeError, match="QuantizeConfig"):
        quantize.quantize_model(testing.tiny_mlp(), config={"weight_scheme": "int4"})


def test_ranges_never_set_is_detected_before_export():
    qat = quantize.quantize_model(testing.tiny_mlp())
    assert quantize.is_quantization_aware(qat)
    with pytest.raises(RangesNotSetError, match="never saw data") as e:
        quantize.check_ranges_set(qat)
    assert "calibrate" in str(e.value) and "fit" in str(e.value)
    quantize.calibrate(qat, np.ones((4, 16), "float32"))
    quantize.check_ranges_set(qat)


def test_is_quantization_aware_false_for_float_and_non_models(float_cnn):
    assert not quantize.is_quantization_aware(float_cnn)
    assert not quantize.is_quantization_aware(object())


def test_calibrating_a_model_with_nothing_to_quantize_says_so():
    import keras
    import numpy as np

    model = keras.Sequential(
        [keras.Input((4, 4)), keras.layers.Flatten(), keras.layers.Dropout(0.1)], name="passthrough"
    )
    with pytest.raises(
        ValueError,
        match=r"'passthrough' has no layer that int8 quantization "
        r"changes .*Dropout, Flatten",
    ):
        quantize.quantize_model(model, representative_data=np.zeros((8, 4, 4), "float32"))
