"""`remove_units`: structured pruning that really shrinks Dense and Conv layers.

Whole neurons (Dense) and filters (Conv1D / Conv2D) with the smallest L1 or L2
norm are removed; the layer that reads them (through BatchNormalization,
activations, dropout, pooling or Flatten) loses the matching input rows. The
result is a smaller dense model: fewer parameters, fewer FLOPs, the same
graph. Fine-tune it with `fit()` as usual.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tfcompress import _flavor
from tfcompress._report import Entry, Report, attach
from tfcompress.prune.errors import NoPrunableLayersError, UnsupportedPruningModelError

if TYPE_CHECKING:
    import keras
    import tensorflow as tf
    from numpy.typing import ArrayLike

CRITERIA = ("l1", "l2", "taylor")

# Layers a channel passes through unchanged (one output channel per input channel).
_PASS_THROUGH = (
    "BatchNormalization",
    "Activation",
    "ReLU",
    "LeakyReLU",
    "ELU",
    "PReLU",
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "GaussianNoise",
    "MaxPooling1D",
    "MaxPooling2D",
    "AveragePooling1D",
    "AveragePooling2D",
    "GlobalAveragePooling1D",
    "GlobalAveragePooling2D",
    "GlobalMaxPooling1D",
    "GlobalMaxPooling2D",
    "Flatten",
)
_SHRINKABLE = ("Dense", "Conv1D", "Conv2D")


def remove_units(
    model: keras.Model,
    fraction: float | dict[str, float] = 0.5,
    *,
    criterion: str = "l1",
    layers: Sequence[str] | None = None,
    importance_data: tuple[ArrayLike, ArrayLike] | tf.data.Dataset | None = None,
    importance_loss: str | Callable[..., Any] | None = None,
    importance_batches: int = 8,
    verbose: bool = False,
) -> keras.Model:
    """Return a smaller copy of `model` without its least important units.

    For each Dense layer (neurons) and Conv1D/Conv2D layer (filters) whose
    output reaches exactly one Dense/Conv layer through channel-preserving
    layers (BatchNormalization, activations, dropout, pooling, Flatten), the
    `fraction` of units with the smallest kernel norm is removed, together with
    the matching BatchNormalization entries and input rows of the next layer.
    Layers feeding a model output (the classifier) are never shrunk.

    For a keras-hub model (task or backbone), the feed-forward units of every
    `TransformerEncoder` are removed instead (one `fraction` for all layers,
    as its config holds one `intermediate_dim`); attention heads are kept
    here: remove them with `remove_heads`.

    Args:
        model: a built Keras 3 functional or Sequential model.
        fraction: share of units to remove, in [0, 1): one float for every
            eligible layer, or a dict `{layer name: fraction}` for some.
        criterion: `"l1"` or `"l2"` norm of each unit's weights, or
            `"taylor"`: |w * dL/dw| summed over the unit's weights and
            `importance_batches` batches of `importance_data`.
        layers: names of the layers to shrink (all eligible ones if `None`;
            ignored when `fraction` is a dict).
        importance_data: `(x, y)` arrays or a dataset of `(x, y)` batches
            (`criterion="taylor"` only).
        importance_loss: a Keras loss for `criterion="taylor"`.
        importance_batches: batches the Taylor scores sum over.
        verbose: print which layers shrank and why others did not.

    Returns:
        A new, uncompiled Keras 3 model with fewer parameters. Its
        `tfcompress_report` (a `tfcompress.Report`) lists each layer shrunk
        and each layer left alone with the reason.

    Example:

    >>> small = remove_units(model, 0.5)
    >>> small.count_params() < model.count_params()
    True
    """
    import keras
    from keras.src.models.functional import Functional

    flavor = _flavor.flavor_of(model)
    if flavor == _flavor.TF_KERAS:
        raise NotImplementedError(
            f"remove_units works on Keras 3 models; '{model.name}' is a tf_keras model. "
            "Rebuild it with keras (Keras 3) first."
        )
    _flavor.check_built(model, what="remove_units")
    if flavor == _flavor.KERAS_HUB:
        from tfcompress.prune.structured_hub import remove_ffn_units

        return remove_ffn_units(model, fraction, criterion=criterion, verbose=verbose)
    if type(model) not in (Functional, keras.Sequential, keras.Model):
        raise UnsupportedPruningModelError(
            f"remove_units rebuilds the model from its config, so it needs a plain functional "
            f"or Sequential model; '{model.name}' is a {type(model).__name__}."
        )
    if criterion not in CRITERIA:
        raise ValueError(
            f"`criterion` must be one of {CRITERIA}. Received: criterion={criterion!r}"
        )
    if criterion == "taylor" and (importance_data is None or importance_loss is None):
        raise ValueError(
            "criterion='taylor' ranks units by |w * dL/dw|, so it needs data and a loss: pass "
            "importance_data=(x, y) and importance_loss=... Received: "
            f"importance_data={type(importance_data).__name__}, "
            f"importance_loss={importance_loss!r}"
        )
    graph = _Graph(model)
    fractions = _fractions(model, graph, fraction, layers)
    scores = None
    if criterion == "taylor":
        from tfcompress.prune.importance import taylor_scores

        names = [
            n
            for n in graph.order
            if n in fractions and type(graph.layers[n]).__name__ in _SHRINKABLE
        ]
        scores = taylor_scores(model, names, importance_data, importance_loss, importance_batches)
    plan, skipped = {}, []
    for name in graph.order:
        layer = graph.layers[name]
        if type(layer).__name__ not in _SHRINKABLE or name not in fractions:
            continue
        reason = graph.why_not_shrinkable(name)
        if reason:
            skipped.append((name, reason))
            continue
        weights = scores[name][0] if scores else np.asarray(layer.kernel)
        keep = _units_to_keep(weights, fractions[name], criterion)
        if keep is not None:
            plan[name] = keep
    if not plan:
        raise NoPrunableLayersError(
            f"remove_units found no layer of '{model.name}' to shrink. "
            + "".join(f"{n}: {r}; " for n, r in skipped)
            + "Eligible are Dense/Conv1D/Conv2D layers whose output reaches one Dense or "
            "Conv layer through BatchNormalization, activations, pooling or Flatten. "
            f"Received: layers {[type(layer).__name__ for layer in model.layers]}"
        )
    report = Report(
        "remove_units",
        model.name,
        done=[
            Entry(
                name,
                type(graph.layers[name]).__name__,
                f"{_units(graph.layers[name])} -> {len(keep)} units",
            )
            for name, keep in plan.items()
        ],
        skipped=[
            Entry(name, type(graph.layers[name]).__name__, reason) for name, reason in skipped
        ],
    )
    if verbose:
        print(report)
    return attach(_rebuild(model, graph, plan), report)


def _fractions(model, graph, fraction, layers):
    if isinstance(fraction, dict):
        unknown = sorted(set(fraction) - set(graph.layers))
        if unknown:
            raise ValueError(
                f"`fraction` names layers that '{model.name}' does not have: "
                f"{unknown}. Its layers are: {graph.order}"
            )
        items = fraction.items()
    else:
        names = graph.order if layers is None else list(layers)
        unknown = sorted(set(names) - set(graph.layers))
        if unknown:
            raise ValueError(
                f"`layers` names layers that '{model.name}' does not have: "
                f"{unknown}. Its layers are: {graph.order}"
            )
        items = [(name, fraction) for name in names]
    out = {}
    for name, value in items:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ValueError(
                f"The fraction of units to remove must be in [0, 1). "
                f"Received: fraction={value!r} for layer '{name}'"
            )
        out[name] = float(value)
    return out


def _units(layer):
    return layer.units if hasattr(layer, "units") else layer.filters


def _units_to_keep(kernel, fraction, criterion):
    # `kernel` holds the weights, or their Taylor scores for criterion="taylor".
    flat = np.abs(kernel.reshape(-1, kernel.shape[-1]))
    norms = np.sqrt((flat**2).sum(axis=0)) if criterion == "l2" else flat.sum(axis=0)
    units = kernel.shape[-1]
    n_keep = max(1, units - int(round(fraction * units)))
    if n_keep == units:
        return None
    # Keep the original order of the surviving units (stable, readable weights).
    return np.sort(np.argsort(-norms, kind="stable")[:n_keep])


class _Graph:
    """Producers and consumers of each layer, from the model's functional config."""

    def __init__(self, model):
        import keras

        self.layers = {layer.name: layer for layer in model.layers}
        config = model.get_config()
        self.order = [
            entry["config"]["name"] if "name" in entry["config"] else entry["name"]
            for entry in config["layers"]
        ]
        self.consumers = {name: [] for name in self.order}
        self.producers = {name: [] for name in self.order}
        if isinstance(model, keras.Sequential):
            names = [layer.name for layer in model.layers]
            for a, b in zip(names, names[1:], strict=False):
                self.consumers[a].append(b)
                self.producers[b].append(a)
            self.outputs = {names[-1]}
        else:
            for entry in config["layers"]:
                for producer in _histories(entry.get("inbound_nodes", [])):
                    self.consumers[producer].append(entry["name"])
                    self.producers[entry["name"]].append(producer)
            self.outputs = set(_histories(config["output_layers"]))
        self.order = [name for name in self.order if name in self.layers]

    def path_to_consumer(self, name):
        """(pass-through layers, consumer) downstream of `name`, or a reason string."""
        passed = []
        current = name
        while True:
            if current in self.outputs:
                return "its output is a model output"
            nexts = self.consumers.get(current, [])
            if len(nexts) != 1:
                return f"its output goes to {len(nexts)} layers ({nexts})"
            nxt = nexts[0]
            if len(self.producers[nxt]) != 1:
                return f"'{nxt}' merges several inputs"
            klass = type(self.layers[nxt]).__name__
            if klass in _SHRINKABLE:
                return passed, nxt
            if klass not in _PASS_THROUGH:
                return f"'{nxt}' ({klass}) does not keep channels one to one"
            passed.append(nxt)
            current = nxt

    def why_not_shrinkable(self, name):
        path = self.path_to_consumer(name)
        return path if isinstance(path, str) else None


