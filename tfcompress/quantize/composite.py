"""QAT inside composite layers: keras-hub's `TransformerEncoder` and its kin.

A composite layer builds `Dense` / `EinsumDense` / `MultiHeadAttention` /
`LayerNormalization` layers in its own `build()` and wires them together in
its own `call()`, so the graph transform cannot put fake-quant between them.
`QuantizeComposite` wraps such a layer whole (its code and config stay
untouched) and, while it runs, routes those inner layers through
fake-quantizing versions of their `call`:

- `Dense` / `EinsumDense`: input fake-quantized (unless it already is), kernel
  fake-quantized per tensor with the weight scheme, output (before a
  non-fusable activation such as GELU) fake-quantized: an int8
  FULLY_CONNECTED in TFLite;
- `MultiHeadAttention`: the scaled query, the attention scores and the
  softmax probabilities and the attention context fake-quantized, so the two
  attention matmuls become int8 BATCH_MATMUL; the probabilities on int8
  SOFTMAX's fixed 1/256 grid, and a masked score on the scores grid's minimum,
  where the int8 SELECT puts Keras's -1e9 (with a mask, that grid reaches at
  least `MASKED_SCORE_SPAN` below its top, so masked tokens get no attention);
- `LayerNormalization` (inside a composite, or wrapped on its own): input (the
  residual sum), mean and output fake-quantized: the converter computes the
  mean with an int8 MEAN, the rest of the normalisation stays float;
- `Embedding` (ViT's position table): its output on the table's own int8 grid,
  as the converter stores the folded constant; a weight concatenated with a
  fake-quantized tensor (ViT's class token) on that tensor's grid.

The activation ranges are `ActivationQuantizer`s owned by the wrapper (EMA
ranges, updated in `fit()`), so the QAT model trains, calibrates, saves and
loads like any other.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tfcompress._layers import Wrapper
from tfcompress.quantize._ops import fake_quant_activation
from tfcompress.quantize.layers import ActivationQuantizer
from tfcompress.quantize.schemes import WeightScheme, get_scheme

_FUSED = ("relu", "relu6")
#: Slots on a fixed grid, `(min, max)`: TFLite's int8 SOFTMAX writes its output
#: with scale 1/256 and zero point -128; any other range adds a requantize that
#: rounds the probabilities twice.
_FIXED_RANGES = {"probs": (0.0, 255.0 / 256.0)}
_STATE = "_tfcompress_qat_state"
#: How far below the top of the attention scores' int8 grid its minimum (where the
#: file's SELECT puts a masked score) reaches at least: `exp(-16)` ~ 1e-7.
MASKED_SCORE_SPAN = 16.0


def _activation_name(layer):
    activation = getattr(layer, "activation", None)
    if activation is None:
        return "linear"
    name = keras.activations.serialize(activation)
    return name if isinstance(name, str) else getattr(activation, "__name__", str(name))


def _kind(layer):
    """Which hook an inner layer gets: "dense", "attention", "norm" or None."""
    L = keras.layers
    if getattr(layer, "quantization_mode", None) or getattr(layer, "lora_enabled", False):
        return None
    if isinstance(layer, (L.Dense, L.EinsumDense)):
        return "dense"
    if isinstance(layer, L.MultiHeadAttention):
        # A subclass with its own attention math keeps it (and stays float).
        if type(layer)._compute_attention is L.MultiHeadAttention._compute_attention:
            return "attention"
        return None
    if isinstance(layer, L.LayerNormalization):
        return "norm"
    if isinstance(layer, L.Embedding) and type(layer).call is L.Embedding.call:
        return "table"  # ViT's position embedding: an int8 constant in the file
    if _is_hub_table(layer):
        return "table"  # TokenAndPositionEmbedding's tables: int8 GATHER / constant
    if (
        isinstance(layer, L.Conv2D)
        and type(layer).call is L.Conv2D.call
        and getattr(layer, "groups", 1) == 1
        and layer.data_format == "channels_last"
    ):
        return "conv"  # ViT's patch embedding
    return None


def _hub_tables():
    """`ReversibleEmbedding` (Keras's and keras-hub's) and keras-hub's `PositionEmbedding`."""
    found = [getattr(keras.layers, "ReversibleEmbedding", None)]
    try:
        from keras_hub.layers import PositionEmbedding, ReversibleEmbedding
    except ImportError:
        pass
    else:
        found += [ReversibleEmbedding, PositionEmbedding]
    return tuple(cls for cls in found if cls is not None)


