"""remove_units: layers really shrink, the next layer (and BatchNorm) is rewired exactly."""

import keras
import numpy as np
import pytest

from tfcompress import prune, testing
from tfcompress.testing import accuracy


def _bn_cnn(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(16, 3, padding="same", name="c0")(inputs)
    x = keras.layers.BatchNormalization(name="bn0")(x)
    x = keras.layers.ReLU(name="relu0")(x)
    x = keras.layers.MaxPooling2D(name="pool0")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="c1")(x)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(64, activation="relu", name="d")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name="bn_cnn")


@pytest.fixture(scope="module")
def trained_bn_cnn(digits):
    model = _bn_cnn()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(digits.x_train, digits.y_train, epochs=4, batch_size=32, verbose=0)
    return model


def _removed(kernel, fraction):
    norms = np.abs(kernel.reshape(-1, kernel.shape[-1])).sum(axis=0)
    n_drop = int(round(fraction * kernel.shape[-1]))
    return np.argsort(-norms, kind="stable")[kernel.shape[-1] - n_drop :]


def test_removing_filters_equals_cutting_their_paths(trained_bn_cnn, digits):
    """Shrinking c1 before Flatten -> Dense gives what the big model gives with those
    filters' Dense rows zeroed (Flatten interleaves channels: rows p * C + c)."""
    small = prune.remove_units(trained_bn_cnn, {"c1": 0.5})
    assert small.get_layer("c1").filters == 16
    assert small.get_layer("d").kernel.shape == (4 * 4 * 16, 64)
    dropped = _removed(np.asarray(trained_bn_cnn.get_layer("c1").kernel), 0.5)
    reference = keras.models.clone_model(trained_bn_cnn)
    reference.set_weights(trained_bn_cnn.get_weights())
    kernel = np.asarray(reference.get_layer("d").kernel).copy()
    rows = (np.arange(16)[:, None] * 32 + dropped[None, :]).ravel()
    kernel[rows] = 0
    reference.get_layer("d").kernel.assign(kernel)
    np.testing.assert_allclose(
        small.predict(digits.x_test, verbose=0),
        reference.predict(digits.x_test, verbose=0),
        atol=1e-4,
    )


def test_batchnorm_is_sliced_with_its_conv(trained_bn_cnn, digits):
    small = prune.remove_units(trained_bn_cnn, {"c0": 0.25})
    assert small.get_layer("c0").filters == 12
    assert small.get_layer("bn0").gamma.shape == (12,)
    assert small.get_layer("c1").kernel.shape == (3, 3, 12, 32)
    dropped = _removed(np.asarray(trained_bn_cnn.get_layer("c0").kernel), 0.25)
    reference = keras.models.clone_model(trained_bn_cnn)
    reference.set_weights(trained_bn_cnn.get_weights())
    kernel = np.asarray(reference.get_layer("c1").kernel).copy()
    kernel[:, :, dropped, :] = 0
    reference.get_layer("c1").kernel.assign(kernel)
    np.testing.assert_allclose(
        small.predict(digits.x_test, verbose=0),
        reference.predict(digits.x_test, verbose=0),
        atol=1e-4,
    )


def test_half_the_units_halves_params_and_macs_and_fine_tunes(trained_bn_cnn, digits):
    small = prune.remove_units(trained_bn_cnn, 0.5)
    assert small.get_layer("logits").units == 10  # a model output: never shrunk
    assert small.count_params() < 0.3 * trained_bn_cnn.count_params()
    assert prune.count_macs(small) < 0.5 * prune.count_macs(trained_bn_cnn)
    before = [w.copy() for w in trained_bn_cnn.get_weights()]
    small.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    small.fit(digits.x_train, digits.y_train, epochs=3, batch_size=32, verbose=0)
    assert (
        accuracy(small, digits.x_test, digits.y_test)
        >= accuracy(trained_bn_cnn, digits.x_test, digits.y_test) - 0.05
    )
    for a, b in zip(before, trained_bn_cnn.get_weights(), strict=False):
        np.testing.assert_array_equal(a, b)


def test_sequential_and_l2():
    model = keras.Sequential(
        [
            keras.Input((16,)),
            keras.layers.Dense(8, name="a"),
            keras.layers.Dropout(0.1),
            keras.layers.Dense(3, name="b"),
        ]
    )
    small = prune.remove_units(model, 0.5, criterion="l2")
    assert small.get_layer("a").units == 4 and small.get_layer("b").kernel.shape == (4, 3)


def test_taylor_criterion(trained_bn_cnn, digits):
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    small = prune.remove_units(
        trained_bn_cnn,
        {"d": 0.5},
        criterion="taylor",
        importance_data=(digits.x_train[:128], digits.y_train[:128]),
        importance_loss=loss,
    )
    assert small.get_layer("d").units == 32
    by_norm = prune.remove_units(trained_bn_cnn, {"d": 0.5})
    # Different evidence, (almost surely) a different choice of units.
    assert not np.array_equal(
        np.asarray(small.get_layer("logits").kernel), np.asarray(by_norm.get_layer("logits").kernel)
    )
    with pytest.raises(ValueError, match="importance_data=.*importance_loss"):
        prune.remove_units(trained_bn_cnn, 0.5, criterion="taylor")


def test_remove_units_bad_input(trained_cnn, trained_tf_keras_cnn):
    with pytest.raises(ValueError, match=r"Received: fraction=1.0 for layer 'dense'"):
        prune.remove_units(trained_cnn, {"dense": 1.0})
    with pytest.raises(ValueError, match="Received: criterion='l3'"):
        prune.remove_units(trained_cnn, 0.5, criterion="l3")
    with pytest.raises(ValueError, match=r"does not have: \['nope'\]"):
        prune.remove_units(trained_cnn, {"nope": 0.5})
    with pytest.raises(NotImplementedError, match="tf_keras"):
        prune.remove_units(trained_tf_keras_cnn, 0.5)
    inputs = keras.Input((4,))
    a = keras.layers.Dense(4, name="a")(inputs)
    model = keras.Model(inputs, keras.layers.Add()([a, inputs]))
    with pytest.raises(prune.NoPrunableLayersError, match="a: its output goes to|'add'"):
        prune.remove_units(model, 0.5)
    mlp = testing.tiny_mlp()
    assert prune.remove_units(mlp, 0.5).get_layer("hidden0").units == 16
