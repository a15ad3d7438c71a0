"""A base for the layer wrappers of every engine (pruning, quantization, clustering)."""

import contextlib

import keras


class Wrapper(keras.layers.Wrapper):
    """`keras.layers.Wrapper` whose `from_config` leaves the caller's config intact.

    Keras's own `Wrapper.from_config` pops `"layer"` out of the dict it is
    given, so a config could not be used twice; every tfcompress wrapper
    subclasses this instead.
    """

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        layer = deserialize_layer(config.pop("layer"), custom_objects=custom_objects)
        return cls(layer, **config)


def deserialize_layer(serialized, custom_objects=None):
    """`keras.saving.deserialize_keras_object`, retried with the `__init__` arguments only.

    A wrapped keras-hub layer whose `get_config` emits derived fields
    (`ViTPatchingAndEmbedding`'s `num_patches`) would otherwise make the whole
    `.keras` file unloadable; `rebuild` applies the same rule to live layers.

    Args:
        serialized: a layer as `keras.saving.serialize_keras_object` writes it.
        custom_objects: as for `keras.saving.load_model`.

    Returns:
        The layer.

    Example:

    >>> import keras
    >>> layer = deserialize_layer(keras.saving.serialize_keras_object(keras.layers.Dense(2)))
    >>> layer.units
    2
    """
    try:
        return keras.saving.deserialize_keras_object(serialized, custom_objects=custom_objects)
    except (TypeError, ValueError):
        klass = _class_of(serialized, custom_objects)
        inner = serialized.get("config") if isinstance(serialized, dict) else None
        if klass is None or not isinstance(inner, dict):
            raise
        kept = _accepted_arguments(klass, inner)
        if kept == inner:
            raise
        return keras.saving.deserialize_keras_object(
            {**serialized, "config": kept}, custom_objects=custom_objects
        )


def _class_of(serialized, custom_objects):
    import importlib

    if not isinstance(serialized, dict):
        return None
    registered = serialized.get("registered_name")
    if registered:
        found = keras.saving.get_registered_object(registered, custom_objects)
        if found is not None:
            return found
    try:
        module = importlib.import_module(serialized.get("module") or "")
    except ImportError:
        return None
    return getattr(module, serialized.get("class_name") or "", None)


def _accepted_arguments(klass, config):
    """The entries of `config` that `klass.__init__` (or `Layer.__init__`) names."""
    import inspect

    accepted = {"name", "dtype", "trainable"}
    for k in (klass, keras.layers.Layer):
        accepted |= set(inspect.signature(k.__init__).parameters)
    return {k: v for k, v in config.items() if k in accepted}


