"""Layer-by-layer distillation of keras-hub transformers (TinyBERT / MiniLM style).

`HiddenStateDistillation` matches hidden states (through a learned linear
projection when the widths differ); `AttentionDistillation` matches
self-attention maps with a KL divergence. Both are
`keras.distillation.DistillationLoss` subclasses; give them to
`tfcompress.distill.distiller(..., extra_losses=[...])`, whose Distiller
fetches the hidden states and attention maps they need.

Which keras-hub backbones work: those that keep their blocks in
`backbone.transformer_layers` as `keras_hub.layers.TransformerEncoder`
(which can return attention scores): BertBackbone, DistilBertBackbone,
RobertaBackbone (and XLMRobertaBackbone), ElectraBackbone. Others fail early
with a clear error: AlbertBackbone shares its layers across depth, and
decoder-only backbones (GPT-2, Llama, Gemma, ...) use their own decoder layers
that do not return attention scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from tfcompress.distill.losses import scale_for_replicas
from tfcompress.errors import UnsupportedModelError

# The key under which a feature extractor returns a keras-hub backbone's hidden
# states and attention maps (the Distiller asks for it like a layer name).
TRANSFORMER_FEATURES = "tfcompress_transformer_features"

EMBEDDINGS = "embeddings"


def find_backbone(model):
    """The keras-hub backbone of `model` (a backbone, or a task with `.backbone`)."""
    backbone = model
    if not hasattr(model, "transformer_layers") and hasattr(model, "backbone"):
        backbone = model.backbone
    layers = getattr(backbone, "transformer_layers", None)
    from keras_hub.layers import TransformerEncoder

    if not layers or not all(isinstance(layer, TransformerEncoder) for layer in layers):
        raise UnsupportedModelError(
            f"'{model.name}' ({type(model).__name__}) is not a keras-hub encoder whose "
            "blocks are keras_hub.layers.TransformerEncoder in `backbone.transformer_layers` "
            "(BertBackbone, DistilBertBackbone, RobertaBackbone, ElectraBackbone, or a task "
            "built on one), so its hidden states and attention maps cannot be read. Use "
            "keras.distillation.FeatureDistillation with layer names for other models."
        )
    return backbone


def layer_names(model):
    """Names of the transformer blocks of `model`'s backbone, in order."""
    return [layer.name for layer in find_backbone(model).transformer_layers]


class _BlockWithAttention(keras.layers.Layer):
    """Calls a TransformerEncoder block asking for its attention scores too.

    TransformerEncoder's symbolic output spec ignores
    `return_attention_scores`, so the functional graph needs this shim.
    """

    def __init__(self, block, **kwargs):
        super().__init__(name=f"{block.name}_with_attention", **kwargs)
        self.block = block

    def call(self, x, **kwargs):
        return self.block(x, return_attention_scores=True, **kwargs)

    def compute_output_spec(self, x, **kwargs):
        batch, length = x.shape[0], x.shape[1]
        scores = keras.KerasTensor((batch, self.block.num_heads, length, length), dtype=x.dtype)
        return keras.KerasTensor(x.shape, dtype=x.dtype), scores


def _internals_model(backbone):
    """A functional model: backbone inputs -> hidden states, attention maps, padding mask."""
    layers = backbone.transformer_layers
    node = layers[0]._inbound_nodes[0]
    hidden = node.arguments.args[0]
    kwargs = dict(node.arguments.kwargs)
    mask = kwargs.get("padding_mask")
    hidden_states, attention = [hidden], []
    for layer in layers:
        layer_kwargs = dict(layer._inbound_nodes[0].arguments.kwargs)
        hidden, scores = _BlockWithAttention(layer)(hidden, **layer_kwargs)
        hidden_states.append(hidden)
        attention.append(scores)
    outputs = {"hidden_states": hidden_states, "attention": attention}
    if mask is not None:
        outputs["padding_mask"] = mask
    return keras.Model(backbone.input, outputs, name=f"{backbone.name}_internals")


