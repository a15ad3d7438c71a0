"""Our Keras 3 engine: masks, schedules in the graph, zeros that stay zero, save/load."""

import os

import keras
import numpy as np
import pytest

from tfcompress import prune, testing
from tfcompress.testing import accuracy


def _compile(model, optimizer="adam"):
    model.compile(
        optimizer,
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


class _ZerosStayZero(keras.callbacks.Callback):
    """After every batch: every masked weight is exactly 0."""

    def __init__(self):
        super().__init__()
        self.checked = 0

    def on_train_batch_end(self, batch, logs=None):
        for w in prune.callbacks.pruning_wrappers(self.model):
            for weight, mask in w.pruned_weights:
                weight, mask = np.asarray(weight), np.asarray(mask)
                assert (weight[mask == 0] == 0).all(), f"{w.name}: pruned weight moved"
        self.checked += 1


@pytest.mark.parametrize("optimizer", ["adam", "sgd_momentum"])
def test_pruned_weights_stay_exactly_zero(mlp_data, optimizer):
    x, y = mlp_data
    opt = (
        keras.optimizers.SGD(0.1, momentum=0.9)
        if optimizer == "sgd_momentum"
        else keras.optimizers.Adam(0.01)
    )
    model = testing.tiny_mlp()
    pruned = prune.prune_low_magnitude(
        model, prune.PolynomialDecay(0.0, 0.75, begin_step=0, end_step=6, frequency=2), skip=None
    )
    _compile(pruned, opt)
    check = _ZerosStayZero()
    pruned.fit(
        x, y, epochs=3, batch_size=8, verbose=0, callbacks=[prune.UpdatePruningStep(), check]
    )
    assert check.checked == 24
    report = prune.sparsity_report(pruned)
    assert report.sparsity == pytest.approx(0.75, abs=0.005)
    for layer in report.pruned_layers:
        assert layer.sparsity == pytest.approx(0.75, abs=0.01)


def test_input_model_is_not_changed(trained_cnn):
    before = [w.copy() for w in trained_cnn.get_weights()]
    pruned = prune.prune_low_magnitude(trained_cnn, prune.ConstantSparsity(0.9, 0, frequency=1))
    assert pruned is not trained_cnn
    assert not any(isinstance(layer, prune.PruneLowMagnitude) for layer in trained_cnn.layers)
    _compile(pruned).fit(
        np.zeros((8, 8, 8, 1)), np.zeros(8), verbose=0, callbacks=[prune.UpdatePruningStep()]
    )
    for a, b in zip(before, trained_cnn.get_weights(), strict=False):
        np.testing.assert_array_equal(a, b)


def test_digits_80_percent_keeps_accuracy_after_fine_tuning(trained_cnn, digits):
    dense_acc = accuracy(trained_cnn, digits.x_test, digits.y_test)
    pruned = prune.prune_low_magnitude(
        trained_cnn, prune.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=80, frequency=10)
    )
    _compile(pruned).fit(
        digits.x_train,
        digits.y_train,
        epochs=4,
        batch_size=32,
        verbose=0,
        callbacks=[prune.UpdatePruningStep()],
    )
    stripped = prune.strip_pruning(pruned)
    report = prune.sparsity_report(stripped)
    assert report.sparsity == pytest.approx(0.8, abs=0.005)
    assert {layer.name for layer in report.sparse_layers} == {"conv1", "dense"}
    assert report["conv0"].zeros == 0 and report["logits"].zeros == 0  # skipped by default
    assert not any(isinstance(layer, prune.PruneLowMagnitude) for layer in stripped.layers)
    np.testing.assert_allclose(
        stripped.predict(digits.x_test, verbose=0),
        pruned.predict(digits.x_test, verbose=0),
        atol=1e-5,
    )
    assert accuracy(stripped, digits.x_test, digits.y_test) >= dense_acc - 0.03


def test_forgetting_update_pruning_step_fails_at_first_batch(mlp_data):
    x, y = mlp_data
    pruned = _compile(prune.prune_low_magnitude(testing.tiny_mlp(), 0.5, skip=None))
    with pytest.raises(prune.MissingPruningStepError, match="UpdatePruningStep"):
        pruned.fit(x, y, epochs=1, verbose=0)


def test_wrapper_config_round_trip():
    wrapper = prune.PruneLowMagnitude(
        keras.layers.Dense(8, name="d"),
        pruning_schedule=prune.PolynomialDecay(0.1, 0.6, 2, 20, frequency=3),
        pattern=(1, 4),
        importance="magnitude",
        scope="global",
    )
    config = wrapper.get_config()
    again = prune.PruneLowMagnitude.from_config(config)
    assert again.get_config() == config
    assert again.pruning_schedule == wrapper.pruning_schedule
    assert again.pattern == wrapper.pattern and again.scope == "global"


def test_save_and_load_mid_pruning_resumes(tmp_path, mlp_data):
    x, y = mlp_data
    schedule = prune.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=16, frequency=2)
    pruned = _compile(prune.prune_low_magnitude(testing.tiny_mlp(), schedule, skip=None))
    pruned.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[prune.UpdatePruningStep()])
    middle = prune.sparsity_report(pruned).sparsity
    assert 0.2 < middle < 0.8
    path = os.path.join(tmp_path, "mid.keras")
    pruned.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-6
    )
    wrapper = prune.callbacks.pruning_wrappers(loaded)[0]
    assert int(wrapper.pruning_step.numpy()) == 8
    assert prune.sparsity_report(loaded).sparsity == pytest.approx(middle)
    loaded.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[prune.UpdatePruningStep()])
    assert int(wrapper.pruning_step.numpy()) == 24
    assert prune.sparsity_report(loaded).sparsity == pytest.approx(0.8, abs=0.005)


def test_embedding_einsum_and_depthwise_are_prunable():
    inputs = keras.Input((6,), dtype="int32")
    e = keras.layers.Embedding(40, 8, name="emb")(inputs)
    h = keras.layers.EinsumDense("abc,cd->abd", output_shape=(6, 8), name="einsum")(e)
    c = keras.layers.Conv1D(4, 3, name="conv1d")(h)
    d = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(
        keras.layers.Reshape((6, 8, 1))(h)
    )
    merged = keras.layers.Concatenate()([keras.layers.Flatten()(c), keras.layers.Flatten()(d)])
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(merged), name="mixed")
    pruned = prune.prune_low_magnitude(
        model, prune.ConstantSparsity(0.5, 0, frequency=1), skip=["out"]
    )
    names = {w.layer.name for w in prune.callbacks.pruning_wrappers(pruned)}
    assert names == {"emb", "einsum", "conv1d", "dw"}
    x = np.random.default_rng(0).integers(0, 40, size=(16, 6)).astype("int32")
    pruned.compile("adam", "mse")
    pruned.fit(x, np.zeros((16, 2)), verbose=0, callbacks=[prune.UpdatePruningStep()])
    report = prune.sparsity_report(pruned)
    for name in names:
        assert report[name].sparsity == pytest.approx(0.5, abs=0.01)


def test_depthwise_convolutions_stay_dense_by_default():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", name="stem")(inputs)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.Conv2D(8, 1, name="pw")(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="out")(x), name="mobile")
    pruned = prune.prune_low_magnitude(model, 0.5, verbose=True)
    names = {w.layer.name for w in prune.callbacks.pruning_wrappers(pruned)}
    assert names == {"pw"}
    everything = prune.prune_low_magnitude(model, 0.5, skip=None)
    assert {w.layer.name for w in prune.callbacks.pruning_wrappers(everything)} == {
        "stem",
        "dw",
        "pw",
        "out",
    }
