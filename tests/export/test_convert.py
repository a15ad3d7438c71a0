import os

import numpy as np
import pytest

from tfcompress import export

CONVERTER_MODES = ["float32", "float16", "dynamic", "int8", "int16x8"]


@pytest.fixture(scope="module")
def exported(trained_cnn, digits, tmp_path_factory):
    """Every mode of the digits CNN, written once for the whole module."""
    folder = tmp_path_factory.mktemp("modes")
    results = {}
    for mode in CONVERTER_MODES:
        results[mode] = export.to_tflite(
            trained_cnn,
            folder / f"{mode}.tflite",
            mode=mode,
            representative_data=digits.x_train,
        )
    return results


def test_available_modes():
    # The TFLite converter's modes, then litert-quantizer's (tests/export/test_lowbit.py).
    assert export.available_modes()[:5] == CONVERTER_MODES
    assert set(export.lowbit.lowbit_modes()) == set(export.available_modes()[5:])


@pytest.mark.parametrize("mode", ["float32", "float16", "dynamic", "int8", "int16x8"])
def test_every_mode_writes_a_verified_file(exported, trained_cnn, digits, mode):
    result = exported[mode]
    assert result.mode == mode
    assert os.path.getsize(result.path) == result.bytes
    assert 0 < result.gzip_bytes < result.bytes
    assert result.route == "from_keras_model"
    check = export.verify(result.path, trained_cnn, (digits.x_test, digits.y_test))
    assert check.samples == len(digits.x_test)
    assert check.keras_accuracy > 0.85
    assert check.top1_agreement >= (1.0 if mode == "float32" else 0.97)
    assert abs(check.tflite_accuracy - check.keras_accuracy) <= 0.02


def test_float32_is_exact_and_float(exported):
    info = export.inspect(exported["float32"].path)
    assert info.compute_dtypes() == {"CONV_2D": {"float32"}, "FULLY_CONNECTED": {"float32"}}
    assert "DEQUANTIZE" not in info.op_histogram


def test_float16_stores_half_precision_weights(exported):
    info = export.inspect(exported["float16"].path)
    dequantized = [op for op in info.ops if op.name == "DEQUANTIZE"]
    assert dequantized and all(op.input_dtypes == ("float16",) for op in dequantized)
    assert exported["float16"].bytes < 0.6 * exported["float32"].bytes


def test_dynamic_has_int8_weights_and_float_activations(exported):
    info = export.inspect(exported["dynamic"].path)
    dense = [op for op in info.ops if op.name == "FULLY_CONNECTED"]
    assert all(op.compute_dtype == "float32" for op in dense)
    # The converter leaves tensors under 1,024 elements (the 32x10 classifier) in float.
    assert [op.input_dtypes[1] for op in dense] == ["int8", "float32"]
    assert exported["dynamic"].calibration_samples is None


def test_int8_is_fully_integer_with_float_io(exported):
    result = exported["int8"]
    info = export.inspect(result.path)
    assert info.is_fully_integer()
    assert info.float_compute_ops() == []
    assert info.inputs[0].dtype == "float32" and info.outputs[0].dtype == "float32"
    assert result.calibration_samples == 200
    assert result.bytes < exported["float32"].bytes / 2.5


def test_int16x8_uses_int16_activations(exported):
    info = export.inspect(exported["int16x8"].path)
    assert info.compute_dtypes() == {"CONV_2D": {"int16"}, "FULLY_CONNECTED": {"int16"}}


def test_int8_io_makes_inputs_and_outputs_int8(trained_cnn, digits, tmp_path):
    result = export.to_tflite(
        trained_cnn,
        tmp_path / "m.tflite",
        mode="int8",
        representative_data=digits.x_train,
        int8_io=True,
    )
    info = export.inspect(result.path)
    assert [t.dtype for t in info.inputs + info.outputs] == ["int8", "int8"]
    assert info.inputs[0].scale > 0
    check = export.verify(result.path, trained_cnn, (digits.x_test, digits.y_test))
    assert check.top1_agreement >= 0.97


def test_calibration_sample_cap(trained_cnn, digits, tmp_path):
    result = export.to_tflite(
        trained_cnn,
        tmp_path / "m.tflite",
        mode="int8",
        representative_data=digits.x_train,
        max_calibration_samples=16,
    )
    assert result.calibration_samples == 16


def test_tf_keras_model_exports_int8(trained_tf_keras_cnn, digits, tmp_path):
    result = export.to_tflite(
        trained_tf_keras_cnn,
        tmp_path / "tfk.tflite",
        mode="int8",
        representative_data=digits.x_train,
    )
    assert export.inspect(result.path).is_fully_integer()
    check = export.verify(result.path, trained_tf_keras_cnn, (digits.x_test, digits.y_test))
    assert check.top1_agreement >= 0.97
    assert check.keras_accuracy > 0.85


def test_keras_hub_bert_goes_through_saved_model(trained_bert, bert_data, tmp_path):
    inputs, labels = bert_data
    float_result = export.to_tflite(trained_bert, tmp_path / "bert.tflite")
    assert float_result.route == "saved_model"
    exact = export.verify(float_result.path, trained_bert, (inputs, labels))
    assert exact.max_abs_diff < 1e-3 and exact.top1_agreement == 1.0

    int8 = export.to_tflite(
        trained_bert, tmp_path / "bert_int8.tflite", mode="int8", representative_data=inputs
    )
    info = export.inspect(int8.path)
    assert {"FULLY_CONNECTED": {"int8"}}.items() <= info.compute_dtypes().items()
    assert sorted(t.name for t in info.inputs) == ["padding_mask", "segment_ids", "token_ids"]
    check = export.verify(int8.path, trained_bert, (inputs, labels))
    assert check.top1_agreement >= 0.9


def test_result_str_mentions_sizes(exported):
    text = str(exported["int8"])
    assert "int8" in text and f"{exported['int8'].bytes:,}" in text


def test_multi_input_keras3_model(tmp_path):
    import keras

    a = keras.Input((4,), name="a")
    b = keras.Input((3,), name="b")
    out = keras.layers.Dense(2)(keras.layers.Concatenate()([a, b]))
    model = keras.Model([a, b], out)
    rng = np.random.default_rng(0)
    data = [rng.random((32, 4), dtype="float32"), rng.random((32, 3), dtype="float32")]
    result = export.to_tflite(model, tmp_path / "two.tflite", mode="int8", representative_data=data)
    assert result.calibration_samples == 32
    check = export.verify(result.path, model, data)
    assert check.max_abs_diff < 0.05
