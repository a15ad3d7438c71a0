"""tfmot's clustering names that code written for tfmot uses unchanged.

`ClusterableLayer` (a layer says which weights to cluster), `cluster_scope`
(load a saved clustered model), `ClusteringSummaries` (TensorBoard) and the
`experimental.cluster.cluster_weights` spelling.
"""

from __future__ import annotations

import os
import types
from typing import Any

import keras
import numpy as np


class ClusterableLayer:
    """tfmot's interface for a custom layer: it names the weights to cluster.

    Mix it into a Keras 3 layer and return `(name, variable)` pairs from
    `get_clusterable_weights()`; `cluster_weights` clusters exactly those.

    Example:

    >>> class MyDense(keras.layers.Dense, ClusterableLayer):
    ...     def get_clusterable_weights(self):
    ...         return [("kernel", self.kernel)]
    """

    def get_clusterable_weights(self) -> list[tuple[str, Any]]:
        """`(name, variable)` pairs to cluster."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement get_clusterable_weights() returning "
            "(name, variable) pairs."
        )


def cluster_scope() -> keras.saving.CustomObjectScope:
    """tfmot's `cluster_scope()`: a scope in which saved clustered models load.

    Our `ClusterWeights` layer is registered with Keras, so `load_model` finds
    it without the scope; it is here so tfmot code runs unchanged.

    Returns:
        A `keras.saving.CustomObjectScope` naming the clustering wrapper.

    Example:

    >>> cluster_weights(model, number_of_clusters=8).save("clustered.keras")
    >>> with cluster_scope():
    ...     loaded = keras.saving.load_model("clustered.keras")
    """
    from tfcompress.cluster.layers import ClusterWeights

    return keras.saving.CustomObjectScope({"ClusterWeights": ClusterWeights})


class ClusteringSummaries(keras.callbacks.Callback):
    """Writes each clustered weight's number of distinct values to TensorBoard.

    tfmot's callback of the same name. `"clusters/<weight>"` is logged every
    epoch (or every `cluster_update_freq` batches).

    Args:
        log_dir: folder for the event files.
        cluster_update_freq: `"epoch"` or a number of batches.
        **kwargs: `keras.callbacks.TensorBoard` arguments tfmot passes on
            (`update_freq`, `profile_batch`, ...); accepted and not used.

    Example:

    >>> clustered = cluster_weights(model, number_of_clusters=8)
    >>> clustered.compile("adam", loss)
    >>> summaries = ClusteringSummaries("logs/clustering")
    >>> clustered.fit(x[:64], y[:64], epochs=1, verbose=0, callbacks=[summaries])
    <keras.src.callbacks.history.History object at 0x...>
    """

    def __init__(
        self,
        log_dir: str | os.PathLike,
        cluster_update_freq: str | int = "epoch",
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if not isinstance(log_dir, (str, os.PathLike)) or not str(log_dir).strip():
            raise ValueError(
                "`log_dir` must name a folder for the TensorBoard event files, e.g. "
                f"'logs/clustering'. Received: log_dir={log_dir!r}"
            )
        if cluster_update_freq != "epoch" and not (
            isinstance(cluster_update_freq, int)
            and not isinstance(cluster_update_freq, bool)
            and cluster_update_freq > 0
        ):
            raise ValueError(
                "`cluster_update_freq` must be 'epoch' or a positive int. "
                f"Received: cluster_update_freq={cluster_update_freq!r}"
            )
        _check_tensorboard_kwargs(kwargs)
        self.log_dir = log_dir
        self.cluster_update_freq = cluster_update_freq
        self._writer: Any = None
        self._batches = 0

    def on_train_begin(self, logs=None):
        import tensorflow as tf

        self._writer = tf.summary.create_file_writer(str(self.log_dir))

    def _write(self, step):
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        from tfcompress._graph import flat_layers
        from tfcompress.cluster.layers import ClusterWeights

        metadata = summary_pb2.SummaryMetadata()
        metadata.plugin_data.plugin_name = "scalars"
        with self._writer.as_default():
            for layer in flat_layers(self.model):
                if not isinstance(layer, ClusterWeights):
                    continue
                for i, name in enumerate(layer.target_names()):
                    values = np.unique(np.asarray(layer.clustered_value(i)))
                    tf.summary.write(
                        f"clusters/{name}",
                        tf.constant(float(values.size)),
                        step=int(step),
                        metadata=metadata.SerializeToString(),
                    )
        self._writer.flush()

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        freq = self.cluster_update_freq
        if freq != "epoch" and self._batches % int(freq) == 0:
            self._write(self._batches)

    def on_epoch_end(self, epoch, logs=None):
        if self.cluster_update_freq == "epoch":
            self._write(epoch)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()


_TENSORBOARD_ARGS = (
    "histogram_freq",
    "write_graph",
    "write_images",
    "write_steps_per_second",
    "update_freq",
    "profile_batch",
    "embeddings_freq",
    "embeddings_metadata",
)


def _check_tensorboard_kwargs(kwargs):
    unknown = sorted(set(kwargs) - set(_TENSORBOARD_ARGS))
    if unknown:
        raise TypeError(
            f"Unexpected arguments {unknown}: besides its own, this callback accepts "
            f"keras.callbacks.TensorBoard's {list(_TENSORBOARD_ARGS)}. Received: {unknown}"
        )


def _experimental_namespace():
    from tfcompress.cluster.api import cluster_weights

    return types.SimpleNamespace(cluster=types.SimpleNamespace(cluster_weights=cluster_weights))


#: tfmot's `tfmot.clustering.keras.experimental.cluster.cluster_weights` spelling
#: (the sparsity-preserving form, `preserve_sparsity=True`, is in `cluster_weights`).
experimental = _experimental_namespace()
