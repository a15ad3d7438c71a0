"""The one place that tells Keras 3 models from tf_keras and keras-hub models.

tfcompress has one public API and two engines: Keras 3 models (including
keras-hub models, which are Keras 3 models with their own export route) use
our own layers, tf_keras (Keras 2) models go through
tensorflow-model-optimization. Every public verb asks `flavor_of(model)` and
dispatches; nothing else in the package checks model types by hand.

The checks read the class hierarchy's module names first, so telling a
tf_keras model apart never imports tf_keras (or TensorFlow) just to say no.
"""

KERAS3 = "keras3"
TF_KERAS = "tf_keras"
KERAS_HUB = "keras_hub"

FLAVORS = (KERAS3, TF_KERAS, KERAS_HUB)


def _mro_modules(obj):
    return [getattr(klass, "__module__", "") or "" for klass in type(obj).__mro__]


def _is_from(obj, *prefixes):
    return any(
        module == prefix or module.startswith(prefix + ".")
        for module in _mro_modules(obj)
        for prefix in prefixes
    )


def is_tf_keras_model(obj):
    """True for a `tf_keras.Model` (Keras 2, what tfmot works with)."""
    if not _is_from(obj, "tf_keras"):
        return False
    import tf_keras

    return isinstance(obj, tf_keras.Model)


def is_keras3_model(obj):
    """True for a Keras 3 `keras.Model`, keras-hub models included."""
    if not _is_from(obj, "keras"):
        return False
    import keras

    return isinstance(obj, keras.Model)


def is_keras_hub_model(obj):
    """True for a model class defined in keras-hub (or its old name keras-nlp)."""
    return _is_from(obj, "keras_hub", "keras_nlp") and is_keras3_model(obj)


def flavor_of(model):
    """Return which engine handles `model`.

    Args:
        model: a Keras 3 model, a tf_keras model, or a keras-hub model.

    Returns:
        `"keras_hub"`, `"keras3"` or `"tf_keras"`.

    Raises:
        UnsupportedModelError: for anything else (a bare `tf.Module`, a
            PyTorch module, a function, ...).

    Example:

    >>> import keras
    >>> from tfcompress._flavor import flavor_of
    >>> flavor_of(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))
    'keras3'
    """
    from tfcompress.errors import UnsupportedModelError

    if is_keras_hub_model(model):
        return KERAS_HUB
    if is_keras3_model(model):
        return KERAS3
    if is_tf_keras_model(model):
        return TF_KERAS
    raise UnsupportedModelError(
        "Expected a Keras model (keras.Model from Keras 3, a keras-hub model, or a "
        f"tf_keras.Model), but received an object of type {_qualname(model)}. "
        "Wrap plain TensorFlow code in a keras.Model, or load a SavedModel with "
        "keras.layers.TFSMLayer inside a keras.Model first."
    )


def check_built(model, what="this operation"):
    """Raise a clear error if `model` has no weights / input shape yet.

    Args:
        model: a model of any supported flavour.
        what: what the caller is about to do, for the message.
    """
    from tfcompress.errors import ModelNotBuiltError

    flavor_of(model)
    built = getattr(model, "built", False)
    has_inputs = True
    try:
        has_inputs = bool(model.inputs)
    except (AttributeError, ValueError):
        # A subclassed Keras 3 model called once has no input tensors, but Keras
        # recorded the shapes it was built with (what `model.export` signs with).
        has_inputs = bool(getattr(model, "_build_shapes_dict", None))
    if not built or not has_inputs:
        raise ModelNotBuiltError(
            f"Model '{model.name}' ({type(model).__name__}) is not built, so its input "
            f"shape is unknown and {what} cannot run. Give it an input layer "
            "(keras.Input(shape=...)), or call it once on a batch of data, "
            "before passing it in."
        )


def _qualname(obj):
    klass = type(obj)
    return f"{klass.__module__}.{klass.__qualname__}"
