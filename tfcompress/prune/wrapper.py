"""`PruneLowMagnitude`: the Keras 3 layer wrapper that holds and applies masks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import keras
from keras import ops

from tfcompress._layers import Wrapper, build_inner_from_call, positional_call_args
from tfcompress.prune import _registry, patterns
from tfcompress.prune import schedules as schedules_lib

if TYPE_CHECKING:
    import tensorflow as tf

SCOPES = ("layer", "global")
IMPORTANCES = ("magnitude", "taylor")

_NO_CALLBACK = (
    "Layer '{name}' is wrapped for pruning, but its pruning step was never set: "
    "model.fit() was called without the UpdatePruningStep callback. Pass "
    "callbacks=[tfcompress.prune.UpdatePruningStep()] to fit() (in a custom training loop, "
    "call its set_model(model) and on_train_begin() yourself before the first step)."
)


def _not_prunable(layer):
    return ValueError(
        f"Layer '{layer.name}' ({type(layer).__name__}) is not prunable: only "
        f"{', '.join(_registry.PRUNABLE_CLASS_NAMES)} (and their subclasses), or layers "
        "built from them, are. Leave it unwrapped."
    )


class _MaskConstraint:
    """Re-applies a mask after every optimizer step (Keras applies constraints then).

    This is what keeps pruned weights exactly zero with momentum and Adam,
    whose update moves a weight even when its gradient is zero.
    """

    def __init__(self, mask, inner=None):
        self.mask = mask
        self.inner = inner

    def __call__(self, w):
        if self.inner is not None:
            w = self.inner(w)
        return w * ops.cast(self.mask, w.dtype)


@keras.saving.register_keras_serializable(package="tfcompress")
class PruneLowMagnitude(Wrapper):
    """Wraps a layer and zeroes its least important weights on a schedule.

    Each prunable weight (the kernel of `Dense`, `EinsumDense`, `Conv1D/2D/3D`,
    `DepthwiseConv2D`; the pointwise kernel of `SeparableConv1D/2D`; the
    table of `Embedding`; the kernel and recurrent kernel of LSTM / GRU /
    SimpleRNN cells; whatever a layer's `get_prunable_weights()` returns) gets a
    non-trainable mask variable. A composite layer that builds such layers
    inside itself (keras-hub's `TransformerEncoder`: attention and
    feed-forward kernels) can be wrapped as a whole; its own code and config
    stay untouched. While training, the masks are recomputed
    inside the training graph whenever the schedule says so, from the
    pruning step set by the `UpdatePruningStep` callback; and because the
    mask is installed as the weight's constraint, the optimizer re-applies it
    after every update, so pruned weights stay exactly zero.

    `pruning_step` counts the training batches this layer has seen: it starts
    at -1 ("never trained with the callback"), `UpdatePruningStep` sets it to 0
    when fit() begins (or keeps a resumed count), and each training call adds
    one and hands the result to the schedule: the first batch is step 1, as
    in tfmot.

    Most users call `tfcompress.prune.prune_low_magnitude(model)` instead of
    using this layer directly.

    Args:
        layer: the Keras 3 layer to prune.
        pruning_schedule: a `ConstantSparsity` or `PolynomialDecay`.
        pattern: `"unstructured"`, an N:M string such as `"2:4"`, or a block
            shape `(rows, cols)`.
        importance: `"magnitude"` (|w|) or `"taylor"` (|w * dL/dw| summed
            over a few batches, stored in the `importance_scores` variable
            by `prune_low_magnitude(..., importance_data=...)`).
        scope: `"layer"` (each layer reaches the schedule's sparsity) or
            `"global"` (the `UpdatePruningStep` callback ranks all global
            layers together and writes each one's share to `layer_sparsity`).
        **kwargs: base layer arguments (`name`, ...).

    Example:

    >>> wrapped = PruneLowMagnitude(keras.layers.Dense(8),
    ...                             pruning_schedule=ConstantSparsity(0.5, 0))
    """

    #: How to get the plain model back: other verbs refuse a model still wrapped by this.
    _tfcompress_strip_with = "tfcompress.prune.strip_pruning"

    def __init__(
        self,
        layer: keras.layers.Layer,
        pruning_schedule: schedules_lib.ScheduleLike | None = None,
        pattern: patterns.PatternLike = "unstructured",
        importance: str = "magnitude",
        scope: str = "layer",
        **kwargs: Any,
    ) -> None:
        if not isinstance(layer, keras.layers.Layer):
            raise TypeError(
                "PruneLowMagnitude wraps a Keras 3 layer. "
                f"Received: layer={layer!r} of type {type(layer).__name__}"
            )
        # A composite layer may create its inner layers only in build(): an
        # unbuilt one is checked there.
        if layer.built and not _registry.is_prunable(layer):
            raise _not_prunable(layer)
        if importance not in IMPORTANCES:
            raise ValueError(
                f"`importance` must be one of {IMPORTANCES}. Received: importance={importance!r}"
            )
        if scope not in SCOPES:
            raise ValueError(f"`scope` must be one of {SCOPES}. Received: scope={scope!r}")
        kwargs.setdefault("name", f"prune_low_magnitude_{layer.name}")
        kwargs.setdefault("dtype", layer.dtype_policy)
        super().__init__(layer, **kwargs)
        if pruning_schedule is None:
            pruning_schedule = schedules_lib.ConstantSparsity(0.5, begin_step=0)
        self.pruning_schedule = schedules_lib.get(pruning_schedule)
        self.pattern = patterns.parse(pattern)
        self.importance = importance
        self.scope = scope
        # Set by UpdatePruningStep; checked when the training graph is traced.
        self._step_callback_attached = False

    def __call__(self, *args, **kwargs):
        args, kwargs = positional_call_args(self.layer, args, kwargs)
        if not self.built:
            build_inner_from_call(self.layer, args, kwargs)
        return super().__call__(*args, **kwargs)

    def build(self, input_shape=None):
        super().build(input_shape)
        self.masks = []
        self.importance_scores = []
        self._targets = []
        if not _registry.is_prunable(self.layer):
            raise _not_prunable(self.layer)
        composite = _registry.is_composite(self.layer)
        for sub, spec in _registry.prunable_targets(self.layer):
            if not sub.built:
                raise ValueError(
                    f"Layer '{sub.name}' inside '{self.layer.name}' "
                    f"({type(self.layer).__name__}) was not built by "
                    f"{type(self.layer).__name__}.build(), so its weights cannot be masked. "
                    f"Skip '{self.layer.name}' (skip=[...])."
                )
            weight = spec.variable(sub)
            patterns.check_shape(self.pattern, weight.shape, spec.nm_axis, sub.name)
            prefix = f"{sub.name}_" if composite else ""
            mask = self.add_weight(
                name=f"{prefix}{spec.name}_mask",
                shape=weight.shape,
                initializer="ones",
                trainable=False,
                dtype="float32",
                aggregation="only_first_replica",
            )
            if self.importance == "taylor":
                score = self.add_weight(
                    name=f"{prefix}{spec.name}_importance",
                    shape=weight.shape,
                    initializer="ones",
                    trainable=False,
                    dtype="float32",
                    aggregation="only_first_replica",
                )
                self.importance_scores.append(score)
            weight.constraint = _MaskConstraint(mask, inner=weight.constraint)
            self.masks.append(mask)
            self._targets.append((weight, spec))
        self.pruning_step = self.add_weight(
            name="pruning_step",
            shape=(),
            # -1 (no UpdatePruningStep yet), or the step the callback started before this
            # layer was built (a subclassed model builds its layers on the first batch).
            initializer=keras.initializers.Constant(getattr(self, "_pending_step", -1)),
            trainable=False,
            dtype="int64",
            aggregation="only_first_replica",
        )
        # Only read in scope="global": the share of zeros the callback gives this layer.
        self.layer_sparsity = self.add_weight(
            name="layer_sparsity",
            shape=(),
            initializer="zeros",
            trainable=False,
            dtype="float32",
            aggregation="only_first_replica",
        )
        self.built = True

    @property
    def pruned_weights(self) -> list[tuple[keras.Variable, keras.Variable]]:
        """The `(variable, mask)` pairs this wrapper prunes."""
        return [(weight, mask) for (weight, _), mask in zip(self._targets, self.masks, strict=True)]

    def scores(self, index: int) -> tf.Tensor:
        """Importance scores of the `index`-th pruned weight (a tensor)."""
        weight, _ = self._targets[index]
        magnitude = ops.abs(ops.cast(weight, "float32"))
        if self.importance == "taylor":
            # Weights pruned earlier stay pruned: their magnitude is 0.
            return self.importance_scores[index] * ops.cast(magnitude > 0, "float32")
        return magnitude

    def _apply_schedule(self, should_prune, sparsity):
        # Autocast is off so that mixed precision ranks float32 weights, not float16.
        import tensorflow as tf
        from keras.src.backend.common.variables import AutocastScope

        with AutocastScope(None):
            if tf.distribute.has_strategy():
                self._update_outside_cond(should_prune, sparsity)
            else:
                ops.cond(
                    should_prune,
                    lambda: self._update_inside_cond(sparsity),
                    lambda: ops.convert_to_tensor(False),
                )

    def _new_mask(self, i, sparsity):
        weight, spec = self._targets[i]
        return patterns.compute_mask(self.scores(i), sparsity, self.pattern, spec.nm_axis)

    def _update_inside_cond(self, sparsity):
        # Single device: masks and weights change only on pruning turns, so the
        # steps in between cost one predicate.
        for i, ((weight, _), mask) in enumerate(zip(self._targets, self.masks, strict=False)):
            new_mask = self._new_mask(i, sparsity)
            mask.assign(new_mask)
            weight.assign(weight * ops.cast(new_mask, weight.dtype))
        return ops.convert_to_tensor(True)

    def _update_outside_cond(self, should_prune, sparsity):
        # Under a distribution strategy a variable assignment inside a cond is a
        # cross-replica sync point that MirroredStrategy rejects, so only the
        # new mask is computed under the cond (top-k on pruning turns only) and
        # the assignments run every step.
        for i, ((weight, _), mask) in enumerate(zip(self._targets, self.masks, strict=False)):
            new_mask = ops.cond(
                should_prune,
                lambda i=i: self._new_mask(i, sparsity),
                lambda mask=mask: ops.cast(mask, "float32"),
            )
            mask.assign(new_mask)
            weight.assign(weight * ops.cast(new_mask, weight.dtype))

    def call(self, inputs, *args, training=None, **kwargs):
        if training:
            self._check_step_callback()
            import tensorflow as tf

            check = tf.debugging.assert_greater_equal(
                ops.convert_to_tensor(self.pruning_step),
                tf.constant(0, "int64"),
                message=_NO_CALLBACK.format(name=self.name),
            )
            # Counted in the graph (no per-batch Python work): the callback only
            # starts the count at 0, or resumes it, when fit() begins. As in tfmot,
            # the k-th training batch is step k (the first batch is step 1).
            with tf.control_dependencies([check]):
                step = ops.convert_to_tensor(self.pruning_step.assign_add(1))
            should_prune, sparsity = self.pruning_schedule(step)
            if self.scope == "global":
                sparsity = ops.convert_to_tensor(self.layer_sparsity)
            self._apply_schedule(should_prune, sparsity)
        return self.layer(inputs, *args, **kwargs)

    def _check_step_callback(self):
        if not self._step_callback_attached:
            from tfcompress.prune.errors import MissingPruningStepError

            raise MissingPruningStepError(_NO_CALLBACK.format(name=self.name))

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def compute_output_spec(self, *args, **kwargs):
        # The inner layer's own rule sees every input (MultiHeadAttention's query and value).
        kwargs.pop("training", None)
        return self.layer.compute_output_spec(*args, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "pruning_schedule": keras.saving.serialize_keras_object(self.pruning_schedule),
                "pattern": self.pattern.to_config(),
                "importance": self.importance,
                "scope": self.scope,
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["pruning_schedule"] = keras.saving.deserialize_keras_object(
            config["pruning_schedule"], custom_objects=custom_objects
        )
        if isinstance(config.get("pattern"), list):
            config["pattern"] = tuple(config["pattern"])
        return super().from_config(config, custom_objects=custom_objects)
