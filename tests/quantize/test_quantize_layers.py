"""The QAT layers: config round trip, EMA ranges, straight-through gradients."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcompress.quantize import ActivationQuantizer, QuantizeWrapper, _ops


def test_activation_quantizer_config_round_trip():
    q = ActivationQuantizer(ema_decay=0.9, name="q")
    config = q.get_config()
    assert ActivationQuantizer.from_config(config).get_config() == config
    with pytest.raises(ValueError, match="Received: ema_decay=1.5"):
        ActivationQuantizer(ema_decay=1.5)
    with pytest.raises(ValueError, match="Received: num_bits=4"):
        ActivationQuantizer(num_bits=4)


@pytest.mark.parametrize(
    "scheme,granularity",
    [("int8", "per_channel"), ("int4", "per_tensor"), ("binary", "depthwise"), (None, None)],
)
def test_wrapper_config_round_trip(scheme, granularity):
    inner = (
        keras.layers.DepthwiseConv2D(3, name="dw")
        if granularity == "depthwise"
        else keras.layers.Dense(4, name="fc")
    )
    w = QuantizeWrapper(
        inner, weight_scheme=scheme, granularity=granularity, ema_decay=0.95, name="quant_x"
    )
    config = w.get_config()
    again = QuantizeWrapper.from_config(config)
    assert again.get_config() == config
    assert again.weight_scheme == scheme and again.granularity == granularity


def test_wrapper_rejects_bad_granularity():
    with pytest.raises(ValueError, match="Received: granularity='rows'"):
        QuantizeWrapper(keras.layers.Dense(2), weight_scheme="int8", granularity="rows")


def test_ema_updates_only_in_training():
    q = ActivationQuantizer(ema_decay=0.5)
    x1 = tf.constant([[-1.0, 3.0]])
    q(x1, training=False)
    assert not q.is_range_set
    q(x1, training=True)  # first batch sets the range
    assert (q.range_min.numpy(), q.range_max.numpy()) == (-1.0, 3.0)
    q(tf.constant([[-3.0, 7.0]]), training=True)  # then EMA with decay 0.5
    np.testing.assert_allclose([q.range_min.numpy(), q.range_max.numpy()], [-2.0, 5.0])
    q(tf.constant([[-100.0, 100.0]]), training=False)
    np.testing.assert_allclose([q.range_min.numpy(), q.range_max.numpy()], [-2.0, 5.0])


def test_activation_quantizer_rounds_to_256_levels_and_passes_gradients():
    q = ActivationQuantizer()
    q.build(None)
    q.set_range(0.0, 2.55)
    x = tf.constant(np.linspace(-1, 3.5, 1000, dtype="float32"))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = q(x, training=False)
    grad = tape.gradient(y, x).numpy()
    assert len(np.unique(np.round(y.numpy(), 5))) <= 256
    inside = (x.numpy() > 0.01) & (x.numpy() < 2.54)
    assert np.all(grad[inside] == 1.0) and np.all(grad[x.numpy() > 2.6] == 0.0)


def test_training_gradient_is_straight_through_only():
    """No gradient reaches x through the batch min/max (tfmot's and PyTorch's observers)."""
    q = ActivationQuantizer(ema_decay=0.9)
    q.build(None)
    q.set_range(-1.0, 1.0)
    x = tf.constant(np.linspace(-4, 4, 101, dtype="float32"))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = q(x, training=True)  # range moves to [-1.3, 1.3]; the ends of x lie outside
    grad = tape.gradient(y, x).numpy()
    inside = np.abs(x.numpy()) <= 1.3
    np.testing.assert_array_equal(grad, inside.astype("float32"))


def test_training_step_kernel_is_the_inference_kernel():
    """Per-channel weights: elementwise ops in a training step, TF's fake-quant op otherwise."""
    rng = np.random.default_rng(0)
    w = QuantizeWrapper(keras.layers.Conv2D(32, 3), weight_scheme="int8", granularity="per_channel")
    w.build((None, 8, 8, 16))
    w.layer.kernel.assign(rng.normal(size=(3, 3, 16, 32)) * rng.uniform(0.01, 2.0, 32))
    x = tf.constant(rng.normal(size=(2, 8, 8, 16)).astype("float32"))
    inference = w.quantized_kernel().numpy()
    scale = np.abs(w.layer.kernel.numpy()).max(axis=(0, 1, 2)) / 127
    np.testing.assert_allclose(np.round(inference / scale), inference / scale, atol=1e-3)

    with tf.GradientTape() as tape:
        with _ops.training_kernels(True):
            training = w.quantized_kernel()
        loss = tf.reduce_sum(training * 3.0)
    np.testing.assert_allclose(training.numpy(), inference, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(tape.gradient(loss, w.layer.kernel).numpy(), 3.0)
    y_train = w(x, training=True).numpy()  # the whole wrapper, both paths
    np.testing.assert_allclose(w(x, training=False).numpy(), y_train, atol=1e-5)
    graph = tf.function(lambda: w(x, training=True)).get_concrete_function().graph
    ops = {op.type for op in graph.get_operations()}
    assert "FakeQuantWithMinMaxVarsPerChannel" not in ops
    graph = tf.function(lambda: w(x, training=False)).get_concrete_function().graph
    assert "FakeQuantWithMinMaxVarsPerChannel" in {op.type for op in graph.get_operations()}


def test_kernel_gradient_flows_straight_through():
    keras.utils.set_random_seed(0)
    w = QuantizeWrapper(
        keras.layers.Dense(3), weight_scheme="int4", granularity="per_tensor", quantize_output=False
    )
    x = tf.random.normal((5, 4))
    w(x)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(w(x, training=True))
    grad = tape.gradient(loss, w.layer.kernel)
    # d(sum(x @ K))/dK = column sums of x, for every column: the STE passes it unchanged
    expected = np.repeat(tf.reduce_sum(x, 0).numpy()[:, None], 3, axis=1)
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-5)
