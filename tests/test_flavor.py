import types

import pytest

from tfcompress import _flavor, testing
from tfcompress.errors import ModelNotBuiltError, UnsupportedModelError


def test_keras3_model():
    assert _flavor.flavor_of(testing.tiny_mlp()) == "keras3"


def test_tf_keras_model():
    assert _flavor.flavor_of(testing.tf_keras_digits_cnn()) == "tf_keras"


def test_keras_hub_model():
    model = testing.tiny_bert_classifier()
    assert _flavor.flavor_of(model) == "keras_hub"
    assert _flavor.flavor_of(model.backbone) == "keras_hub"
    assert _flavor.is_keras3_model(model)


@pytest.mark.parametrize("thing", [object(), "model.keras", types.SimpleNamespace(built=True)])
def test_other_objects_are_refused(thing):
    with pytest.raises(UnsupportedModelError, match="Expected a Keras model"):
        _flavor.flavor_of(thing)


def test_tf_module_is_refused():
    import tensorflow as tf

    with pytest.raises(TypeError, match="tensorflow.*Module"):
        _flavor.flavor_of(tf.Module())


def test_a_torch_like_object_is_refused_without_importing_anything():
    Fake = type("Linear", (), {"__module__": "torch.nn.modules.linear"})
    with pytest.raises(UnsupportedModelError, match="torch.nn.modules.linear.Linear"):
        _flavor.flavor_of(Fake())


def test_check_built():
    import keras

    _flavor.check_built(testing.tiny_mlp())
    with pytest.raises(ModelNotBuiltError, match="call it once on a batch"):
        _flavor.check_built(keras.Sequential([keras.layers.Dense(2)]))