def _histories(structure):
    """Layer names in `keras_history` entries (or `[name, node, index]` lists) of a config."""
    found = []

    def visit(obj):
        if isinstance(obj, dict):
            history = (
                obj.get("config", {}).get("keras_history")
                if isinstance(obj.get("config"), dict)
                else None
            )
            if history:
                found.append(history[0])
                return
            for value in obj.values():
                visit(value)
        elif isinstance(obj, (list, tuple)):
            if len(obj) == 3 and isinstance(obj[0], str) and isinstance(obj[1], int):
                found.append(obj[0])
                return
            for value in obj:
                visit(value)

    visit(structure)
    return found


def _rebuild(model, graph, plan):
    import keras

    config = model.get_config()
    in_keep, bn_keep = {}, {}
    for name, keep in plan.items():
        passed, consumer = graph.path_to_consumer(name)
        units = len(_units_entries(graph.layers[name]))
        index = keep
        for p in passed:
            layer = graph.layers[p]
            if type(layer).__name__ == "BatchNormalization":
                bn_keep[p] = keep
            if type(layer).__name__ == "Flatten":
                positions = math.prod(layer.input.shape[1:]) // units
                index = (np.arange(positions)[:, None] * units + keep[None, :]).ravel()
        in_keep[consumer] = index
    for entry in config["layers"]:
        name = entry["config"].get("name", entry.get("name"))
        # Shapes change downstream: let every layer build from its new input.
        entry.pop("build_config", None)
        if name in plan:
            key = "units" if "units" in entry["config"] else "filters"
            entry["config"][key] = int(len(plan[name]))
    new = (
        type(model).from_config(config)
        if isinstance(model, keras.Sequential)
        else keras.Model.from_config(config)
    )
    for layer in new.layers:
        old = graph.layers[layer.name]
        values = [np.asarray(v) for v in old.get_weights()]
        if layer.name in bn_keep:
            values = [v[bn_keep[layer.name]] for v in values]
        if layer.name in in_keep:
            values[0] = np.take(values[0], in_keep[layer.name], axis=-2)
        if layer.name in plan:
            values = [np.take(v, plan[layer.name], axis=-1) for v in values]
        layer.set_weights(values)
    return new


def _units_entries(layer):
    return range(_units(layer))


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates of one forward pass through Dense and Conv layers (batch 1).

    Args:
        model: a built Keras 3 model.

    Returns:
        An int: the sum over Dense (in * out) and Conv (kernel size * in *
        out * output positions) layers; other layers are not counted.

    Example:

    >>> count_macs(remove_units(model, 0.5)) < count_macs(model)
    True
    """
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(
            layer,
            (
                keras.layers.Dense,
                keras.layers.Conv1D,
                keras.layers.Conv2D,
                keras.layers.DepthwiseConv2D,
            ),
        ):
            kernel = layer.kernel.shape
            positions = math.prod(layer.output.shape[1:-1])
            total += math.prod(kernel) * positions
        elif hasattr(layer, "layers") and hasattr(layer, "inputs"):
            total += count_macs(layer)
    return int(total)
