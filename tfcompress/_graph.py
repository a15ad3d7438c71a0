"""Walking and checking Keras layer graphs: the one copy every engine shares.

Pruning, QAT, clustering and export all need the same few questions answered
about a model: is its layer graph known from outside (functional or
Sequential), what are its leaf layers once nested models are opened, and
which layers does it hold at any depth. They live here, below the engines, so
no engine imports another engine's private helpers for them.
"""

from tfcompress.errors import UnsupportedModelError


def is_graph_model(model) -> bool:
    """Whether `model`'s layer graph is known from outside its `call()`.

    Functional models and `keras.Sequential` are; subclassed models are not.

    Args:
        model: a Keras 3 model.

    Returns:
        True for functional and Sequential models.

    Example:

    >>> import keras
    >>> is_graph_model(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
    True
    """
    import keras
    from keras.src.models.functional import Functional

    return isinstance(model, (keras.Sequential, Functional))


def check_graph_model(model, verb: str) -> None:
    """Raise `UnsupportedModelError` unless `model` is functional or Sequential.

    Args:
        model: a Keras 3 model.
        verb: what was about to happen, for the message (`"quantize"`, `"cluster"`).

    Raises:
        UnsupportedModelError: `model` is a subclassed model.

    Example:

    >>> import keras
    >>> check_graph_model(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]), "prune")
    """
    if is_graph_model(model):
        return
    raise UnsupportedModelError(
        f"Model '{model.name}' is a subclassed model ({type(model).__name__}): its layer graph "
        f"is only known inside its call(), so tfcompress cannot {verb} it layer by layer. "
        "Rebuild it as a functional model (keras.Model(inputs, outputs)) or a "
        f"keras.Sequential, or {verb} the functional parts it is made of."
    )


def flat_layers(model) -> list:
    """The leaf layers of a graph model in order, opening nested graph models.

    A nested functional or Sequential model is replaced by its own leaf layers;
    any other layer (including a keras-hub block that builds sublayers in its
    own code) is a leaf.

    Args:
        model: a functional or Sequential model.

    Returns:
        A list of layers.

    Example:

    >>> import keras
    >>> inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d1")])
    >>> outer = keras.Sequential([keras.Input((4,)), inner, keras.layers.Dense(2, name="d2")])
    >>> [layer.name for layer in flat_layers(outer)]
    ['d1', 'd2']
    """
    out = []

    def visit(layer):
        subs = getattr(layer, "layers", None)
        if subs and hasattr(layer, "inputs"):
            for sub in subs:
                visit(sub)
        else:
            out.append(layer)

    for layer in model.layers:
        visit(layer)
    return out


def all_layers(layer) -> list:
    """Every layer tracked inside `layer`, at any depth, itself excluded.

    Unlike `flat_layers`, this also opens layers that build sublayers in their
    own code (keras-hub's `TransformerEncoder` holds its Dense layers this way).

    Args:
        layer: a Keras layer or model.

    Returns:
        A list of layers (empty for a layer with no sublayers).

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d")])
    >>> [sub.name for sub in all_layers(model)]  # a Sequential's InputLayer included
    ['input_layer...', 'd']
    """
    flatten = getattr(layer, "_flatten_layers", None)
    if flatten is None:
        return []
    return list(flatten(include_self=False, recursive=True))
