"""The wrapper base every engine shares: configs that load even when a layer's don't."""

import keras
import numpy as np
import pytest

from tfcompress import _layers, quantize


@keras.saving.register_keras_serializable(package="tfcompress_tests")
class DerivedDense(keras.layers.Dense):
    """A layer whose get_config writes a derived field its __init__ does not take
    (as keras-hub's ViTPatchingAndEmbedding writes num_patches)."""

    def get_config(self):
        return {**super().get_config(), "fan_out": self.units * 2}


def _model():
    inputs = keras.Input((6,))
    x = DerivedDense(8, activation="relu", name="derived")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(x))


def test_the_plain_config_really_fails():
    with pytest.raises(TypeError, match="fan_out"):
        DerivedDense.from_config(DerivedDense(4).get_config())


def test_deserialize_layer_retries_with_the_init_arguments():
    layer = _layers.deserialize_layer(keras.saving.serialize_keras_object(DerivedDense(4)))
    assert isinstance(layer, DerivedDense) and layer.units == 4


def test_a_wrapped_layer_with_a_derived_field_round_trips(tmp_path):
    model = _model()
    x = np.random.default_rng(0).normal(size=(16, 6)).astype("float32")
    qat = quantize.quantize_model(model, representative_data=x)
    qat.save(tmp_path / "qat.keras")
    loaded = keras.saving.load_model(tmp_path / "qat.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), qat.predict(x, verbose=0), atol=1e-6)


def test_a_config_that_fails_for_another_reason_still_fails():
    bad = keras.saving.serialize_keras_object(keras.layers.Dense(4))
    bad["config"]["units"] = "four"
    with pytest.raises((TypeError, ValueError)):
        _layers.deserialize_layer(bad)
