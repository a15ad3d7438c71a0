"""Weight clustering: centroid inits, trainable centroids, strip, gzip size, tf_keras."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcompress import cluster, export, testing
from tfcompress.cluster import ClusterWeights


def _acc(model, digits):
    return float(np.mean(np.argmax(model.predict(digits.x_test, verbose=0), -1) == digits.y_test))


@pytest.mark.parametrize("init", ["kmeans++", "linear", "density"])
def test_initial_centroids(init):
    w = np.concatenate([np.random.default_rng(0).normal(size=1000), [5.0]])
    c = cluster.initial_centroids(w, 8, init)
    assert c.shape == (8,) and np.all(np.diff(c) > 0)
    if init == "linear":
        assert c[0] == pytest.approx(w.min()) and c[-1] == pytest.approx(5.0)
    err = np.mean((w - c[cluster.assign(w, c)]) ** 2)
    assert err < (0.05 if init == "kmeans++" else 0.2)


def test_kmeans_beats_linear_on_error():
    w = np.random.default_rng(1).standard_t(3, size=4000)
    errors = {}
    for init in ("kmeans++", "linear"):
        c = cluster.initial_centroids(w, 16, init)
        errors[init] = np.mean((w - c[cluster.assign(w, c)]) ** 2)
    assert errors["kmeans++"] < errors["linear"]


def test_bad_arguments(trained_cnn):
    with pytest.raises(ValueError, match="Received: init='bogus'"):
        cluster.cluster_weights(trained_cnn, init="bogus")
    with pytest.raises(ValueError, match="Received: number_of_clusters=1"):
        cluster.cluster_weights(trained_cnn, number_of_clusters=1)
    # The same check guards the layer wrapper and the report.
    with pytest.raises(ValueError, match="Received: number_of_clusters=True"):
        cluster.ClusterWeights(trained_cnn.layers[-1], number_of_clusters=True)
    with pytest.raises(ValueError, match="Received: number_of_clusters=1.5"):
        cluster.cluster_report(trained_cnn, 1.5)


@pytest.fixture(scope="module")
def clustered(trained_cnn, digits):
    model = cluster.cluster_weights(trained_cnn, number_of_clusters=16, init="kmeans++")
    model.compile(
        keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(digits.x_train, digits.y_train, epochs=2, batch_size=32, verbose=0)
    return model


def test_structure_and_report(trained_cnn):
    model = cluster.cluster_weights(trained_cnn, number_of_clusters=16, init="density")
    names = [layer.layer.name for layer in model.layers if isinstance(layer, ClusterWeights)]
    assert names == ["conv0", "conv1", "dense", "logits"]
    assert len(model.cluster_report.clustered) == 4 and model.cluster_report.init == "density"
    for layer in model.layers:
        if isinstance(layer, ClusterWeights):
            assert len(np.unique(layer.clustered_kernel().numpy())) <= 16
    # the input model is untouched
    assert not any(isinstance(layer, ClusterWeights) for layer in trained_cnn.layers)


def test_gradient_reaches_centroids_not_assignments(trained_cnn, digits):
    model = cluster.cluster_weights(trained_cnn, number_of_clusters=8)
    layer = model.get_layer("cluster_dense")
    assert layer.centroids.trainable and not layer.indices.trainable
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(digits.x_test[:16], training=True) ** 2)
    grads = tape.gradient(loss, [layer.centroids, layer.layer.kernel])
    assert grads[0] is not None and np.any(tf.convert_to_tensor(grads[0]).numpy() != 0)
    assert grads[1] is None  # the frozen float kernel is not used while clustering


def test_fine_tune_strip_and_gzip(clustered, trained_cnn, digits, tmp_path):
    indices_before = clustered.get_layer("cluster_dense").indices.numpy().copy()
    stripped = cluster.strip_clustering(clustered)
    assert not any(isinstance(layer, ClusterWeights) for layer in stripped.layers)
    for name in ("conv0", "conv1", "dense", "logits"):
        assert len(np.unique(stripped.get_layer(name).kernel.numpy())) <= 16
    np.testing.assert_array_equal(indices_before, clustered.get_layer("cluster_dense").indices)
    np.testing.assert_allclose(
        stripped.predict(digits.x_test, verbose=0),
        clustered.predict(digits.x_test, verbose=0),
        atol=1e-5,
    )
    assert _acc(stripped, digits) >= _acc(trained_cnn, digits) - 0.02
    base = export.to_tflite(trained_cnn, tmp_path / "float.tflite")
    small = export.to_tflite(stripped, tmp_path / "clustered.tflite")
    assert small.gzip_bytes * 3 <= base.gzip_bytes, (small, base)


def test_save_load_clustered(clustered, digits, tmp_path):
    path = tmp_path / "clustered.keras"
    clustered.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(
        loaded.predict(digits.x_test[:32], verbose=0),
        clustered.predict(digits.x_test[:32], verbose=0),
    )
    layer = loaded.get_layer("cluster_conv1")
    # (tuples come back as lists from JSON)
    assert json.loads(json.dumps(layer.get_config())) == json.loads(
        json.dumps(clustered.get_layer("cluster_conv1").get_config())
    )


def test_skip_layers_and_small_kernels():
    model = testing.tiny_mlp(input_dim=2, hidden=(3,), num_classes=2)
    out = cluster.cluster_weights(model, number_of_clusters=4, skip_layers=("logits",))
    assert dict(out.cluster_report.skipped) == {"logits": "skip_layers"}
    # Nothing left to cluster is an error naming each reason, not a silent no-op.
    with pytest.raises(cluster.NothingToClusterError) as e:
        cluster.cluster_weights(model, number_of_clusters=8, skip_layers=("logits",))
    assert "hidden0: only 6 weights for 8 clusters; logits: skip_layers" in str(e.value)


def test_tf_keras_goes_to_tfmot(digits):
    model = testing.tf_keras_digits_cnn()
    clustered = cluster.cluster_weights(model, number_of_clusters=8, init="linear")
    assert any(
        type(layer).__name__ == "ClusterWeights"
        and type(layer).__module__.startswith("tensorflow_model_optimization")
        for layer in clustered.layers
    )
    stripped = cluster.strip_clustering(clustered)
    assert len(np.unique(stripped.get_layer("dense").kernel.numpy())) <= 8


def test_random_init_is_seeded_and_uniform_between_min_and_max():
    # Most weights near 0, two at -1 and 1: k-means++ and density put their centroids
    # where the weights are; tfmot's RANDOM spreads them evenly over [min, max].
    w = np.concatenate([np.random.default_rng(2).normal(0.0, 0.01, size=2000), [-1.0, 1.0]])
    c = cluster.initial_centroids(w, 200, cluster.CentroidInitialization.RANDOM, seed=3)
    assert c.shape == (200,) and np.all(np.diff(c) >= 0)
    assert c.min() >= -1.0 and c.max() <= 1.0
    assert 0.35 < np.mean(np.abs(c) > 0.5) < 0.65
    assert np.mean(np.abs(cluster.initial_centroids(w, 200, "density")) > 0.5) < 0.05
    np.testing.assert_array_equal(c, cluster.initial_centroids(w, 200, "random", seed=3))
    assert not np.array_equal(c, cluster.initial_centroids(w, 200, "random", seed=4))


def test_random_init_clusters_a_model_and_recipes_take_it(tmp_path):
    from tfcompress.pipeline import load_recipe

    model = testing.tiny_mlp(input_dim=16, hidden=(32,), num_classes=4)
    first, again, other = (
        cluster.cluster_weights(model, number_of_clusters=4, init="random", seed=seed)
        for seed in (0, 0, 1)
    )
    assert first.cluster_report.init == "random"
    centroids = first.get_layer("cluster_hidden0").centroids.numpy()
    kernel = model.get_layer("hidden0").kernel.numpy()
    assert kernel.min() <= centroids.min() and centroids.max() <= kernel.max()
    np.testing.assert_array_equal(centroids, again.get_layer("cluster_hidden0").centroids.numpy())
    assert not np.array_equal(centroids, other.get_layer("cluster_hidden0").centroids.numpy())
    stripped = cluster.strip_clustering(first)
    assert len(np.unique(stripped.get_layer("hidden0").kernel.numpy())) <= 4

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "name: random_init\n"
        "data: {embedded: digits}\n"
        "model: {factory: 'tfcompress.testing:digits_cnn'}\n"
        "stages:\n"
        "  - {type: train, epochs: 1}\n"
        "  - {type: cluster, number_of_clusters: 8, init: random}\n"
    )
    assert load_recipe(recipe).stages[1].init == "random"
