"""A base for the layer wrappers of every engine (pruning, quantization, clustering)."""

import keras


class Wrapper(keras.layers.Wrapper):
    """`keras.layers.Wrapper` whose `from_config` leaves the caller's config intact.

    Keras's own `Wrapper.from_config` pops `"layer"` out of the dict it is
    given, so a config could not be used twice; every tfcompress wrapper
    subclasses this instead.
    """

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return super().from_config(dict(config), custom_objects=custom_objects)


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
    params = [p for p in inspect.signature(layer.call).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if params and params[0].name in kwargs:
        kwargs = dict(kwargs)
        return (kwargs.pop(params[0].name),), kwargs
    return args, kwargs


def build_inner_from_call(layer, args, kwargs):
    """Build an unbuilt `layer` from a call with several tensor arguments.

    Keras builds a wrapper from the shape of its first input only, which is
    not enough for layers such as `MultiHeadAttention` (`build(query_shape,
    value_shape)`): calling the inner layer once on the same (symbolic or
    eager) inputs lets it build itself from all of them.

    Args:
        layer: the wrapped layer.
        args: positional call arguments.
        kwargs: keyword call arguments.
    """
    if layer.built:
        return
    tensors = [v for v in list(args[1:]) + list(kwargs.values())
               if hasattr(v, "shape") and hasattr(v, "dtype")]
    if tensors:
        layer(*args, **kwargs)
