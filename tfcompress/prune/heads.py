"""Attention-head removal for keras-hub encoders and decoders (`remove_heads`).

One mechanism serves every family: a keras-hub backbone is rebuilt from its
own config as a *head-pruned* subclass of its class (`HeadPrunedBertBackbone`,
`HeadPrunedGPT2Backbone`, `HeadPrunedViTBackbone`, ...). That subclass builds
the backbone as usual, then replaces each keras `MultiHeadAttention` held by a
block (`TransformerEncoder`, `TransformerDecoder`, `ViTEncoderBlock`, ...)
with the same layer keeping fewer heads of the same size, in the same place
among the block's layers. Each layer of the backbone's graph that holds such
a block (the block itself, or ViT's `ViTEncoder`) becomes the head-pruned
subclass of its own class, whose config records the kept head counts, so a
copy rebuilt from its config (`clone_model`, `quantize_model`) is pruned too.
The attention output keeps its width, so the rest of the graph is unchanged.
The subclasses are registered under `tfcompress>HeadPruned<Class>` (for every
backbone in `keras_hub.models` on `import tfcompress.prune`), so the result
saves to and loads from `.keras`.
"""

import contextlib
import dataclasses
import functools
import threading

import keras
import keras_hub
import numpy as np

from tfcompress import _flavor
from tfcompress._report import Entry, Report, attach
from tfcompress.errors import UnsupportedModelError
from tfcompress.prune.errors import UnsupportedPruningModelError

CRITERIA = ("l1", "l2")
_LOCK = threading.RLock()
_CLASSES: dict[type, type] = {}  # base class -> its head-pruned subclass


@dataclasses.dataclass(frozen=True)
class HeadRemovalReport:
    """What `remove_heads` did: `tfcompress.report_of(new_model).details`.

    Attributes:
        removed: `(attention, heads before, removed head indices)` per
            attention layer that lost heads; `attention` is the name of the
            block holding it (`"transformer_layer_0"`), or `block/attention`
            when a block holds several.
        skipped: `(attention, reason)` per attention layer left whole.
        criterion: the norm the heads were ranked by.
        params_before: parameters of the input model.
        params_after: parameters of the new model.
        notes: what still works differently on the new model.
    """

    removed: tuple
    skipped: tuple
    criterion: str
    params_before: int
    params_after: int
    notes: tuple = ()

    @property
    def heads_before(self):
        """Heads of the attention layers that lost some, before removal."""
        return sum(n for _, n, _ in self.removed)

    @property
    def heads_removed(self):
        """Heads removed from all attention layers."""
        return sum(len(drop) for _, _, drop in self.removed)

    def __str__(self):
        lines = [
            f"removed {self.heads_removed} of {self.heads_before} attention heads "
            f"({self.criterion} ranking); parameters {self.params_before:,} -> "
            f"{self.params_after:,}"
        ]
        lines += [
            f"  {name}: {n} -> {n - len(drop)} heads (removed {list(drop)})"
            for name, n, drop in self.removed
        ]
        lines += [f"  skipped {name}: {reason}" for name, reason in self.skipped]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# Finding the attention layers and swapping them for ones with fewer heads.


def _attention_layers(root):
    """`[(key, block, attribute, attention)]` for every MultiHeadAttention held by a block.

    A block is any layer below `root` (at any depth) with a keras
    `MultiHeadAttention` as an attribute. The key is the block's name, or
    `block/attention` when the block holds several attention layers.
    """
    found, seen = [], set()

    def visit(layer):  # depth first, in the order the layers were made
        if id(layer) in seen or isinstance(layer, keras.layers.MultiHeadAttention):
            return
        seen.add(id(layer))
        held = [
            (attr, value)
            for attr, value in vars(layer).items()
            if isinstance(value, keras.layers.MultiHeadAttention)
        ]
        for attr, attention in held:
            key = layer.name if len(held) == 1 else f"{layer.name}/{attention.name}"
            found.append((key, layer, attr, attention))
        for sub in layer._layers:
            visit(sub)

    visit(root)
    keys = [key for key, *_ in found]
    if len(set(keys)) != len(keys):
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        raise UnsupportedModelError(
            f"Attention blocks of '{root.name}' share the names {dupes}, so `heads` could not "
            "name them. Give each block a distinct name. Received: a model with duplicate "
            "block names."
        )
    return found


def _build_shape(layer):
    return tuple(layer.get_build_config()["input_shape"])