def _is_hub_table(layer):
    """A keras-hub table layer whose `call` is keras-hub's own (a subclass's stays float)."""
    return any(isinstance(layer, cls) and type(layer).call is cls.call for cls in _hub_tables())


def _table_of(layer):
    """The looked-up table: `embeddings`, or PositionEmbedding's `position_embeddings`."""
    table = getattr(layer, "embeddings", None)
    return table if table is not None else layer.position_embeddings


def _weight_of(layer, kind):
    """The weight PQAT masks and CQAT clusters: a table's, else the kernel."""
    return _table_of(layer) if kind == "table" else layer.kernel


_SLOTS = {
    "dense": ("input", "output"),
    "attention": ("query_scaled", "key", "value", "scores", "probs", "context"),
    "norm": ("input", "mean", "output"),
    "conv": ("input", "output"),
    "table": (),
}


class _State:
    """Per-call bookkeeping of one wrapper (plain Python: not tracked, not saved)."""

    def __init__(self, wrapper):
        self.wrapper = wrapper
        self.active = False
        self.training = None
        self.marked = {}  # id(tensor) -> tensor, for tensors that carry a fake-quant range

    def mark(self, x):
        self.marked[id(x)] = x
        return x

    def is_marked(self, x):
        return id(x) in self.marked

    def quantize(self, layer, slot, x):
        if getattr(x, "_keras_mask", None) is not None:  # the masked softmax's output
            from keras.src.backend import set_keras_mask

            set_keras_mask(x, None)
        key = f"{id(layer)}/{slot}"
        quantizer = self.wrapper._quantizer_for[key]
        self.wrapper._used.add(key)
        y = quantizer(x, training=self.training)
        fixed = _FIXED_RANGES.get(slot) if quantizer._collector is None else None
        if fixed is not None:
            y = ops.cast(fake_quant_activation(tf.cast(x, "float32"), *fixed), x.dtype)
        elif key in self.wrapper._symmetric and quantizer._collector is None:
            # Zero point 0 on the right operand of an attention matmul: XNNPACK runs
            # an int8 BATCH_MATMUL only then (else LiteRT's slow reference kernel).
            m = tf.maximum(-quantizer.range_min, quantizer.range_max)
            y = ops.cast(
                fake_quant_activation(tf.cast(x, "float32"), -m * 128.0 / 127.0, m), x.dtype
            )
        return self.mark(y)

    def ensure(self, layer, slot, x):
        if self.is_marked(x) or not keras.backend.is_float_dtype(x.dtype):
            return x
        return self.quantize(layer, slot, x)

    def kernel(self, layer):
        # Under a mixed precision policy, quantize the float32 kernel.
        from keras.src.backend.common.variables import AutocastScope

        with AutocastScope(None):
            w = tf.cast(tf.convert_to_tensor(layer.kernel), "float32")
        w = self.wrapper.kept_kernel(layer, w)
        w = get_scheme(self.wrapper.weight_scheme).quantize(w, per_channel=False)
        return ops.cast(w, layer.compute_dtype)


def _state(layer):
    state = layer.__dict__.get(_STATE)
    return state if state is not None and state.active else None


