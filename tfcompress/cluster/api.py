"""`cluster_weights` / `strip_clustering`: Keras 3 (ours) and tf_keras (tfmot)."""

import dataclasses

import numpy as np

from tfcompress import _flavor
from tfcompress.cluster.init import available_inits

_TFMOT_INITS = {"kmeans++": "KMEANS_PLUS_PLUS", "linear": "LINEAR", "density": "DENSITY_BASED"}


@dataclasses.dataclass(frozen=True)
class ClusterReport:
    """What `cluster_weights` did (attached to the model as `.cluster_report`).

    Attributes:
        clustered: `(layer name, weights, clusters)` per clustered kernel.
        skipped: `(layer name, reason)` per layer with a kernel left alone.
        init: the centroid initialisation.
    """

    clustered: tuple
    skipped: tuple
    init: str

    def __str__(self):
        lines = [f"clustered {len(self.clustered)} kernels ({self.init} init)"]
        lines += [f"  {n}: {w:,} weights -> {k} values" for n, w, k in self.clustered]
        lines += [f"  skipped {n}: {r}" for n, r in self.skipped]
        return "\n".join(lines)


def _clusterable(layer):
    import keras

    L = keras.layers
    return isinstance(layer, (L.Dense, L.Conv1D, L.Conv2D, L.DepthwiseConv2D, L.EinsumDense))


def cluster_weights(model, number_of_clusters=16, init="kmeans++", skip_layers=(), seed=0):
    """Return a copy of `model` whose kernels each take only `number_of_clusters` values.

    Keras 3 models get `ClusterWeights` layers of ours (trainable centroids,
    fixed assignments: fine-tune with `fit()`, then `strip_clustering`);
    tf_keras models go to tfmot's `cluster_weights`. The input model is not
    changed. A float TFLite file of the stripped model gzips to a fraction of
    its size, since every kernel holds at most `number_of_clusters` distinct
    values.

    Args:
        model: a built functional or Sequential model (Keras 3 or tf_keras).
        number_of_clusters: values per kernel (16 = 4 bits of index).
        init: `"kmeans++"`, `"linear"` or `"density"`.
        skip_layers: names of layers to leave unclustered (Keras 3).
        seed: seed of the k-means++ initialisation (Keras 3).

    Returns:
        A new model; Keras 3 models carry `.cluster_report`.

    Example:

    >>> clustered = cluster_weights(model, number_of_clusters=16, init="kmeans++")
    >>> clustered.compile(...); clustered.fit(x, y, epochs=1)
    >>> final = strip_clustering(clustered)
    """
    if not isinstance(number_of_clusters, (int, np.integer)) or number_of_clusters < 2:
        raise ValueError("number_of_clusters must be an integer of at least 2. "
                         f"Received: number_of_clusters={number_of_clusters!r}")
    if init not in available_inits():
        raise ValueError(f"init must be one of {available_inits()}. Received: init={init!r}")
    flavor = _flavor.flavor_of(model)
    _flavor.check_built(model, what="weight clustering")
    if flavor == _flavor.TF_KERAS:
        import tensorflow_model_optimization as tfmot

        if skip_layers:
            raise ValueError("skip_layers applies to Keras 3 models; for tf_keras use tfmot's "
                             f"per-layer cluster_weights. Received: skip_layers={skip_layers!r}")
        c = tfmot.clustering.keras
        return c.cluster_weights(
            model, number_of_clusters=int(number_of_clusters),
            cluster_centroids_init=getattr(c.CentroidInitialization, _TFMOT_INITS[init]))
    return _cluster_keras3(model, int(number_of_clusters), init, set(skip_layers), seed)


def _cluster_keras3(model, k, init, skip, seed):
    import keras

    from tfcompress._graph import check_graph_model
    from tfcompress.cluster.layers import ClusterWeights

    check_graph_model(model, "cluster")
    if any(isinstance(layer, ClusterWeights) for layer in model.layers):
        raise ValueError(f"Model '{model.name}' is already clustered; strip_clustering it first.")
    unknown = skip - {layer.name for layer in model.layers}
    if unknown:
        raise ValueError(f"skip_layers names layers model '{model.name}' does not have: "
                         f"{sorted(unknown)}.")
    plan = {}
    skipped = []
    for layer in model.layers:
        if not _clusterable(layer):
            continue
        n = int(np.prod(layer.kernel.shape))
        if layer.name in skip:
            skipped.append((layer.name, "skip_layers"))
        elif n <= k:
            skipped.append((layer.name, f"only {n} weights for {k} clusters"))
        else:
            plan[layer.name] = n
    originals = {}

    def clone_function(layer):
        new = layer.__class__.from_config(layer.get_config())
        if layer.name in plan:
            new = ClusterWeights(new, number_of_clusters=k, init=init,
                                 name=f"cluster_{layer.name}")
        originals[id(new)] = layer
        return new

    clustered = keras.models.clone_model(model, clone_function=clone_function)
    for i, new in enumerate(clustered.layers):
        original = originals.get(id(new))
        if original is None:
            continue
        if isinstance(new, ClusterWeights):
            new.layer.set_weights(original.get_weights())
            new.initialize(seed=seed + i)
        else:
            new.set_weights(original.get_weights())
    clustered.cluster_report = ClusterReport(
        clustered=tuple((name, n, k) for name, n in plan.items()), skipped=tuple(skipped),
        init=init)
    return clustered


def strip_clustering(model):
    """Replace clustering wrappers with plain layers whose kernels hold the centroid values.

    Args:
        model: a model from `cluster_weights` (Keras 3 or tf_keras).

    Returns:
        A new model of ordinary layers, ready for `tfcompress.export.to_tflite`.

    Example:

    >>> final = strip_clustering(clustered)
    """
    flavor = _flavor.flavor_of(model)
    if flavor == _flavor.TF_KERAS:
        import tensorflow_model_optimization as tfmot

        return tfmot.clustering.keras.strip_clustering(model)
    import keras

    from tfcompress.cluster.layers import ClusterWeights

    originals = {}

    def clone_function(layer):
        source = layer.layer if isinstance(layer, ClusterWeights) else layer
        new = source.__class__.from_config(source.get_config())
        originals[id(new)] = layer
        return new

    stripped = keras.models.clone_model(model, clone_function=clone_function)
    for new in stripped.layers:
        layer = originals.get(id(new))
        if layer is None:
            continue
        if isinstance(layer, ClusterWeights):
            kernel = getattr(layer.layer, layer.kernel_attr)
            values = layer.clustered_kernel().numpy()
            new.set_weights([values if v is kernel else v.numpy() for v in layer.layer.weights])
        else:
            new.set_weights(layer.get_weights())
    return stripped
