"""The tf_keras engine: the same public verbs, done by tensorflow-model-optimization."""

import numpy as np

from tfcompress._graph import flat_layers
from tfcompress.prune import schedules as schedules_lib


def sparsity():
    """`tfmot.sparsity.keras`, imported on first use (it imports tf_keras)."""
    import tensorflow_model_optimization as tfmot

    return tfmot.sparsity.keras


def _wrapper_class():
    from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

    return pruning_wrapper.PruneLowMagnitude


def is_prunable(layer):
    from tensorflow_model_optimization.python.core.sparsity.keras import prune_registry

    if not layer.weights:
        return False
    return bool(prune_registry.PruneRegistry.supports(layer) and _weight_names(layer))


def _weight_names(layer):
    from tensorflow_model_optimization.python.core.sparsity.keras import prune_registry

    return prune_registry.PruneRegistry._weight_names(layer)


def is_conv(layer):
    import tf_keras

    return isinstance(
        layer, (tf_keras.layers.Conv1D, tf_keras.layers.Conv2D, tf_keras.layers.DepthwiseConv2D)
    )


def is_dense(layer):
    import tf_keras

    return isinstance(layer, tf_keras.layers.Dense)


def to_tfmot_schedule(schedule):
    """Our schedule -> the tfmot schedule with the same meaning."""
    sk = sparsity()
    if isinstance(schedule, schedules_lib.ConstantSparsity):
        return sk.ConstantSparsity(
            schedule.target_sparsity,
            schedule.begin_step,
            end_step=schedule.end_step,
            frequency=schedule.frequency,
        )
    if isinstance(schedule, schedules_lib.PolynomialDecay):
        return sk.PolynomialDecay(
            schedule.initial_sparsity,
            schedule.final_sparsity,
            schedule.begin_step,
            schedule.end_step,
            power=schedule.power,
            frequency=schedule.frequency,
        )
    raise TypeError(
        f"tfmot has no equivalent of schedule {schedule!r}; use ConstantSparsity "
        "or PolynomialDecay for tf_keras models."
    )


def _pattern_kwargs(pattern, layer_name):
    if pattern.kind == "unstructured":
        return {}
    if pattern.kind == "block":
        return {"block_size": pattern.block, "block_pooling_type": pattern.pooling.upper()}
    if (pattern.n, pattern.m) != (2, 4):
        raise NotImplementedError(
            f"tfmot only prunes N:M as 2:4; layer '{layer_name}' asked for "
            f"{pattern.n}:{pattern.m}. Use '2:4', or a Keras 3 model."
        )
    return {"sparsity_m_by_n": (2, 4)}


def _copy(model):
    import tf_keras

    clone = tf_keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def prune(model, plan, schedule, pattern, overrides):
    """Wrap the planned layers of a copy of `model` with tfmot's wrapper."""
    import tf_keras

    from tfcompress.prune import patterns

    sk = sparsity()
    # tfmot wraps the very layer objects it is given, so work on a copy: the
    # user's model must not change when the pruned one trains.
    copy = _copy(model)

    def wrap(layer):
        if isinstance(layer, tf_keras.Model):
            return tf_keras.models.clone_model(layer, clone_function=wrap)
        if layer.name not in plan.pruned:
            return layer
        opts = overrides.get(layer.name) or {}
        layer_schedule = schedules_lib.get(opts.get("schedule", schedule))
        layer_pattern = patterns.parse(opts.get("pattern", pattern))
        return sk.prune_low_magnitude(
            layer,
            pruning_schedule=to_tfmot_schedule(layer_schedule),
            **_pattern_kwargs(layer_pattern, layer.name),
        )

    return tf_keras.models.clone_model(copy, clone_function=wrap)


def prune_with_policy(model, policy, schedule, pattern):
    """tfmot's own `prune_low_magnitude(model, pruning_policy=...)` on a copy of `model`."""
    from tfcompress.prune import patterns
    from tfcompress.prune.policy import PruneForLatencyOnXNNPack

    sk = sparsity()
    if isinstance(policy, PruneForLatencyOnXNNPack):
        policy = sk.PruneForLatencyOnXNNPack()
    if not isinstance(policy, sk.PruningPolicy):
        raise TypeError(
            f"Model '{model.name}' is a tf_keras model, pruned by tfmot: its pruning_policy "
            "must be a tfmot PruningPolicy (tfmot.sparsity.keras.PruneForLatencyOnXNNPack()) "
            f"or tfcompress.prune.PruneForLatencyOnXNNPack(). Received: pruning_policy={policy!r}"
        )
    return sk.prune_low_magnitude(
        _copy(model),
        pruning_schedule=to_tfmot_schedule(schedule),
        pruning_policy=policy,
        **_pattern_kwargs(patterns.parse(pattern), model.name),
    )


def _wrappers(model):
    wrapper = _wrapper_class()
    found = []
    for layer in model.layers:
        if isinstance(layer, wrapper):
            found.append(layer)
        elif hasattr(layer, "layers"):
            found.extend(_wrappers(layer))
    return found


def strip(model):
    """tfmot's strip_pruning, then a copy with the masks multiplied in."""
    sk = sparsity()
    stripped = _copy(sk.strip_pruning(model))
    by_name = {layer.name: layer for layer in flat_layers(stripped)}
    for wrapper in _wrappers(model):
        target = by_name[wrapper.layer.name]
        masked = {id(w): np.asarray(w) * np.asarray(m) for w, m, _ in wrapper.pruning_vars}
        values = [masked.get(id(w), np.asarray(w)) for w in wrapper.layer.weights]
        target.set_weights(values)
    return stripped


def layer_weights(model):
    """`(name, class name, status, weights, kernels)` per weighted leaf layer.

    The kernels of a wrapped layer come with their masks applied;
    `prune.report` turns these into `LayerSparsity` rows.
    """
    wrapper = _wrapper_class()
    out = []
    for layer in flat_layers(model):
        if isinstance(layer, wrapper):
            inner = layer.layer
            masked = [np.asarray(w) * np.asarray(m) for w, m, _ in layer.pruning_vars]
            out.append((inner.name, type(inner).__name__, "pruned", inner.weights, masked))
        elif layer.weights:
            prunable = is_prunable(layer)
            kernels = [getattr(layer, name) for name in _weight_names(layer)] if prunable else []
            out.append(
                (
                    layer.name,
                    type(layer).__name__,
                    "prunable" if prunable else "not prunable",
                    layer.weights,
                    kernels,
                )
            )
    return out