def _as_matmul(layer):
    """`(contracted input axes, kernel output shape)` when the layer is a 2-D matmul.

    `Dense`, and `EinsumDense` equations that contract the last input axes
    with the first kernel axes and keep the rest in order ("abc,cde->abde",
    "abcd,cde->abe"), compute `reshape(x, (-1, in)) @ reshape(kernel, (in,
    out))`: written that way, the converter emits one FULLY_CONNECTED with its
    bias fused, whose output is the fake-quantized tensor. `None` otherwise.
    """
    kernel_shape = tuple(layer.kernel.shape)
    if not isinstance(layer, keras.layers.EinsumDense):
        return 1, kernel_shape[1:]
    equation = layer.equation.replace(" ", "")
    try:
        lhs, out = equation.split("->")
        x_axes, k_axes = lhs.split(",")
    except ValueError:
        return None
    if "." in equation:
        return None
    contracted = [a for a in k_axes if a not in out]
    n = len(contracted)
    if (
        n == 0
        or not x_axes.endswith("".join(contracted))
        or k_axes[:n] != "".join(contracted)
        or out != x_axes[:-n] + k_axes[n:]
    ):
        return None
    return n, kernel_shape[n:]


def _dense_call(self, inputs, training=None):
    state = _state(self)
    if state is None:
        return super(type(self), self).call(inputs, training=training)
    x = state.ensure(self, "input", inputs)
    kernel = state.kernel(self)
    plan = _as_matmul(self)
    bias = self.bias
    if plan is not None and bias is not None and len(bias.shape) > len(plan[1]):
        plan = None
    if plan is None:
        y = ops.einsum(self.equation, x, kernel)
        if bias is not None:
            y = ops.add(y, bias)
        out_shape = None
    else:
        n, rest = plan
        units = int(np.prod(rest)) if rest else 1
        out_shape = tf.concat([tf.shape(x)[:-n], tf.constant(rest, "int32")], 0)
        y = ops.matmul(
            tf.reshape(x, (-1, int(np.prod(kernel.shape[:n])))), tf.reshape(kernel, (-1, units))
        )
        if bias is not None:
            y = ops.add(y, tf.reshape(ops.broadcast_to(bias, rest), (units,)))
    activation = _activation_name(self)
    if activation in _FUSED:
        y = state.quantize(self, "output", self.activation(y))
    else:
        y = state.quantize(self, "output", y)
    if out_shape is not None:
        y = state.mark(tf.reshape(y, out_shape))
        y.set_shape(self.compute_output_shape(inputs.shape))
    if activation not in _FUSED and self.activation is not None:
        y = self.activation(y)
    return y


def _norm_call(self, inputs):
    state = _state(self)
    if state is None:
        return super(type(self), self).call(inputs)
    x = state.ensure(self, "input", inputs)
    # keras.ops.layer_normalization's math, with the mean fake-quantized: the
    # converter turns the mean of an int8 tensor into an int8 MEAN, whose output
    # would otherwise take the input's scale, a grid as coarse as the values
    # themselves (a token whose values span a few steps loses its mean).
    axis = sorted([self.axis] if isinstance(self.axis, int) else list(self.axis))
    axis = [a % len(x.shape) for a in axis]
    xf = ops.cast(x, "float32")
    mean = state.quantize(self, "mean", ops.mean(xf, axis=axis, keepdims=True))
    variance = ops.mean(ops.square(xf - mean), axis=axis, keepdims=True)
    inv = ops.rsqrt(variance + self.epsilon)
    shape = [1] * len(x.shape)
    for a in axis:
        shape[a] = x.shape[a]
    gamma = None if self.gamma is None else ops.reshape(ops.cast(self.gamma, "float32"), shape)
    if self.rms_scaling:  # Keras scales by the variance here, as its docstring warns
        y = xf * inv if gamma is None else xf * inv * gamma
    else:
        if gamma is not None:
            inv = inv * gamma
        y = xf * inv - mean * inv
        if self.beta is not None:
            y = y + ops.reshape(ops.cast(self.beta, "float32"), shape)
    return state.quantize(self, "output", ops.cast(y, self.compute_dtype))


