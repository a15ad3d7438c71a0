"""`ClusterWeights`: a layer whose kernel is `centroids[indices]` while it trains."""

import keras
import numpy as np
import tensorflow as tf

from tfcompress._layers import Wrapper
from tfcompress.cluster.init import assign, initial_centroids


@keras.saving.register_keras_serializable(package="tfcompress")
class ClusterWeights(Wrapper):
    """Computes a layer with its kernel shared among `number_of_clusters` values.

    `centroids` (trainable, shape `(k,)`) hold the values and `indices`
    (non-trainable int32, the kernel's shape) say which value each weight
    uses; the gradient of every weight sums into its centroid. The wrapped
    layer's own kernel is frozen and unused until `strip_clustering`.

    Args:
        layer: a layer with a kernel (Dense, Conv, DepthwiseConv, EinsumDense).
        number_of_clusters: values the kernel may take, 2 or more.
        init: how `initialize` places centroids: `"kmeans++"`, `"linear"`,
            `"density"`.
        kernel_attr: attribute of `layer` holding the kernel.
        **kwargs: base `Layer` arguments.

    Example:

    >>> layer = ClusterWeights(keras.layers.Dense(8), number_of_clusters=16)
    """

    def __init__(self, layer, number_of_clusters=16, init="kmeans++", kernel_attr="kernel",
                 **kwargs):
        super().__init__(layer, **kwargs)
        if not isinstance(number_of_clusters, (int, np.integer)) or number_of_clusters < 2:
            raise ValueError("number_of_clusters must be an integer of at least 2. "
                             f"Received: number_of_clusters={number_of_clusters!r}")
        self.number_of_clusters = int(number_of_clusters)
        self.init = init
        self.kernel_attr = kernel_attr

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        kernel = getattr(self.layer, self.kernel_attr)
        kernel.trainable = False  # replaced by centroids[indices] while clustering
        self.centroids = self.add_weight(name="cluster_centroids",
                                         shape=(self.number_of_clusters,),
                                         initializer="zeros", trainable=True)
        self.indices = self.add_weight(name="cluster_indices", shape=tuple(kernel.shape),
                                       dtype="int32", initializer="zeros", trainable=False)
        self.built = True

    def initialize(self, kernel=None, seed=0):
        """Place the centroids with `self.init` and assign every weight to its nearest.

        Args:
            kernel: the float kernel to cluster; the wrapped layer's by default.
            seed: random seed of `"kmeans++"`.
        """
        own = getattr(self.layer, self.kernel_attr)
        kernel = np.asarray(own.numpy() if kernel is None else kernel)
        own.assign(kernel)
        centroids = initial_centroids(kernel, self.number_of_clusters, self.init, seed)
        self.centroids.assign(centroids)
        self.indices.assign(assign(kernel, centroids))

    def clustered_kernel(self):
        """`centroids[indices]`: the kernel the layer computes with."""
        return tf.gather(self.centroids, self.indices)

    def call(self, inputs, training=None):
        kernel = getattr(self.layer, self.kernel_attr)
        clustered = tf.cast(self.clustered_kernel(), kernel.dtype)
        trainable = [clustered if v is kernel else v for v in self.layer.trainable_variables]
        non_trainable = [clustered if v is kernel else v.value
                         for v in self.layer.non_trainable_variables]
        kwargs = {"training": training} if self.layer._call_has_training_arg else {}
        outputs, _ = self.layer.stateless_call(trainable, non_trainable, inputs, **kwargs)
        return outputs

    def compute_output_spec(self, *args, **kwargs):
        kwargs.pop("training", None)
        return self.layer.compute_output_spec(*args, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(number_of_clusters=self.number_of_clusters, init=self.init,
                      kernel_attr=self.kernel_attr)
        return config
