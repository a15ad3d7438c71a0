"""`cluster_weights` / `strip_clustering`: Keras 3 (ours) and tf_keras (tfmot)."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import numpy as np

from tfcompress import _flavor
from tfcompress._layers import copy_weights, rebuild
from tfcompress._report import Entry, Report, attach, wrapper_report
from tfcompress.cluster.init import CentroidInitialization
from tfcompress.errors import TFCompressError

if TYPE_CHECKING:
    import keras

_TFMOT_INITS = {
    "kmeans++": "KMEANS_PLUS_PLUS",
    "linear": "LINEAR",
    "density": "DENSITY_BASED",
    "random": "RANDOM",
}


class NothingToClusterError(TFCompressError, ValueError):
    """No weight of the model can be clustered with the given options."""


@dataclasses.dataclass(frozen=True)
class ClusterReport:
    """What `cluster_weights` did (attached to the model as `.cluster_report`).

    Attributes:
        clustered: `(weight name, weights, clusters)` per clustered weight: the
            layer's name for a simple layer, `"outer/inner/attr"` for a weight
            inside a composite layer (`"encoder/query/kernel"`).
        skipped: `(name, reason)` per layer or weight left alone.
        init: the centroid initialisation.
        preserve_sparsity: whether zeros are kept.
        cluster_per_channel: whether convolutions got centroids per channel.
        preserved: `(weight name, weights, values)` per weight a QAT wrapper
            computes with at most `number_of_clusters` values (filled by
            `cluster_report(qat_model)`; empty from `cluster_weights`).
    """

    clustered: tuple[tuple[str, int, int], ...]
    skipped: tuple[tuple[str, str], ...]
    init: str
    preserve_sparsity: bool = False
    cluster_per_channel: bool = False
    preserved: tuple[tuple[str, int, int], ...] = ()

    def __str__(self) -> str:
        extra = [
            flag
            for flag, on in (
                ("preserve_sparsity", self.preserve_sparsity),
                ("per channel", self.cluster_per_channel),
            )
            if on
        ]
        how = ([f"{self.init} init"] if self.init else []) + extra
        lines = []
        if self.clustered or not self.preserved:
            lines.append(
                f"clustered {len(self.clustered)} weights" + (f" ({', '.join(how)})" if how else "")
            )
        lines += [f"  {n}: {w:,} weights -> {k} values" for n, w, k in self.clustered]
        if self.preserved:
            lines.append(f"preserved through QAT {len(self.preserved)} weights")
            lines += [f"  {n}: {w:,} weights -> {k} values" for n, w, k in self.preserved]
        lines += [f"  skipped {n}: {r}" for n, r in self.skipped]
        return "\n".join(lines)


def cluster_weights(
    model: keras.Model | keras.layers.Layer | list[keras.layers.Layer],
    number_of_clusters: int = 16,
    init: str | enum.Enum = "kmeans++",
    skip_layers: Collection[str] = (),
    seed: int = 0,
    *,
    preserve_sparsity: bool = False,
    cluster_per_channel: bool = False,
    cluster_centroids_init: str | enum.Enum | None = None,
) -> keras.Model | keras.layers.Layer | list[keras.layers.Layer]:
    """Return a copy of `model` whose weights each take only `number_of_clusters` values.

    Keras 3 models get `ClusterWeights` layers of ours (trainable centroids,
    fixed assignments: fine-tune with `fit()`, then `strip_clustering`);
    tf_keras models go to tfmot's `cluster_weights`. The input model is not
    changed. Clustered are the kernels of `Dense`, `EinsumDense` and
    convolutions, the pointwise kernels of separable convolutions, `Embedding`
    tables, the kernels and recurrent kernels of RNN cells, and every such
    weight inside composite layers (`MultiHeadAttention`, keras-hub
    `TransformerEncoder` / `TransformerDecoder`) and nested models. A float
    TFLite file of the stripped model gzips to a fraction of its size, since
    every weight holds at most `number_of_clusters` distinct values.

    tfmot's call forms work unchanged: a layer (or a list of layers) instead
    of a model returns wrapped layers to build a model with, and
    `cluster_centroids_init=CentroidInitialization.KMEANS_PLUS_PLUS` is the
    same as `init="kmeans++"`.

    Args:
        model: a built functional or Sequential model (Keras 3 or tf_keras), a
            Keras 3 layer, or a list of Keras 3 layers.
        number_of_clusters: values per weight tensor (16 = 4 bits of index).
        init: `"kmeans++"`, `"linear"`, `"density"`, `"random"`, or a
            `CentroidInitialization`.
        skip_layers: names of layers to leave unclustered (Keras 3).
        seed: seed of the k-means++ / random initialisation (Keras 3).
        preserve_sparsity: keep zero weights exactly zero (use it on a pruned
            model); the zeros count as one of the `number_of_clusters` values.
        cluster_per_channel: separate centroids for every output channel of a
            convolution (tfmot's meaning; other layers are clustered whole).
        cluster_centroids_init: tfmot's name for `init`.

    Returns:
        A new model carrying `.cluster_report` (Keras 3), or wrapped layer(s).

    Example:

    >>> clustered = cluster_weights(model, number_of_clusters=16, init="kmeans++")
    >>> clustered.compile("adam", "sparse_categorical_crossentropy")
    >>> clustered.fit(x, y, epochs=1)
    >>> final = strip_clustering(clustered)
    """
    from tfcompress.cluster.layers import check_number_of_clusters

    check_number_of_clusters(number_of_clusters)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an int >= 0. Received: seed={seed!r}")
    if isinstance(skip_layers, str):
        skip_layers = [skip_layers]  # one layer name
    if cluster_centroids_init is not None:
        init = cluster_centroids_init
    init = CentroidInitialization.resolve(init)
    options: dict[str, Any] = {
        "number_of_clusters": int(number_of_clusters),
        "init": init,
        "preserve_sparsity": bool(preserve_sparsity),
        "cluster_per_channel": bool(cluster_per_channel),
    }
    if isinstance(model, (list, tuple)):
        return [cluster_weights(layer, **options) for layer in model]
    import keras

    if isinstance(model, keras.layers.Layer) and not isinstance(model, keras.Model):
        from tfcompress.cluster.layers import ClusterWeights

        return ClusterWeights(model, **options)
    # A tf_keras layer (tfmot's layer form) goes to tfmot like a tf_keras model.
    tf_keras_layer = "tf_keras" in type(model).__module__ and not _flavor.is_tf_keras_model(model)
    if not tf_keras_layer:
        flavor = _flavor.flavor_of(model)
        _flavor.check_built(model, what="weight clustering")
    if tf_keras_layer or flavor == _flavor.TF_KERAS:
        import tensorflow_model_optimization as tfmot

        if skip_layers:
            raise ValueError(
                "skip_layers applies to Keras 3 models; for tf_keras use tfmot's "
                f"per-layer cluster_weights. Received: skip_layers={skip_layers!r}"
            )
        c = tfmot.clustering.keras
        if not tf_keras_layer:
            # tfmot moves each kernel into its wrapper, which leaves the model it was given
            # without its kernels: hand it a copy, so the user's model stays whole.
            import tf_keras

            source, model = model, tf_keras.models.clone_model(model)
            model.set_weights(source.get_weights())
        clustered = c.cluster_weights(
            model,
            number_of_clusters=int(number_of_clusters),
            cluster_centroids_init=getattr(c.CentroidInitialization, _TFMOT_INITS[init]),
            preserve_sparsity=bool(preserve_sparsity),
            cluster_per_channel=bool(cluster_per_channel),
        )
        note = f"tfmot clustering, {int(number_of_clusters)} clusters"
        return attach(clustered, wrapper_report("cluster_weights", model, clustered, note))
    return _cluster_keras3(model, options, set(skip_layers), seed)


def _check_finite(name, variable):
    # One NaN makes k-means spread NaN to (almost) every centroid of the kernel.
    value = np.asarray(variable.numpy())
    bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
    if bad:
        raise ValueError(
            f"Layer '{name}' has {bad} NaN or infinite weights; clustering would "
            "spread them to every cluster. Fix the training (lower learning rate, "
            f"clip gradients) first. Received: {bad} non-finite of "
            f"{np.size(value)} weights"
        )


def _plan(model, options, skip):
    """`{layer name: [attr paths to cluster]}` and the skipped `(name, reason)` rows."""
    from tfcompress._graph import flat_layers
    from tfcompress.cluster import _registry

    k = options["number_of_clusters"]
    plan, clustered, skipped = {}, [], []
    for layer in flat_layers(model):
        found = _registry.targets(layer)
        if not found:
            continue
        composite = len(found) > 1 or found[0].layer is not layer
        if layer.name in skip:
            skipped.append((layer.name, "skip_layers"))
            continue
        keep = []
        for target in found:
            if not composite:
                label = layer.name
            elif target.layer is layer:
                label = f"{layer.name}/{target.name}"
            else:
                label = f"{layer.name}/{target.layer.name}/{target.name}"
            n = int(np.prod(target.variable.shape))
            _check_finite(label, target.variable)
            if n <= k:
                skipped.append((label, f"only {n} weights for {k} clusters"))
            else:
                keep.append(target)
                clustered.append((label, n, k))
        if keep:
            plan[layer.name] = keep
    return plan, clustered, skipped


def _cluster_keras3(model, options, skip, seed):

    from tfcompress._graph import check_graph_model, flat_layers
    from tfcompress.cluster.layers import ClusterWeights

    check_graph_model(model, "cluster")
    leaves = flat_layers(model)
    if any(isinstance(layer, ClusterWeights) for layer in leaves):
        raise ValueError(f"Model '{model.name}' is already clustered; strip_clustering it first.")
    for layer in leaves:
        strip = getattr(layer, "_tfcompress_strip_with", None)
        if strip:
            raise ValueError(
                f"Layer '{layer.name}' of model '{model.name}' is still a "
                f"{type(layer).__name__} training wrapper: call {strip}(model) first, then "
                "cluster the plain model (preserve_sparsity=True keeps a pruned model's "
                f"zeros). Received: {type(layer).__name__}"
            )
    unknown = skip - {layer.name for layer in leaves}
    if unknown:
        raise ValueError(
            f"skip_layers names layers model '{model.name}' does not have: "
            f"{sorted(unknown)}. Its layers are: {[la.name for la in leaves]}"
        )
    plan, clustered_rows, skipped = _plan(model, options, skip)
    if not plan:
        k = options["number_of_clusters"]
        if skipped:
            raise NothingToClusterError(
                f"Model '{model.name}': number_of_clusters={k} leaves every layer "
                f"unclustered ({'; '.join(f'{n}: {r}' for n, r in skipped)}). Lower "
                "number_of_clusters below the kernel sizes, or skip fewer layers. "
                f"Received: number_of_clusters={k}"
            )
        raise NothingToClusterError(
            f"Model '{model.name}' has no layer whose weights can be clustered (Dense, "
            "EinsumDense, convolutions, Embedding, RNN cells, attention; or a layer with "
            "get_clusterable_weights()). Received: layers "
            f"{[type(layer).__name__ for layer in leaves]}"
        )
    originals = {}

    def clone_function(layer):
        new = rebuild(layer)
        if layer.name in plan:
            new = ClusterWeights(new, name=f"cluster_{layer.name}", **options)
            new._initialize_on_build = False  # after the weights are copied, below
        originals[id(new)] = layer
        return new

    clustered = _clone_uncompiled(model, clone_function)
    for i, new in enumerate(flat_layers(clustered)):
        original = originals.get(id(new))
        if original is None:
            continue
        if isinstance(new, ClusterWeights):
            copy_weights(new.layer, original)
            new.initialize(seed=seed + i)
        else:
            copy_weights(new, original)
    clustered.cluster_report = ClusterReport(
        clustered=tuple(clustered_rows),
        skipped=tuple(skipped),
        init=options["init"],
        preserve_sparsity=options["preserve_sparsity"],
        cluster_per_channel=options["cluster_per_channel"],
    )
    return attach(
        clustered,
        Report(
            "cluster_weights",
            model.name,
            done=[
                Entry(name, "", f"{n:,} weights -> {k} values")
                for name, n, k in clustered.cluster_report.clustered
            ],
            skipped=[Entry(name, "", reason) for name, reason in clustered.cluster_report.skipped],
            details=clustered.cluster_report,
        ),
    )


def _clone_uncompiled(model, clone_function):
    import keras

    # clone_model compiles the copy when the source is compiled; ours are returned uncompiled.
    compiled = getattr(model, "compiled", False)
    model.compiled = False
    try:
        return keras.models.clone_model(model, clone_function=clone_function, recursive=True)
    finally:
        model.compiled = compiled


def strip_clustering(model: keras.Model | keras.layers.Layer) -> keras.Model | keras.layers.Layer:
    """Replace clustering wrappers with plain layers whose weights hold the centroid values.

    Args:
        model: a model from `cluster_weights` (Keras 3 or tf_keras), or one
            `ClusterWeights` layer (its plain layer is returned).

    Returns:
        A new model of ordinary layers, ready for `tfcompress.export.to_tflite`.

    Example:

    >>> clustered = cluster_weights(model, number_of_clusters=16)
    >>> final = strip_clustering(clustered)
    """
    from tfcompress.cluster.layers import ClusterWeights

    if isinstance(model, ClusterWeights):
        return _stripped_layer(model)
    flavor = _flavor.flavor_of(model)
    if flavor == _flavor.TF_KERAS:
        import tensorflow_model_optimization as tfmot

        return tfmot.clustering.keras.strip_clustering(model)
    import keras
    from keras.src.models.functional import Functional

    from tfcompress._graph import flat_layers

    if not isinstance(model, (Functional, keras.Sequential)):
        raise TypeError(
            f"Model '{model.name}' ({type(model).__name__}) is a subclassed model, which cannot "
            "be copied layer by layer. Strip each clustered layer instead: "
            "self.dense = strip_clustering(self.dense) gives the plain layer. "
            f"Received: a {type(model).__name__}"
        )

    originals = {}

    def clone_function(layer):
        source = layer.layer if isinstance(layer, ClusterWeights) else layer
        new = rebuild(source)
        originals[id(new)] = layer
        return new

    stripped = _clone_uncompiled(model, clone_function)
    for new in flat_layers(stripped):
        layer = originals.get(id(new))
        if layer is None:
            continue
        new.set_weights(
            _plain_weights(layer) if isinstance(layer, ClusterWeights) else layer.get_weights()
        )
    return stripped


def _plain_weights(wrapper):
    """The wrapped layer's weights with each clustered one replaced by its shared values."""
    values = {
        id(v): np.asarray(wrapper.clustered_value(i)).astype(v.dtype)
        for i, v in enumerate(wrapper.clustered_weights)
    }
    return [values.get(id(v), np.asarray(v.numpy())) for v in wrapper.layer.weights]


def _stripped_layer(wrapper):
    inner = wrapper.layer
    new = rebuild(inner)
    shapes = [tuple(v.shape) for v in inner.weights]
    if inner.built and not new.built:
        new.build_from_config(inner.get_build_config())
    if [tuple(v.shape) for v in new.weights] != shapes:
        raise ValueError(
            f"Layer '{inner.name}' could not be rebuilt to strip it; strip the "
            "model it belongs to instead. Received: a ClusterWeights layer"
        )
    new.set_weights(_plain_weights(wrapper))
    return new
