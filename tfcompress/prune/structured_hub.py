"""Feed-forward unit removal for keras-hub transformers (`remove_units` on a keras-hub model).

A keras-hub task or backbone is rebuilt from its config, which holds one
`intermediate_dim` for every `TransformerEncoder`: each encoder layer keeps
its own most important feed-forward units, the same number in every layer.
Attention heads are removed by `remove_heads` (tfcompress/prune/heads.py), whose
head-pruned backbones keep their pruned heads through this rebuild (the kept
head counts are in their config).
"""

import numpy as np

from tfcompress._report import Entry, Report, attach
from tfcompress.errors import UnsupportedModelError
from tfcompress.prune.plan import flat_layers


def is_ffn_block(layer):
    """A keras-hub style encoder: `intermediate_dim` and its two feed-forward Dense layers."""
    return (
        hasattr(layer, "intermediate_dim")
        and hasattr(layer, "_feedforward_intermediate_dense")
        and hasattr(layer, "_feedforward_output_dense")
    )


def _find_intermediate_dim(config):
    """Paths (list of keys) to every `intermediate_dim` in a nested config."""
    found = []

    def visit(obj, path):
        if isinstance(obj, dict):
            for key, value in obj.items():
                if key == "intermediate_dim" and isinstance(value, int):
                    found.append(path + [key])
                else:
                    visit(value, path + [key])
        elif isinstance(obj, list):
            for i, value in enumerate(obj):
                visit(value, path + [i])

    visit(config, [])
    return found


def remove_ffn_units(model, fraction, criterion="l1", verbose=False):
    """Return a copy of a keras-hub model with `fraction` of feed-forward units removed.

    Args:
        model: a keras-hub task or backbone with `TransformerEncoder` layers.
        fraction: share of the feed-forward units to remove, in [0, 1).
        criterion: `"l1"` or `"l2"` norm of each unit's input weights.
        verbose: print what shrank.

    Returns:
        A new model of the same class.
    """
    if (
        isinstance(fraction, dict)
        or isinstance(fraction, bool)
        or not isinstance(fraction, (int, float))
        or not 0 <= fraction < 1
    ):
        raise ValueError(
            "For a keras-hub model, `fraction` must be one float in [0, 1): its config has one "
            f"intermediate_dim for every encoder layer. Received: fraction={fraction!r}"
        )
    if criterion not in ("l1", "l2"):
        raise NotImplementedError(
            f"For keras-hub models remove_units ranks units by 'l1' or 'l2' norm. "
            f"Received: criterion={criterion!r}"
        )
    blocks = [layer for layer in flat_layers(model) if is_ffn_block(layer)]
    config = model.get_config()
    paths = _find_intermediate_dim(config)
    if not blocks or not paths:
        raise UnsupportedModelError(
            f"remove_units found no transformer feed-forward block (TransformerEncoder) in "
            f"keras-hub model '{model.name}' ({type(model).__name__}), and cannot rebuild its "
            "other layers from its config. Remove units before wrapping it in keras-hub, or "
            "use a plain functional model."
        )
    dims = {block.intermediate_dim for block in blocks}
    if len(dims) != 1:
        raise UnsupportedModelError(
            f"Encoders of '{model.name}' have different intermediate_dim values {sorted(dims)}."
        )
    units = dims.pop()
    n_keep = max(1, units - int(round(fraction * units)))
    keeps = {}
    for block in blocks:
        kernel = np.abs(np.asarray(block._feedforward_intermediate_dense.kernel))
        norms = kernel.sum(axis=0) if criterion == "l1" else np.sqrt((kernel**2).sum(axis=0))
        keeps[block.name] = np.sort(np.argsort(-norms, kind="stable")[:n_keep])
    for path in paths:
        node = config
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = int(n_keep)
    new = type(model).from_config(config)
    copy_sliced_weights(model, new, keeps, _slice_ffn)
    report = Report(
        "remove_units",
        model.name,
        done=[
            Entry(block.name, type(block).__name__, f"feed-forward units {units} -> {n_keep}")
            for block in blocks
        ],
    )
    if verbose:
        print(report)
    return attach(new, report)


def copy_sliced_weights(model, new, keeps, slice_fn):
    """Copy every layer's weights from `model` into the rebuilt `new`, by layer name.

    Layers named in `keeps` get `slice_fn(old_layer, values, keep)` first, which
    keeps only the units (or heads) listed in `keep`.
    """
    old_layers = {layer.name: layer for layer in flat_layers(model)}
    for layer in flat_layers(new):
        old = old_layers[layer.name]
        values = [np.asarray(v) for v in old.get_weights()]
        if layer.name in keeps:
            values = slice_fn(old, values, keeps[layer.name])
        if values:
            layer.set_weights(values)


def _slice_ffn(block, values, keep):
    """`block`'s weight values with only the `keep` feed-forward units."""
    axes = {
        id(block._feedforward_intermediate_dense.kernel): -1,
        id(block._feedforward_output_dense.kernel): 0,
    }
    bias = getattr(block._feedforward_intermediate_dense, "bias", None)
    if bias is not None:
        axes[id(bias)] = 0
    return [
        np.take(v, keep, axis=axes[id(w)]) if id(w) in axes else v
        for w, v in zip(block.weights, values, strict=True)
    ]
