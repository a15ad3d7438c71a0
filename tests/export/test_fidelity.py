"""Fidelity numbers that cannot pass falsely: cosine, relative error, collapse, divergence."""

import numpy as np
import pytest

from tfcompress import export
from tfcompress.errors import VerificationError
from tfcompress.export.verification import first_divergence, locate_ops, output_spread


@pytest.fixture(scope="module")
def float_file(trained_cnn, tmp_path_factory):
    path = tmp_path_factory.mktemp("fidelity") / "float.tflite"
    return export.to_tflite(trained_cnn, path).path


def _tampered_copy(model, layer_name, scale):
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    layer = copy.get_layer(layer_name)
    kernel, bias = layer.get_weights()
    noise = np.random.default_rng(0).normal(0, scale * np.abs(kernel).mean(), kernel.shape)
    layer.set_weights([kernel + noise.astype(kernel.dtype), bias])
    return copy


def test_output_spread():
    assert output_spread(np.ones((10, 4))) == 0.0
    assert output_spread(np.ones((1, 4))) is None
    varied = np.random.default_rng(0).normal(size=(50, 4))
    assert output_spread(varied) > 0.5


def test_faithful_file_reports_high_cosine_and_low_error(float_file, trained_cnn, digits):
    result = export.verify(float_file, trained_cnn, (digits.x_test, digits.y_test))
    assert result.cosine > 0.9999 and result.min_cosine > 0.999
    assert result.relative_error < 1e-4
    assert result.output_spread > 0.1 and not result.collapsed
    assert result.warnings == ()
    assert "cosine" in str(result)


def test_collapsed_model_cannot_pass(tmp_path, digits):
    import keras

    # Outputs that do not depend on the input: 100% "agreement" with any file
    # that outputs the same constant, which is what a collapsed QAT model gives.
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(inputs)
    outputs = keras.layers.Dense(10, kernel_initializer="zeros", bias_initializer="ones")(x)
    model = keras.Model(inputs, outputs, name="collapsed")
    model.get_layer(index=2).set_weights([np.zeros((64, 10)), np.arange(10.0)])
    path = export.to_tflite(model, tmp_path / "c.tflite").path

    with pytest.warns(UserWarning, match="barely vary across"):
        result = export.verify(path, model, digits.x_test)
    assert result.top1_agreement == 1.0  # what a check on agreement alone would accept
    assert result.collapsed and result.output_spread < 1e-3
    with pytest.warns(UserWarning), pytest.raises(VerificationError, match="collapsed"):
        export.verify(path, model, digits.x_test, min_agreement=0.9)


def test_one_class_for_every_sample_warns(tmp_path, digits):
    import keras

    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(inputs)
    dense = keras.layers.Dense(3)
    model = keras.Model(inputs, dense(x), name="one_class")
    kernel = np.random.default_rng(0).normal(0, 0.01, (64, 3))
    dense.set_weights([kernel, np.array([5.0, 0.0, 0.0])])  # varies, but class 0 always wins
    path = export.to_tflite(model, tmp_path / "o.tflite").path
    with pytest.warns(UserWarning, match="predicts class 0 for every one"):
        result = export.verify(path, model, digits.x_test)
    assert not result.collapsed and len(result.warnings) == 1


def test_divergence_names_the_tampered_layer(float_file, trained_cnn, digits):
    tampered = _tampered_copy(trained_cnn, "conv1", scale=3.0)
    report = first_divergence(float_file, tampered, digits.x_test)
    by_layer = {row.layer: row for row in report.layers}
    assert {"conv0", "pool0", "conv1", "dense"} <= set(by_layer)
    assert by_layer["conv0"].cosine > 0.9999 and by_layer["pool0"].cosine > 0.9999
    assert report.first.layer == "conv1" and report.first.cosine < 0.99
    assert report.first.class_name == "Conv2D"
    # verify runs it by itself when a check fails, and says where.
    with pytest.raises(VerificationError, match="part at layer conv1 "):
        export.verify(float_file, tampered, digits.x_test, min_cosine=0.999)


def test_divergence_on_an_honest_file_finds_nothing(float_file, trained_cnn, digits):
    report = first_divergence(float_file, trained_cnn, digits.x_test)
    assert report.first is None
    assert [row.layer for row in report.layers] == [
        "conv0",
        "pool0",
        "conv1",
        "flatten",
        "dense",
        "logits",
    ]
    assert "keep cosine" in str(report)


@pytest.mark.slow
def test_qat_file_layers_match_and_ops_are_located(trained_cnn, digits, tmp_path):
    import keras

    from tfcompress import quantize

    qat = quantize.quantize_model(trained_cnn, representative_data=digits.x_train[:128])
    qat.compile(
        keras.optimizers.Adam(1e-4), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    qat.fit(digits.x_train, digits.y_train, epochs=1, verbose=0)
    path = export.to_tflite(qat, tmp_path / "q.tflite", mode="int8").path

    result = export.verify(path, qat, (digits.x_test, digits.y_test), locate_divergence=True)
    assert result.cosine >= 0.99 and result.top1_agreement >= 0.99 and not result.collapsed
    assert result.divergence.first is None
    matched = {row.layer for row in result.divergence.layers}
    wrapped = {layer.name for layer in qat.layers if isinstance(layer, quantize.QuantizeWrapper)}
    assert wrapped and wrapped <= matched

    located = locate_ops(path, qat, export.COMPUTE_OPS)
    assert [op.op for op in located] == ["CONV_2D", "CONV_2D", "FULLY_CONNECTED", "FULLY_CONNECTED"]
    assert [op.layer for op in located] == sorted(
        wrapped, key=[layer.name for layer in qat.layers].index
    )
    assert all(op.compute_dtype == "int8" for op in located)
