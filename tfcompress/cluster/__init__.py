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

#: tfmot names with no counterpart here, and what to use instead (see docs/tfmot.md).
_TFMOT_ONLY = {
    "ClusteringAlgorithm": "custom clustering algorithms are not supported; a layer names "
    "the weights to cluster with get_clusterable_weights() (subclass ClusterableLayer), "
    "and new centroid initialisations plug in with register_init",
    "clusterable_layer": "use tfcompress.cluster.ClusterableLayer",
}


def __getattr__(name: str) -> object:
    if name in _TFMOT_ONLY:
        raise AttributeError(
            f"tfcompress.cluster has no {name!r} (a tfmot name): {_TFMOT_ONLY[name]}."
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