def _swap_attention(block, attr, kept):
    """Replace `block.<attr>` (a built MultiHeadAttention) by one with `kept` heads.

    The new layer takes the old one's place in the block's tracked layers, so
    the block's weights keep their order; its weights are fresh (copy them).
    """
    old = getattr(block, attr)
    if old.num_heads == kept:
        return
    config = old.get_config()
    config.update(num_heads=int(kept), key_dim=old.key_dim, value_dim=old.value_dim)
    new = type(old).from_config(config)
    with contextlib.ExitStack() as scopes:
        for part in (block.path or block.name).split("/"):
            scopes.enter_context(keras.name_scope(part))
        new.build(
            _build_shape(old.query_dense),
            _build_shape(old.value_dense),
            _build_shape(old.key_dense),
        )
    block._tracker.replace_tracked_value("layers", old, new)
    setattr(block, attr, new)


def _counts(pruned_heads):
    return {str(k): int(v) for k, v in (pruned_heads or {}).items()}


def _apply_pruned_heads(root, pruned_heads):
    """Give the attention layers at or below `root` the head counts `{key: heads kept}`."""
    attentions = {key: (block, attr) for key, block, attr, _ in _attention_layers(root)}
    unknown = sorted(set(pruned_heads) - set(attentions))
    if unknown:
        raise ValueError(
            f"'{root.name}' ({type(root).__name__}) has no attention block {unknown} to "
            f"remove heads from; its attention blocks are {sorted(attentions)}. "
            f"Received: pruned_heads={pruned_heads}"
        )
    for key, kept in pruned_heads.items():
        block, attr = attentions[key]
        total = getattr(block, attr).num_heads
        if not 1 <= kept <= total:
            raise ValueError(
                f"'{key}' has {total} attention heads; it can keep 1 to {total} of them. "
                f"Received: pruned_heads={{{key!r}: {kept}}}"
            )
        _swap_attention(block, attr, kept)


class _HeadPrunedLayer:
    """Mixed into a layer that is or holds attention blocks: fewer heads once built.

    Args:
        pruned_heads: `{attention key: heads kept}`; the key of a block's
            attention is the block's name (`block/attention` when it holds
            several). Attention layers not named keep all their heads.
    """

    def __init__(self, *args, pruned_heads=None, **kwargs):
        # Set first, untracked: some layers build inside their own __init__
        # (TransformerDecoder given `decoder_sequence_shape`, as its config holds).
        object.__setattr__(self, "pruned_heads", _counts(pruned_heads))
        super().__init__(*args, **kwargs)

    def get_config(self):
        config = super().get_config()
        config["pruned_heads"] = dict(self.pruned_heads)
        return config


def _pruning_build(base_build):
    """`base_build`, then fewer heads; with its signature, which Keras reads to call it."""

    @functools.wraps(base_build)
    def build(self, *args, **kwargs):
        base_build(self, *args, **kwargs)
        _apply_pruned_heads(self, self.pruned_heads)

    return build


class _HeadPrunedModel:
    """Mixed into a keras-hub backbone class: attention `key` keeps `pruned_heads[key]` heads.

    Args:
        pruned_heads: `{attention key: heads kept}`, keys as in
            `HeadRemovalReport.removed` (the block's name).
    """

    def __init__(self, *, pruned_heads=None, **kwargs):
        # Keyword arguments only: Keras's clone_model takes a constructor with *args and
        # **kwargs for a functional model's (inputs, outputs) and would lose the class.
        super().__init__(**kwargs)
        self.pruned_heads = _counts(pruned_heads)
        _apply_pruned_heads(self, self.pruned_heads)
        # The layers of the backbone's graph were made by its own code: each one holding
        # a pruned attention layer becomes the head-pruned kind of its class, so that
        # its config (which clones and quantize_model rebuild it from) says what it keeps.
        for layer in self.layers:
            keys = {key for key, *_ in _attention_layers(layer)} & set(self.pruned_heads)
            if keys:
                layer.__class__ = head_pruned_class(type(layer))
                layer.pruned_heads = {key: self.pruned_heads[key] for key in sorted(keys)}

    def get_config(self):
        config = super().get_config()
        config["pruned_heads"] = dict(self.pruned_heads)
        return config


