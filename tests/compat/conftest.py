"""Fixtures shared by the tfmot call-form tests."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def data():
    """64 samples of 16 features; the label is whether the first four sum above zero."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 16)).astype("float32")
    return x, (x[:, :4].sum(axis=1) > 0).astype("int32")
