"""Regression tests for the five bugs of issue 14 (found by running tfmot-style scenarios)."""

import keras
import numpy as np
import pytest


def test_tf_keras_teacher_with_uncalled_sequential_student(digits):
    """Bug 5: `model.input` of a never-called Keras 3 Sequential raised AttributeError."""
    import tf_keras

    from tfcompress import distill

    teacher = tf_keras.Sequential([tf_keras.Input((8, 8, 1)), tf_keras.layers.Flatten(),
                                   tf_keras.layers.Dense(10)])
    student = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                keras.layers.Dense(10)])
    d = distill.distiller(student=student, teacher=teacher)
    d.compile(optimizer="adam",
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = d.fit(digits.x_train[:64], digits.y_train[:64], epochs=1, batch_size=32, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    np.testing.assert_allclose(d.teacher.predict(digits.x_test[:8], verbose=0),
                               teacher.predict(digits.x_test[:8], verbose=0), atol=1e-5)


def _fit_pruned(model, x, y, epochs=1):
    from tfcompress import prune

    model.compile("adam", "mse")
    model.fit(x, y, epochs=epochs, batch_size=16, verbose=0,
              callbacks=[prune.UpdatePruningStep()])
    return prune.strip_pruning(model)


@pytest.mark.parametrize("call", ["positional", "keywords"])
def test_functional_multi_head_attention_prunes_with_defaults(call):
    """Bug 2: `MultiHeadAttention(q, v)` in a functional model failed to wrap."""
    from tfcompress import prune

    inp = keras.Input((8, 8))
    mha = keras.layers.MultiHeadAttention(2, 4, name="mha")
    x = mha(inp, inp) if call == "positional" else mha(query=inp, value=inp, key=inp)
    x = keras.layers.GlobalAveragePooling1D()(x)
    model = keras.Model(inp, keras.layers.Dense(3, name="logits")(x))
    pruned = prune.prune_low_magnitude(model)  # default arguments
    assert prune.PruneLowMagnitude in {type(layer) for layer in pruned.layers}
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 8, 8)).astype("float32"), rng.normal(size=(32, 3))
    np.testing.assert_allclose(pruned(x[:4]), model(x[:4]), atol=1e-5)
    pruned = prune.prune_low_magnitude(model, prune.ConstantSparsity(0.5, 0, frequency=1))
    stripped = _fit_pruned(pruned, x, y)
    kernels = [w.numpy() for w in stripped.get_layer("mha").weights if w.ndim == 3]
    assert len(kernels) == 4  # query, key, value and output kernels
    for kernel in kernels:
        assert np.mean(kernel == 0) == pytest.approx(0.5, abs=0.02)


def test_layer_scope_keeps_one_weight_per_layer():
    """Bug 3: at 99% a 2-weight layer kept nothing in layer scope (tfmot keeps one)."""
    from tfcompress import prune

    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, name="wide"),
                              keras.layers.Dense(1, name="narrow"), keras.layers.Dense(1,
                                                                                       name="out")])
    pruned = prune.prune_low_magnitude(model, prune.ConstantSparsity(0.99, 0, frequency=1),
                                       skip=None)
    rng = np.random.default_rng(0)
    stripped = _fit_pruned(pruned, rng.normal(size=(32, 6)), rng.normal(size=(32, 1)))
    for name in ("wide", "narrow", "out"):
        kernel = stripped.get_layer(name).kernel.numpy()
        assert np.count_nonzero(kernel) == max(1, kernel.size - round(0.99 * kernel.size)), name


def test_pruned_model_is_uncompiled_and_summaries_need_a_folder():
    """Minor bugs: a compiled input gave a compiled copy; PruningSummaries('') was accepted."""
    from tfcompress import prune

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(2)])
    model.compile("adam", "mse")
    pruned = prune.prune_low_magnitude(model, skip=None)
    assert not pruned.compiled and model.compiled
    assert not prune.strip_pruning(pruned).compiled
    with pytest.raises(ValueError, match="Received: log_dir=''"):
        prune.PruningSummaries(log_dir="")
