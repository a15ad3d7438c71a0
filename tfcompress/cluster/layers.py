"""`ClusterWeights`: a layer whose weights are `centroids[indices]` while it trains."""

from __future__ import annotations

import enum
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from numpy.typing import ArrayLike

from tfcompress._layers import Wrapper, build_inner_from_call, positional_call_args
from tfcompress.cluster import _registry
from tfcompress.cluster.init import CentroidInitialization, assign, initial_centroids


def check_number_of_clusters(number_of_clusters: Any) -> None:
    """Raises a `ValueError` unless `number_of_clusters` is an integer of at least 2."""
    if (
        isinstance(number_of_clusters, bool)
        or not isinstance(number_of_clusters, (int, np.integer))
        or number_of_clusters < 2
    ):
        raise ValueError(
            "number_of_clusters must be an integer of at least 2. "
            f"Received: number_of_clusters={number_of_clusters!r}"
        )


@keras.saving.register_keras_serializable(package="tfcompress")
class ClusterWeights(Wrapper):
    """Computes a layer with each of its weights shared among `number_of_clusters` values.

    For every clustered weight (the kernel of `Dense`, `EinsumDense` and
    convolutions, the pointwise kernel of separable convolutions, the table of
    `Embedding`, the kernel and recurrent kernel of RNN cells, and every such
    weight inside a composite layer such as `MultiHeadAttention`, `RNN` or
    keras-hub's `TransformerEncoder`), the wrapper holds trainable
    `centroids` (shape `(k,)`, or `(channels, k)` per channel) and
    non-trainable int32 `indices` (the weight's shape) that say which value
    each weight uses; the gradient of every weight sums into its centroid.
    The wrapped layer's own weight is frozen and unused until
    `strip_clustering`.

    Args:
        layer: the Keras 3 layer to cluster.
        number_of_clusters: values each weight tensor may take, 2 or more.
        init: how `initialize` places centroids: `"kmeans++"`, `"linear"`,
            `"density"` or `"random"` (or a `CentroidInitialization`).
        preserve_sparsity: keep zero weights exactly zero (tfmot's
            sparsity-preserving clustering, for pruned models): zeros get
            their own fixed value and the other weights share the remaining
            `number_of_clusters - 1` centroids.
        cluster_per_channel: give every output channel of a convolution its
            own centroids (tfmot's meaning; ignored for other layers).
        kernel_attr: cluster only this attribute of `layer` (default: every
            weight listed above).
        **kwargs: base `Layer` arguments.

    Example:

    >>> layer = ClusterWeights(keras.layers.Dense(8), number_of_clusters=16)
    """

    #: How to get the plain model back: other verbs refuse a model still wrapped by this.
    _tfcompress_strip_with = "tfcompress.cluster.strip_clustering"

    def __init__(
        self,
        layer: keras.layers.Layer,
        number_of_clusters: int = 16,
        init: str | enum.Enum = "kmeans++",
        preserve_sparsity: bool = False,
        cluster_per_channel: bool = False,
        kernel_attr: str | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(layer, keras.layers.Layer):
            raise TypeError(
                "ClusterWeights wraps a Keras 3 layer. "
                f"Received: layer={layer!r} of type {type(layer).__name__}"
            )
        check_number_of_clusters(number_of_clusters)
        if preserve_sparsity and number_of_clusters < 3:
            raise ValueError(
                "preserve_sparsity keeps one of the clusters for the zeros, so "
                "number_of_clusters must be at least 3. "
                f"Received: number_of_clusters={number_of_clusters!r}"
            )
        kwargs.setdefault("name", f"cluster_{layer.name}")
        super().__init__(layer, **kwargs)
        self.number_of_clusters = int(number_of_clusters)
        self.init = CentroidInitialization.resolve(init)
        self.preserve_sparsity = bool(preserve_sparsity)
        self.cluster_per_channel = bool(cluster_per_channel)
        self.kernel_attr = kernel_attr
        self._initialize_on_build = True

    # -- building ---------------------------------------------------------------------------

    def __call__(self, *args, **kwargs):
        args, kwargs = positional_call_args(self.layer, args, kwargs)
        if not self.built:
            build_inner_from_call(self.layer, args, kwargs)
        return super().__call__(*args, **kwargs)

    def _find_targets(self):
        if self.kernel_attr is not None:
            if getattr(self.layer, self.kernel_attr, None) is None:
                raise ValueError(
                    f"Layer '{self.layer.name}' ({type(self.layer).__name__}) has no "
                    f"weight '{self.kernel_attr}' to cluster. "
                    f"Received: kernel_attr={self.kernel_attr!r}"
                )
            per_channel_ok = any(t.per_channel_ok for t in _registry.own_targets(self.layer))
            return [_registry.ClusterTarget(self.layer, self.kernel_attr, per_channel_ok)]
        found = _registry.targets(self.layer)
        # A weight with no more values than clusters is already "clustered" (tfmot skips it).
        small = [t for t in found if int(np.prod(t.variable.shape)) <= self.number_of_clusters]
        found = [t for t in found if t not in small]
        if small and not found:
            raise ValueError(
                f"Layer '{self.layer.name}' ({type(self.layer).__name__}) has no weight with more "
                f"values than number_of_clusters={self.number_of_clusters}: nothing to cluster. "
                "Leave it unwrapped or lower number_of_clusters. Received: weights of shapes "
                f"{[tuple(t.variable.shape) for t in small]}"
            )
        if not found:
            raise ValueError(
                f"Layer '{self.layer.name}' ({type(self.layer).__name__}) has no weight "
                f"clustering knows: clusterable layers are "
                f"{', '.join(_registry.CLUSTERABLE_CLASS_NAMES)}, and layers built from them. "
                "Leave it unwrapped."
            )
        return found

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        self._targets = self._find_targets()
        self.centroid_vars, self.index_vars, self.mask_vars, self._offsets = [], [], [], []
        self._initial_cache = {}  # weight index -> (centroids, indices, mask)
        composite = len(self._targets) > 1 or self._targets[0].layer is not self.layer
        for i, target in enumerate(self._targets):
            variable = target.variable
            variable.trainable = False  # replaced by centroids[indices] while clustering
            shape = tuple(variable.shape)
            prefix = f"{target.layer.name}_{target.name}_" if composite else ""
            per_channel = self.cluster_per_channel and target.per_channel_ok and len(shape) > 1
            centroid_shape = (
                (shape[-1], self.number_of_clusters) if per_channel else (self.number_of_clusters,)
            )
            # Per channel, channel c's centroids sit at c * k .. c * k + k - 1 of the flat table.
            self._offsets.append(
                np.arange(shape[-1], dtype="int32") * self.number_of_clusters
                if per_channel
                else None
            )
            self.centroid_vars.append(
                self.add_weight(
                    name=f"{prefix}cluster_centroids",
                    shape=centroid_shape,
                    initializer=self._initializer(i, 0, "zeros"),
                    trainable=True,
                )
            )
            self.index_vars.append(
                self.add_weight(
                    name=f"{prefix}cluster_indices",
                    shape=shape,
                    dtype="int32",
                    initializer=self._initializer(i, 1, "zeros"),
                    trainable=False,
                )
            )
            if self.preserve_sparsity:
                self.mask_vars.append(
                    self.add_weight(
                        name=f"{prefix}sparsity_mask",
                        shape=shape,
                        initializer=self._initializer(i, 2, "ones"),
                        trainable=False,
                    )
                )
        self.built = True

    def _initializer(self, i, part, default):
        """The initial centroids (0), indices (1) or mask (2) of the `i`-th clustered weight.

        A layer wrapped by hand (tfmot's `cluster_weights(layer)`) starts from the
        clustering of its initial weights; `cluster_weights(model)` initializes again
        after copying the model's weights. An initializer, not an assignment after
        `build`: a subclassed model builds its layers inside `fit()`'s traced step,
        where Keras creates the variables later and an assignment would be lost (every
        centroid stayed 0).
        """
        if not self._initialize_on_build:
            return default
        cache = self._initial_cache

        def initialize(shape, dtype=None):
            if i not in cache:
                cache[i] = self._initial_values(i, seed=0)
            return keras.ops.convert_to_tensor(cache[i][part], dtype=dtype)

        return initialize

    # -- state --------------------------------------------------------------------------------

    @property
    def clustered_weights(self) -> list[keras.Variable]:
        """The Keras variables this wrapper clusters, in order."""
        return [target.variable for target in self._targets]

    @property
    def centroids(self) -> keras.Variable:
        """The centroids of the first clustered weight (the kernel of a simple layer)."""
        return self.centroid_vars[0]

    @property
    def indices(self) -> keras.Variable:
        """The indices of the first clustered weight."""
        return self.index_vars[0]

    def target_names(self) -> list[str]:
        """A readable name per clustered weight (`"dense"`, `"mha/query/kernel"`, ...)."""
        if len(self._targets) == 1 and self._targets[0].layer is self.layer:
            return [self.layer.name]
        return [
            f"{self.layer.name}/{t.layer.name}/{t.name}"
            if t.layer is not self.layer
            else f"{self.layer.name}/{t.name}"
            for t in self._targets
        ]

    def initialize(self, seed: int = 0, kernel: ArrayLike | None = None) -> None:
        """Place the centroids with `self.init` and assign every weight to its nearest.

        Args:
            seed: random seed of `"kmeans++"` and `"random"`.
            kernel: for a single-weight layer, the float values to cluster
                (copied into the layer first); the layer's own by default.
        """
        for i, target in enumerate(self._targets):
            if kernel is not None and i == 0:
                target.variable.assign(np.asarray(kernel))
            centroids, indices, keep = self._initial_values(i, seed)
            self.centroid_vars[i].assign(centroids)
            self.index_vars[i].assign(indices)
            if self.preserve_sparsity:
                self.mask_vars[i].assign(keep)

    def _initial_values(self, i, seed):
        """`(centroids, indices, float mask)` that cluster the `i`-th weight's current value."""
        value = np.asarray(keras.ops.convert_to_numpy(self._targets[i].variable), np.float32)
        keep = value != 0 if self.preserve_sparsity else np.ones(value.shape, bool)
        if self._offsets[i] is not None:
            shape = (value.shape[-1], self.number_of_clusters)
            centroids = np.zeros(shape, np.float32)
            indices = np.zeros(value.shape, np.int32)
            for c in range(value.shape[-1]):
                centroids[c], indices[..., c] = self._cluster(value[..., c], keep[..., c], seed + c)
        else:
            centroids, indices = self._cluster(value, keep, seed)
        return centroids, indices, keep.astype(np.float32)

    def _cluster(self, value, keep, seed):
        k = self.number_of_clusters
        # With preserve_sparsity, the zeros are one of the k values (masked, not a centroid).
        k_free = k - 1 if self.preserve_sparsity else k
        free = value[keep]
        centroids = np.zeros(k, np.float32)
        if free.size == 0:
            return centroids, np.zeros(value.shape, np.int32)
        centroids[:k_free] = initial_centroids(free, k_free, self.init, seed)
        indices = assign(value, centroids[:k_free])
        return centroids, np.where(keep, indices, 0).astype(np.int32)

    def clustered_value(self, i: int) -> tf.Tensor:
        """`centroids[indices]` (masked) of the `i`-th clustered weight, a float32 tensor."""
        centroids, indices = self.centroid_vars[i], self.index_vars[i]
        if self._offsets[i] is not None:
            flat = tf.reshape(centroids, [-1])
            value = tf.gather(flat, indices + tf.constant(self._offsets[i]))
        else:
            value = tf.gather(centroids, indices)
        if self.preserve_sparsity:
            value = value * self.mask_vars[i]
        return value

    def clustered_kernel(self) -> tf.Tensor:
        """`centroids[indices]` of the first clustered weight: the kernel a simple layer uses."""
        return self.clustered_value(0)

    # -- computing -----------------------------------------------------------------------------

    def call(self, inputs, *args, training=None, **kwargs):
        values = {
            id(v): tf.cast(self.clustered_value(i), v.dtype)
            for i, v in enumerate(self.clustered_weights)
        }
        inner = self.layer
        trainable = [values.get(id(v), v) for v in inner.trainable_variables]
        non_trainable = [values.get(id(v), v.value) for v in inner.non_trainable_variables]
        if inner._call_has_training_arg:
            kwargs["training"] = training
        outputs, updated = inner.stateless_call(trainable, non_trainable, inputs, *args, **kwargs)
        if training:
            # Moving statistics, RNG seeds...: state the inner layer changed, except ours.
            for v, new in zip(inner.non_trainable_variables, updated):
                if id(v) not in values:
                    v.assign(new)
        return outputs

    def compute_output_spec(self, inputs, *args, **kwargs):
        kwargs.pop("training", None)
        return self.layer.compute_output_spec(inputs, *args, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(
            number_of_clusters=self.number_of_clusters,
            init=self.init,
            preserve_sparsity=self.preserve_sparsity,
            cluster_per_channel=self.cluster_per_channel,
            kernel_attr=self.kernel_attr,
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        layer = super().from_config(config, custom_objects=custom_objects)
        layer._initialize_on_build = False  # the saved centroids and indices are loaded next
        return layer
