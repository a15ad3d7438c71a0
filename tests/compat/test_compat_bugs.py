"""Regression tests for the five bugs of issue 14 (found by running tfmot-style scenarios)."""

import keras
import numpy as np
import pytest


def test_tf_keras_teacher_with_uncalled_sequential_student(digits):
    """Bug 5: `model.input` of a never-called Keras 3 Sequential raised AttributeError."""
    import tf_keras

    from tfcompress import distill

    teacher = tf_keras.Sequential(
        [tf_keras.Input((8, 8, 1)), tf_keras.layers.Flatten(), tf_keras.layers.Dense(10)]
    )
    student = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)]
    )
    d = distill.distiller(student=student, teacher=teacher)
    d.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = d.fit(digits.x_train[:64], digits.y_train[:64], epochs=1, batch_size=32, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    np.testing.assert_allclose(
        d.teacher.predict(digits.x_test[:8], verbose=0),
        teacher.predict(digits.x_test[:8], verbose=0),
        atol=1e-5,
    )


def _fit_pruned(model, x, y, epochs=1):
    from tfcompress import prune

    model.compile("adam", "mse")
    model.fit(x, y, epochs=epochs, batch_size=16, verbose=0, callbacks=[prune.UpdatePruningStep()])
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
    if call == "keywords":
        return  # training is the same for both call forms
    pruned = prune.prune_low_magnitude(model, prune.ConstantSparsity(0.5, 0, frequency=1))
    stripped = _fit_pruned(pruned, x, y)
    kernels = [w.numpy() for w in stripped.get_layer("mha").weights if w.ndim == 3]
    assert len(kernels) == 4  # query, key, value and output kernels
    for kernel in kernels:
        assert np.mean(kernel == 0) == pytest.approx(0.5, abs=0.02)


def test_layer_scope_keeps_one_weight_per_layer():
    """Bug 3: at 99% a 2-weight layer kept nothing in layer scope (tfmot keeps one)."""
    from tfcompress import prune

    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(16, name="wide"),
            keras.layers.Dense(1, name="narrow"),
            keras.layers.Dense(1, name="out"),
        ]
    )
    pruned = prune.prune_low_magnitude(
        model, prune.ConstantSparsity(0.99, 0, frequency=1), skip=None
    )
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


def _nonzero(model):
    return sum(int(np.count_nonzero(w)) for w in model.get_weights())


def test_cluster_preserve_sparsity_keeps_every_zero(trained_cnn, digits):
    """Bug 1, API side: `cluster_weights(..., preserve_sparsity=True)` keeps pruned zeros."""
    from tfcompress import cluster, prune

    pruned = prune.prune_low_magnitude(trained_cnn, prune.ConstantSparsity(0.8, 0, frequency=1))
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(
        digits.x_train[:256],
        digits.y_train[:256],
        epochs=1,
        batch_size=64,
        verbose=0,
        callbacks=[prune.UpdatePruningStep()],
    )
    sparse = prune.strip_pruning(pruned)
    zeros = {w.path: np.asarray(w) == 0 for w in sparse.weights}
    lost = cluster.strip_clustering(cluster.cluster_weights(sparse, 8, init="linear"))
    assert _nonzero(lost) > _nonzero(sparse)  # the bug, still there without the option
    clustered = cluster.cluster_weights(sparse, 8, init="linear", preserve_sparsity=True)
    clustered.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    clustered.fit(digits.x_train[:256], digits.y_train[:256], epochs=1, verbose=0)
    final = cluster.strip_clustering(clustered)
    assert _nonzero(final) <= _nonzero(sparse)
    for w in final.weights:
        assert np.all(np.asarray(w)[zeros[w.path]] == 0), w.path
        if w.name == "kernel" and w.path.split("/")[0] in ("conv1", "dense"):
            assert len(np.unique(np.asarray(w))) <= 8  # zero counts as one of the 8 values


@pytest.mark.slow
def test_pipeline_prune_then_cluster_keeps_zeros(tmp_path):
    """Bug 1, pipeline side: prune -> cluster in a recipe kept 6,516 non-zeros as 38,282."""
    from tfcompress import pipeline

    recipe = {
        "name": "prune_cluster",
        "data": {"embedded": "digits"},
        "model": {
            "factory": "tfcompress.testing:digits_cnn",
            "kwargs": {"filters": [4, 8], "dense_units": 16},
        },
        "stages": [
            {"type": "train", "epochs": 1, "learning_rate": 0.005},
            {"type": "prune", "epochs": 1, "final_sparsity": 0.7, "schedule": "constant"},
            {"type": "cluster", "epochs": 1, "number_of_clusters": 8},
        ],
    }
    out = tmp_path / "out"
    pipeline.run(recipe, str(out), progress=lambda m: None)
    pruned = keras.saving.load_model(out / "02_prune" / "model.keras")
    clustered = keras.saving.load_model(out / "03_cluster" / "model.keras")
    kernels = {w.path: np.asarray(w) for w in pruned.weights if w.name == "kernel"}
    assert sum(np.count_nonzero(k) for k in kernels.values()) < 0.5 * sum(
        k.size for k in kernels.values()
    )
    for w in clustered.weights:
        if w.path in kernels:  # every pruned zero is still zero (biases may move)
            assert np.all(np.asarray(w)[kernels[w.path] == 0] == 0), w.path


def test_cluster_reaches_nested_models():
    """Bug 4: a Dense inside a nested Sequential was silently left unclustered."""
    from tfcompress import cluster

    inner = keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(32, name="inner_dense")], name="inner"
    )
    inp = keras.Input((16,))
    out = keras.layers.Dense(4, name="head")(inner(inp))
    model = keras.Model(inp, out)
    clustered = cluster.cluster_weights(model, number_of_clusters=8)
    names = [name for name, _, _ in clustered.cluster_report.clustered]
    assert names == ["inner_dense", "head"]
    x = np.random.default_rng(0).normal(size=(4, 16)).astype("float32")
    stripped = cluster.strip_clustering(clustered)
    np.testing.assert_allclose(stripped(x), clustered(x), atol=1e-5)
    kernel = stripped.get_layer("inner").get_layer("inner_dense").kernel.numpy()
    assert len(np.unique(kernel)) <= 8
