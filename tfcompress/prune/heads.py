"""Attention-head removal for keras-hub BERT models (`remove_heads`).

keras-hub's `TransformerEncoder` derives its head size from
`hidden_dim // num_heads`, so a config with fewer heads would also change the
head size. `HeadPrunedTransformerEncoder` takes the head size (`key_dim`)
explicitly, and `HeadPrunedBertBackbone` (a `BertBackbone`) builds its
encoders with a per-layer number of kept heads (`head_counts`). Both are
registered (on `import tfcompress.prune`), so the result saves to and loads
from `.keras`.
"""

import sys
import threading

import keras
import numpy as np
from keras_hub.src.layers.modeling.transformer_encoder import TransformerEncoder
from keras_hub.src.models.bert.bert_backbone import BertBackbone

from tfcompress import _flavor
from tfcompress.errors import UnsupportedModelError
from tfcompress.prune.errors import UnsupportedPruningModelError
from tfcompress.prune.structured_hub import copy_sliced_weights

_BUILD_LOCK = threading.RLock()


@keras.saving.register_keras_serializable(package="tfcompress")
class HeadPrunedTransformerEncoder(TransformerEncoder):
    """A keras-hub `TransformerEncoder` whose head size is given, not derived.

    Args:
        intermediate_dim: hidden size of the feed-forward network.
        num_heads: number of attention heads (the kept ones).
        key_dim: size of each head's query, key and value (`None`:
            `hidden_dim // num_heads`, as in `TransformerEncoder`).
        **kwargs: the other `TransformerEncoder` arguments.
    """

    def __init__(self, intermediate_dim, num_heads, key_dim=None, **kwargs):
        super().__init__(intermediate_dim, num_heads, **kwargs)
        self.key_dim = key_dim

    def __setattr__(self, name, value):
        # The parent's build() makes the attention layer with the derived head
        # size; swap in the same layer with the given one before it is tracked.
        if (name == "_self_attention_layer" and getattr(self, "key_dim", None)
                and isinstance(value, keras.layers.MultiHeadAttention)
                and value.key_dim != self.key_dim):
            config = value.get_config()
            config.update(key_dim=self.key_dim, value_dim=self.key_dim)
            value = type(value).from_config(config)
        super().__setattr__(name, value)

    def get_config(self):
        config = super().get_config()
        config["key_dim"] = self.key_dim
        return config


def _encoder_factory(head_counts, key_dim):
    """Stands in for `TransformerEncoder` while a backbone builds its blocks."""
    made = []

    def make(**kwargs):
        i = len(made)
        if i >= len(head_counts):
            raise ValueError(f"head_counts has {len(head_counts)} entries but the backbone "
                             "builds more encoder layers.")
        kwargs["num_heads"] = int(head_counts[i])
        layer = HeadPrunedTransformerEncoder(key_dim=key_dim, **kwargs)
        made.append(layer)
        return layer

    return make


@keras.saving.register_keras_serializable(package="tfcompress")
class HeadPrunedBertBackbone(BertBackbone):
    """A `BertBackbone` whose encoder layers keep `head_counts[i]` heads of size `key_dim`.

    `num_heads` stays the original count (it still sets nothing else);
    `head_counts` and `key_dim` are in the config, so the model round-trips
    through `get_config()` and `.keras` files.
    """

    def __init__(self, *, head_counts, key_dim, **kwargs):
        module = sys.modules[BertBackbone.__module__]
        with _BUILD_LOCK:
            original = module.TransformerEncoder
            module.TransformerEncoder = _encoder_factory(head_counts, key_dim)
            try:
                super().__init__(**kwargs)
            finally:
                module.TransformerEncoder = original
        if len(self.transformer_layers) != len(head_counts):
            raise ValueError(f"head_counts has {len(head_counts)} entries for "
                             f"{len(self.transformer_layers)} encoder layers.")
        self.head_counts = [int(n) for n in head_counts]
        self.key_dim = int(key_dim)

    def get_config(self):
        config = super().get_config()
        config.update(head_counts=list(self.head_counts), key_dim=self.key_dim)
        return config


