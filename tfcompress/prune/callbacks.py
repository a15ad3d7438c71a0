"""Callbacks that drive pruning during `fit()`: step counting and TensorBoard summaries."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from tfcompress import _flavor

if TYPE_CHECKING:
    from tfcompress.prune.wrapper import PruneLowMagnitude


def pruning_wrappers(model):
    """Every `PruneLowMagnitude` layer in a Keras 3 model, nested models included."""
    from tfcompress.prune.wrapper import PruneLowMagnitude

    found = []

    def visit(layer):
        if isinstance(layer, PruneLowMagnitude):
            found.append(layer)
            return
        for sub in getattr(layer, "layers", None) or ():
            visit(sub)

    for layer in model.layers:
        visit(layer)
    return found


class _TFKerasCompatible:
    """The private hooks tf_keras' CallbackList asks of a callback.

    Our callbacks are Keras 3 callbacks; these let the same object be passed
    to a tf_keras model's fit() too.
    """

    _supports_tf_logs = False

    def _implements_train_batch_hooks(self):
        return True

    def _implements_test_batch_hooks(self):
        return False

    def _implements_predict_batch_hooks(self):
        return False


class UpdatePruningStep(_TFKerasCompatible, keras.callbacks.Callback):
    """Starts (or resumes) the pruning step count of every pruned layer.

    Required whenever a model from `prune_low_magnitude` is trained (tfmot's
    meaning). Works for Keras 3 models (our engine) and for tf_keras models
    (it hands over to tfmot's own callback).

    In `scope="global"` it also ranks the weights of all global layers
    together on each pruning turn and gives every layer its share.

    Example:

    >>> pruned = prune_low_magnitude(model, schedule=ConstantSparsity(0.8, 0))
    >>> pruned.compile("adam", "sparse_categorical_crossentropy")
    >>> pruned.fit(x, y, callbacks=[UpdatePruningStep()])
    """

    def __init__(self) -> None:
        super().__init__()
        self._tfmot: Any = None  # tfmot's UpdatePruningStep, for a tf_keras model
        self._wrappers: list[PruneLowMagnitude] = []
        self._global: list[PruneLowMagnitude] = []
        self.step = 0
        self._started_at = 0
        self._checked = True  # until on_train_begin finds wrappers to check

    def set_model(self, model: keras.Model) -> None:
        if _flavor.is_tf_keras_model(model):
            from tfcompress.prune import _tfmot

            self._tfmot = _tfmot.sparsity().UpdatePruningStep()
            self._tfmot.set_model(model)
        self._model = model

    @property
    def model(self) -> keras.Model:
        return self._model

    def on_train_begin(self, logs=None):
        if self._tfmot is not None:
            return self._tfmot.on_train_begin(logs)
        self._wrappers = pruning_wrappers(self.model)
        if not self._wrappers:
            return
        # Each wrapper counts its own steps in the training graph. Start them at 0
        # (a fresh model holds -1), or resume from the largest saved count (a
        # second fit(), or a model reloaded mid-pruning).
        built = [w for w in self._wrappers if hasattr(w, "pruning_step")]
        self.step = max([0, *(int(w.pruning_step.numpy()) for w in built)])
        for w in self._wrappers:
            w._step_callback_attached = True
            if hasattr(w, "pruning_step"):
                w.pruning_step.assign(self.step)
            else:  # built on the first batch (a subclassed model): it starts there
                w._pending_step = self.step
        self._global = [w for w in self._wrappers if w.scope == "global"]
        self._started_at = self.step
        self._checked = False

    def on_train_batch_end(self, batch, logs=None):
        if self._tfmot is not None or self._checked or not self._wrappers:
            return
        self._checked = True  # once per fit(): a variable read, not per batch
        stuck = [w.name for w in self._wrappers if int(w.pruning_step.numpy()) <= self._started_at]
        if stuck:
            from tfcompress.prune.errors import PruningStepNotCountedError

            # A subclassed model whose call() has no `training` argument: Keras then calls
            # the layers inside it with training=None, and nothing would be pruned.
            raise PruningStepNotCountedError(
                f"Pruning layers {stuck} counted no training step in the first batch of fit(): "
                "they were called without training=True, so nothing would be pruned. In a "
                "subclassed model, accept `training` in call() (def call(self, inputs, "
                "training=None)) so Keras passes it on. Received: pruning_step="
                f"{self._started_at} after 1 training batch"
            )

    def on_train_batch_begin(self, batch, logs=None):
        if self._tfmot is not None:
            return self._tfmot.on_train_batch_begin(batch, logs)
        self.step += 1  # the step the layers will count to in this batch
        if self._global:
            _assign_global_shares(self._global, self.step)

    def on_epoch_end(self, epoch=-1, logs=None, batch=None):
        # tfmot's custom-loop form is on_epoch_end(batch=-1).
        if self._tfmot is not None:
            return self._tfmot.on_epoch_end(epoch if batch is None else batch, logs)

    def on_train_end(self, logs=None):
        if self._tfmot is not None:
            return self._tfmot.on_train_end(logs) if hasattr(self._tfmot, "on_train_end") else None
        for w in self._wrappers:
            w._step_callback_attached = False


def _assign_global_shares(wrappers, step):
    """Rank all global layers' scores together; give each layer its share of zeros."""
    schedule = wrappers[0].pruning_schedule
    should_prune, sparsity = schedule(step)
    if not bool(should_prune):
        return
    scores = [np.ravel(np.asarray(w.scores(i))) for w in wrappers for i in range(len(w.masks))]
    everything = np.concatenate(scores)
    n_zero = int(round(float(sparsity) * everything.size))
    if n_zero == 0:
        threshold = -np.inf
    else:
        threshold = np.partition(everything, n_zero - 1)[n_zero - 1]
    k = 0
    for w in wrappers:
        layer_scores = np.concatenate(scores[k : k + len(w.masks)])
        k += len(w.masks)
        share = float(np.mean(layer_scores <= threshold)) if n_zero else 0.0
        # One weight is always kept per layer so that no layer is cut off.
        share = min(share, 1.0 - 1.0 / layer_scores.size)
        w.layer_sparsity.assign(share)


def _scalar(tf, tag, value, step):
    # What tf.summary.scalar writes, without needing the tensorboard package
    # (tf.summary.scalar raises TBNotInstalledError without it).
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = "scalars"
    tf.summary.write(
        tag,
        tf.constant(float(value), "float32"),
        step=int(step),
        metadata=metadata.SerializeToString(),
    )


_TENSORBOARD_ARGS = (
    "histogram_freq",
    "write_graph",
    "write_images",
    "write_steps_per_second",
    "profile_batch",
    "embeddings_freq",
    "embeddings_metadata",
)


class PruningSummaries(_TFKerasCompatible, keras.callbacks.Callback):
    """Writes each pruned layer's sparsity (and the step) to TensorBoard.

    Args:
        log_dir: folder for the event files.
        update_freq: `"epoch"` or a number of batches between summaries.
        **kwargs: `keras.callbacks.TensorBoard` arguments that tfmot's
            `PruningSummaries` passes on (`profile_batch`, `histogram_freq`,
            ...): accepted, so tfmot code runs unchanged, and not used.

    Example:

    >>> pruned.fit(x, y, callbacks=[UpdatePruningStep(), PruningSummaries("logs")])
    """

    def __init__(
        self, log_dir: str | os.PathLike, update_freq: str | int = "epoch", **kwargs: Any
    ) -> None:
        super().__init__()
        unknown = sorted(set(kwargs) - set(_TENSORBOARD_ARGS))
        if unknown:
            raise TypeError(
                f"Unexpected arguments {unknown}: besides log_dir and update_freq, "
                "PruningSummaries accepts keras.callbacks.TensorBoard's "
                f"{list(_TENSORBOARD_ARGS)}. Received: {unknown}"
            )
        if not isinstance(log_dir, (str, bytes)) and not hasattr(log_dir, "__fspath__"):
            raise TypeError(f"`log_dir` must be a path. Received: log_dir={log_dir!r}")
        if not str(log_dir if not isinstance(log_dir, bytes) else log_dir.decode()).strip():
            raise ValueError(
                "`log_dir` must name a folder for the TensorBoard event files, "
                f"e.g. 'logs/pruning'. Received: log_dir={log_dir!r}"
            )
        if update_freq != "epoch" and not (isinstance(update_freq, int) and update_freq > 0):
            raise ValueError(
                "`update_freq` must be 'epoch' or a positive int. "
                f"Received: update_freq={update_freq!r}"
            )
        self.log_dir = log_dir
        self.update_freq = update_freq
        self._writer = None
        self._batches = 0

    def on_train_begin(self, logs=None):
        import tensorflow as tf

        self._writer = tf.summary.create_file_writer(str(self.log_dir))

    def _write(self, step):
        import tensorflow as tf

        from tfcompress.prune.report import sparsity_report

        report = sparsity_report(self.model)
        with self._writer.as_default():
            for layer in report.layers:
                if layer.status == "pruned":
                    _scalar(tf, f"sparsity/{layer.name}", layer.sparsity, step)
            _scalar(tf, "sparsity/total", report.sparsity, step)
        self._writer.flush()

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        if self.update_freq != "epoch" and self._batches % self.update_freq == 0:
            self._write(self._batches)

    def on_epoch_end(self, epoch, logs=None):
        if self.update_freq == "epoch":
            self._write(epoch)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