class TransformerFeatureExtractor(keras.Model):
    """Runs a model and returns its logits plus its backbone's internals.

    Used by `tfcompress.distill.Distiller` for transformer losses: the result
    is `{"final_output": logits, TRANSFORMER_FEATURES: {"hidden_states": [...],
    "attention": [...], "padding_mask": ...}}`. The internals come from a
    second pass through the backbone (as with Keras's own feature extractor).
    """

    def __init__(self, model, layer_names=(), with_final_output=True, **kwargs):
        super().__init__(name=f"{model.name}_transformer_features", **kwargs)
        self.model = model
        self.internals = _internals_model(find_backbone(model))
        self.with_final_output = with_final_output
        self.layer_extractor = None
        if layer_names:
            self.layer_extractor = keras.Model(
                model.inputs, {n: model.get_layer(n).output for n in layer_names}
            )

    def call(self, x, training=None):
        outputs = {}
        if self.with_final_output:
            outputs["final_output"] = self.model(x, training=training)
        if self.layer_extractor is not None:
            outputs.update(self.layer_extractor(x, training=training))
        backbone_inputs = {k: x[k] for k in self.internals.input} if isinstance(x, dict) else x
        outputs[TRANSFORMER_FEATURES] = self.internals(backbone_inputs, training=training)
        return outputs


