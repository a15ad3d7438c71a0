"""Regression tests for the five bugs of issue 14 (found by running tfmot-style scenarios)."""

import keras
import numpy as np
import pytest


def test_tf_keras_teacher_with_uncalled_sequential_student(digits):
    """Bug 5: `model.input` of a never-called Keras 3 Sequential raised AttributeError."""
    import tf_keras

    from tfcompress import distill

    teacher = tf_keras.Sequential([tf_keras.Input((8, 8, 1)), tf_keras.layers.Flatten(),
                                   tf_keras.layers.Dense(10)])
    student = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                keras.layers.Dense(10)])
    d = distill.distiller(student=student, teacher=teacher)
    d.compile(optimizer="adam",
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = d.fit(digits.x_train[:64], digits.y_train[:64], epochs=1, batch_size=32, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    np.testing.assert_allclose(d.teacher.predict(digits.x_test[:8], verbose=0),
                               teacher.predict(digits.x_test[:8], verbose=0), atol=1e-5)