def _compute_attention(
    self,
    query,
    key,
    value,
    attention_mask=None,
    training=None,
    return_attention_scores=False,
    use_causal_mask=False,
):
    state = _state(self)
    if state is None:
        return super(type(self), self)._compute_attention(
            query,
            key,
            value,
            attention_mask=attention_mask,
            training=training,
            return_attention_scores=return_attention_scores,
            use_causal_mask=use_causal_mask,
        )
    # MultiHeadAttention's explicit-scores path, with fake-quant on every matmul operand.
    if use_causal_mask:
        causal = self._compute_causal_mask(query, value)
        attention_mask = (
            causal
            if attention_mask is None
            else ops.logical_and(ops.cast(attention_mask, "bool"), causal)
        )
    query = ops.multiply(query, ops.cast(self._inverse_sqrt_key_dim, query.dtype))
    query = state.quantize(self, "query_scaled", query)
    key = state.ensure(self, "key", key)
    value = state.ensure(self, "value", value)
    raw = ops.einsum(self._dot_product_equation, key, query)
    scores = state.quantize(self, "scores", raw)
    grid = None
    if attention_mask is not None:
        scores, grid = _on_masked_scores_grid(self, state, raw, scores)
    probs = state.quantize(self, "probs", _masked_softmax(self, scores, attention_mask, grid))
    final = self._dropout_layer(probs, training=training) if self._dropout > 0.0 else probs
    context = ops.einsum(self._combine_equation, final, value)
    return state.quantize(self, "context", context), probs


def _on_masked_scores_grid(layer, state, raw, scores):
    """Masked attention scores on a grid reaching `MASKED_SCORE_SPAN` below its top.

    Keras masks with `where(mask, scores, -1e9)`; in the int8 file that
    SELECT runs on the scores' grid, so a masked score becomes the grid's
    minimum. On the scores' own range (a few units wide in a small model)
    that minimum is close to the real scores and masked tokens kept a large
    share of the softmax (a tiny BERT's real tokens got about half of the
    attention on heavily padded inputs). So the grid's minimum is lowered to
    at most `max - MASKED_SCORE_SPAN`: a masked score then weighs at most
    `exp(-MASKED_SCORE_SPAN)` of a score at the range's top.

    Returns:
        `(scores, (grid min, grid max))`: the scores fake-quantized on that
        grid (as the file's int8 scores tensor holds them), or the unchanged
        `scores` and `None` while calibrating.
    """
    quantizer = state.wrapper._quantizer_for[f"{id(layer)}/scores"]
    if quantizer._collector is not None:  # calibrating: float semantics
        return scores, None
    hi = quantizer.range_max
    lo = tf.minimum(quantizer.range_min, hi - MASKED_SCORE_SPAN)
    y = fake_quant_activation(tf.cast(raw, "float32"), lo, hi)
    return state.mark(ops.cast(y, raw.dtype)), (lo, hi)


def _masked_softmax(layer, scores, mask, grid):
    """`MultiHeadAttention._masked_softmax` as the int8 file computes it.

    A masked score becomes the scores grid's minimum (`grid[0]`, far below
    the real scores: `_on_masked_scores_grid`), where the file's int8 SELECT
    puts Keras's -1e9; Keras then zeroes the masked probabilities. The QAT
    model computes the same, so that it trains with it.
    """
    if mask is None or grid is None:
        return layer._masked_softmax(scores, mask)
    for _ in range(len(scores.shape) - len(mask.shape)):  # as _masked_softmax expands it
        mask = ops.expand_dims(mask, axis=-len(layer._attention_axes) * 2 - 1)
    if keras.backend.standardize_dtype(mask.dtype) != "bool":
        mask = ops.greater(mask, ops.cast(0.5, mask.dtype))
    lowest = fake_quant_activation(tf.constant(-1e9, "float32"), *grid)
    probs = layer._softmax(ops.where(mask, scores, ops.cast(lowest, scores.dtype)))
    return ops.where(mask, probs, ops.cast(0.0, probs.dtype))


