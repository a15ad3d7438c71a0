"""tfmot 0.8 clustering call forms, run unchanged against tfcompress.

Written from tfmot's documented behaviour ("Weight clustering in Keras", the
clustering comprehensive guide, sparsity-preserving clustering and the
`cluster_weights` API doc): at most `number_of_clusters` unique values per
weight, per channel with `cluster_per_channel`, zeros kept with
`preserve_sparsity`, and a plain model back from `strip_clustering`.
"""

import keras
import numpy as np
import pytest

from tfcompress.cluster import (
    CentroidInitialization,
    ClusterWeights,
    cluster_weights,
    strip_clustering,
)


def _conv_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, name="conv"),
            keras.layers.Conv2D(16, 3, name="conv2"),
            keras.layers.Flatten(),
            keras.layers.Dense(10, name="logits"),
        ]
    )


def _sparse(model, fraction=0.6):
    """Zero the smallest weights of every kernel, as pruning would."""
    for layer in model.layers:
        if hasattr(layer, "kernel"):
            kernel = layer.kernel.numpy()
            threshold = np.quantile(np.abs(kernel), fraction)
            layer.kernel.assign(np.where(np.abs(kernel) < threshold, 0.0, kernel))
    return model


def _fit(model, digits):
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(digits.x_train[:128], digits.y_train[:128], epochs=1, batch_size=32, verbose=0)
    return model


def test_full_tfmot_call_on_a_model(digits):
    """cluster_weights(model, number_of_clusters=16, cluster_centroids_init=KMEANS_PLUS_PLUS,
    preserve_sparsity=True, cluster_per_channel=True), fit, strip_clustering."""
    model = _sparse(_conv_model())
    zeros = {
        layer.name: layer.kernel.numpy() == 0 for layer in model.layers if hasattr(layer, "kernel")
    }
    clustered = cluster_weights(
        model,
        number_of_clusters=16,
        cluster_centroids_init=CentroidInitialization.KMEANS_PLUS_PLUS,
        preserve_sparsity=True,
        cluster_per_channel=True,
    )
    assert clustered.cluster_report.init == "kmeans++"
    stripped = strip_clustering(_fit(clustered, digits))
    assert not any(isinstance(layer, ClusterWeights) for layer in stripped.layers)
    for name in ("conv", "conv2"):
        kernel = stripped.get_layer(name).kernel.numpy()
        assert np.all(kernel[zeros[name]] == 0), name
        # Per channel: every output channel holds at most 16 values, zero included ...
        per_channel = [len(np.unique(kernel[..., c])) for c in range(kernel.shape[-1])]
        assert max(per_channel) <= 16, name
        # ... while the kernel as a whole holds more than 16.
        assert len(np.unique(kernel)) > 16, name
    logits = stripped.get_layer("logits").kernel.numpy()  # not a conv: clustered whole
    assert len(np.unique(logits)) <= 16
    assert np.all(logits[zeros["logits"]] == 0)


@pytest.mark.parametrize("init", list(CentroidInitialization))
def test_each_centroid_initialization(init):
    model = _conv_model()
    # tfmot's positional form: cluster_weights(model, number_of_clusters, cluster_centroids_init)
    clustered = cluster_weights(model, 8, init)
    assert clustered.cluster_report.init == init.value
    kernel = strip_clustering(clustered).get_layer("conv2").kernel.numpy()
    assert len(np.unique(kernel)) <= 8


def test_tfmot_enum_is_accepted():
    """Code that still imports tfmot's enum runs unchanged."""
    import tensorflow_model_optimization as tfmot

    clustered = cluster_weights(
        _conv_model(),
        number_of_clusters=8,
        cluster_centroids_init=tfmot.clustering.keras.CentroidInitialization.DENSITY_BASED,
    )
    assert clustered.cluster_report.init == "density"


def test_cluster_a_layer_inside_a_model_definition(digits):
    """tfmot's "cluster some layers" form: cluster_weights(layer) while building the model."""
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            cluster_weights(
                keras.layers.Dense(32, activation="relu"),
                number_of_clusters=8,
                cluster_centroids_init=CentroidInitialization.LINEAR,
            ),
            keras.layers.Dense(10),
        ]
    )
    wrapper = model.layers[1]
    assert isinstance(wrapper, ClusterWeights)
    assert len(np.unique(wrapper.clustered_kernel().numpy())) <= 8
    stripped = strip_clustering(_fit(model, digits))
    np.testing.assert_allclose(
        stripped.predict(digits.x_test[:8], verbose=0),
        model.predict(digits.x_test[:8], verbose=0),
        atol=1e-5,
    )
    assert len(np.unique(stripped.layers[1].kernel.numpy())) <= 8
    layers = cluster_weights([keras.layers.Dense(4), keras.layers.Dense(4)], 8)
    assert [type(layer) for layer in layers] == [ClusterWeights, ClusterWeights]


def test_a_tf_keras_layer_goes_to_tfmot():
    import tf_keras

    wrapped = cluster_weights(tf_keras.layers.Dense(8), number_of_clusters=4)
    assert type(wrapped).__module__.startswith("tensorflow_model_optimization")


class _ClusterableDense(keras.layers.Dense):
    """tfmot's ClusterableLayer interface: `(name, variable)` pairs to cluster."""

    def get_clusterable_weights(self):
        return [("kernel", self.kernel), ("bias", self.bias)]


def test_custom_layer_with_get_clusterable_weights():
    model = keras.Sequential(
        [keras.Input((8,)), _ClusterableDense(32, bias_initializer="random_normal", name="custom")]
    )
    clustered = cluster_weights(model, number_of_clusters=4)
    names = [name for name, _, _ in clustered.cluster_report.clustered]
    assert names == ["custom/kernel", "custom/bias"]
    layer = strip_clustering(clustered).get_layer("custom")
    assert len(np.unique(layer.kernel.numpy())) <= 4
    assert len(np.unique(layer.bias.numpy())) <= 4
