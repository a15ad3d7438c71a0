"""Shared, trained-once fixtures for the pruning tests (tiny models, few epochs)."""

import numpy as np
import pytest


@pytest.fixture(scope="session")
def digits():
    from tfcompress.data import load_digits

    return load_digits()


def _train(model, digits, epochs, loss):
    model.compile("adam", loss, metrics=["accuracy"])
    model.fit(digits.x_train, digits.y_train, epochs=epochs, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="session")
def trained_cnn(digits):
    """The Keras 3 digits CNN, trained to ~90% test accuracy."""
    import keras

    from tfcompress import testing

    return _train(
        testing.digits_cnn(),
        digits,
        8,
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )


@pytest.fixture(scope="session")
def trained_tf_keras_cnn(digits):
    """The tf_keras twin of `trained_cnn`."""
    import tf_keras

    from tfcompress import testing

    return _train(
        testing.tf_keras_digits_cnn(),
        digits,
        8,
        tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )


@pytest.fixture
def mlp_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 16)).astype("float32")
    y = (x[:, :4].argmax(axis=1)).astype("int32")
    return x, y