def _table_call(self, inputs, *args, **kwargs):
    state = _state(self)
    # ReversibleEmbedding(x, reverse=True) is a tied LM head's matmul: left float.
    if state is None or kwargs.get("reverse", args[0] if args else False) is True:
        return super(type(self), self).call(inputs, *args, **kwargs)
    table = _table_of(self)
    kept = state.wrapper.kept_table(self)  # PQAT / CQAT: the table with its zeros / clusters
    if kept is None:
        y = super(type(self), self).call(inputs, *args, **kwargs)
    else:
        with keras.StatelessScope(state_mapping=[(table, kept)]):
            y = super(type(self), self).call(inputs, *args, **kwargs)
        table = kept
    # The converter stores a looked-up table that meets int8 ops (ViT's position
    # embeddings, folded into a constant; TokenAndPositionEmbedding's token table
    # read by a GATHER) as int8 over the table's own range.
    table = tf.cast(tf.convert_to_tensor(table), "float32")
    lo = tf.stop_gradient(tf.minimum(tf.reduce_min(table), 0.0))
    hi = tf.stop_gradient(tf.maximum(tf.reduce_max(table), 0.0))
    mask = getattr(y, "_keras_mask", None)
    out = ops.cast(fake_quant_activation(tf.cast(y, "float32"), lo, hi), y.dtype)
    if mask is not None:  # ReversibleEmbedding(mask_zero=True): the sum takes its mask
        from keras.src.backend import set_keras_mask

        set_keras_mask(out, mask)
    return state.mark(out)


def _conv_call(self, inputs):
    state = _state(self)
    if state is None:
        return super(type(self), self).call(inputs)
    x = state.ensure(self, "input", inputs)
    from keras.src.backend.common.variables import AutocastScope

    with AutocastScope(None):
        w = tf.cast(tf.convert_to_tensor(self.kernel), "float32")
    w = state.wrapper.kept_kernel(self, w)
    kernel = get_scheme(state.wrapper.weight_scheme).quantize(w, per_channel=True)
    y = ops.conv(
        x,
        ops.cast(kernel, self.compute_dtype),
        strides=self.strides,
        padding=self.padding,
        dilation_rate=self.dilation_rate,
    )
    if self.use_bias:
        y = ops.add(y, self.bias)
    activation = _activation_name(self)
    if activation in _FUSED:
        return state.quantize(self, "output", self.activation(y))
    y = state.quantize(self, "output", y)
    return self.activation(y) if self.activation is not None else y


_HOOKS = {
    "conv": {"call": _conv_call},
    "dense": {"call": _dense_call},
    "norm": {"call": _norm_call},
    "attention": {"_compute_attention": _compute_attention},
    "table": {"call": _table_call},
}

#: class -> `fn(layer) -> [(weight attribute, sublayer)]`: weights that the layer
#: concatenates with the sublayer's (fake-quantized) output. An int8
#: CONCATENATION keeps one scale, so the converter stores such a weight on the
#: sublayer's output grid; the QAT model computes with it rounded there too.
_SHARED_GRIDS: dict[type, Any] = {}


def _register_shared_grids() -> None:
    if _SHARED_GRIDS:
        return
    try:
        from keras_hub.src.models.vit.vit_layers import ViTPatchingAndEmbedding
    except ImportError:
        _SHARED_GRIDS[type(None)] = lambda layer: []  # registered: nothing to look for
        return

    def vit_class_token(layer):
        # concat([class_token, patch_embedding(images)]) in ViTPatchingAndEmbedding.call
        return [("class_token", layer.patch_embedding)] if layer.use_class_token else []

    _SHARED_GRIDS[ViTPatchingAndEmbedding] = vit_class_token


def _shared_grid_targets(layer):
    _register_shared_grids()
    found = []
    for sub in layer._flatten_layers(include_self=True, recursive=True):
        for cls, fn in _SHARED_GRIDS.items():
            if isinstance(sub, cls):
                found += [(sub, attr, source) for attr, source in fn(sub)]
    return found


_HOOKED_CLASSES: dict[tuple[type, str], type] = {}


def _hooked_class(cls, kind):
    key = (cls, kind)
    if key not in _HOOKED_CLASSES:
        _HOOKED_CLASSES[key] = type(
            cls.__name__,
            (cls,),
            dict(
                _HOOKS[kind],
                __module__=cls.__module__,
                __qualname__=cls.__qualname__,
                _tfcompress_qat_hooked=True,
            ),
        )
    return _HOOKED_CLASSES[key]


