"""scikit-learn's bundled hand-written digits, split for training and evaluation."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Splits:
    """Train, validation and test arrays of one data set.

    `x_*` hold the inputs and `y_*` the integer class labels; the three splits
    are disjoint. The dataclass is frozen: fields cannot be rebound, although
    the arrays themselves are ordinary NumPy arrays.

    Example:

    ```python
    splits = tfcompress.data.load_digits()
    splits.x_train.shape  # (1257, 8, 8, 1)
    splits.num_classes  # 10
    ```
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def num_classes(self) -> int:
        """Number of classes: one more than the largest label in any split."""
        labels = np.concatenate([self.y_train, self.y_val, self.y_test])
        return int(labels.max()) + 1

    @property
    def input_shape(self) -> tuple:
        """Shape of one input example, without the batch dimension."""
        return tuple(self.x_train.shape[1:])


@dataclasses.dataclass(frozen=True, eq=False)
class DatasetSplits:
    """Train, validation and test `tf.data.Dataset`s of `(x, y)` batches.

    `train` is shuffled (with a fixed seed) every epoch; `val` and `test` keep
    their order.

    Example:

    ```python
    splits = tfcompress.data.load_digits(as_dataset=True, batch_size=64)
    model.fit(splits.train, validation_data=splits.val, epochs=5)
    ```
    """

    train: Any
    val: Any
    test: Any
    num_classes: int
    input_shape: tuple


def load_digits(
    validation_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    as_dataset: bool = False,
    batch_size: int = 32,
) -> Splits | DatasetSplits:
    """Loads scikit-learn's 8x8 hand-written digits with a fixed split.

    The 1,797 real grey-scale images ship inside the scikit-learn wheel, so
    nothing is downloaded. Pixels are scaled from 0..16 to float32 in [0, 1]
    and shaped `(N, 8, 8, 1)` for `Conv2D`; labels are int32 in 0..9. The
    split is stratified (each split keeps the class balance) and fully
    determined by `seed`.

    Args:
        validation_fraction: float in (0, 1). Fraction of all samples used
            for validation. Defaults to `0.15`.
        test_fraction: float in (0, 1). Fraction of all samples held out for
            testing. `validation_fraction + test_fraction` must be below 1.
            Defaults to `0.15`.
        seed: int. Seed of the split and, with `as_dataset=True`, of the
            training-set shuffle. Defaults to `0`.
        as_dataset: bool. If `True`, return `tf.data.Dataset`s of batches
            instead of NumPy arrays. Defaults to `False`.
        batch_size: int. Batch size of the datasets; only used when
            `as_dataset=True`. Defaults to `32`.

    Returns:
        A `Splits` with `x_train, y_train, x_val, y_val, x_test, y_test`
        NumPy arrays, or, with `as_dataset=True`, a `DatasetSplits` whose
        `train`, `val` and `test` are datasets of `(x, y)` batches. Both
        expose `num_classes` (10) and `input_shape` (`(8, 8, 1)`).

    Example:

    ```python
    splits = tfcompress.data.load_digits(seed=0)
    model.fit(
        splits.x_train,
        splits.y_train,
        validation_data=(splits.x_val, splits.y_val),
    )
    model.evaluate(splits.x_test, splits.y_test)
    ```
    """
    _check_fraction("validation_fraction", validation_fraction)
    _check_fraction("test_fraction", test_fraction)
    if validation_fraction + test_fraction >= 1:
        raise ValueError(
            "`validation_fraction + test_fraction` must be below 1 so that "
            "training samples remain. Received: "
            f"validation_fraction={validation_fraction}, "
            f"test_fraction={test_fraction}."
        )
    if as_dataset and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(
            f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}."
        )

    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    digits = datasets.load_digits()
    x = (digits.images.astype(np.float32) / np.float32(16.0))[..., np.newaxis]
    y = digits.target.astype(np.int32)

    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    # `validation_fraction` is a fraction of all samples, not of the rest.
    val_of_rest = validation_fraction / (1.0 - test_fraction)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_of_rest, random_state=seed, stratify=y_rest
    )
    splits = Splits(x_train, y_train, x_val, y_val, x_test, y_test)
    if not as_dataset:
        return splits
    return _to_datasets(splits, batch_size=batch_size, seed=seed)


def _to_datasets(splits, batch_size, seed):
    import tensorflow as tf

    def make(x, y, shuffle):
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        if shuffle:
            ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    return DatasetSplits(
        train=make(splits.x_train, splits.y_train, shuffle=True),
        val=make(splits.x_val, splits.y_val, shuffle=False),
        test=make(splits.x_test, splits.y_test, shuffle=False),
        num_classes=splits.num_classes,
        input_shape=splits.input_shape,
    )


def _check_fraction(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(
            f"`{name}` must be a float strictly between 0 and 1. Received: {name}={value!r}."
        )
