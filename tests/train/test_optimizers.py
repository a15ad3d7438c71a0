import numpy as np
import pytest

from tfcompress import train


def test_warmup_cosine_shape():
    schedule = train.warmup_cosine(1e-3, total_steps=100, warmup_steps=10, alpha=0.1)
    values = [float(schedule(step)) for step in (0, 5, 10, 55, 100)]
    assert values[0] == pytest.approx(0.0)
    assert values[1] == pytest.approx(5e-4)
    assert values[2] == pytest.approx(1e-3)
    assert 1e-4 < values[3] < 1e-3
    assert values[4] == pytest.approx(1e-4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(peak_learning_rate=0, total_steps=10), "peak_learning_rate must be positive"),
        (dict(peak_learning_rate=1e-3, total_steps=10, warmup_steps=10), "warmup_steps=10"),
    ],
)
def test_warmup_cosine_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        train.warmup_cosine(**kwargs)


def test_adamw_decays_kernels_but_not_biases_or_norms():
    import keras

    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3), keras.layers.LayerNormalization()]
    )
    model.layers[0].bias.assign(np.ones(3, "float32"))
    before = [w.numpy().copy() for w in model.weights]
    # A zero loss leaves weight decay as the only force on the weights.
    model.compile(
        optimizer=train.adamw(0.1, weight_decay=0.5), loss=lambda y, p: 0.0 * keras.ops.sum(p)
    )
    model.fit(
        np.ones((4, 4), "float32"), np.zeros((4, 3), "float32"), epochs=1, batch_size=4, verbose=0
    )
    after = {w.path: w.numpy() for w in model.weights}
    kernel_path = model.layers[0].kernel.path
    np.testing.assert_allclose(after[kernel_path], before[0] * (1 - 0.1 * 0.5), rtol=1e-5)
    for w, old in zip(model.weights[1:], before[1:]):
        np.testing.assert_array_equal(after[w.path], old)


def _fit(optimizer, batch_size, x, y):
    import keras

    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(2)]
    )
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    return model.get_weights()


def test_accumulation_equals_a_k_times_larger_batch():
    import keras

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 5)).astype("float32"), rng.normal(size=(16, 2)).astype("float32")
    big = _fit(keras.optimizers.SGD(0.1), 16, x, y)
    accumulated = _fit(train.with_accumulation(keras.optimizers.SGD(0.1), 4), 4, x, y)
    plain_small = _fit(keras.optimizers.SGD(0.1), 4, x, y)
    for a, b in zip(big, accumulated):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert max(np.abs(a - b).max() for a, b in zip(big, plain_small)) > 1e-4


@pytest.mark.parametrize("steps", [0, -2, 1.5, True])
def test_accumulation_steps_must_be_a_positive_int(steps):
    import keras

    with pytest.raises(ValueError, match=f"Received: accumulation_steps={steps!r}"):
        train.with_accumulation(keras.optimizers.SGD(), steps)
    with pytest.raises(ValueError, match="at least 1"):
        train.adamw(accumulation_steps=steps)
