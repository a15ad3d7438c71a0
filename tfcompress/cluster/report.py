"""`cluster_report`: which weights of a model hold few values, and why the others do not."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tfcompress.cluster.api import ClusterReport

if TYPE_CHECKING:
    import keras


def cluster_report(model: keras.Model, number_of_clusters: int = 16) -> ClusterReport:
    """Say, for every weight clustering knows, whether the model still computes with few values.

    Works on any Keras 3 model along the clustering path: one being clustered
    (`ClusterWeights` layers), a stripped one, and a QAT model made from it
    (`quantize_model(..., QuantizeConfig(preserve_clusters=True))`), keras-hub
    encoders and decoders included. For a QAT wrapper it counts the values of
    the kernel the layer computes with (fake-quantized, as the int8 file holds
    it); where the kernel is quantized per output channel (`granularity`
    `"per_channel"`) and the tensor holds
    more values, it counts those of the worst channel (each channel has its
    own int8 scale). Weights are named as in `cluster_weights`'s report
    (`"encoder/query/kernel"`), so the two reports line up.

    Args:
        model: a built Keras 3 functional or Sequential model.
        number_of_clusters: the most values a weight may hold to count as clustered.

    Returns:
        A `ClusterReport` whose `clustered` rows are the weights of float (or
        clustering) layers that hold at most `number_of_clusters` values,
        whose `preserved` rows are the weights QAT wrappers compute with at
        most that many values, and whose `skipped` rows say why every other
        weight holds more. `init` is `""` (the report is measured, not made).

    Example:

    >>> final = cluster.strip_clustering(cluster.cluster_weights(bert_classifier, 16))
    >>> config = quantize.QuantizeConfig(preserve_clusters=True)
    >>> report = cluster.cluster_report(quantize.quantize_model(final, config), 16)
    >>> report.preserved[0], report.skipped
    (('token_embedding', 1600, 16), ())
    """
    from tfcompress import _flavor
    from tfcompress._graph import flat_layers
    from tfcompress._layers import Wrapper
    from tfcompress.cluster import _registry
    from tfcompress.cluster.layers import ClusterWeights, check_number_of_clusters

    check_number_of_clusters(number_of_clusters)
    if _flavor.flavor_of(model) == _flavor.TF_KERAS:
        raise ValueError(
            "cluster_report reads Keras 3 models; for tf_keras use tfmot's wrappers. "
            f"Received: model '{model.name}' ({type(model).__module__})"
        )
    k = int(number_of_clusters)
    clustered, preserved, skipped = [], [], []
    for layer in flat_layers(model):
        if isinstance(layer, ClusterWeights):
            for name, variable in zip(
                _labels(layer.layer, layer._targets), layer.clustered_weights, strict=True
            ):
                clustered.append((name, int(np.prod(variable.shape)), layer.number_of_clusters))
            continue
        inner = layer.layer if isinstance(layer, Wrapper) else layer
        found = _registry.targets(inner)
        if not found:
            continue
        computed = _computed_kernels(layer) if inner is not layer else {}
        keeps = int(getattr(layer, "preserve_clusters", 0) or 0) if inner is not layer else 0
        for name, target in zip(_labels(inner, found), found, strict=True):
            variable = target.variable
            n = int(np.prod(variable.shape))
            if n <= k:
                skipped.append((name, f"only {n} weights for {k} clusters"))
                continue
            value = computed.get(id(variable))
            if value is None:
                value = variable
            per_channel = getattr(layer, "granularity", None) == "per_channel"
            values = _distinct(np.asarray(value, dtype=np.float32), k, per_channel)
            if values <= k and inner is layer:
                clustered.append((name, n, values))
            elif values <= k and keeps:
                preserved.append((name, n, values))
            elif values <= k:
                skipped.append(
                    (
                        name,
                        f"{values} values in QAT, but quantized without preserve_clusters: "
                        "training spreads them (QuantizeConfig(preserve_clusters=True) keeps them)",
                    )
                )
            elif inner is layer:
                skipped.append((name, f"{values} distinct values: not clustered"))
            elif keeps:
                skipped.append(
                    (name, f"{values} distinct values in QAT: it was not clustered before QAT")
                )
            else:
                skipped.append(
                    (
                        name,
                        f"{values} distinct values in QAT: quantized without preserve_clusters "
                        "(QuantizeConfig(preserve_clusters=True) keeps the clusters)",
                    )
                )
    return ClusterReport(
        clustered=tuple(clustered),
        skipped=tuple(skipped),
        init="",
        preserved=tuple(preserved),
    )


def _labels(layer, targets):
    """Names as `cluster_weights` gives them: the layer, or `layer/sublayer/attr`."""
    if len(targets) == 1 and targets[0].layer is layer:
        return [layer.name]
    return [
        f"{layer.name}/{t.name}" if t.layer is layer else f"{layer.name}/{t.layer.name}/{t.name}"
        for t in targets
    ]


def _computed_kernels(wrapper):
    """`{id(kernel variable): the kernel the wrapper computes with}` for a QAT wrapper.

    A wrapper that replaces kernels while it runs says so through
    `quantized_kernels()` (`(sublayer, tensor)` pairs, composite layers) or
    `quantized_kernel()` with `kernel_attr` (one kernel).
    """
    many = getattr(wrapper, "quantized_kernels", None)
    if callable(many):
        return {id(sub.kernel): np.asarray(value) for sub, value in many()}
    one = getattr(wrapper, "quantized_kernel", None)
    attr = getattr(wrapper, "kernel_attr", None)
    if callable(one) and getattr(wrapper, "weight_scheme", None) is not None and attr:
        return {id(getattr(wrapper.layer, attr)): np.asarray(one())}
    return {}


def _distinct(value, k, per_channel):
    """Distinct values of the tensor; of its worst last-axis channel when only that fits."""
    whole = len(np.unique(value))
    if whole <= k or value.ndim < 2 or not per_channel:
        return whole
    flat = value.reshape(-1, value.shape[-1])
    per_channel = max(len(np.unique(flat[:, c])) for c in range(flat.shape[1]))
    return per_channel if per_channel <= k else whole