def _head_weights(block):
    """(query, key, value, output) EinsumDense layers of an encoder block."""
    att = block._self_attention_layer
    return att._query_dense, att._key_dense, att._value_dense, att._output_dense


def _head_norms(block, criterion):
    """Importance of each head: norm of its query/key/value/output kernel slices."""
    q, k, v, o = (np.asarray(layer.kernel) for layer in _head_weights(block))
    if criterion == "l1":
        return (np.abs(q).sum(axis=(0, 2)) + np.abs(k).sum(axis=(0, 2))
                + np.abs(v).sum(axis=(0, 2)) + np.abs(o).sum(axis=(1, 2)))
    return np.sqrt((q ** 2).sum(axis=(0, 2)) + (k ** 2).sum(axis=(0, 2))
                   + (v ** 2).sum(axis=(0, 2)) + (o ** 2).sum(axis=(1, 2)))


def _find_backbone(model):
    """(backbone, encoder blocks), or a clear error for models we cannot rebuild."""
    if not _flavor.is_keras_hub_model(model):
        raise UnsupportedPruningModelError(
            f"remove_heads removes attention heads of keras-hub BERT models; '{model.name}' "
            f"({type(model).__name__}) is not a keras-hub model. For Dense and Conv layers "
            "of a functional or Sequential model, use prune.remove_units(model, fraction).")
    backbone = getattr(model, "backbone", None) if not isinstance(model, BertBackbone) else model
    if not isinstance(backbone, BertBackbone):
        raise UnsupportedModelError(
            f"remove_heads supports keras-hub BertBackbone models and tasks built on them; "
            f"'{model.name}' is a {type(model).__name__}"
            + (f" with a {type(backbone).__name__}" if backbone is not None else "")
            + ". Its feed-forward units can still be removed with prune.remove_units.")
    blocks = list(backbone.transformer_layers)
    if not blocks or not all(isinstance(b, TransformerEncoder) for b in blocks):
        raise UnsupportedModelError(
            f"'{backbone.name}' keeps no keras_hub TransformerEncoder in `transformer_layers`.")
    return backbone, blocks


def _heads_to_drop(blocks, heads, criterion):
    """{block name: sorted head indices to remove}."""
    names = [b.name for b in blocks]
    if isinstance(heads, dict):
        unknown = sorted(set(heads) - set(names))
        if unknown:
            raise ValueError(f"remove_heads: unknown encoder layer(s) {unknown}. "
                             f"The encoder layers are {names}.")
        plan = dict(heads)
    elif isinstance(heads, (int, float)) and not isinstance(heads, bool) and 0 <= heads < 1:
        plan = {name: float(heads) for name in names}
    else:
        raise ValueError(
            "`heads` must be a fraction in [0, 1) of the heads to remove from every encoder "
            "layer, or a dict {layer name: head indices to remove, or how many}. "
            f"Received: heads={heads!r}")
    drops = {}
    for block in blocks:
        total = block.num_heads
        spec = plan.get(block.name, [])
        if isinstance(spec, float):
            if not 0 <= spec < 1:
                raise ValueError(f"Fraction of heads for '{block.name}' must be in [0, 1). "
                                 f"Received: {spec!r}")
            spec = int(round(spec * total))
        if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
            if not 0 <= spec <= total:
                raise ValueError(f"Cannot remove {spec} of the {total} heads of "
                                 f"'{block.name}'.")
            order = np.argsort(_head_norms(block, criterion), kind="stable")
            spec = order[:int(spec)].tolist()
        try:
            drop = sorted({int(h) for h in spec})
        except (TypeError, ValueError):
            raise ValueError(f"Heads to remove from '{block.name}' must be a list of head "
                             f"indices, a count or a fraction. Received: {spec!r}") from None
        if any(not 0 <= h < total for h in drop):
            raise ValueError(f"'{block.name}' has heads 0..{total - 1}; cannot remove {drop}.")
        if len(drop) == total:
            raise ValueError(f"Cannot remove all {total} attention heads of '{block.name}': "
                             "keep at least one (or drop the layer with distillation into a "
                             "shallower student).")
        drops[block.name] = drop
    return drops