def inner_targets(layer: keras.layers.Layer) -> list[tuple[keras.layers.Layer, str]]:
    """`(sublayer, kind)` for the inner layers `QuantizeComposite` hooks, in a fixed order."""
    flatten = getattr(layer, "_flatten_layers", None)
    if flatten is None:
        return []
    found: list[tuple[keras.layers.Layer, str]] = []
    for sub in flatten(include_self=True, recursive=True):
        kind = _kind(sub)
        if kind is not None:
            found.append((sub, kind))
    return found


def weights_in_report(layer: keras.layers.Layer, scheme: str | None) -> str | None:
    """The weight scheme a QAT report names for `layer`: `None` when nothing is stored int8.

    A `LayerNormalization` (alone, or a composite holding only norms) is
    wrapped for its activation ranges, but its gamma and beta stay float.
    """
    if scheme is None or not isinstance(layer, keras.layers.Layer):
        return scheme
    kinds = {kind for _, kind in inner_targets(layer)}
    if kinds and not kinds & {"dense", "conv", "table"}:
        return None
    return scheme


def is_composite(layer: keras.layers.Layer) -> bool:
    """Whether `layer` holds Dense / EinsumDense layers that `QuantizeComposite` can hook."""
    return any(kind in ("dense", "conv") for _, kind in inner_targets(layer))