def head_pruned_class(cls: type[keras.layers.Layer]) -> type[keras.layers.Layer]:
    """The registered head-pruned subclass of a keras-hub backbone or layer class.

    Args:
        cls: a `keras_hub.models.Backbone` subclass, or a layer class that
            holds `MultiHeadAttention` layers (directly, as a block does, or
            in blocks it makes, as ViT's `ViTEncoder` does).

    Returns:
        `HeadPruned<cls name>`, a subclass of `cls` taking one more argument,
        `pruned_heads`, registered as `tfcompress>HeadPruned<cls name>`.
    """
    if issubclass(cls, (_HeadPrunedLayer, _HeadPrunedModel)):
        return cls
    with _LOCK:
        if cls not in _CLASSES:
            name = f"HeadPruned{cls.__name__}"
            namespace = {
                "__module__": __name__,
                "__qualname__": name,
                "__doc__": f"A `{cls.__name__}` whose attention layers keep the heads given "
                "by `pruned_heads` (made by `tfcompress.prune.remove_heads`).",
            }
            mixin: type
            if issubclass(cls, keras.Model):
                mixin = _HeadPrunedModel
            else:
                mixin = _HeadPrunedLayer
                namespace["build"] = _pruning_build(cls.build)
            new = type(name, (mixin, cls), namespace)
            registered = keras.saving.get_registered_object(f"tfcompress>{name}")
            if registered is not None and cls not in registered.__mro__:
                raise UnsupportedModelError(
                    f"tfcompress>{name} is already registered for another class than "
                    f"{cls.__module__}.{cls.__name__} (two classes of that name hold attention "
                    f"heads); only one can be head-pruned. Received: {cls}"
                )
            _CLASSES[cls] = keras.saving.register_keras_serializable(
                package="tfcompress", name=name
            )(new)
    return _CLASSES[cls]


def _register_keras_hub():
    """Register the head-pruned kind of every keras-hub backbone and attention layer."""
    from keras_hub.src.models.vit.vit_layers import ViTEncoder

    for value in vars(keras_hub.models).values():
        if isinstance(value, type) and issubclass(value, keras_hub.models.Backbone):
            head_pruned_class(value)
    # The layers of backbone graphs that hold attention; others register when first made.
    for layer in (
        keras_hub.layers.TransformerEncoder,
        keras_hub.layers.TransformerDecoder,
        ViTEncoder,
    ):
        head_pruned_class(layer)


_register_keras_hub()
# The first version's public name: a TransformerEncoder with `pruned_heads`.
HeadPrunedTransformerEncoder = head_pruned_class(keras_hub.layers.TransformerEncoder)


# ----------------------------------------------------------------------------------------
# Ranking heads and planning what to remove.


def _head_axes(attention):
    """`{id(variable): axis of the heads}` for the projections of one attention layer."""
    axes = {id(attention.output_dense.kernel): 0}
    projections = [attention.query_dense, attention.key_dense, attention.value_dense]
    gate = getattr(attention, "_gate_dense", None)
    if gate is not None:
        projections.append(gate)
    for dense in projections:
        axes[id(dense.kernel)] = 1
        if getattr(dense, "bias", None) is not None:
            axes[id(dense.bias)] = 0
    return axes


def _head_norms(attention, criterion):
    """Importance of each head: norm of its query/key/value(/gate)/output kernel slices."""
    total = np.zeros(attention.num_heads)
    for variable in attention.weights:
        axis = _head_axes(attention).get(id(variable))
        if axis is None or len(variable.shape) < 2:
            continue
        w = np.moveaxis(np.asarray(variable), axis, 0).reshape(attention.num_heads, -1)
        total += np.abs(w).sum(1) if criterion == "l1" else (w**2).sum(1)
    return total if criterion == "l1" else np.sqrt(total)


