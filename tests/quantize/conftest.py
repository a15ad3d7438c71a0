"""Fixtures of the quantization tests (`digits`, `trained_cnn` come from tests/conftest.py)."""

import os

import numpy as np
import pytest


def _compile_classifier(model, lr=3e-3, from_logits=True):
    import keras

    model.compile(
        keras.optimizers.Adam(lr),
        keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
        metrics=["accuracy"],
    )
    return model


@pytest.fixture(scope="session")
def float_cnn(trained_cnn):
    """The digits CNN trained in float (Keras 3): tests/conftest.py's `trained_cnn`.

    Never modified here: every test quantizes a copy.
    """
    return trained_cnn


@pytest.fixture(scope="session")
def qat_cnn(float_cnn, digits):
    """`float_cnn` after quantize_model and two epochs of QAT fit()."""
    from tfcompress import quantize

    qat = _compile_classifier(quantize.quantize_model(float_cnn), lr=1e-3)
    qat.fit(digits.x_train, digits.y_train, epochs=2, batch_size=32, verbose=0)
    return qat


def _convert_int8(model, path):
    """Plain converter, optimizations=[DEFAULT], NO representative data (the QAT route)."""
    import tensorflow as tf

    from tfcompress.quantize import configure_converter

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    configure_converter(converter, tf)
    data = converter.convert()
    with open(path, "wb") as f:
        f.write(data)
    return os.fspath(path)


def _accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))


@pytest.fixture(scope="session")
def qat_cnn_tflite(qat_cnn, tmp_path_factory):
    return _convert_int8(qat_cnn, tmp_path_factory.mktemp("qat") / "digits_qat_int8.tflite")


@pytest.fixture(scope="session")
def compile_classifier():
    """`compile_classifier(model, lr=3e-3, from_logits=True)`: Adam + sparse CE + accuracy."""
    return _compile_classifier


@pytest.fixture(scope="session")
def convert_int8():
    """`convert_int8(model, path)`: the plain converter with no representative data."""
    return _convert_int8


@pytest.fixture(scope="session")
def accuracy():
    """`accuracy(model, x, y)`: top-1 accuracy of a Keras model."""
    return _accuracy
