import numpy as np
import pytest

from tfcompress import export, testing
from tfcompress.errors import VerificationError


@pytest.fixture(scope="module")
def int8_io_file(trained_cnn, digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("verify") / "io.tflite"
    return export.to_tflite(
        trained_cnn, path, mode="int8", representative_data=digits.x_train, int8_io=True
    ).path


def test_accuracy_matches_a_manual_count(int8_io_file, trained_cnn, digits):
    from tfcompress_edge.runner import TFLiteRunner

    result = export.verify(int8_io_file, trained_cnn, (digits.x_test, digits.y_test))
    logits = TFLiteRunner(int8_io_file).predict(digits.x_test)
    manual = float(np.mean(logits.argmax(-1) == digits.y_test))
    assert result.tflite_accuracy == pytest.approx(manual)
    keras_manual = float(
        np.mean(trained_cnn.predict(digits.x_test, verbose=0).argmax(-1) == digits.y_test)
    )
    assert result.keras_accuracy == pytest.approx(keras_manual)


def test_int8_scaling_is_applied_on_both_ends(int8_io_file, trained_cnn, digits):
    result = export.verify(int8_io_file, trained_cnn, digits.x_test)
    assert result.tflite_accuracy is None
    # Without input quantization and output dequantization the logits would be
    # off by orders of magnitude; with them they agree to a few output steps.
    logits = trained_cnn.predict(digits.x_test, verbose=0)
    assert result.max_abs_diff < 0.2 * np.abs(logits).max()
    assert result.top1_agreement >= 0.97


def test_dataset_and_max_samples(int8_io_file, trained_cnn, digits):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((digits.x_test, digits.y_test)).batch(16)
    result = export.verify(int8_io_file, trained_cnn, ds, max_samples=50)
    assert result.samples == 50


def test_a_different_model_fails_min_agreement(int8_io_file, digits):
    stranger = testing.digits_cnn(seed=123)
    with pytest.raises(VerificationError, match="agrees with model 'digits_cnn' on only"):
        export.verify(int8_io_file, stranger, digits.x_test, min_agreement=0.99)


def test_one_unit_sigmoid_output_agreement(tmp_path):
    import keras

    model = testing.tiny_mlp(num_classes=1)
    model = keras.Model(model.inputs, keras.layers.Activation("sigmoid")(model.outputs[0]))
    x = np.random.default_rng(0).normal(size=(64, 16)).astype("float32")
    path = export.to_tflite(model, tmp_path / "s.tflite").path
    result = export.verify(path, model, (x, (model.predict(x, verbose=0) > 0.5).astype(int)))
    assert result.top1_agreement == 1.0 and result.tflite_accuracy == 1.0


def test_an_exact_tie_for_first_agrees_with_either_class(tmp_path):
    """QAT logits sit on a grid: two classes can tie, argmax takes the lower index."""
    import keras

    def linear(kernel, bias):
        inputs = keras.Input((4,))
        model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(inputs))
        model.get_layer("logits").set_weights([np.asarray(kernel, "float32"), np.asarray(bias)])
        return model

    kernel = np.zeros((4, 3), "float32")
    kernel[:, :2] = 1.0  # classes 0 and 1 tie exactly, class 2 is constant below
    tied = linear(kernel, np.array([0.0, 0.0, -1.0], "float32"))
    x = np.abs(np.random.default_rng(0).normal(size=(16, 4))).astype("float32")
    one_ahead = export.to_tflite(
        linear(kernel, np.array([0.0, 1e-3, -1.0], "float32")), tmp_path / "a.tflite"
    )
    assert (
        export.verify(one_ahead.path, tied, x).top1_agreement == 1.0
    )  # file says 1, Keras ties 0/1
    other = export.to_tflite(
        linear(kernel, np.array([0.0, 0.0, 1e3], "float32")), tmp_path / "b.tflite"
    )
    assert export.verify(other.path, tied, x).top1_agreement == 0.0  # class 2 never ties for first