def _plan(layers, heads, criterion):
    """`({key: removed head indices}, [(key, reason)])` for the attention layers."""
    keys = [key for key, *_ in layers]
    if isinstance(heads, dict):
        unknown = sorted(set(heads) - set(keys))
        if unknown:
            raise ValueError(
                f"remove_heads: unknown encoder layer(s) {unknown}. "
                f"The attention blocks are {keys}. Received: heads={heads!r}"
            )
        spec_of = dict(heads)
    elif isinstance(heads, (int, float)) and not isinstance(heads, bool) and 0 <= heads < 1:
        spec_of = {key: float(heads) for key in keys}
    else:
        raise ValueError(
            "`heads` must be a fraction in [0, 1) of the heads to remove from every attention "
            "layer, or a dict {block name: head indices to remove, or how many}. "
            f"Received: heads={heads!r}"
        )
    drops, skipped = {}, []
    for key, _, _, attention in layers:
        total = attention.num_heads
        if key not in spec_of:
            skipped.append((key, "not named in `heads`"))
            continue
        spec = spec_of[key]
        if isinstance(spec, float):
            if not 0 <= spec < 1:
                raise ValueError(
                    f"Fraction of heads for '{key}' must be in [0, 1). Received: {spec!r}"
                )
            count = min(int(round(spec * total)), total - 1)
            if count == 0:
                skipped.append((key, f"{spec:g} of its {total} heads rounds to none"))
                continue
            spec = count
        if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
            if not 0 <= spec <= total:
                raise ValueError(
                    f"Cannot remove {spec} of the {total} heads of '{key}'. Received: {spec!r}"
                )
            order = np.argsort(_head_norms(attention, criterion), kind="stable")
            spec = order[: int(spec)].tolist()
        try:
            drop = sorted({int(h) for h in spec})
        except (TypeError, ValueError):
            raise ValueError(
                f"Heads to remove from '{key}' must be a list of head indices, "
                f"a count or a fraction. Received: {spec!r}"
            ) from None
        if any(not 0 <= h < total for h in drop):
            raise ValueError(
                f"'{key}' has heads 0..{total - 1}; cannot remove them. Received: {drop}"
            )
        if len(drop) == total:
            raise ValueError(
                f"Cannot remove all {total} attention heads of '{key}': keep at "
                "least one (or drop the layer with distillation into a shallower "
                f"student). Received: {drop}"
            )
        if drop:
            drops[key] = drop
        else:
            skipped.append((key, "no heads to remove were named"))
    return drops, skipped


def _find_backbone(model):
    """The keras-hub backbone of `model`, or a clear error for models we cannot rebuild."""
    if not _flavor.is_keras_hub_model(model):
        raise UnsupportedPruningModelError(
            f"remove_heads removes attention heads of keras-hub models; '{model.name}' "
            f"({type(model).__name__}) is not one. For Dense and Conv layers of a functional "
            "or Sequential model, use prune.remove_units(model, fraction). "
            f"Received: {type(model).__name__}"
        )
    if isinstance(model, keras_hub.models.Backbone):
        return model
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, keras_hub.models.Backbone):
        raise UnsupportedModelError(
            f"remove_heads needs a keras-hub backbone or a task with a `.backbone`; "
            f"'{model.name}' is a {type(model).__name__}. Received: backbone={backbone!r}"
        )
    return backbone


# ----------------------------------------------------------------------------------------


