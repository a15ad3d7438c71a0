"""Which layers our engine prunes, and which of their weights.

Checked with `isinstance`, so a subclass of `Dense` is prunable too (tfmot's
exact-class registry is what we avoid).
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class PrunableWeight:
    """One weight of a layer that gets a mask.

    Attributes:
        attr: the layer attribute holding the variable (`"kernel"`, ...).
        nm_axis: the axis N:M groups run along (the input / reduction axis).
    """

    attr: str
    nm_axis: int

    def variable(self, layer):
        """The variable of `layer` this spec names.

        `"#i"` is the i-th weight of `layer.get_prunable_weights()` (tfmot's
        `PrunableLayer` interface); anything else is an attribute name.
        """
        if self.attr.startswith("#"):
            return layer.get_prunable_weights()[int(self.attr[1:])]
        return getattr(layer, self.attr)

    @property
    def name(self):
        """A name for the mask variable (`kernel`, `recurrent_kernel`, `prunable_0`, ...)."""
        return f"prunable_{self.attr[1:]}" if self.attr.startswith("#") else self.attr


def _table():
    import keras

    layers = keras.layers
    conv = PrunableWeight("kernel", nm_axis=-2)
    rnn = (PrunableWeight("kernel", nm_axis=0), PrunableWeight("recurrent_kernel", nm_axis=0))
    # Order matters: DepthwiseConv2D is not a Conv2D subclass in Keras 3, but
    # keep the most specific classes first anyway.
    return (
        (layers.DepthwiseConv2D, (conv,)),
        # As tfmot: the pointwise kernel holds almost all of a separable conv's weights.
        (
            (layers.SeparableConv1D, layers.SeparableConv2D),
            (PrunableWeight("pointwise_kernel", nm_axis=-2),),
        ),
        ((layers.Conv1D, layers.Conv2D, layers.Conv3D), (conv,)),
        (layers.EinsumDense, (PrunableWeight("kernel", nm_axis=0),)),
        (layers.Dense, (PrunableWeight("kernel", nm_axis=0),)),
        (layers.Embedding, (PrunableWeight("embeddings", nm_axis=-1),)),
        # LSTM / GRU / SimpleRNN / RNN(cell) are composite: their cell is found inside them.
        ((layers.LSTMCell, layers.GRUCell, layers.SimpleRNNCell), rnn),
    )


PRUNABLE_CLASS_NAMES = (
    "Dense",
    "EinsumDense",
    "Conv1D",
    "Conv2D",
    "Conv3D",
    "DepthwiseConv2D",
    "SeparableConv1D",
    "SeparableConv2D",
    "Embedding",
    "LSTM/GRU/SimpleRNN (cells)",
)


def prunable_weights(layer):
    """The `PrunableWeight`s of a Keras 3 layer; empty if we do not prune it.

    A built layer with a `get_prunable_weights()` method (tfmot's
    `PrunableLayer` interface, for custom layers) prunes exactly the weights it
    returns, before any rule of the table.
    """
    get = getattr(layer, "get_prunable_weights", None)
    if callable(get) and layer.built:
        return tuple(
            PrunableWeight(f"#{i}", nm_axis=-2 if len(w.shape) >= 3 else 0)
            for i, w in enumerate(get())
        )
    for klass, weights in _table():
        if isinstance(layer, klass):
            return weights
    return ()


def prunable_targets(layer):
    """`(sublayer, PrunableWeight)` pairs to mask in `layer`, in a fixed order.

    A prunable layer gives itself. A composite layer (one that creates Dense /
    EinsumDense / ... layers in its own code, like keras-hub's
    `TransformerEncoder`) gives the prunable layers inside it, so its
    attention and feed-forward kernels can be pruned without rewriting it.
    """
    own = prunable_weights(layer)
    if own:
        return [(layer, spec) for spec in own]
    flatten = getattr(layer, "_flatten_layers", None)
    if flatten is None:
        return []
    return [
        (sub, spec)
        for sub in flatten(include_self=False, recursive=True)
        for spec in prunable_weights(sub)
    ]


def is_composite(layer):
    """Whether `layer` is not prunable itself but holds prunable layers."""
    return not prunable_weights(layer) and bool(prunable_targets(layer))


def is_prunable(layer):
    """Whether our engine can prune `layer` (itself, or the layers inside it)."""
    return bool(prunable_targets(layer))


def is_conv(layer):
    import keras

    return isinstance(
        layer,
        (
            keras.layers.Conv1D,
            keras.layers.Conv2D,
            keras.layers.Conv3D,
            keras.layers.DepthwiseConv2D,
            keras.layers.SeparableConv1D,
            keras.layers.SeparableConv2D,
        ),
    )