@keras.saving.register_keras_serializable(package="tfcompress")
class QuantizeComposite(Wrapper):
    """Quantization-aware training of a composite layer, inner layers included.

    Wraps a layer that builds its own `Dense` / `EinsumDense` /
    `MultiHeadAttention` / `LayerNormalization` layers (keras-hub's
    `TransformerEncoder`) and fake-quantizes their kernels (per tensor) and
    the activations between them, as the module docstring lists. Arguments
    other than the first (`padding_mask=`, ...) are passed through.

    Args:
        layer: the composite layer (built or not).
        weight_scheme: a `tfcompress.quantize.schemes` name for the inner kernels.
        ema_decay: moving-average decay of the activation ranges.
        preserve_sparsity: keep the zeros of the inner kernels (PQAT): each gets
            a fixed 0/1 mask, set by `quantize_model` from the float kernel.
        preserve_clusters: keep the shared values of clustered inner kernels
            (CQAT): the largest number of clusters of an inner kernel, or 0.
            Each inner kernel gets fixed int32 `cluster_ids` (set by
            `quantize_model` from the float kernel); weights of one cluster
            compute with their mean, so they stay one value.
        **kwargs: base `Layer` arguments.

    Example:

    >>> q = QuantizeComposite(keras_hub.layers.TransformerEncoder(64, 2))
    >>> y = q(x, padding_mask=mask)
    """

    def __init__(
        self,
        layer: keras.layers.Layer,
        weight_scheme: str | WeightScheme = "int8",
        ema_decay: float = 0.99,
        preserve_sparsity: bool = False,
        preserve_clusters: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(layer, **kwargs)
        if (
            isinstance(preserve_clusters, bool)
            or not isinstance(preserve_clusters, (int, np.integer))
            or preserve_clusters < 0
        ):
            raise ValueError(
                "preserve_clusters is a number of clusters (0 for off). "
                f"Received: preserve_clusters={preserve_clusters!r}"
            )
        self.weight_scheme = get_scheme(weight_scheme).name
        self.ema_decay = float(ema_decay)
        self.preserve_sparsity = bool(preserve_sparsity)
        self.preserve_clusters = int(preserve_clusters)
        object.__setattr__(self, "_used", set())
        object.__setattr__(self, "_output_quantized", False)

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        targets = inner_targets(self.layer)
        # A LayerNormalization on its own is wrapped too: its mean needs a range.
        # TokenAndPositionEmbedding: only tables, each stored int8 over its own range.
        if not any(kind in ("dense", "conv", "norm", "table") for _, kind in targets):
            raise ValueError(
                f"QuantizeComposite found no Dense or EinsumDense layer inside "
                f"'{self.layer.name}' ({type(self.layer).__name__}) after building it; there is "
                "nothing to quantize inside it. Keep it in float with "
                "QuantizeConfig(skip_layers=(...))."
            )
        state = _State(self)
        quantizer_for, mask_for, ids_for, slot_names = {}, {}, {}, []
        self.activation_quantizers = []
        self.sparsity_masks = []
        self.cluster_ids = []
        for sub, kind in targets:
            sub_path = getattr(sub, "path", None) or sub.name
            parts = sub_path.split("/")  # keep the path inside the wrapped layer
            if self.layer.name in parts[:-1]:
                cut = len(parts) - 1 - parts[::-1].index(self.layer.name)
                sub_path = "/".join(parts[cut + 1 :])
            else:
                sub_path = sub.name
            for slot in _SLOTS[kind]:
                name = f"{sub_path}/{slot}".replace("/", "__")
                q = ActivationQuantizer(ema_decay=self.ema_decay, name=name)
                q.build(None)
                self.activation_quantizers.append(q)
                quantizer_for[f"{id(sub)}/{slot}"] = q
                slot_names.append((f"{id(sub)}/{slot}", f"{sub_path}/{slot}"))
            if kind in ("dense", "conv", "table"):
                # A kernel or an embedding table: the same state, named apart.
                weight = _weight_of(sub, kind)
                base = f"{sub_path.replace('/', '__')}__{'table_' if kind == 'table' else ''}"
                if self.preserve_sparsity:
                    mask = self.add_weight(
                        name=f"{base}sparsity_mask",
                        shape=tuple(weight.shape),
                        initializer="ones",
                        trainable=False,
                    )
                    self.sparsity_masks.append(mask)
                    mask_for[id(sub)] = mask
                if self.preserve_clusters:
                    ids = self.add_weight(
                        name=f"{base}cluster_ids",
                        shape=tuple(weight.shape),
                        dtype="int32",
                        initializer="zeros",
                        trainable=False,
                    )
                    self.cluster_ids.append(ids)
                    ids_for[id(sub)] = ids
            sub.__class__ = _hooked_class(type(sub), kind)
            object.__setattr__(sub, _STATE, state)
        object.__setattr__(self, "_state", state)
        object.__setattr__(self, "_quantizer_for", quantizer_for)
        object.__setattr__(self, "_mask_for", mask_for)
        object.__setattr__(self, "_ids_for", ids_for)
        object.__setattr__(self, "_slot_names", slot_names)
        symmetric = set()
        for sub, kind in targets:
            if kind == "attention":
                symmetric.add(f"{id(sub)}/query_scaled")
                value_dense = getattr(sub, "_value_dense", None)
                if value_dense is not None and f"{id(value_dense)}/output" in quantizer_for:
                    symmetric.add(f"{id(value_dense)}/output")
        object.__setattr__(self, "_symmetric", symmetric)
        object.__setattr__(self, "_targets", [(sub, kind) for sub, kind in targets])
        shared = [
            (sub, attr, quantizer_for[f"{id(source)}/output"])
            for sub, attr, source in _shared_grid_targets(self.layer)
            if f"{id(source)}/output" in quantizer_for
        ]
        object.__setattr__(self, "_shared_grids", shared)
        self.built = True

    def call(self, inputs, *args, training=None, **kwargs):
        state = self._state
        state.active, state.training, state.marked = True, training, {}
        originals = []
        try:
            state.mark(inputs)  # the transform quantizes the composite's float inputs
            for arg in args:
                if isinstance(arg, tf.Tensor) and arg.dtype.is_floating:
                    state.mark(arg)
            if self.layer._call_has_training_arg:
                kwargs["training"] = training
            for sub, attr, quantizer in self._shared_grids:
                weight = getattr(sub, attr)
                originals.append((sub, attr, weight))
                if quantizer._collector is None:  # not while calibrating
                    on_grid = fake_quant_activation(
                        tf.cast(weight, "float32"), quantizer.range_min, quantizer.range_max
                    )
                    # Bypass Layer.__setattr__: a tensor for this call only, not tracked.
                    object.__setattr__(sub, attr, ops.cast(on_grid, weight.dtype))
            outputs = self.layer(inputs, *args, **kwargs)
            object.__setattr__(
                self, "_output_quantized", all(state.is_marked(t) for t in tf.nest.flatten(outputs))
            )
        finally:
            state.active, state.training, state.marked = False, None, {}
            for sub, attr, weight in originals:
                object.__setattr__(sub, attr, weight)
        return outputs

    @property
    def output_quantized(self) -> bool:
        """Whether the last call's outputs came out of a fake-quant (known after a call)."""
        return self._output_quantized

    def used_quantizers(self) -> list[tuple[str, ActivationQuantizer]]:
        """`(path, ActivationQuantizer)` for the ranges the wrapped layer's call uses."""
        if not self.built:
            return []
        return [
            (f"{self.name}/{path}", self._quantizer_for[key])
            for key, path in self._slot_names
            if key in self._used
        ]

    def kernels(self) -> list[tuple[keras.layers.Layer, keras.Variable]]:
        """`(inner layer, kernel variable)` for every fake-quantized inner kernel."""
        return [(sub, sub.kernel) for sub, kind in self._targets if kind in ("dense", "conv")]

    def kept_kernel(self, layer: keras.layers.Layer, w: tf.Tensor) -> tf.Tensor:
        """`w` (an inner kernel, float32) with its zeros and clusters kept, before fake-quant."""
        mask = self._mask_for.get(id(layer))
        if mask is not None:
            w = w * mask
        ids = self._ids_for.get(id(layer))
        if ids is not None:
            means = tf.math.unsorted_segment_mean(
                tf.reshape(w, [-1]), tf.reshape(ids, [-1]), self.preserve_clusters
            )
            w = tf.gather(means, ids)
        return w

    def kept_table(self, layer: keras.layers.Layer) -> tf.Tensor | None:
        """An inner table with its zeros (PQAT) and clusters (CQAT) kept, else `None`."""
        from tfcompress.quantize.layers import _keep_table_clusters

        mask, ids = self._mask_for.get(id(layer)), self._ids_for.get(id(layer))
        if mask is None and ids is None:
            return None
        table = _table_of(layer)
        if mask is not None:
            table = table * ops.cast(mask, table.dtype)
        if ids is not None:  # ids -1: an unclustered table, training freely
            table = _keep_table_clusters(table, ids, self.preserve_clusters)
        return table

    def quantized_kernels(self) -> list[tuple[keras.layers.Layer, tf.Tensor]]:
        """`(inner layer, fake-quantized kernel)` as the wrapped layer computes with them."""
        state = _State(self)
        out = []
        for sub, kind in self._targets:
            if kind == "dense":
                out.append((sub, state.kernel(sub)))
            elif kind == "conv":
                w = tf.cast(tf.convert_to_tensor(sub.kernel), "float32")
                scheme = get_scheme(self.weight_scheme)
                out.append((sub, scheme.quantize(self.kept_kernel(sub, w), per_channel=True)))
        return out

    def set_cluster_ids(self) -> None:
        """Set each inner kernel's and table's cluster ids from its values (`preserve_clusters`).

        A table with more distinct values than `preserve_clusters` is not
        clustered: its ids are -1 and it trains freely.
        """
        for sub, kind in self._targets:
            ids = self._ids_for.get(id(sub))
            if ids is not None:
                weight = keras.ops.convert_to_numpy(_weight_of(sub, kind))
                values, inverse = np.unique(weight, return_inverse=True)
                inverse = inverse.reshape(weight.shape).astype("int32")
                if kind == "table" and len(values) > self.preserve_clusters:
                    inverse = -np.ones_like(inverse)
                ids.assign(inverse)

    def set_sparsity_masks(self) -> None:
        """Set each inner kernel's and table's sparsity mask from its zeros (PQAT)."""
        for sub, kind in self._targets:
            mask = self._mask_for.get(id(sub))
            if mask is not None:
                weight = _weight_of(sub, kind)
                mask.assign((keras.ops.convert_to_numpy(weight) != 0).astype("float32"))

    def get_config(self):
        config = super().get_config()
        config.update(
            weight_scheme=self.weight_scheme,
            ema_decay=self.ema_decay,
            preserve_sparsity=self.preserve_sparsity,
            preserve_clusters=self.preserve_clusters,
        )
        return config
