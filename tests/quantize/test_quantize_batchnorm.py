"""BatchNormalization during QAT: statistics keep updating until `freeze_bn_delay` (issue 18.3)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcompress import quantize
from tfcompress.quantize import QuantizeConfig
from tfcompress.quantize.batchnorm import FoldedBatchNormWrapper, QuantizeBatchNorm

L = keras.layers


def _model():
    keras.utils.set_random_seed(3)
    inp = keras.Input((8, 8, 1))
    a = L.Conv2D(8, 3, padding="same", name="a")(inp)
    x = L.BatchNormalization(name="a_bn")(a)  # folded into "a"
    x = L.Concatenate(name="cat")([x, inp])
    x = L.BatchNormalization(name="cat_bn")(x)  # not foldable
    x = L.ReLU(name="relu")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, L.Dense(10, name="logits")(x), name="bn_model")


def _fit_steps(qat, digits, steps, compile_classifier):
    compile_classifier(qat, lr=1e-3)
    n = 32 * steps
    qat.fit(
        digits.x_train[:n], digits.y_train[:n], batch_size=32, epochs=1, verbose=0, shuffle=False
    )


def _stats(qat):
    folded = next(x for x in qat.layers if isinstance(x, FoldedBatchNormWrapper))
    plain = next(x for x in qat.layers if isinstance(x, QuantizeBatchNorm))
    return (
        folded,
        plain,
        (folded.batchnorm.moving_mean.numpy().copy(), plain.layer.moving_mean.numpy().copy()),
    )


@pytest.mark.slow
def test_statistics_update_until_the_delay_then_freeze(digits, compile_classifier):
    qat = quantize.quantize_model(_model(), QuantizeConfig(freeze_bn_delay=3))
    folded, plain, initial = _stats(qat)
    assert not folded.batchnorm_frozen
    _fit_steps(qat, digits, 3, compile_classifier)
    _, _, after_delay = _stats(qat)
    for before, now in zip(initial, after_delay, strict=True):
        assert np.abs(now - before).max() > 1e-3  # batch statistics were used and tracked
    assert folded.batchnorm_frozen and plain.batchnorm_frozen
    assert float(folded.bn_step.numpy()) == 3.0
    _fit_steps(qat, digits, 2, compile_classifier)
    _, _, frozen = _stats(qat)
    for before, now in zip(after_delay, frozen, strict=True):
        np.testing.assert_array_equal(now, before)  # frozen after the delay


def test_delay_zero_freezes_from_the_start_and_none_never(digits, compile_classifier):
    qat = quantize.quantize_model(_model(), QuantizeConfig(freeze_bn_delay=0))
    _, _, initial = _stats(qat)
    _fit_steps(qat, digits, 2, compile_classifier)
    for before, now in zip(initial, _stats(qat)[2], strict=True):
        np.testing.assert_array_equal(now, before)
    never = quantize.quantize_model(_model(), QuantizeConfig(freeze_bn_delay=None))
    _fit_steps(never, digits, 2, compile_classifier)
    assert not _stats(never)[0].batchnorm_frozen


def test_inference_uses_the_folded_moving_statistics(digits):
    model = _model()
    qat = quantize.quantize_model(model, representative_data=digits.x_train[:64])
    x = digits.x_test[:32]
    # Inference: conv with folded kernel equals conv -> BN(inference) of the float model.
    kernel, bias = qat.get_layer("quant_a").folded()
    expected = keras.Model(model.input, model.get_layer("a_bn").output)(x)
    np.testing.assert_allclose(
        keras.ops.conv(x, kernel, padding="same") + bias, expected, atol=1e-4
    )
    float_out = model.predict(x, verbose=0)
    qat_out = qat.predict(x, verbose=0)
    assert np.mean(np.argmax(float_out, -1) == np.argmax(qat_out, -1)) >= 0.9


def test_qat_model_with_batchnorm_round_trips(digits, compile_classifier, tmp_path):
    qat = quantize.quantize_model(_model(), QuantizeConfig(freeze_bn_delay=2))
    _fit_steps(qat, digits, 3, compile_classifier)
    qat.save(tmp_path / "bn.keras")
    loaded = keras.saving.load_model(tmp_path / "bn.keras")
    x = digits.x_test[:16]
    np.testing.assert_allclose(loaded.predict(x, verbose=0), qat.predict(x, verbose=0), atol=1e-5)
    assert _stats(loaded)[0].batchnorm_frozen


@pytest.mark.parametrize("bad", [-1, 1.5, "10", True])
def test_bad_freeze_bn_delay(bad):
    with pytest.raises(ValueError, match="Received: freeze_bn_delay="):
        QuantizeConfig(freeze_bn_delay=bad)


def _tiny_resnet():
    from keras.src.applications import resnet

    keras.utils.set_random_seed(0)

    def stack_fn(x):
        x = resnet.stack_residual_blocks_v1(x, 8, 1, stride1=1, name="conv2")
        return resnet.stack_residual_blocks_v1(x, 16, 1, name="conv3")

    return resnet.ResNet(
        stack_fn,
        False,
        True,
        name="resnet_tiny",
        weights=None,
        input_shape=(32, 32, 3),
        classes=10,
        classifier_activation=None,
    )


@pytest.mark.slow
def test_random_resnet_does_not_collapse_after_a_qat_step(digits, compile_classifier):
    """Issue 18.3: BN folded with statistics frozen at step 0 made ResNet's outputs constant."""
    x = np.repeat(np.kron(digits.x_train[:256], np.ones((1, 4, 4, 1))), 3, axis=-1)
    y = digits.y_train[:256]
    model = _tiny_resnet()
    qat = quantize.quantize_model(model, representative_data=x[:64])
    assert len(qat.quantize_report.folded_batchnorm) >= 6
    compile_classifier(qat, lr=1e-3).fit(x, y, batch_size=32, epochs=1, verbose=0)
    monitor = quantize.collapse_monitor(x[:128])
    compile_classifier(qat, lr=1e-3).fit(
        x[:64], y[:64], batch_size=32, epochs=1, verbose=0, callbacks=[monitor]
    )
    assert monitor.spreads[0] > 1e-2