def resolve_layer_map(
    layer_map: str | Sequence[Sequence[int | str]] | None,
    student_names: Sequence[str],
    teacher_names: Sequence[str],
    allow_embeddings: bool = True,
    argument: str = "layer_map",
) -> list[tuple[int, int]]:
    """Turns a layer mapping into `(student_index, teacher_index)` pairs of hidden states.

    Index 0 is the embedding output, index i + 1 the output of block i.

    Args:
        layer_map: `None` / `"uniform"` (student block j <- teacher block
            `(j + 1) * T // S - 1`, TinyBERT's mapping, plus embeddings ->
            embeddings when allowed), or a list of `(student, teacher)` pairs,
            each an int (block index), a block name such as
            `"transformer_layer_3"`, or `"embeddings"`.
        student_names: block names of the student.
        teacher_names: block names of the teacher.
        allow_embeddings: whether `"embeddings"` may be mapped.
        argument: the argument's name, for messages.

    Returns:
        List of `(student_index, teacher_index)`.
    """
    s, t = len(student_names), len(teacher_names)
    if layer_map is None or layer_map == "uniform":
        pairs = [(j + 1, (j + 1) * t // s) for j in range(s)]
        return ([(0, 0)] if allow_embeddings else []) + pairs
    if isinstance(layer_map, str) or not all(
        isinstance(p, (tuple, list)) and len(p) == 2 for p in layer_map
    ):
        raise ValueError(
            f"`{argument}` must be 'uniform' or a list of (student_layer, teacher_layer) pairs "
            f"(block indices or names). Received: {argument}={layer_map!r}."
        )

    def index(ref, names, who):
        if ref == EMBEDDINGS and allow_embeddings:
            return 0
        if isinstance(ref, int) and not isinstance(ref, bool) and 0 <= ref < len(names):
            return ref + 1
        if isinstance(ref, str) and ref in names:
            return names.index(ref) + 1
        extra = f" and '{EMBEDDINGS}'" if allow_embeddings else ""
        raise ValueError(
            f"`{argument}` names {who} layer {ref!r}, which the {who} does not have. The "
            f"{who} has {len(names)} transformer blocks: indices 0..{len(names) - 1} or "
            f"names {names}{extra}. Received: {argument}={list(layer_map)!r}."
        )

    return [
        (index(a, student_names, "student"), index(b, teacher_names, "teacher"))
        for a, b in layer_map
    ]


def _token_weights(features, like):
    """(batch, seq, 1) float weights of real tokens, from the padding mask if any."""
    mask = features.get("padding_mask")
    if mask is None:
        return ops.ones_like(like[..., :1])
    return ops.expand_dims(ops.cast(mask, like.dtype), -1)


class _TransformerLoss(keras.distillation.DistillationLoss):
    teacher_layer_name = TRANSFORMER_FEATURES
    student_layer_name = TRANSFORMER_FEATURES
    _allow_embeddings = True

    def __init__(self, layer_map: str | Sequence[Sequence[int | str]] | None = None):
        self.layer_map = layer_map
        self.pairs = None

    def validate_model_compatibility(self, teacher, student):
        self.pairs = resolve_layer_map(
            self.layer_map,
            layer_names(student),
            layer_names(teacher),
            allow_embeddings=self._allow_embeddings,
        )

    def validate_outputs(self, teacher_outputs, student_outputs):
        # Teacher and student have different depths: the layer map pairs them.
        pass

    def trainable_layers(self):
        return []

    def get_config(self):
        return {"layer_map": self.layer_map}


@keras.saving.register_keras_serializable(package="tfcompress")
class HiddenStateDistillation(_TransformerLoss):
    """Mean squared error between mapped hidden states (TinyBERT's hidden loss).

    When the student is narrower than the teacher, a learned linear
    projection (trained with the student, dropped afterwards) maps student
    states to the teacher's width. Padding positions are ignored.

    Args:
        layer_map: `"uniform"` (default: embeddings <- embeddings and student
            block j <- teacher block `(j + 1) * T // S - 1`) or a list of
            `(student, teacher)` pairs of block indices, block names
            (`"transformer_layer_3"`) or `"embeddings"`.

    Example:

    ```python
    d = tfcompress.distill.distiller(
        student, teacher, extra_losses=[HiddenStateDistillation(), AttentionDistillation()])
    ```
    """

    def __init__(self, layer_map: str | Sequence[Sequence[int | str]] | None = None):
        super().__init__(layer_map)
        self.projection = None

    def validate_model_compatibility(self, teacher, student):
        super().validate_model_compatibility(teacher, student)
        t_width = find_backbone(teacher).hidden_dim
        s_width = find_backbone(student).hidden_dim
        if t_width != s_width and self.projection is None:
            self.projection = keras.layers.Dense(t_width, name="hidden_state_projection")
            self.projection.build((None, None, s_width))

    def trainable_layers(self):
        return [self.projection] if self.projection is not None else []

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        weights = None
        total = 0.0
        for s_index, t_index in self.pairs:
            student = student_outputs["hidden_states"][s_index]
            teacher = ops.stop_gradient(teacher_outputs["hidden_states"][t_index])
            if self.projection is not None:
                student = self.projection(student)
            if weights is None:
                weights = _token_weights(student_outputs, student)
            error = ops.mean(ops.square(student - teacher), axis=-1, keepdims=True)
            total = total + ops.sum(error * weights) / ops.maximum(ops.sum(weights), 1.0)
        return scale_for_replicas(total / len(self.pairs))


@keras.saving.register_keras_serializable(package="tfcompress")
class AttentionDistillation(_TransformerLoss):
    """KL divergence between mapped self-attention maps (TinyBERT / MiniLM).

    For each mapped pair of blocks, `KL(teacher_attention || student_attention)`
    per head and query, averaged over real (non-padding) queries and heads.
    With a different number of heads, the maps are first averaged over heads.
    MiniLM distils only the last block: `layer_map=[(-1 + S, -1 + T)]`, e.g.
    `[(1, 3)]` for 2 student and 4 teacher blocks.

    Args:
        layer_map: `"uniform"` (default: student block j <- teacher block
            `(j + 1) * T // S - 1`) or a list of `(student, teacher)` pairs of
            block indices or names.
    """

    _allow_embeddings = False

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        eps = 1e-9
        total = 0.0
        for s_index, t_index in self.pairs:
            student = student_outputs["attention"][s_index - 1]
            teacher = ops.stop_gradient(teacher_outputs["attention"][t_index - 1])
            if student.shape[1] != teacher.shape[1]:
                student = ops.mean(student, axis=1, keepdims=True)
                teacher = ops.mean(teacher, axis=1, keepdims=True)
            kl = ops.sum(teacher * (ops.log(teacher + eps) - ops.log(student + eps)), axis=-1)
            mask = student_outputs.get("padding_mask")
            if mask is None:
                total = total + ops.mean(kl)
            else:
                weights = ops.expand_dims(ops.cast(mask, kl.dtype), 1)  # (batch, 1, query)
                weights = ops.broadcast_to(weights, ops.shape(kl))
                total = total + ops.sum(kl * weights) / ops.maximum(ops.sum(weights), 1.0)
        return scale_for_replicas(total / len(self.pairs))
