"""Weight clustering: every kernel shares a few trainable values (k-means centroids).

Keras 3 models use our `ClusterWeights` layers, tf_keras models go to tfmot.

Example:

>>> from tfcompress import cluster
>>> clustered = cluster.cluster_weights(model, number_of_clusters=16, init="kmeans++")
>>> clustered.compile("adam", "sparse_categorical_crossentropy")
>>> clustered.fit(x, y, epochs=1)
>>> final = cluster.strip_clustering(clustered)
"""

from tfcompress.cluster.api import (
    ClusterReport,
    NothingToClusterError,
    cluster_weights,
    strip_clustering,
)
from tfcompress.cluster.compat import (
    ClusterableLayer,
    ClusteringSummaries,
    cluster_scope,
    experimental,
)
from tfcompress.cluster.init import (
    CentroidInitialization,
    assign,
    available_inits,
    initial_centroids,
    register_init,
)
from tfcompress.cluster.layers import ClusterWeights
from tfcompress.cluster.report import cluster_report

__all__ = [
    "CentroidInitialization",
    "ClusterReport",
    "ClusterWeights",
    "ClusterableLayer",
    "ClusteringSummaries",
    "NothingToClusterError",
    "assign",
    "available_inits",
    "cluster_report",
    "cluster_scope",
    "cluster_weights",
    "experimental",
    "initial_centroids",
    "register_init",
    "strip_clustering",
]
