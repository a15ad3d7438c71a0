import dataclasses

import numpy as np
import pytest

from tfcompress.data import DatasetSplits, Splits, load_digits

NUM_SAMPLES = 1797  # sklearn.datasets.load_digits()


def _all_x(splits):
    return np.concatenate([splits.x_train, splits.x_val, splits.x_test])


def _row_keys(x):
    return {row.tobytes() for row in x.reshape(len(x), -1)}


@pytest.fixture(scope="module")
def splits():
    return load_digits()


def test_shapes_dtypes_and_range(splits):
    assert isinstance(splits, Splits)
    for x, y in [
        (splits.x_train, splits.y_train),
        (splits.x_val, splits.y_val),
        (splits.x_test, splits.y_test),
    ]:
        assert x.dtype == np.float32
        assert y.dtype == np.int32
        assert x.ndim == 4 and x.shape[1:] == (8, 8, 1)
        assert y.shape == (len(x),)
        assert x.min() >= 0.0 and x.max() <= 1.0
    assert splits.num_classes == 10
    assert splits.input_shape == (8, 8, 1)
    # Real pixels span the full range after scaling by 1/16.
    assert _all_x(splits).max() == 1.0
    assert _all_x(splits).min() == 0.0


def test_split_sizes_follow_fractions(splits):
    assert len(splits.x_test) == pytest.approx(0.15 * NUM_SAMPLES, abs=1)
    assert len(splits.x_val) == pytest.approx(0.15 * NUM_SAMPLES, abs=1)
    assert len(splits.x_train) + len(splits.x_val) + len(splits.x_test) == NUM_SAMPLES


def test_every_split_has_all_classes(splits):
    for y in (splits.y_train, splits.y_val, splits.y_test):
        np.testing.assert_array_equal(np.unique(y), np.arange(10))


def test_splits_are_disjoint_and_cover_all_samples(splits):
    from sklearn.datasets import load_digits as sklearn_load_digits

    original = sklearn_load_digits()
    expected = original.images.astype(np.float32)[..., None] / 16.0
    # Compare the multiset of (image, label) pairs with the original data.
    got = sorted(
        (x.tobytes(), int(y))
        for x, y in zip(
            _all_x(splits),
            np.concatenate([splits.y_train, splits.y_val, splits.y_test]),
            strict=True,
        )
    )
    want = sorted((x.tobytes(), int(y)) for x, y in zip(expected, original.target, strict=True))
    assert got == want

    train, val, test = (_row_keys(x) for x in (splits.x_train, splits.x_val, splits.x_test))
    # The digits data holds a few duplicated images; a split can only share
    # an image with another split if the original data has it twice.
    duplicates = NUM_SAMPLES - len(_row_keys(expected))
    assert len(train & val) + len(train & test) + len(val & test) <= duplicates


def test_same_seed_same_split_and_other_seed_differs(splits):
    again = load_digits(seed=0)
    for field in dataclasses.fields(Splits):
        np.testing.assert_array_equal(getattr(splits, field.name), getattr(again, field.name))
    other = load_digits(seed=1)
    assert not np.array_equal(splits.y_train, other.y_train)
    assert _row_keys(splits.x_test) != _row_keys(other.x_test)


def test_custom_fractions():
    splits = load_digits(validation_fraction=0.1, test_fraction=0.2)
    assert len(splits.x_test) == pytest.approx(0.2 * NUM_SAMPLES, abs=1)
    assert len(splits.x_val) == pytest.approx(0.1 * NUM_SAMPLES, abs=1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"validation_fraction": 0.0}, "validation_fraction"),
        ({"test_fraction": 1.5}, "test_fraction"),
        ({"validation_fraction": 0.5, "test_fraction": 0.5}, "below 1"),
        ({"as_dataset": True, "batch_size": 0}, "batch_size"),
    ],
)
def test_invalid_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_digits(**kwargs)


def test_splits_is_frozen(splits):
    with pytest.raises(dataclasses.FrozenInstanceError):
        splits.x_train = None


def test_dataset_variant_yields_the_same_data(splits):
    ds = load_digits(as_dataset=True, batch_size=100)
    assert isinstance(ds, DatasetSplits)
    assert ds.num_classes == 10
    assert ds.input_shape == (8, 8, 1)

    def collect(dataset):
        xs, ys, sizes = [], [], []
        for x, y in dataset:
            xs.append(x.numpy())
            ys.append(y.numpy())
            sizes.append(len(x))
        return np.concatenate(xs), np.concatenate(ys), sizes

    # Validation and test keep their order.
    for dataset, x_ref, y_ref in [
        (ds.val, splits.x_val, splits.y_val),
        (ds.test, splits.x_test, splits.y_test),
    ]:
        x, y, sizes = collect(dataset)
        np.testing.assert_array_equal(x, x_ref)
        np.testing.assert_array_equal(y, y_ref)
        assert max(sizes) == 100

    # Training is shuffled: same examples, different order.
    x, y, sizes = collect(ds.train)
    assert x.dtype == np.float32 and y.dtype == np.int32
    assert sizes[:-1] == [100] * (len(sizes) - 1)
    got = sorted((a.tobytes(), int(b)) for a, b in zip(x, y, strict=True))
    want = sorted(
        (a.tobytes(), int(b)) for a, b in zip(splits.x_train, splits.y_train, strict=True)
    )
    assert got == want
    assert not np.array_equal(y, splits.y_train)

    # The shuffle is seeded: a fresh load gives the same first epoch.
    x_again, y_again, _ = collect(load_digits(as_dataset=True, batch_size=100).train)
    np.testing.assert_array_equal(y_again, y)
    np.testing.assert_array_equal(x_again, x)