def remove_heads(
    model: keras.Model,
    heads: float | dict = 0.5,
    *,
    criterion: str = "l1",
    verbose: bool = False,
) -> keras.Model:
    """Return a copy of a keras-hub model without some attention heads.

    Works on every keras-hub backbone whose blocks hold keras
    `MultiHeadAttention` layers, and on tasks built on one: BERT, RoBERTa,
    DistilBERT, ELECTRA (`TransformerEncoder`), GPT-2 (`TransformerDecoder`,
    causal) and ViT (`ViTEncoderBlock`) among them. Each removed head takes
    its query, key and value projections (kernel columns and biases) and its
    rows of the attention output kernel with it; every other weight is kept.
    The head size does not change, so the model shrinks by exactly the removed
    heads' share of the attention weights. Fine-tune it with `fit()` as usual.

    The backbone becomes `HeadPruned<its class>` (a subclass of its class) and
    each pruned block `HeadPruned<its class>`; both record the kept heads in
    their config and are registered, so the model saves to and loads from
    `.keras` after `import tfcompress.prune`.

    Args:
        model: a keras-hub backbone or a task built on one (e.g.
            `BertTextClassifier`, `GPT2CausalLM`, `ViTImageClassifier`), as
            built from config or a preset.
        heads: a fraction in [0, 1): the share of heads removed from every
            attention layer (the lowest-ranked ones; at least one head stays
            and a fraction rounding to no head leaves the layer whole), or a
            dict `{block name: heads}` where `heads` is a list of head indices
            to remove, a number of heads, or a fraction (blocks not named keep
            all their heads).
        criterion: `"l1"` or `"l2"` norm of each head's query, key, value and
            output kernel slices (used to rank heads for counts and fractions).
        verbose: print what was removed and skipped.

    Returns:
        A new, uncompiled model of the same class (a backbone becomes the
        head-pruned subclass of its class). `tfcompress.report_of(new)` is a
        `tfcompress.Report`: one done entry per attention layer that lost
        heads, one skipped entry (with the reason) per layer left whole, and
        a `HeadRemovalReport` (heads removed per layer, parameters before and
        after, notes) as its `details`.

    Raises:
        UnsupportedPruningModelError: `model` is not a keras-hub model (use
            `remove_units`).
        UnsupportedModelError: a keras-hub model with no backbone or no
            `MultiHeadAttention` in its blocks.
        ValueError: unknown block names, bad head indices, or all heads of a
            layer removed.

    Example:

    >>> small = prune.remove_heads(bert_classifier, {"transformer_layer_0": [1, 3]})
    >>> tfcompress.report_of(small).done_names
    ('transformer_layer_0',)
    >>> small = prune.remove_heads(gpt2_backbone, 0.5)  # half of every layer's heads
    >>> tfcompress.report_of(small).details.heads_removed
    4
    """
    _flavor.check_built(model, what="remove_heads")
    if criterion not in CRITERIA:
        raise NotImplementedError(
            f"remove_heads ranks heads by 'l1' or 'l2' norm. Received: criterion={criterion!r}"
        )
    backbone = _find_backbone(model)
    layers = _attention_layers(backbone)
    if not layers:
        raise UnsupportedModelError(
            f"remove_heads found no keras MultiHeadAttention in the blocks of '{backbone.name}' "
            f"({type(backbone).__name__}): its attention is its own code, which this function "
            f"cannot slice. Received: {type(backbone).__name__}"
        )
    drops, skipped = _plan(layers, heads, criterion)
    kept = dict(getattr(backbone, "pruned_heads", {}))
    kept.update(
        {
            key: attention.num_heads - len(drops[key])
            for key, _, _, attention in layers
            if key in drops
        }
    )
    config = backbone.get_config()
    config["pruned_heads"] = kept
    new_backbone = head_pruned_class(type(backbone)).from_config(config)
    if model is backbone:
        new = new_backbone
    else:
        task_config = model.get_config()
        task_config["backbone"] = new_backbone
        new = type(model).from_config(task_config)
    _copy_weights(model, new, layers, drops)
    notes = []
    if drops and hasattr(model, "generate"):
        notes.append(
            f"{type(model).__name__}.generate() sizes its key/value cache from "
            "`backbone.num_heads`, which still counts every head: use the model for "
            "scoring (call, predict, fit) and export, not for cached generation"
        )
    classes = {key: type(block).__name__ for key, block, _, _ in layers}
    details = HeadRemovalReport(
        removed=tuple(
            (key, attention.num_heads, tuple(drops[key]))
            for key, _, _, attention in layers
            if key in drops
        ),
        skipped=tuple(skipped),
        criterion=criterion,
        params_before=model.count_params(),
        params_after=new.count_params(),
        notes=tuple(notes),
    )
    report = Report(
        "remove_heads",
        model.name,
        done=[
            Entry(key, classes[key], f"{n} -> {n - len(drop)} heads (removed {list(drop)})")
            for key, n, drop in details.removed
        ],
        skipped=[Entry(key, classes[key], reason) for key, reason in skipped],
        details=details,
    )
    if verbose:
        print(details)
    return attach(new, report)


def _copy_weights(model, new, layers, drops):
    """Copy every weight of `model` into `new`, keeping only the kept heads' slices."""
    axes, keeps = {}, {}
    for key, _, _, attention in layers:
        if key in drops:
            keep = [h for h in range(attention.num_heads) if h not in drops[key]]
            for var_id, axis in _head_axes(attention).items():
                axes[var_id], keeps[var_id] = axis, keep
    old_weights, new_weights = model.weights, new.weights
    if len(old_weights) != len(new_weights):
        raise UnsupportedModelError(
            f"Rebuilding '{model.name}' with fewer heads gave {len(new_weights)} weights for "
            f"{len(old_weights)}; its class builds layers remove_heads does not expect. "
            f"Received: {type(model).__name__}"
        )
    values = []
    for old, target in zip(old_weights, new_weights, strict=True):
        value = np.asarray(old)
        if id(old) in axes:
            value = np.take(value, keeps[id(old)], axis=axes[id(old)])
        if tuple(value.shape) != tuple(target.shape):
            raise UnsupportedModelError(
                f"Rebuilding '{model.name}' with fewer heads: weight {old.path} has shape "
                f"{tuple(value.shape)} after slicing, its place in the new model "
                f"{tuple(target.shape)}. Received: {type(model).__name__}"
            )
        values.append(value)
    new.set_weights(values)
