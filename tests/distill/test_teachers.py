"""Teachers Keras's Distiller cannot take: tf_keras models, SavedModels, callables."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcompress import distill


def ce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def test_tf_keras_teacher_matches_and_distils(digits, trained_tf_keras_cnn, small_student_factory):
    wrapped = distill.as_teacher(trained_tf_keras_cnn)
    assert isinstance(wrapped, keras.Model) and not wrapped.trainable
    np.testing.assert_allclose(
        wrapped.predict(digits.x_test, verbose=0),
        trained_tf_keras_cnn.predict(digits.x_test, verbose=0),
        atol=1e-5,
    )
    before = [w.copy() for w in trained_tf_keras_cnn.get_weights()]
    d = distill.distiller(small_student_factory(), trained_tf_keras_cnn)
    d.compile(optimizer="adam", loss=ce())
    history = d.fit(digits.x_train[:256], digits.y_train[:256], epochs=2, batch_size=64, verbose=0)
    assert history.history["distillation_loss"][-1] < history.history["distillation_loss"][0]
    for b, a in zip(before, trained_tf_keras_cnn.get_weights(), strict=False):
        np.testing.assert_array_equal(b, a)


def test_saved_model_teacher(tmp_path, digits, trained_cnn, small_student_factory):
    path = str(tmp_path / "teacher")
    trained_cnn.export(path, verbose=False)
    student = small_student_factory()
    wrapped = distill.as_teacher(path, like=student)
    np.testing.assert_allclose(
        wrapped.predict(digits.x_test, verbose=0),
        trained_cnn.predict(digits.x_test, verbose=0),
        atol=1e-5,
    )
    d = distill.distiller(student, path)
    d.compile(optimizer="adam", loss=ce())
    d.fit(digits.x_train[:128], digits.y_train[:128], epochs=1, batch_size=64, verbose=0)


def test_callable_teacher(digits, trained_cnn, small_student_factory):
    fn = tf.function(lambda x: trained_cnn(x, training=False) * 2.0)
    wrapped = distill.as_teacher(fn, like=small_student_factory())
    np.testing.assert_allclose(
        wrapped.predict(digits.x_test[:8], verbose=0),
        2 * trained_cnn.predict(digits.x_test[:8], verbose=0),
        atol=1e-5,
    )


def test_bad_teachers(tmp_path, small_student_factory):
    with pytest.raises(TypeError, match="Received: teacher of type"):
        distill.as_teacher(42)
    with pytest.raises(FileNotFoundError, match="not a SavedModel folder"):
        distill.as_teacher(str(tmp_path), like=small_student_factory())
    with pytest.raises(ValueError, match="like=student"):
        distill.as_teacher(lambda x: x)
