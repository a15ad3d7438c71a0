"""One test matrix: our Keras 3 engine and tfmot (tf_keras) on the same digits CNN."""

import numpy as np
import pytest

from tfcompress import prune
from tfcompress.testing import accuracy

ENGINES = ["keras3", "tf_keras"]


def _loss(engine):
    if engine == "keras3":
        import keras

        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    import tf_keras

    return tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="module")
def pruned_pairs(trained_cnn, trained_tf_keras_cnn, digits):
    """Each engine: (dense model, pruned+fine-tuned model, stripped model)."""
    out = {}
    for engine, dense in (("keras3", trained_cnn), ("tf_keras", trained_tf_keras_cnn)):
        before = [w.copy() for w in dense.get_weights()]
        schedule = prune.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=80, frequency=10)
        pruned = prune.prune_low_magnitude(dense, schedule)
        pruned.compile("adam", _loss(engine), metrics=["accuracy"])
        pruned.fit(
            digits.x_train,
            digits.y_train,
            epochs=4,
            batch_size=32,
            verbose=0,
            callbacks=[prune.UpdatePruningStep()],
        )
        unchanged = all(
            np.array_equal(a, b) for a, b in zip(before, dense.get_weights(), strict=True)
        )
        out[engine] = (dense, pruned, prune.strip_pruning(pruned), unchanged)
    return out


@pytest.mark.parametrize("engine", ENGINES)
def test_reaches_target_sparsity_and_accuracy(pruned_pairs, digits, engine):
    from tfcompress import _flavor

    dense, pruned, stripped, unchanged = pruned_pairs[engine]
    assert unchanged, "the input model changed"
    assert _flavor.flavor_of(stripped) == _flavor.flavor_of(dense)
    report = prune.sparsity_report(stripped)
    assert report.sparsity == pytest.approx(0.8, abs=0.005)
    assert [layer.name for layer in report.sparse_layers] == ["conv1", "dense"]
    dense_acc = accuracy(dense, digits.x_test, digits.y_test)
    assert accuracy(stripped, digits.x_test, digits.y_test) >= dense_acc - 0.03


def test_engines_agree(pruned_pairs, digits):
    sparsities = [prune.sparsity_report(pruned_pairs[e][2]).sparsity for e in ENGINES]
    assert abs(sparsities[0] - sparsities[1]) <= 0.005
    accs = [accuracy(pruned_pairs[e][2], digits.x_test, digits.y_test) for e in ENGINES]
    assert abs(accs[0] - accs[1]) <= 0.04  # tiny test set: 270 images


def test_tf_keras_options_without_tfmot_equivalent(trained_tf_keras_cnn):
    with pytest.raises(NotImplementedError, match="tfmot.*scope='global'"):
        prune.prune_low_magnitude(trained_tf_keras_cnn, 0.5, scope="global")


def test_tf_keras_block_pattern(trained_tf_keras_cnn, digits):
    import tf_keras

    pruned = prune.prune_low_magnitude(
        trained_tf_keras_cnn,
        prune.ConstantSparsity(0.5, 0, frequency=1),
        pattern=(1, 4),
        layers=["dense"],
    )
    pruned.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(
        digits.x_train[:64],
        digits.y_train[:64],
        batch_size=32,
        verbose=0,
        callbacks=[prune.UpdatePruningStep()],
    )
    kernel = prune.strip_pruning(pruned).get_layer("dense").kernel.numpy()
    blocks = (kernel.reshape(kernel.shape[0], -1, 4) == 0).sum(axis=-1)
    assert set(np.unique(blocks)) <= {0, 4}
    assert (kernel == 0).mean() == pytest.approx(0.5, abs=0.01)


def test_tf_keras_forgetting_the_callback_is_tfmots_error(trained_tf_keras_cnn, digits):
    import tensorflow as tf
    import tf_keras

    pruned = prune.prune_low_magnitude(trained_tf_keras_cnn, 0.5)
    pruned.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(tf.errors.InvalidArgumentError, match="UpdatePruningStep"):
        pruned.fit(digits.x_train[:32], digits.y_train[:32], verbose=0)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    "schedule, expected",
    [
        (prune.ConstantSparsity(0.5, begin_step=0, frequency=100), 0.0),  # step 1 is no turn
        (prune.ConstantSparsity(0.5, begin_step=0, frequency=1), 0.5),
        (0.5, 0.5),  # a float prunes at the first step
    ],
)
def test_steps_count_from_one_in_both_engines(
    trained_cnn, trained_tf_keras_cnn, digits, engine, schedule, expected
):
    dense = trained_cnn if engine == "keras3" else trained_tf_keras_cnn
    pruned = prune.prune_low_magnitude(dense, schedule)
    pruned.compile("sgd", _loss(engine))
    pruned.fit(
        digits.x_train[:32],
        digits.y_train[:32],
        batch_size=32,
        verbose=0,
        callbacks=[prune.UpdatePruningStep()],
    )
    assert prune.sparsity_report(pruned).sparsity == pytest.approx(expected, abs=0.005)
