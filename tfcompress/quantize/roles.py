"""What the QAT transform does with a layer, one `Role` object per kind of treatment.

A `LayerHandler` in the registry names a role ("weights", "output", ...); the
role carries the behaviour: which new layer replaces the original (`build`),
how it is called inside the cloned graph (`call`: which inputs get a
fake-quant range first, whether the output carries one), and how the
original's weights reach the new layer (`copy_weights`). Adding a way to
quantize a layer is a `register_role(...)`, not an edit of the transform.

The transform hands every role a `CloneContext` (see `transform.py`) with:
`config`, `unique(name)`, `ensure_quantized(tensor)`, `mark(outputs)`,
`all_quantized(tensors)` and `copy_layer(layer)`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from tfcompress._layers import copy_weights

if TYPE_CHECKING:
    import keras

    from tfcompress.quantize.transform import _CloneContext, _Plan

_ROLES: dict[str, Role] = {}


def register_role(role: Role) -> Role:
    """Make `role` (a `Role` instance with a unique `.name`) usable in a `LayerHandler`."""
    if not isinstance(role, Role) or not role.name:
        raise TypeError(f"register_role needs a Role instance with a name. Received: {role!r}")
    _ROLES[role.name] = role
    return role


def get_role(name: str) -> Role:
    """The registered `Role` called `name`."""
    if name not in _ROLES:
        raise ValueError(
            f"Unknown quantization role {name!r}; registered roles: "
            f"{sorted(_ROLES)}. Received: role={name!r}"
        )
    return _ROLES[name]


def role_names() -> tuple[str, ...]:
    return tuple(sorted(_ROLES))


class Role:
    """One treatment of a layer by the QAT transform (subclass and `register_role`).

    Attributes:
        name: the name a `LayerHandler(role=...)` uses.
        quantized: whether the report lists the layer as quantized.
        has_weights: whether the layer's weights are fake-quantized (a scheme applies).
        quantize_inputs: float inputs get a fake-quant range before the layer.
        marks_output: the layer's outputs carry a fake-quant range.
        keeps_scale: the outputs carry a range when all inputs do (max pooling).
    """

    name = ""
    quantized = False
    has_weights = False
    quantize_inputs = False
    marks_output = False
    keeps_scale = False

    def build(
        self, layer: keras.layers.Layer, plan: _Plan, ctx: _CloneContext
    ) -> keras.layers.Layer:
        """The layer that replaces `layer` in the QAT model."""
        return ctx.copy_layer(layer)

    def call(
        self,
        new: keras.layers.Layer,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        ctx: _CloneContext,
    ) -> Any:
        """Call `new` inside the cloned graph; returns its outputs."""
        from keras import tree

        if self.quantize_inputs:
            args = tree.map_structure(ctx.ensure_quantized, args)
        out = new(*args, **kwargs)
        if self.marks_output or (self.keeps_scale and ctx.all_quantized((args, kwargs))):
            ctx.mark(out)
        return out

    def copy_weights(
        self, new: keras.layers.Layer, original: keras.layers.Layer, plan: _Plan
    ) -> None:
        """Copy the float weights of `original` into `new` (after the clone)."""
        copy_weights(new, original)


class PassthroughRole(Role):
    """The converter keeps the input scale (max pooling, reshape, dropout): nothing added."""

    name = "passthrough"
    keeps_scale = True


class FloatRole(Role):
    """Kept in float (skipped, annotated, or no rule): copied unchanged."""

    name = "float"


class OutputRole(Role):
    """No weights to quantize; inputs and output get ranges (Add, activations, ...)."""

    name = "output"
    quantized = True
    quantize_inputs = True
    marks_output = True

    def build(
        self, layer: keras.layers.Layer, plan: _Plan, ctx: _CloneContext
    ) -> keras.layers.Layer:
        from tfcompress.quantize.layers import QuantizeWrapper

        # PQAT: tables (embeddings) keep their zeros through a fixed mask; CQAT: the
        # clustered tables keep their shared values.
        tables = [w for w in layer.trainable_weights if len(w.shape) >= 2]
        clusters = _count_table_clusters(tables) if ctx.config.preserve_clusters else 0
        return QuantizeWrapper(
            ctx.copy_layer(layer),
            # A fused ReLU or a Concatenate after it: one rounding, onto their range.
            quantize_output=plan.rounds_onto is None,
            ema_decay=ctx.config.ema_decay,
            preserve_sparsity=ctx.config.preserve_sparsity and bool(tables),
            preserve_clusters=clusters,
            name=ctx.unique(f"quant_{layer.name}"),
        )

    def copy_weights(
        self, new: keras.layers.Layer, original: keras.layers.Layer, plan: _Plan
    ) -> None:
        if new.layer is not original:
            new.layer.set_weights(original.get_weights())
        if new.preserve_sparsity and new.weight_scheme is None:
            new.set_table_masks()
        if new.preserve_clusters and new.weight_scheme is None:
            new.set_table_cluster_ids()


class WeightsRole(OutputRole):
    """A kernel that is fake-quantized (Conv, Dense, ...), then its output."""

    name = "weights"
    has_weights = True

    def build(
        self, layer: keras.layers.Layer, plan: _Plan, ctx: _CloneContext
    ) -> keras.layers.Layer:
        from tfcompress.quantize.layers import QuantizeWrapper

        overrides = {"activation": "linear"} if plan.split_activation is not None else None
        clusters = _count_clusters(layer, plan) if ctx.config.preserve_clusters else 0
        return QuantizeWrapper(
            ctx.copy_layer(layer, overrides),
            weight_scheme=plan.scheme,
            granularity=plan.handler.granularity,
            kernel_attr=plan.handler.kernel_attr,
            # A fused ReLU or a Concatenate after it: one rounding, onto their range.
            quantize_output=plan.rounds_onto is None,
            ema_decay=ctx.config.ema_decay,
            preserve_sparsity=ctx.config.preserve_sparsity,
            preserve_clusters=clusters,
            name=ctx.unique(f"quant_{layer.name}"),
        )

    def call(
        self,
        new: keras.layers.Layer,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        ctx: _CloneContext,
    ) -> Any:
        import keras

        out = super().call(new, args, kwargs, ctx)
        plan = ctx.plan_of(new)
        if plan.split_activation is not None:
            from tfcompress.quantize.layers import QuantizeWrapper

            act = QuantizeWrapper(
                keras.layers.Activation(plan.split_activation),
                quantize_output=True,
                ema_decay=ctx.config.ema_decay,
                name=ctx.unique(f"quant_{ctx.original_of(new).name}_{plan.split_activation}"),
            )
            out = act(out)
            ctx.mark(out)
        return out

    def copy_weights(
        self, new: keras.layers.Layer, original: keras.layers.Layer, plan: _Plan
    ) -> None:
        super().copy_weights(new, original, plan)
        init_kernel_state(new)


class SeparableConvRole(WeightsRole):
    """SeparableConv1D/2D: depthwise and pointwise kernels, a range between them."""

    name = "separable"

    def build(
        self, layer: keras.layers.Layer, plan: _Plan, ctx: _CloneContext
    ) -> keras.layers.Layer:
        from tfcompress.quantize.layers import QuantizeSeparableConv

        overrides = {"activation": "linear"} if plan.split_activation is not None else None
        assert plan.scheme is not None  # a role with weights is always planned with a scheme
        return QuantizeSeparableConv(
            ctx.copy_layer(layer, overrides),
            weight_scheme=plan.scheme,
            ema_decay=ctx.config.ema_decay,
            name=ctx.unique(f"quant_{layer.name}"),
        )

    def copy_weights(
        self, new: keras.layers.Layer, original: keras.layers.Layer, plan: _Plan
    ) -> None:
        if new.layer is not original:
            new.layer.set_weights(original.get_weights())


class AffineRole(OutputRole):
    """Rescaling / Normalization: `x * a + b`, with a range on the product too."""

    name = "affine"

    def build(
        self, layer: keras.layers.Layer, plan: _Plan, ctx: _CloneContext
    ) -> keras.layers.Layer:
        from tfcompress.quantize.layers import QuantizeAffine

        return QuantizeAffine(
            ctx.copy_layer(layer, rebuild=True),
            ema_decay=ctx.config.ema_decay,
            name=ctx.unique(f"quant_{layer.name}"),
        )

    def copy_weights(
        self, new: keras.layers.Layer, original: keras.layers.Layer, plan: _Plan
    ) -> None:
        new.layer.set_weights(original.get_weights())


class CompositeRole(Role):
    """A layer that builds Dense / attention layers inside (keras-hub TransformerEncoder)."""

    name = "composite"
    quantized = True
    has_weights = True

    def build(
        self, layer: keras.layers.Layer, plan: _Plan, ctx: _CloneContext
    ) -> keras.layers.Layer:
        from tfcompress.quantize.composite import QuantizeComposite

        assert plan.scheme is not None  # a role with weights is always planned with a scheme
        clusters = _count_inner_clusters(layer) if ctx.config.preserve_clusters else 0
        return QuantizeComposite(
            ctx.copy_layer(layer),
            weight_scheme=plan.scheme,
            ema_decay=ctx.config.ema_decay,
            preserve_sparsity=ctx.config.preserve_sparsity,
            preserve_clusters=clusters,
            name=ctx.unique(f"quant_{layer.name}"),
        )

    def call(
        self,
        new: keras.layers.Layer,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        ctx: _CloneContext,
    ) -> Any:
        args = tuple(ctx.ensure_quantized(a) for a in args)  # MultiHeadAttention(q, v)
        out = new(*args, **kwargs)
        if new.output_quantized:
            ctx.mark(out)
        return out

    def copy_weights(
        self, new: keras.layers.Layer, original: keras.layers.Layer, plan: _Plan
    ) -> None:
        if new.layer is not original:
            new.layer.set_weights(original.get_weights())
        if new.preserve_sparsity:
            new.set_sparsity_masks()
        if new.preserve_clusters:
            new.set_cluster_ids()


def init_kernel_state(wrapper: keras.layers.Layer) -> None:
    """Set a wrapper's sparsity mask / cluster ids from the float kernel it now holds."""
    if getattr(wrapper, "weight_scheme", None) is None:
        return
    kernel = np.asarray(getattr(wrapper.layer, wrapper.kernel_attr).numpy())
    if wrapper.preserve_sparsity:
        wrapper.sparsity_mask.assign((kernel != 0).astype("float32"))
    if wrapper.preserve_clusters:
        ids = np.unique(kernel, return_inverse=True)[1].reshape(kernel.shape)
        wrapper.cluster_ids.assign(ids.astype("int32"))


