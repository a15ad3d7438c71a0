"""`sparsity_report`: how sparse each layer and the whole model really are."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from tfcompress import _flavor

if TYPE_CHECKING:
    import keras


@dataclasses.dataclass(frozen=True)
class LayerSparsity:
    """Sparsity of one layer.

    Attributes:
        name: layer name (of the wrapped layer for pruned layers).
        class_name: the layer's class (the wrapped layer's for pruned layers).
        status: `"pruned"` (wrapped), `"prunable"` (could be, is not wrapped)
            or `"not prunable"`.
        params: parameters in the layer (all its weights).
        prunable_params: parameters in its prunable weights (kernels).
        zeros: exact zeros in its prunable weights (the mask applied).
    """

    name: str
    class_name: str
    status: str
    params: int
    prunable_params: int
    zeros: int

    @property
    def sparsity(self):
        """Fraction of zeros in the prunable weights (0 if it has none)."""
        return self.zeros / self.prunable_params if self.prunable_params else 0.0


@dataclasses.dataclass(frozen=True)
class SparsityReport:
    """Per-layer and total sparsity of a model.

    Attributes:
        model_name: the model's name.
        layers: one `LayerSparsity` per layer with weights.
    """

    model_name: str
    layers: tuple

    @property
    def total_params(self):
        """Every parameter of the model (masks and counters not counted)."""
        return sum(layer.params for layer in self.layers)

    @property
    def pruned_layers(self):
        return tuple(layer for layer in self.layers if layer.status == "pruned")

    @property
    def sparse_layers(self):
        """The pruned layers; for a stripped model, the prunable layers holding zeros."""
        if self.pruned_layers:
            return self.pruned_layers
        return tuple(layer for layer in self.layers if layer.status == "prunable" and layer.zeros)

    @property
    def sparsity(self):
        """Zeros / size over the weights of `sparse_layers`: what the schedule targets."""
        size = sum(layer.prunable_params for layer in self.sparse_layers)
        return sum(layer.zeros for layer in self.sparse_layers) / size if size else 0.0

    @property
    def total_zeros(self):
        """Zeros in the prunable weights of every layer (pruned or stripped)."""
        return sum(layer.zeros for layer in self.layers)

    @property
    def model_sparsity(self):
        """Zeros in prunable weights over all parameters of the model."""
        return self.total_zeros / self.total_params if self.total_params else 0.0

    def __getitem__(self, name):
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(
            f"No layer named {name!r} in the report of '{self.model_name}'. "
            f"Layers: {[layer.name for layer in self.layers]}"
        )

    def __str__(self):
        from tfcompress.prune._table import text_table

        rows = [
            (
                layer.name,
                layer.class_name,
                layer.status,
                f"{layer.params:,}",
                f"{layer.zeros:,}/{layer.prunable_params:,}",
                f"{layer.sparsity:.1%}",
            )
            for layer in self.layers
        ]
        rows.append(
            (
                "total",
                "",
                "",
                f"{self.total_params:,}",
                f"{self.total_zeros:,}",
                f"{self.sparsity:.1%} of pruned layers' weights, {self.model_sparsity:.1%} of all",
            )
        )
        return f"Sparsity of '{self.model_name}'\n" + text_table(
            ("layer", "class", "status", "params", "zeros", "sparsity"), rows
        )


def sparsity_report(model: keras.Model) -> SparsityReport:
    """Measure per-layer and total sparsity of a model, pruned, stripped or plain.

    Zeros are counted on the weights themselves (with the mask applied for
    layers still wrapped), so the report shows what an exporter will see.

    Args:
        model: a Keras 3 or tf_keras model.

    Returns:
        A `SparsityReport`; `print()` it for a table.

    Example:

    >>> report = sparsity_report(stripped)
    >>> round(report.sparsity, 2), report["dense"].sparsity
    """
    flavor = _flavor.flavor_of(model)
    if flavor == _flavor.TF_KERAS:
        from tfcompress.prune import _tfmot

        layers = [_row(*entry) for entry in _tfmot.layer_weights(model)]
    else:
        layers = _keras3_layer_sparsities(model)
    return SparsityReport(model_name=model.name, layers=tuple(layers))


def _count(weights):
    return int(sum(np.prod(w.shape) for w in weights))


def _zeros(arrays):
    return int(sum(np.count_nonzero(np.asarray(a) == 0) for a in arrays))


def _row(name, class_name, status, weights, kernels):
    return LayerSparsity(
        name, class_name, status, _count(weights), _count(kernels), _zeros(kernels)
    )


def _keras3_layer_sparsities(model):
    from tfcompress.prune import _registry
    from tfcompress.prune.wrapper import PruneLowMagnitude

    out = []

    def visit(layer):
        if isinstance(layer, PruneLowMagnitude):
            inner = layer.layer
            masked = [np.asarray(w) * np.asarray(m) for w, m in layer.pruned_weights]
            out.append(_row(inner.name, type(inner).__name__, "pruned", inner.weights, masked))
            return
        sub_layers = getattr(layer, "layers", None)
        if sub_layers:
            for sub in sub_layers:
                visit(sub)
            return
        if not layer.weights:
            return
        specs = _registry.prunable_targets(layer)
        kernels = [spec.variable(sub) for sub, spec in specs]
        out.append(
            _row(
                layer.name,
                type(layer).__name__,
                "prunable" if specs else "not prunable",
                layer.weights,
                kernels,
            )
        )

    for layer in model.layers:
        visit(layer)
    return out
