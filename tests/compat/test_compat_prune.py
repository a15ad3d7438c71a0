"""tfmot 0.8 pruning call forms, run unchanged against tfcompress (one test per form).

Written from tfmot's documented behaviour: the pruning guides ("Pruning in
Keras", "Pruning comprehensive guide") and the `prune_low_magnitude`,
`UpdatePruningStep` and schedule API docs.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcompress.prune import (
    ConstantSparsity,
    PolynomialDecay,
    PruneLowMagnitude,
    UpdatePruningStep,
    prune_low_magnitude,
    prune_scope,
    strip_pruning,
)


def _mlp(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((16,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(2),
        ]
    )


def _fit(model, data, epochs=2):
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(*data, epochs=epochs, batch_size=16, verbose=0, callbacks=[UpdatePruningStep()])
    return strip_pruning(model)


def test_tfmot_keyword_arguments(data):
    """`pruning_schedule=`, `block_size=`, `block_pooling_type=`, `sparsity_m_by_n=`."""
    pruned = prune_low_magnitude(
        _mlp(),
        pruning_schedule=ConstantSparsity(0.5, 0, frequency=1),
        block_size=(1, 4),
        block_pooling_type="AVG",
        sparsity_m_by_n=(2, 4),
    )
    kernel = _fit(pruned, data).layers[1].kernel.numpy()
    # As in tfmot, m_by_n wins over block_size: 2 zeros in every 4 along the input axis.
    groups = np.moveaxis(kernel, 0, -1).reshape(-1, 4)
    assert np.all(np.sum(groups == 0, axis=1) == 2)


@pytest.mark.parametrize("pooling", ["AVG", "MAX"])
def test_block_size_and_pooling(data, pooling):
    pruned = prune_low_magnitude(
        _mlp(),
        pruning_schedule=ConstantSparsity(0.5, 0, frequency=1),
        block_size=(1, 4),
        block_pooling_type=pooling,
    )
    kernel = _fit(pruned, data).layers[1].kernel.numpy()
    blocks = kernel.reshape(32, 8, 4)
    zero_blocks = np.all(blocks == 0, axis=-1)
    assert np.all(zero_blocks | np.all(blocks != 0, axis=-1))  # whole 1x4 blocks
    assert zero_blocks.mean() == pytest.approx(0.5)


def test_polynomial_decay_reaches_final_sparsity(data):
    schedule = PolynomialDecay(
        initial_sparsity=0.2, final_sparsity=0.8, begin_step=0, end_step=6, frequency=2
    )
    stripped = _fit(prune_low_magnitude(_mlp(), pruning_schedule=schedule), data, epochs=2)
    assert np.mean(stripped.layers[1].kernel.numpy() == 0) == pytest.approx(0.8, abs=0.01)


def test_prune_layer_and_list_of_layers_inside_a_model_definition(data):
    """`prune_low_magnitude(layer)` and `prune_low_magnitude([layers])` while defining a model."""
    schedule = ConstantSparsity(0.75, 0, frequency=1)
    first, second = prune_low_magnitude(
        [keras.layers.Dense(32, activation="relu"), keras.layers.Dense(32, activation="relu")],
        pruning_schedule=schedule,
    )
    model = keras.Sequential(
        [
            keras.Input((16,)),
            first,
            second,
            prune_low_magnitude(
                keras.layers.Dense(2), pruning_schedule=schedule, name="pruned_out"
            ),
        ]
    )
    assert [type(layer) for layer in model.layers] == [PruneLowMagnitude] * 3
    assert model.layers[2].name == "pruned_out"
    stripped = _fit(model, data)
    assert not any(isinstance(layer, PruneLowMagnitude) for layer in stripped.layers)
    for layer in stripped.layers:
        assert np.mean(layer.kernel.numpy() == 0) == pytest.approx(0.75, abs=0.02)


def test_prune_scope_loads_a_saved_pruned_model(data, tmp_path):
    pruned = prune_low_magnitude(_mlp(), ConstantSparsity(0.5, 0, frequency=1))
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(*data, epochs=1, verbose=0, callbacks=[UpdatePruningStep()])
    path = tmp_path / "pruned.keras"
    pruned.save(path)
    with prune_scope():
        loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        loaded.predict(data[0], verbose=0), pruned.predict(data[0], verbose=0), atol=1e-6
    )
    assert isinstance(loaded.layers[0], PruneLowMagnitude)


def test_update_pruning_step_in_a_custom_training_loop(data):
    """The comprehensive guide's loop: set_model, on_train_begin, on_train_batch_begin,
    on_epoch_end(batch=-1)."""
    model = prune_low_magnitude(_mlp(), pruning_schedule=ConstantSparsity(0.6, 0, frequency=1))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = keras.optimizers.Adam()
    step_callback = UpdatePruningStep()
    step_callback.set_model(model)
    step_callback.on_train_begin()
    dataset = tf.data.Dataset.from_tensor_slices(data).batch(16)
    for _ in range(2):
        for x, y in dataset:
            step_callback.on_train_batch_begin(batch=-1)
            with tf.GradientTape() as tape:
                value = loss(y, model(x, training=True))
            grads = tape.gradient(value, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
        step_callback.on_epoch_end(batch=-1)
    assert int(model.layers[0].pruning_step.numpy()) == 8
    kernel = strip_pruning(model).layers[0].kernel.numpy()
    assert np.mean(kernel == 0) == pytest.approx(0.6, abs=0.01)


@pytest.mark.parametrize(
    "schedule",
    [
        ConstantSparsity(0.7, begin_step=10, frequency=5),
        PolynomialDecay(0.1, 0.9, 0, 100, power=2, frequency=10),
    ],
)
def test_schedule_config_in_tfmot_form(schedule):
    config = schedule.get_config()
    assert set(config) == {"class_name", "config"}
    assert config["class_name"] == type(schedule).__name__
    # tfmot loads the inner dict with from_config; the whole dict loads too.
    assert type(schedule).from_config(config["config"]) == schedule
    assert type(schedule).from_config(config) == schedule
    # ... and a model built with that config dict as its schedule.
    wrapped = prune_low_magnitude(_mlp(), pruning_schedule=config)
    assert wrapped.layers[0].pruning_schedule == schedule
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert again == schedule


class _PrunableDense(keras.layers.Dense):
    """tfmot's PrunableLayer interface: the layer says which weights to prune."""

    def get_prunable_weights(self):
        return [self.kernel, self.bias]


def test_custom_layer_with_get_prunable_weights(data):
    model = keras.Sequential(
        [
            keras.Input((16,)),
            _PrunableDense(32, bias_initializer="ones", name="custom"),
            keras.layers.Dense(2),
        ]
    )
    pruned = prune_low_magnitude(model, ConstantSparsity(0.5, 0, frequency=1), skip=None)
    layer = _fit(pruned, data).get_layer("custom")
    assert np.mean(layer.kernel.numpy() == 0) == pytest.approx(0.5)
    assert np.mean(layer.bias.numpy() == 0) == pytest.approx(0.5)  # bias too, as it asked


def test_pruning_policy_none_is_accepted_and_a_non_policy_is_refused():
    pruned = prune_low_magnitude(
        _mlp(), pruning_schedule=ConstantSparsity(0.5, 0), pruning_policy=None
    )
    assert any(isinstance(layer, PruneLowMagnitude) for layer in pruned.layers)
    with pytest.raises(TypeError, match="Received: pruning_policy="):
        prune_low_magnitude(_mlp(), pruning_policy=object())
