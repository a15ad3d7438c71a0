"""Recurrent models (Embedding + LSTM + GRU) export, and converter crashes come back as errors."""

import numpy as np
import pytest

from tfcompress import export
from tfcompress.errors import ConversionError


def _recurrent_classifier(sequence_length=12):
    import keras

    keras.utils.set_random_seed(0)
    ids = keras.Input((sequence_length,), dtype="int32", name="ids")
    x = keras.layers.Embedding(40, 8)(ids)
    x = keras.layers.LSTM(8, return_sequences=True)(x)
    x = keras.layers.GRU(8)(x)
    return keras.Model(ids, keras.layers.Dense(3)(x), name="rnn_classifier")


@pytest.fixture(scope="module")
def rnn_data():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 40, (64, 12)).astype("int32")
    labels = (ids[:, :4] > 20).sum(axis=1) % 3
    return ids, labels


@pytest.fixture(scope="module")
def rnn_model(rnn_data):
    import keras

    model = _recurrent_classifier()
    model.compile(
        keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(*rnn_data, epochs=2, batch_size=32, verbose=0)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["float32", "dynamic", "int8"])
def test_recurrent_model_exports_and_matches_keras(rnn_model, rnn_data, tmp_path, mode):
    from tfcompress_edge.runner import TFLiteRunner

    ids, _ = rnn_data
    result = export.to_tflite(
        rnn_model,
        tmp_path / f"{mode}.tflite",
        mode=mode,
        representative_data=ids if mode == "int8" else None,
    )
    assert result.isolated == (mode == "int8") and result.input_shapes == {"ids": (1, 12)}
    assert any("batch size fixed to 1" in note for note in result.notes)
    want = np.asarray(rnn_model.predict(ids[:24], verbose=0))
    got = TFLiteRunner(result.path).predict(ids[:24])
    info = export.inspect(result.path)
    if mode == "int8":
        assert any("unrolled" in note for note in result.notes)
        assert info.compute_dtypes()["FULLY_CONNECTED"] == {"int8"}
        assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9
    else:
        assert "WHILE" in info.op_histogram
        np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.slow
def test_converter_crash_comes_back_as_conversion_error(tmp_path):
    import keras

    # Time steps unknown: the loops cannot be unrolled, and calibrating them
    # segfaults the converter. It runs in a child process, so this one lives on.
    keras.utils.set_random_seed(0)
    ids = keras.Input((None,), dtype="int32")
    x = keras.layers.LSTM(4)(keras.layers.Embedding(20, 4)(ids))
    model = keras.Model(ids, keras.layers.Dense(2)(x))
    data = np.random.default_rng(0).integers(0, 20, (16, 6)).astype("int32")
    with pytest.raises(ConversionError, match=r"crashed \(SIGSEGV\).*separate process"):
        export.to_tflite(model, tmp_path / "m.tflite", mode="int8", representative_data=data)
    assert not (tmp_path / "m.tflite").exists()