def test_check_collapse_warns_on_constant_outputs_only(digits):
    inp = keras.Input((8, 8, 1))
    flat = L.Flatten()(inp)
    constant = keras.Model(
        inp, L.Dense(10, kernel_initializer="zeros", bias_initializer="ones")(flat)
    )
    with pytest.warns(quantize.CollapseWarning, match="barely vary.*freeze_bn_delay"):
        assert quantize.check_collapse(constant, digits.x_test[:64]) < 1e-6
    varying = keras.Model(inp, L.Dense(10)(flat))
    assert quantize.output_spread(varying, digits.x_test[:64]) > 1e-2


def _numpy_moments(z):
    axes = tuple(range(z.ndim - 1))
    return z.mean(axes), z.var(axes)


@pytest.mark.parametrize(
    "layer, granularity, shape",
    [
        (lambda: L.Conv2D(6, 3, padding="same"), "per_channel", (4, 7, 7, 3)),
        (lambda: L.DepthwiseConv2D(3, depth_multiplier=2), "depthwise", (4, 7, 7, 3)),
        (lambda: L.Dense(5), "per_tensor", (16, 3)),
    ],
    ids=["conv2d", "depthwise", "dense"],
)
def test_batch_statistics_phase_is_batchnorm_of_the_one_folded_conv(layer, granularity, shape):
    """One conv per step: y = conv(x, fq(W * s)), s = gamma / sigma_moving; BN of y / s + b."""
    rng = np.random.default_rng(0)
    w = FoldedBatchNormWrapper(
        layer(),
        L.BatchNormalization(momentum=0.9),
        weight_scheme="int8",
        granularity=granularity,
        freeze_bn_delay=10,
    )
    w.build(shape)
    c = w.batchnorm.gamma.shape[0]
    gamma = rng.uniform(0.5, 2.0, c).astype("float32")
    gamma[1] = 0.0  # such a channel outputs beta and keeps its moving statistics
    w.batchnorm.set_weights(
        [gamma, rng.normal(size=c), rng.normal(size=c), rng.uniform(0.5, 2.0, c)]
    )
    w.layer.bias.assign(rng.normal(size=c).astype("float32"))
    _, beta, moving_mean, moving_var = (v.numpy().copy() for v in w.batchnorm.weights)
    x = rng.normal(size=shape).astype("float32")

    kernel, _ = w.folded()
    factor = gamma / np.sqrt(moving_var + w.batchnorm.epsilon)
    qkernel = w.quantize_weight(kernel)
    zero_bias = np.zeros(c, "float32")
    y = w.layer.stateless_call([qkernel, zero_bias], [], x)[0].numpy()
    live = factor != 0
    z = np.where(live, y / np.where(live, factor, 1.0), 0.0) + w.layer.bias.numpy()
    mean, var = _numpy_moments(z)
    expected = (z - mean) / np.sqrt(var + w.batchnorm.epsilon) * gamma + beta
    # The output range is set by this first training batch, so a fake-quant of
    # `expected` within its own min/max is what the wrapper must return.
    lo, hi = min(expected.min(), 0.0), max(expected.max(), 0.0)
    expected = tf.quantization.fake_quant_with_min_max_vars(expected, lo, hi).numpy()

    out = w(x, training=True).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-4)
    np.testing.assert_allclose(out[..., 1], beta[1], atol=(hi - lo) / 255)
    new_mean = np.where(live, 0.9 * moving_mean + 0.1 * mean, moving_mean)
    new_var = np.where(live, 0.9 * moving_var + 0.1 * var, moving_var)
    np.testing.assert_allclose(w.batchnorm.moving_mean.numpy(), new_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w.batchnorm.moving_variance.numpy(), new_var, rtol=1e-5)

    # Inference (what the int8 file computes): the folded fake-quant kernel and
    # bias of the updated moving statistics, in one conv.
    kernel, bias = w.folded()
    folded = w.layer.stateless_call([w.quantize_weight(kernel), bias], [], x)[0]
    inference = w.output_quantizer(folded, training=False).numpy()
    np.testing.assert_allclose(w(x, training=False).numpy(), inference, atol=1e-6)


def test_unfolded_batchnorm_trains_as_keras_batchnorm():
    rng = np.random.default_rng(1)
    x = rng.normal(1.0, 2.0, size=(8, 5, 5, 4)).astype("float32")
    reference = L.BatchNormalization(momentum=0.9)
    reference.build(x.shape)
    weights = [rng.uniform(0.5, 2, 4), rng.normal(size=4), rng.normal(size=4), rng.uniform(1, 2, 4)]
    reference.set_weights(weights)
    q = QuantizeBatchNorm(
        L.BatchNormalization(momentum=0.9), freeze_bn_delay=5, quantize_output=False
    )
    q.build(x.shape)
    q.layer.set_weights(weights)
    np.testing.assert_allclose(q(x, training=True), reference(x, training=True), atol=1e-5)
    for ours, theirs in zip(q.layer.weights, reference.weights, strict=True):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6)
