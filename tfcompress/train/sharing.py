"""Cross-layer parameter sharing (ALBERT style): N layers, one set of weights."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from tfcompress._graph import all_layers as _all_layers

if TYPE_CHECKING:
    import keras


def _validate_groups(model, groups):
    by_name = {layer.name: layer for layer in _all_layers(model)}
    if not groups or any(isinstance(g, str) for g in groups):
        raise ValueError(
            "groups must be a list of lists of layer names, e.g. "
            "[['transformer_layer_0', 'transformer_layer_1']]. "
            f"Received: groups={groups!r}"
        )
    seen = set()
    for group in groups:
        group = list(group)
        if len(group) < 2:
            raise ValueError(f"A sharing group needs at least two layers. Received: {group}")
        missing = [n for n in group if n not in by_name]
        if missing:
            raise ValueError(
                f"Model '{model.name}' has no layer named {missing}. Its layers with weights: "
                + ", ".join(n for n, layer in by_name.items() if layer.weights)
            )
        again = seen.intersection(group)
        if again:
            raise ValueError(f"Layers {sorted(again)} appear in more than one sharing group.")
        seen.update(group)
        leader = by_name[group[0]]
        for name in group[1:]:
            other = by_name[name]
            if type(other) is not type(leader):
                raise ValueError(
                    f"Sharing group {group} mixes layer types: '{leader.name}' is "
                    f"{type(leader).__name__}, '{name}' is {type(other).__name__}."
                )
            shapes = [tuple(w.shape) for w in leader.weights]
            other_shapes = [tuple(w.shape) for w in other.weights]
            if shapes != other_shapes:
                raise ValueError(
                    f"Sharing group {group} has layers with different weight shapes: "
                    f"'{leader.name}' {shapes} vs '{name}' {other_shapes}. Only layers of "
                    "identical shape can share one set of weights."
                )
    return by_name


def share_layers(model: keras.Model, groups: Sequence[Sequence[str]]) -> keras.Model:
    """Return a copy of `model` in which each group of layers shares one set of weights.

    Every layer of a group is replaced by one layer holding the first layer's
    weights, called once per original position, as ALBERT does across
    transformer blocks. Works for functional models and for keras-hub
    backbones and tasks (the backbone comes back as a plain functional model
    with the same inputs and outputs). Fine-tune afterwards with `fit()`.

    Args:
        model: a built functional Keras 3 model (or keras-hub backbone/task).
        groups: lists of layer names, e.g.
            `[["transformer_layer_0", "transformer_layer_1", "transformer_layer_2"]]`.

    Returns:
        A new model; `model` is unchanged.

    Example:

    >>> shared = share_layers(backbone, [[f"transformer_layer_{i}" for i in range(4)]])
    >>> shared.count_params() < backbone.count_params()
    True
    """
    import keras

    from tfcompress import _flavor

    _flavor.check_built(model, what="share_layers")
    by_name = _validate_groups(model, groups)
    leader_of = {name: group[0] for group in groups for name in group}
    shared = {}

    def contains_group_member(layer):
        return isinstance(layer, keras.Model) and any(
            sub.name in leader_of for sub in _all_layers(layer)
        )

    def clone(layer):
        if contains_group_member(layer):
            # A nested model (a task's backbone): rebuild it with sharing inside.
            inner = keras.Model(layer.input, layer.output, name=layer.name)
            return keras.models.clone_model(inner, clone_function=clone)
        leader = leader_of.get(layer.name)
        if leader is not None:
            if leader not in shared:
                source = by_name[leader]
                shared[leader] = source.__class__.from_config(source.get_config())
            return shared[leader]
        return layer.__class__.from_config(layer.get_config())

    flat = model
    if type(model) is not keras.Model and not isinstance(model, keras.Sequential):
        flat = keras.Model(model.input, model.output, name=model.name)
    result = keras.models.clone_model(flat, clone_function=clone)

    def copy_weights(original, cloned):
        targets = {layer.name: layer for layer in cloned.layers}
        for layer in original.layers:
            if contains_group_member(layer):
                copy_weights(layer, targets[layer.name])
            elif layer.weights and leader_of.get(layer.name, layer.name) == layer.name:
                targets[layer.name].set_weights(layer.get_weights())

    copy_weights(flat, result)
    return result