_MAX_CLUSTERS = 256


def _count_clusters(layer: keras.layers.Layer, plan: _Plan) -> int:
    if plan.fold_bn is not None:
        raise ValueError(
            f"preserve_clusters cannot keep the clusters of '{layer.name}' when "
            f"'{plan.fold_bn.name}' is folded into it (folding scales each channel apart). "
            "Pass QuantizeConfig(preserve_clusters=True, fold_batchnorm=False)."
        )
    kernel = getattr(layer, plan.handler.kernel_attr).numpy()
    n = len(np.unique(kernel))
    if n > _MAX_CLUSTERS:
        raise ValueError(
            f"preserve_clusters=True, but layer '{layer.name}' has {n} distinct kernel values, "
            "so it is not clustered. Cluster the model first (tfcompress.cluster.cluster_weights,"
            " fit, strip_clustering), or skip it with QuantizeConfig(skip_layers=(...))."
        )
    return n


def _count_table_clusters(tables: list[Any]) -> int:
    """The most distinct values of a clustered table (an unclustered one trains freely)."""
    counts = [len(np.unique(np.asarray(w.numpy()))) for w in tables]
    return max([n for n in counts if n <= _MAX_CLUSTERS], default=0)


def _count_inner_clusters(layer: keras.layers.Layer) -> int:
    """The most distinct values of a kernel inside a composite layer (CQAT)."""
    from tfcompress.quantize.composite import _table_of, inner_targets

    most = 0
    for sub, kind in inner_targets(layer):
        if kind == "table":  # TokenAndPositionEmbedding's: an unclustered one trains freely
            most = max(most, _count_table_clusters([_table_of(sub)]))
        if kind not in ("dense", "conv"):
            continue
        n = len(np.unique(sub.kernel.numpy()))
        if n > _MAX_CLUSTERS:
            raise ValueError(
                f"preserve_clusters=True, but kernel '{sub.name}' inside '{layer.name}' "
                f"({type(layer).__name__}) has {n} distinct values, so it is not clustered. "
                "Cluster the model first (tfcompress.cluster.cluster_weights, fit, "
                f"strip_clustering), or skip it with QuantizeConfig(skip_layers=('{layer.name}',))."
                f" Received: {n} distinct values"
            )
        most = max(most, n)
    return most


for _role in (
    PassthroughRole(),
    FloatRole(),
    OutputRole(),
    WeightsRole(),
    SeparableConvRole(),
    AffineRole(),
    CompositeRole(),
):
    register_role(_role)
