"""Every bad input to to_tflite fails early, clearly, and leaves no file behind."""

import os

import numpy as np
import pytest

from tfcompress import export, testing
from tfcompress.errors import (
    CalibrationDataError,
    ModelNotBuiltError,
    UnsupportedModelError,
)


def test_model_not_built(no_leftovers):
    import keras

    folder, check = no_leftovers
    model = keras.Sequential([keras.layers.Dense(3)], name="lazy")
    with pytest.raises(ModelNotBuiltError, match="Model 'lazy' \\(Sequential\\) is not built"):
        export.to_tflite(model, folder / "m.tflite")
    check()


def test_folder_does_not_exist(trained_cnn, tmp_path):
    target = tmp_path / "missing" / "m.tflite"
    with pytest.raises(FileNotFoundError, match="folder .*missing.* does not exist"):
        export.to_tflite(trained_cnn, target)
    assert not target.parent.exists()


def test_path_is_a_folder(trained_cnn, tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder"):
        export.to_tflite(trained_cnn, tmp_path)


@pytest.mark.parametrize("path", [None, "", 3])
def test_path_is_not_a_file_name(trained_cnn, path):
    with pytest.raises(TypeError, match="must be a file name.*Received: path="):
        export.to_tflite(trained_cnn, path)


def test_unknown_mode(trained_cnn, no_leftovers):
    folder, check = no_leftovers
    with pytest.raises(ValueError, match="Unknown export mode 'int3'.*float32, float16"):
        export.to_tflite(trained_cnn, folder / "m.tflite", mode="int3")
    check()


@pytest.mark.parametrize("mode", ["int8", "int16x8"])
def test_full_integer_without_calibration_data(trained_cnn, no_leftovers, mode):
    folder, check = no_leftovers
    with pytest.raises(CalibrationDataError, match=f"mode='{mode}' needs representative_data"):
        export.to_tflite(trained_cnn, folder / "m.tflite", mode=mode)
    check()


def test_int8_io_needs_integer_mode(trained_cnn, no_leftovers):
    folder, check = no_leftovers
    with pytest.raises(ValueError, match="int8_io=True needs a full-integer mode"):
        export.to_tflite(trained_cnn, folder / "m.tflite", mode="float16", int8_io=True)
    check()


@pytest.mark.parametrize(
    "data, message",
    [
        (np.zeros((8, 28, 28, 1), "float32"), "input 'image' has shape \\(28, 28, 1\\)"),
        (np.full((8, 8, 8, 1), np.nan, "float32"), "NaN or inf"),
        (np.array(["a"] * 64).reshape(1, 8, 8, 1), "dtype <U1"),
    ],
)
def test_bad_calibration_data_keeps_the_old_file(trained_cnn, no_leftovers, data, message):
    folder, check = no_leftovers
    target = folder / "m.tflite"
    target.write_bytes(b"previous version")
    with pytest.raises(CalibrationDataError, match=message):
        export.to_tflite(trained_cnn, target, mode="int8", representative_data=data)
    assert target.read_bytes() == b"previous version"
    check("m.tflite")


def test_not_a_keras_model(no_leftovers):
    import tensorflow as tf

    folder, check = no_leftovers
    with pytest.raises(UnsupportedModelError, match="received an object of type .*Module"):
        export.to_tflite(tf.Module(), folder / "m.tflite")
    check()


def test_a_converter_failure_leaves_nothing(monkeypatch, trained_cnn, no_leftovers):
    from tfcompress.errors import ConversionError
    from tfcompress.export import convert

    folder, check = no_leftovers

    def broken(*args, **kwargs):
        raise RuntimeError("simulated converter crash")

    monkeypatch.setattr(convert, "_make_converter", broken)
    with pytest.raises(ConversionError, match="from_keras_model: RuntimeError: simulated"):
        export.to_tflite(trained_cnn, folder / "m.tflite")
    check()


def test_interrupted_write_leaves_no_temp_file(monkeypatch, trained_cnn, no_leftovers):
    from tfcompress import _io

    folder, check = no_leftovers
    real_replace = os.replace

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(_io.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export.to_tflite(testing.tiny_mlp(), folder / "m.tflite")
    monkeypatch.setattr(_io.os, "replace", real_replace)
    check()


def test_keras_quantized_model_is_refused_with_advice(trained_cnn, no_leftovers):
    import keras

    from tfcompress.errors import ConversionError

    folder, check = no_leftovers
    clone = keras.models.clone_model(trained_cnn)
    clone.set_weights(trained_cnn.get_weights())
    clone.quantize("int8")
    with pytest.raises(
        ConversionError, match="Layer 'dense' .*model.quantize\\('int8'\\).*Export the float model"
    ):
        export.to_tflite(
            clone,
            folder / "m.tflite",
            mode="int8",
            representative_data=np.zeros((4, 8, 8, 1), "float32"),
        )
    check()