def positional_call_args(layer, args, kwargs):
    """Move the first call argument of `layer` from `kwargs` into `args`.

    A wrapper's `call(inputs, *args, **kwargs)` cannot receive
    `mha(query=q, value=v)`: Keras binds the wrapper's own signature and
    finds no `inputs`. Renaming the inner layer's first parameter into a
    positional argument makes every call form of the inner layer valid.

    Args:
        layer: the wrapped layer.
        args: positional arguments given to the wrapper.
        kwargs: keyword arguments given to the wrapper (not modified).

    Returns:
        `(args, kwargs)` to pass on.
    """
    import inspect

    if args:
        return args, kwargs
    params = [
        p
        for p in inspect.signature(layer.call).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if params and params[0].name in kwargs:
        kwargs = dict(kwargs)
        return (kwargs.pop(params[0].name),), kwargs
    return args, kwargs


def build_inner_from_call(layer, args, kwargs):
    """Build an unbuilt `layer` from a call with several tensor arguments.

    Keras builds a wrapper from the shape of its first input only, which is
    not enough for layers such as `MultiHeadAttention` (`build(query_shape,
    value_shape)`), nor for layers that build their sublayers in `call()`:
    calling the inner layer once on the same (symbolic or eager) inputs lets
    it build itself from all of them.

    Args:
        layer: the wrapped layer.
        args: positional call arguments.
        kwargs: keyword call arguments.
    """
    if layer.built:
        return
    tensors = [
        v
        for v in list(args[1:]) + list(kwargs.values())
        if hasattr(v, "shape") and hasattr(v, "dtype")
    ]
    # A layer holding sublayers may build them only in its call() (keras-hub MiT's
    # OverlappingPatchingAndEmbedding has no build()): a call builds it as the model did.
    if tensors or layer._flatten_layers(include_self=False, recursive=False):
        layer(*args, **kwargs)


def rebuild(layer):
    """A fresh, unbuilt copy of `layer` from its config.

    Some layers' `get_config` emits derived fields their `__init__` does not
    take (keras-hub's `ViTPatchingAndEmbedding` writes `num_patches` and
    `num_positions`); when `from_config` rejects the config, it is retried
    with only the arguments the class's `__init__` names.

    Args:
        layer: a Keras 3 layer.

    Returns:
        A new layer of the same class and name.

    Raises:
        TypeError: the config cannot rebuild the layer even so; the message
            names the layer and its class.

    Example:

    >>> import keras
    >>> rebuild(keras.layers.Dense(3, name="d")).name
    'd'
    """

    config = layer_config(layer)
    try:
        return layer.__class__.from_config(config)
    except (TypeError, ValueError) as first:
        kept = _accepted_arguments(type(layer), config)
        if kept == config:
            raise _rebuild_error(layer, first) from first
        try:
            return layer.__class__.from_config(kept)
        except (TypeError, ValueError) as second:
            raise _rebuild_error(layer, second) from first


def layer_config(layer):
    """`layer.get_config()`, or a `TypeError` that names the layer when it fails.

    A `get_config` can fail on its own (keras-hub 0.32's
    `LlamaTransformerDecoder` reads `self.rope_scaling_factor`, which its
    `__init__` never sets); the bare `AttributeError` would not say which of
    a model's layers it came from.

    Args:
        layer: a Keras 3 layer.

    Returns:
        Its config dict.

    Raises:
        TypeError: `get_config` raised; the message names the layer, its
            class and the original error.

    Example:

    >>> import keras
    >>> layer_config(keras.layers.Dense(3))["units"]
    3
    """
    try:
        return layer.get_config()
    except Exception as e:  # noqa: BLE001  (any failure of user or library code)
        raise TypeError(
            f"Layer '{layer.name}' ({type(layer).__module__}.{type(layer).__name__}) cannot "
            "report its config: its get_config() fails, so it can be neither copied nor "
            "saved. Fix that layer's get_config (or upgrade the library it comes from). "
            f"Received: {type(e).__name__}: {str(e)[:200]}"
        ) from e


def _rebuild_error(layer, error):
    return TypeError(
        f"Layer '{layer.name}' ({type(layer).__module__}.{type(layer).__name__}) cannot be "
        "rebuilt from its get_config(): fix its get_config/from_config pair, or leave it out "
        f"of the model you compress. Received: {type(error).__name__}: {str(error)[:200]}"
    )


def copy_weights(new, original):
    """`new.set_weights(original.get_weights())`, first building what `new` lacks.

    A layer that creates a sublayer in `__init__` and builds it only when
    its own `call` runs (keras-hub's DeBERTa `RelativeEmbedding` and its
    `LayerNormalization`) has fewer weights in a copy traced symbolically
    (Keras then uses `compute_output_shape` and never runs `call`) than in
    the original. Such sublayers are built here from the shapes their
    counterparts in `original` were built with.

    Args:
        new: a copy of `original` (same class and config), built or not.
        original: the layer whose weights to copy.

    Raises:
        TypeError: `new` still has other weights than `original` (a
            `get_config` that leaves out an argument); the layer is named.

    Example:

    >>> import keras
    >>> a, b = keras.layers.Dense(2), keras.layers.Dense(2)
    >>> a.build((None, 3)); b.build((None, 3))
    >>> copy_weights(b, a)
    """
    if new is original:
        return
    build_like(new, original)
    new.set_weights(original.get_weights())


def build_like(new, original):
    """Build the sublayers `new` lacks, so that it has the weights of `original`.

    What `copy_weights` does before copying, for callers that copy other
    values (masked weights).

    Args:
        new: a copy of `original` (same class and config), built or not.
        original: the built layer it copies.

    Raises:
        TypeError: `new` still has other weights than `original`; the layer is named.

    Example:

    >>> import keras
    >>> a, b = keras.layers.Dense(2), keras.layers.Dense(2)
    >>> a.build((None, 3)); b.build((None, 3))
    >>> build_like(b, a)
    """
    if len(new.weights) != len(original.weights):
        _build_like(new, original)
    if len(new.weights) != len(original.weights):
        raise TypeError(
            f"Layer '{original.name}' ({type(original).__module__}.{type(original).__name__}) "
            f"rebuilt from its get_config() has {len(new.weights)} weights, the original "
            f"{len(original.weights)}: its config does not describe it (keras-hub 0.32's MiT "
            "encoder drops sr_ratio), so it cannot be copied. Fix its get_config, or leave "
            "it out of the model you compress. "
            f"Received: {[w.path for w in original.weights][:4]}..."
        )


def _build_like(fresh, source):
    # Parents first: a build() may create the sublayers (keras-hub MiT's attention
    # makes its spatial-reduction conv there), so children pair up only afterwards.
    if not fresh.built and source.built and source.get_build_config():
        fresh.build_from_config(source.get_build_config())
    children = fresh._flatten_layers(include_self=False, recursive=False)
    originals = source._flatten_layers(include_self=False, recursive=False)
    if len(children) == len(originals):
        for child, original in zip(children, originals):
            _build_like(child, original)


#: Compute dtypes of mixed precision policies, which TFLite kernels and fake-quant lack.
HALF_DTYPES = ("float16", "bfloat16")


@contextlib.contextmanager
def float32_compute(model):
    """Run the mixed precision layers of `model` in float32 while the block runs.

    Under a `mixed_float16` / `mixed_bfloat16` policy the graph computes in
    half precision, which the TFLite builtin kernels (float16 `BiasAdd`,
    `Relu`, ...) and int8 fake-quantization do not take. Inside the block
    every such layer has a float32 policy (its variables are float32
    already), so a trace or a `get_config` sees a float32 model; the
    policies are put back afterwards.

    Args:
        model: a Keras 3 model or layer.

    Yields:
        The names of the layers switched to float32 (empty without mixed
        precision).

    Example:

    >>> model = keras.Sequential(
    ...     [keras.Input((4,)), keras.layers.Dense(2, dtype="mixed_float16", name="d")]
    ... )
    >>> with float32_compute(model) as switched:
    ...     print(switched, model.layers[0].compute_dtype)
    ['d'] float32
    >>> model.layers[0].compute_dtype
    'float16'
    """
    changed = []
    for layer in model._flatten_layers(include_self=True, recursive=True):
        policy = getattr(layer, "dtype_policy", None)
        if (
            isinstance(policy, keras.DTypePolicy)
            and policy.compute_dtype in HALF_DTYPES
            and policy.quantization_mode is None
        ):
            changed.append((layer, policy))
            layer.dtype_policy = "float32"
    try:
        yield [layer.name for layer, _ in changed]
    finally:
        for layer, policy in changed:
            layer.dtype_policy = policy
