"""`testing.check_model`: prune -> strip -> QAT -> int8 -> verify -> .keras, in one call."""

import pytest

from tfcompress import quantize, testing


@pytest.fixture(scope="module")
def digits_report(trained_cnn, digits):
    return testing.check_model(
        trained_cnn,
        (digits.x_train, digits.y_train),
        eval_data=(digits.x_test, digits.y_test),
        raise_on_failure=False,
    )


@pytest.mark.slow
def test_a_trained_cnn_passes_every_step(digits_report):
    report = digits_report
    assert report.ok, str(report)
    assert [step for step, _ in report.steps] == [
        "prune",
        "strip",
        "quantize",
        "export int8",
        "verify",
        "save/load .keras",
    ]
    assert all(outcome.startswith("ok") for _, outcome in report.steps)
    assert report.sparsity == pytest.approx(0.5, abs=0.02)
    assert report.op_counts == {"CONV_2D": {"int8": 2}, "FULLY_CONNECTED": {"int8": 2}}
    assert report.int8_share == 1.0 and report.float_ops == ()
    assert report.fidelity.cosine >= 0.99 and report.fidelity.top1_agreement >= 0.99
    assert report.fidelity.tflite_accuracy > 0.8
    assert report.round_trip_max_diff == pytest.approx(0.0, abs=1e-5)
    assert "passed" in str(report)


@pytest.mark.slow
def test_a_layer_kept_float_is_named_and_explained(trained_cnn, digits):
    report = testing.check_model(
        trained_cnn,
        (digits.x_train[:256], digits.y_train[:256]),
        eval_data=(digits.x_test, digits.y_test),
        quantize_config=quantize.QuantizeConfig(skip_layers=("logits",)),
        raise_on_failure=False,
    )
    # (A float Dense between int8 layers is converted to int8 anyway: the ranges of its
    # neighbours are enough. The classifier has no range after it and stays float.)
    assert [(op.op, op.layer) for op in report.float_ops] == [("FULLY_CONNECTED", "logits")]
    assert report.unexplained_float_ops == ()
    assert report.int8_share == 0.75
    assert "float 1 x FULLY_CONNECTED (float32) in layer 'logits': kept float by QAT" in str(report)


@pytest.mark.slow
def test_a_missed_threshold_raises_with_the_whole_report(trained_cnn, digits):
    with pytest.raises(AssertionError, match=r"(?s)int8 file vs QAT model: cosine .* < 1\.01"):
        testing.check_model(
            trained_cnn,
            (digits.x_train[:256], digits.y_train[:256]),
            eval_data=digits.x_test,
            min_cosine=1.01,
        )


def test_a_step_that_fails_is_reported_not_raised(digits):
    import keras

    # A subclassed model cannot be pruned: the report says so, and stops there.
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__(name="subclassed")
            self.dense = keras.layers.Dense(10)

        def call(self, x):
            return self.dense(keras.ops.reshape(x, (-1, 64)))

    model = Subclassed()
    model(digits.x_test[:2])
    report = testing.check_model(
        model, (digits.x_train[:64], digits.y_train[:64]), raise_on_failure=False
    )
    assert not report.ok
    assert report.steps[0][0] == "prune" and not report.steps[0][1].startswith("ok")
    assert report.failures[0].startswith("prune failed: ")
    with pytest.raises(AssertionError, match="prune failed"):
        testing.check_model(model, (digits.x_train[:64], digits.y_train[:64]))


def test_zoo_model_rejects_unknown_family():
    with pytest.raises(ValueError, match=r"Unknown zoo family 'vgg'.*Received: family='vgg'"):
        testing.zoo_model("vgg")
    with pytest.raises(ValueError, match="Received: size='huge'"):
        testing.zoo_model("bert", size="huge")
    with pytest.raises(ValueError, match="'bert' has no tf_keras twin.*flavor='tf_keras'"):
        testing.zoo_model("bert", flavor="tf_keras")
    with pytest.raises(ValueError, match="Received: flavor='jax'"):
        testing.zoo_model("resnet50", flavor="jax")


def test_tf_keras_twin_has_the_same_layers():
    # benchmarks/zoo.py runs tfmot on these twins: same builder, same sizes.
    ours, twin = (
        testing.zoo_model("densenet121"),
        testing.zoo_model("densenet121", flavor="tf_keras"),
    )
    assert type(twin).__module__.startswith("tf_keras")
    assert twin.count_params() == ours.count_params()
    assert [type(x).__name__ for x in twin.layers] == [type(x).__name__ for x in ours.layers]


@pytest.mark.slow
def test_assert_exports_int8_names_the_float_layer(trained_cnn, digits):
    qat = quantize.quantize_model(
        trained_cnn,
        quantize.QuantizeConfig(skip_layers=("logits",)),
        representative_data=digits.x_train[:128],
    )
    with pytest.raises(AssertionError, match=r"FULLY_CONNECTED\(float32\) in layer 'logits'"):
        testing.assert_exports_int8(qat, data=digits.x_test)
