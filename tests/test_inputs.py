import numpy as np
import pytest

from tfcompress._inputs import InputSpec, calibration_set, collect
from tfcompress.errors import CalibrationDataError

IMAGE = [InputSpec("image", (None, 8, 8, 1), "float32")]
BERT = [InputSpec(n, (None, None), "int32") for n in ("padding_mask", "segment_ids", "token_ids")]


def images(n, seed=0):
    return np.random.default_rng(seed).random((n, 8, 8, 1)).astype("float32")


def test_numpy_batch_is_split_into_single_samples():
    cal = calibration_set(images(10), IMAGE)
    assert len(cal) == 10 and cal.exhausted
    assert all(s[0].shape == (1, 8, 8, 1) for s in cal.samples)


def test_takes_at_most_max_samples_and_says_so():
    cal = calibration_set(images(300), IMAGE)
    assert len(cal) == 200 and not cal.exhausted
    cal = calibration_set(images(200), IMAGE)
    assert len(cal) == 200 and cal.exhausted


def test_x_y_pairs_and_labels_are_dropped():
    x = images(12)
    cal = calibration_set((x, np.arange(12)), IMAGE)
    np.testing.assert_array_equal(np.concatenate([s[0] for s in cal.samples]), x)


def test_unbatched_and_batched_datasets_with_and_without_labels():
    import tensorflow as tf

    x, y = images(20), np.arange(20)
    variants = [
        tf.data.Dataset.from_tensor_slices(x),
        tf.data.Dataset.from_tensor_slices(x).batch(7),
        tf.data.Dataset.from_tensor_slices((x, y)),
        tf.data.Dataset.from_tensor_slices((x, y)).batch(6),
    ]
    for ds in variants:
        cal = calibration_set(ds, IMAGE)
        np.testing.assert_allclose(np.concatenate([s[0] for s in cal.samples]), x)


def test_endless_dataset_stops_at_max_samples():
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(images(5)).repeat()
    cal = calibration_set(ds, IMAGE, max_samples=12)
    assert len(cal) == 12 and not cal.exhausted


def test_generators_function_or_object():
    def gen():
        for i in range(4):
            yield images(3, seed=i)

    assert len(calibration_set(gen, IMAGE)) == 12
    assert len(calibration_set(gen(), IMAGE)) == 12


def test_dict_inputs_and_collect_keeps_labels():
    rng = np.random.default_rng(0)
    data = {
        n: rng.integers(0, 5, (9, 16)).astype("int32")
        for n in ("token_ids", "segment_ids", "padding_mask")
    }
    inputs, labels = collect((data, np.ones(9)), BERT)
    assert [a.shape for a in inputs] == [(9, 16)] * 3
    np.testing.assert_array_equal(inputs[2], data["token_ids"])
    assert labels.shape == (9,)


@pytest.mark.parametrize(
    "data, message",
    [
        (np.zeros((4, 8, 8, 3), "float32"), "shape (8, 8, 3) per sample"),
        (np.zeros((4, 64), "float32"), "does not match the model's inputs"),
        (np.array([["a"] * 8] * 8)[None, ..., None], "dtype <U1"),
        (np.full((4, 8, 8, 1), np.nan, "float32"), "NaN or inf (first in sample 0)"),
        (
            np.concatenate([images(3), np.full((1, 8, 8, 1), np.inf, "float32")]),
            "first in sample 3",
        ),
        (np.zeros((0, 8, 8, 1), "float32"), "empty"),
        (None, "No calibration data"),
        (42, "Cannot read model inputs from a int"),
    ],
)
def test_bad_calibration_data_is_named(data, message):
    with pytest.raises(CalibrationDataError, match="(?s).*" + _escape(message)):
        calibration_set(data, IMAGE)


def test_float_data_for_integer_input_is_refused():
    data = {n: np.zeros((2, 16), "float32") for n in ("token_ids", "segment_ids", "padding_mask")}
    with pytest.raises(CalibrationDataError, match="input 'padding_mask'.*integer arrays"):
        calibration_set(data, BERT)


def test_missing_dict_key_lists_expected_inputs():
    with pytest.raises(CalibrationDataError, match="'token_ids'.*keys \\['ids'\\]"):
        calibration_set({"ids": np.zeros((2, 16), "int32")}, BERT)


def _escape(text):
    import re

    return re.escape(text)