def _slice_attention(block, values, keep):
    """`block`'s weight values with only the `keep` heads."""
    q, k, v, o = _head_weights(block)
    axes = {id(o.kernel): 0}
    for layer in (q, k, v):
        axes[id(layer.kernel)] = 1
        if getattr(layer, "bias", None) is not None:
            axes[id(layer.bias)] = 0
    return [np.take(val, keep, axis=axes[id(w)]) if id(w) in axes else val
            for w, val in zip(block.weights, values, strict=True)]


def remove_heads(model, heads=0.5, *, criterion="l1", verbose=False):
    """Return a copy of a keras-hub BERT model without some attention heads.

    Each removed head takes its query, key and value projections (kernel
    columns and biases) and its rows of the attention output kernel with it;
    every other weight is kept. The head size does not change, so the model
    gets smaller by exactly the removed heads' share of the attention weights.
    Fine-tune it with `fit()` as usual.

    Args:
        model: a keras-hub `BertBackbone` or a task built on one (e.g.
            `BertTextClassifier`), as built from config or a preset.
        heads: a fraction in [0, 1): the share of heads removed from every
            encoder layer (the lowest-ranked ones; at least one head stays),
            or a dict `{encoder layer name: heads}` where `heads` is a list of
            head indices to remove, a number of heads, or a fraction (layers
            not named keep all their heads).
        criterion: `"l1"` or `"l2"` norm of each head's query, key, value and
            output kernel slices (used to rank heads for counts and fractions).
        verbose: print how many heads each layer keeps.

    Returns:
        A new, uncompiled model of the same class (its backbone becomes a
        `HeadPrunedBertBackbone`, a `BertBackbone` subclass).

    Raises:
        UnsupportedPruningModelError: `model` is not a keras-hub model (use
            `remove_units`).
        UnsupportedModelError: a keras-hub model that is not BERT-like.
        ValueError: unknown layer names, bad head indices, or all heads of a
            layer removed.

    Example:

    >>> small = prune.remove_heads(bert_classifier, {"transformer_layer_0": [1, 3]})
    >>> small = prune.remove_heads(bert_classifier, 0.25)  # a quarter of every layer's heads
    """
    _flavor.check_built(model, what="remove_heads")
    backbone, blocks = _find_backbone(model)
    if criterion not in ("l1", "l2"):
        raise NotImplementedError(
            f"remove_heads ranks heads by 'l1' or 'l2' norm. Received: criterion={criterion!r}")
    drops = _heads_to_drop(blocks, heads, criterion)
    keeps = {b.name: [h for h in range(b.num_heads) if h not in drops[b.name]] for b in blocks}
    key_dims = {_head_weights(b)[0].kernel.shape[-1] for b in blocks}
    if len(key_dims) != 1:
        raise UnsupportedModelError(f"Encoders of '{backbone.name}' have different head "
                                    f"sizes {sorted(key_dims)}.")
    config = backbone.get_config()
    config.update(head_counts=[len(keeps[b.name]) for b in blocks], key_dim=int(key_dims.pop()))
    new_backbone = HeadPrunedBertBackbone.from_config(config)
    if model is backbone:
        new = new_backbone
    else:
        task_config = model.get_config()
        task_config["backbone"] = new_backbone
        new = type(model).from_config(task_config)
    copy_sliced_weights(model, new, keeps, _slice_attention)
    if verbose:
        for block in blocks:
            print(f"{block.name}: attention heads {block.num_heads} -> "
                  f"{len(keeps[block.name])} (removed {drops[block.name]})")
    return new
