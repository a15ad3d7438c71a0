"""Which weights clustering shares among a few values, checked with `isinstance`.

A layer in the table gives its own weights. Any other layer that builds such
layers in its own code (an `RNN` around its cell, `MultiHeadAttention`,
keras-hub's `TransformerEncoder` / `TransformerDecoder`,
`TokenAndPositionEmbedding`) gives the weights of the table layers inside it,
so a whole block is clustered without rewriting it.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class ClusterTarget:
    """One weight of a (sub)layer that gets centroids and indices.

    Attributes:
        layer: the layer owning the weight (the wrapped layer or one inside it).
        attr: the attribute holding the variable (`"kernel"`, ...).
        per_channel_ok: whether `cluster_per_channel` applies (convolutions, as in tfmot).
    """

    layer: object
    attr: str
    per_channel_ok: bool

    @property
    def variable(self):
        """The Keras variable this target clusters."""
        if self.attr.startswith("#"):
            return self.layer.get_clusterable_weights()[int(self.attr[1:])][1]
        return getattr(self.layer, self.attr)

    @property
    def name(self):
        """The weight's name (`kernel`, or the name a `get_clusterable_weights` pair gives)."""
        if self.attr.startswith("#"):
            return str(self.layer.get_clusterable_weights()[int(self.attr[1:])][0])
        return self.attr


def _table():
    import keras

    L = keras.layers
    convs = (L.Conv1D, L.Conv2D, L.Conv3D, L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
    return (
        # Pointwise kernel only, as tfmot: the depthwise part holds few weights per channel.
        ((L.SeparableConv1D, L.SeparableConv2D), ("pointwise_kernel",), False),
        ((L.DepthwiseConv1D, L.DepthwiseConv2D), ("kernel",), False),
        (convs, ("kernel",), True),
        ((L.Dense, L.EinsumDense), ("kernel",), False),
        ((L.Embedding,), ("embeddings",), False),
        ((L.LSTMCell, L.GRUCell, L.SimpleRNNCell), ("kernel", "recurrent_kernel"), False),
    )


CLUSTERABLE_CLASS_NAMES = (
    "Dense",
    "EinsumDense",
    "Conv1D/2D/3D(Transpose)",
    "DepthwiseConv1D/2D",
    "SeparableConv1D/2D (pointwise kernel)",
    "Embedding",
    "LSTM/GRU/SimpleRNN cells",
)


def own_targets(layer):
    """The `ClusterTarget`s of `layer` itself; empty if it is not in the table.

    A built layer with a `get_clusterable_weights()` method (tfmot's
    `ClusterableLayer` interface: `(name, variable)` pairs) clusters exactly
    those weights, before any rule of the table.
    """
    get = getattr(layer, "get_clusterable_weights", None)
    if callable(get) and layer.built:
        return [ClusterTarget(layer, f"#{i}", False) for i in range(len(get()))]
    for classes, attrs, per_channel_ok in _table():
        if isinstance(layer, classes):
            return [
                ClusterTarget(layer, attr, per_channel_ok)
                for attr in attrs
                if getattr(layer, attr, None) is not None
            ]
    return []


def targets(layer):
    """Every weight to cluster in `layer`, its own or those of the layers inside it.

    Args:
        layer: a built Keras 3 layer.

    Returns:
        A list of `ClusterTarget`, in a fixed order, each variable once.
    """
    from tfcompress._graph import all_layers

    found = own_targets(layer)
    if not found:
        for sub in all_layers(layer):
            found.extend(own_targets(sub))
    seen, out = set(), []
    for target in found:
        key = id(target.variable)
        if key not in seen:
            seen.add(key)
            out.append(target)
    return out


def is_clusterable(layer):
    """Whether `layer` holds at least one weight clustering knows."""
    return bool(targets(layer))
