"""Static input shapes for edge files: fix the batch size and sequence length at export.

A model exported with its Keras input shapes keeps `None` dimensions as `-1`
in the `.tflite` file, and the converter then adds `SHAPE` / `STRIDED_SLICE`
/ `CONCATENATION` / `PACK` ops that recompute shapes on every call (and keep
XNNPACK from planning the graph once). Fixing the shapes at export removes
them. Dynamic shapes stay the default.
"""

import dataclasses

from tfcompress._inputs import InputSpec


def _shape_str(shape):
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def _check_dim(value, what):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer or None. Received: {what}={value!r}")
    return value


def static_specs(model, specs, batch_size=None, sequence_length=None, input_shape=None):
    """The model's inputs with the requested dimensions fixed, or `None` if none was asked.

    Args:
        model: the Keras model (used to find position-embedding limits).
        specs: `tfcompress._inputs.input_specs(model)`.
        batch_size: fixes axis 0 of every input.
        sequence_length: fixes axis 1 of every input of rank >= 2 (token ids,
            masks, time steps).
        input_shape: a full shape (batch first) for a single-input model, or a
            dict `{input name: shape}`; `None` entries stay dynamic.

    Returns:
        A list of `InputSpec` with fixed dimensions, or `None`.

    Raises:
        ValueError: a shape that does not fit the model; the message names the
            input and the limit.
    """
    batch_size = _check_dim(batch_size, "batch_size")
    sequence_length = _check_dim(sequence_length, "sequence_length")
    if batch_size is None and sequence_length is None and input_shape is None:
        return None
    requested = _requested_shapes(specs, input_shape)
    fixed = []
    for spec in specs:
        shape = list(requested.get(spec.name, spec.shape))
        if batch_size is not None:
            shape[0] = batch_size
        if sequence_length is not None:
            if spec.rank < 2:
                raise ValueError(
                    f"sequence_length needs inputs with a sequence axis, but input '{spec.name}' "
                    f"has shape {_shape_str(spec.shape)}. Drop sequence_length or use "
                    f"input_shape=. Received: sequence_length={sequence_length}"
                )
            shape[1] = sequence_length
        for axis, (want, have) in enumerate(zip(shape, spec.shape)):
            if have is not None and want is not None and want != have:
                raise ValueError(
                    f"Input '{spec.name}' has a fixed size {have} on axis {axis} (shape "
                    f"{_shape_str(spec.shape)}); it cannot be exported with size {want}. Keep "
                    f"axis {axis} at {have}. Received: shape {_shape_str(shape)}"
                )
        fixed.append(dataclasses.replace(spec, shape=tuple(shape)))
    _check_sequence_limits(model, fixed)
    return fixed


def _requested_shapes(specs, input_shape):
    if input_shape is None:
        return {}
    if not isinstance(input_shape, dict):
        if len(specs) != 1:
            raise ValueError(
                f"The model has {len(specs)} inputs ({', '.join(s.name for s in specs)}); pass "
                "input_shape as a dict {input name: shape}. "
                f"Received: input_shape={input_shape!r}"
            )
        input_shape = {specs[0].name: input_shape}
    names = {s.name: s for s in specs}
    shapes = {}
    for name, shape in input_shape.items():
        if name not in names:
            raise ValueError(
                f"input_shape names an input '{name}' the model does not have; its inputs are "
                f"{', '.join(names)}. Received: input_shape={input_shape!r}"
            )
        shape = tuple(shape)
        spec = names[name]
        if len(shape) != spec.rank or any(
            d is not None and (isinstance(d, bool) or not isinstance(d, int) or d < 1)
            for d in shape
        ):
            raise ValueError(
                f"input_shape for input '{name}' must have {spec.rank} positive sizes (or None), "
                f"batch first, like {_shape_str(spec.shape)}. Received: input_shape['{name}']="
                f"{shape!r}"
            )
        shapes[name] = shape
    return shapes


def _sequence_limits(model):
    """`(layer name, longest sequence)` for every position embedding in the model."""
    limits = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        limit = _position_limit(layer)
        if limit is not None:
            limits.append((layer.name, limit))
    return limits


def _position_limit(layer):
    try:
        from keras_hub.layers import PositionEmbedding
    except ImportError:  # keras-hub is optional
        return None
    if isinstance(layer, PositionEmbedding):
        return int(layer.sequence_length)
    return None


def _check_sequence_limits(model, fixed):
    if not hasattr(model, "_flatten_layers"):
        return
    limits = _sequence_limits(model)
    if not limits:
        return
    layer_name, limit = min(limits, key=lambda item: item[1])
    for spec in fixed:
        if spec.rank >= 2 and spec.shape[1] is not None and spec.shape[1] > limit:
            raise ValueError(
                f"Input '{spec.name}' cannot be exported with sequence length {spec.shape[1]}: "
                f"the position embedding '{layer_name}' holds only {limit} positions. Use a "
                f"sequence length of at most {limit}. Received: sequence_length={spec.shape[1]}"
            )


def tensor_specs(specs, tf):
    """`tf.TensorSpec`s for fixed `InputSpec`s, named as the model's inputs."""
    return [tf.TensorSpec(s.shape, s.dtype, name=s.name) for s in specs]


__all__ = ["InputSpec", "static_specs", "tensor_specs"]
