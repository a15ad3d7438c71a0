"""Pruning policies (tfmot's `pruning_policy=`): which layers a model may prune."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tfcompress._graph import flat_layers

if TYPE_CHECKING:
    import keras


class PrunableLayer:
    """tfmot's interface for a custom layer: it names the weights to prune.

    Mix it into a Keras 3 layer and return the variables from
    `get_prunable_weights()`; `prune_low_magnitude` prunes exactly those.

    Example:

    >>> class MyDense(keras.layers.Dense, PrunableLayer):
    ...     def get_prunable_weights(self):
    ...         return [self.kernel]
    """

    def get_prunable_weights(self) -> list[Any]:
        """The variables to prune."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement get_prunable_weights() returning variables."
        )


class PruningPolicy:
    """Base class of pruning policies, with tfmot's two methods.

    `prune_low_magnitude(model, pruning_policy=policy)` first calls
    `policy.ensure_model_supports_pruning(model)` (which raises when the model
    does not fit the policy), then prunes only the layers for which
    `policy.allow_pruning(layer)` is true.

    Example:

    >>> class OnlyDense(PruningPolicy):
    ...     def allow_pruning(self, layer):
    ...         return isinstance(layer, keras.layers.Dense)
    """

    def allow_pruning(self, layer: keras.layers.Layer) -> bool:
        """Whether `layer` may be pruned."""
        raise NotImplementedError(f"{type(self).__name__} must implement allow_pruning(layer).")

    def ensure_model_supports_pruning(self, model: keras.Model) -> None:
        """Raise `ValueError` when `model` cannot be pruned under this policy."""


class PruneForLatencyOnXNNPack(PruningPolicy):
    """Prune only 1x1 `Conv2D` layers: XNNPACK's sparse inference speeds those up.

    tfmot's policy of the same name. XNNPACK runs sparse 1x1 convolutions
    fast between a stem convolution and a `GlobalAveragePooling2D`
    (MobileNet-style networks); other layers stay dense.

    Example:

    >>> PruneForLatencyOnXNNPack().allow_pruning(keras.layers.Conv2D(8, 1))
    True
    >>> # prune_low_magnitude(mobilenet, pruning_policy=PruneForLatencyOnXNNPack())
    """

    def allow_pruning(self, layer: keras.layers.Layer) -> bool:
        import keras

        return (
            isinstance(layer, keras.layers.Conv2D)
            and not isinstance(layer, keras.layers.DepthwiseConv2D)
            and tuple(layer.kernel_size) == (1, 1)
        )

    def ensure_model_supports_pruning(self, model: keras.Model) -> None:
        import keras

        layers = flat_layers(model)
        if not any(self.allow_pruning(layer) for layer in layers):
            raise ValueError(
                f"PruneForLatencyOnXNNPack prunes only 1x1 Conv2D layers, and model "
                f"'{model.name}' has none. Use prune_low_magnitude without pruning_policy. "
                f"Received: layers {[type(layer).__name__ for layer in layers][:8]}"
            )
        if not any(isinstance(layer, keras.layers.GlobalAveragePooling2D) for layer in layers):
            raise ValueError(
                f"PruneForLatencyOnXNNPack needs a GlobalAveragePooling2D ending the sparse "
                f"part of the network (XNNPACK's sparse inference runs up to it); model "
                f"'{model.name}' has none. Use prune_low_magnitude without pruning_policy."
            )


def get(policy: Any) -> PruningPolicy:
    """Our policy for `policy`: ours, a tfmot policy object, or anything with `allow_pruning`."""
    if isinstance(policy, PruningPolicy):
        return policy
    if type(policy).__module__.startswith("tensorflow_model_optimization"):
        import sys

        # tfmot is imported already (the object is tfmot's); not through prune._tfmot,
        # which imports this module.
        tfmot_keras = sys.modules["tensorflow_model_optimization"].sparsity.keras
        if isinstance(policy, tfmot_keras.PruneForLatencyOnXNNPack):
            # tfmot's own object: its checks walk tf_keras graphs, not Keras 3 ones.
            return PruneForLatencyOnXNNPack()
    if callable(getattr(policy, "allow_pruning", None)):
        return _Adapted(policy)
    raise TypeError(
        "`pruning_policy` must be a tfcompress.prune.PruningPolicy (such as "
        "PruneForLatencyOnXNNPack()) or an object with allow_pruning(layer). "
        f"Received: pruning_policy={policy!r}"
    )


class _Adapted(PruningPolicy):
    def __init__(self, policy):
        self.policy = policy

    def allow_pruning(self, layer):
        return bool(self.policy.allow_pruning(layer))

    def ensure_model_supports_pruning(self, model):
        check = getattr(self.policy, "ensure_model_supports_pruning", None)
        if callable(check):
            check(model)
