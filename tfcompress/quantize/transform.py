"""`quantize_model`: a float Keras model in, a new quantization-aware model out."""

from __future__ import annotations

import collections
import dataclasses
from typing import TYPE_CHECKING, Any

from tfcompress import _flavor
from tfcompress._graph import check_graph_model
from tfcompress._layers import copy_weights, float32_compute, layer_config
from tfcompress._report import Entry, Report, attach, wrapper_report
from tfcompress.quantize import annotate, batchnorm, fusion, registry, roles
from tfcompress.quantize.composite import _activation_name, weights_in_report
from tfcompress.quantize.config import QuantizeConfig
from tfcompress.quantize.errors import AlreadyQuantizedError, UnsupportedLayerError

if TYPE_CHECKING:
    import keras

# Activations TFLite fuses into CONV_2D / FULLY_CONNECTED; others get their own layer.
_FUSABLE = ("linear", "relu", "relu6")


@dataclasses.dataclass(frozen=True)
class QuantizeReport:
    """What `quantize_model` did (attached to the QAT model as `.quantize_report`).

    Attributes:
        quantized: `(layer name, class, weight scheme or None)` per quantized layer.
        kept_float: `(layer name, class, reason)` per layer left in float.
        folded_batchnorm: `(conv name, batchnorm name)` pairs folded together.
        shared: `(layer name, class, what was done)` per layer whose
            `from_config` failed: rebuilt without derived config fields, or,
            when that failed too, shared with the input model (its weights
            too: training the QAT model then changes them).
        calibration: the calibration method used to initialise ranges, or
            `None` (ranges are then set by the first training steps).
        calibration_samples: inputs used for calibration.
    """

    quantized: tuple
    kept_float: tuple
    folded_batchnorm: tuple
    shared: tuple = ()
    calibration: str | None = None
    calibration_samples: int = 0

    def __str__(self):
        lines = [
            f"quantized {len(self.quantized)} layers, kept {len(self.kept_float)} in "
            f"float, folded {len(self.folded_batchnorm)} BatchNormalization"
        ]
        lines += [f"  quantized {n} ({c}, weights {s or '-'})" for n, c, s in self.quantized]
        lines += [f"  float     {n} ({c}): {r}" for n, c, r in self.kept_float]
        lines += [f"  folded    {b} into {c}" for c, b in self.folded_batchnorm]
        lines += [f"  shared    {n} ({c}): {r}" for n, c, r in self.shared]
        if self.calibration:
            lines.append(
                f"  ranges: {self.calibration} calibration on {self.calibration_samples} samples"
            )
        else:
            lines.append("  ranges: set by the first training steps")
        return "\n".join(lines)


@dataclasses.dataclass
class _Plan:
    action: str  # the role's name: "weights", "output", "float", "folded_bn", ...
    handler: Any = None  # the LayerHandler, or None
    scheme: str | None = None
    fold_bn: keras.layers.Layer | None = None  # the BatchNormalization folded into this layer
    split_activation: str | None = None  # activation name moved to its own layer
    # The ReLU fused into this int8 op, or the Concatenate whose range it writes onto: the
    # op rounds once, onto that layer's range, so it gets no output range of its own.
    rounds_onto: keras.layers.Layer | None = None
    reason: str = ""
    role: Any = None  # the tfcompress.quantize.roles.Role that carries it out
    # The first of the layers computing the same thing on the same tensor (this one
    # included): the QAT model computes it once, as TensorFlow merges the ops before
    # conversion.
    twin_of: str | None = None

    def __post_init__(self) -> None:
        if self.role is None:
            self.role = roles.get_role(self.action)


def quantize_model(
    model: keras.Model,
    config: QuantizeConfig | None = None,
    *,
    representative_data: Any = None,
    only_annotated: bool = False,
    quantized_layer_name_prefix: str = "quant_",
) -> keras.Model:
    """Return a new quantization-aware (QAT) copy of `model`.

    Keras 3 models get fake-quant layers of ours: kernels fake-quantized
    (per-channel for Conv/DepthwiseConv, per-tensor for Dense, as the TFLite
    converter lays them out), outputs fake-quantized within moving-average
    ranges updated in `fit()`, straight-through gradients, BatchNormalization
    folded into the conv before it. `tfcompress.export.to_tflite(qat, path,
    mode="int8")` turns the result into an all-int8 file with no
    representative data. keras-hub tasks and backbones are laid out flat
    (nested functional models inlined) and each `TransformerEncoder` is
    wrapped whole in a `QuantizeComposite` (kernels and activations inside it
    fake-quantized). tf_keras models go to tfmot's `quantize_model`.
    The input model is not changed.

    Args:
        model: a built functional or Sequential model (Keras 3, keras-hub or
            tf_keras).
        config: a `QuantizeConfig` (scheme, layers to keep in float, ...).
        representative_data: optional inputs to initialise the activation
            ranges with `config.calibration`; without it the first training
            steps set them. Exported without training, this is PTQ.
        quantized_layer_name_prefix: tfmot's argument: the quantized layers
            are named `prefix + name` (default `"quant_"`, as in tfmot).
        only_annotated: quantize only layers marked by
            `quantize_annotate_layer` (what `quantize_apply` does).

    Returns:
        A new `keras.Model`; its `.quantize_report` is a `QuantizeReport`.

    Raises:
        UnsupportedLayerError: with `QuantizeConfig(strict=True)`, a layer
            has no rule (its name, class, and what to do are in the
            message). Without `strict`, such a layer is kept in float and
            named in the report's `kept_float`, as Keras' `model.quantize()`
            does.
        UnsupportedModelError: a subclassed model, or not a Keras model.
        AlreadyQuantizedError: the model already has fake-quant.

    Example:

    >>> qat = quantize_model(model)
    >>> qat.compile("adam", loss="sparse_categorical_crossentropy")
    >>> qat.fit(x, y, epochs=2)
    >>> tfcompress.export.to_tflite(qat, "model_int8.tflite", mode="int8")
    """
    config = annotate.config_from_scheme(config)  # a tfmot scheme object, too
    config = config if config is not None else QuantizeConfig()
    if not isinstance(config, QuantizeConfig):
        raise TypeError(
            f"config must be a tfcompress.quantize.QuantizeConfig. Received: config={config!r}"
        )
    flavor = _flavor.flavor_of(model)
    if flavor != _flavor.TF_KERAS:
        _check_graph_model(model)  # before check_built: a subclassed model has no inputs
    _flavor.check_built(model, what="quantization-aware training")
    if flavor == _flavor.TF_KERAS:
        _check_not_quantized(model)
        from tfcompress.quantize import _tfmot

        if representative_data is not None:
            raise ValueError(
                "representative_data= is for Keras 3 models; tfmot sets tf_keras "
                "ranges during fit(). Received: representative_data"
            )
        qat = _tfmot.quantize_model(model, config)
        return attach(qat, wrapper_report("quantize_model", model, qat, "tfmot QAT"))
    # A mixed precision model gets a float32 QAT copy: fake-quant ranges and the
    # int8 converter need float32 (the copy's layers take their policy from get_config).
    with float32_compute(model):
        functional = _as_functional(model)
        _check_not_quantized(functional)
        shared: dict[str, tuple[str, str, str]] = {}
        functional = _inline_nested(functional, shared)
        plans = _plan(functional, config, only_annotated)
        qat = _clone(functional, plans, config, shared)
    report = QuantizeReport(
        quantized=tuple(
            (layer.name, type(layer).__name__, weights_in_report(layer, plans[layer.name].scheme))
            for layer in functional.layers
            if plans[layer.name].role.quantized
        ),
        kept_float=tuple(
            (layer.name, type(layer).__name__, plans[layer.name].reason)
            for layer in functional.layers
            if plans[layer.name].action == "float"
        ),
        folded_batchnorm=tuple(
            (layer.name, p.fold_bn.name)
            for layer in functional.layers
            if (p := plans[layer.name]).fold_bn is not None
        ),
        shared=tuple(shared.values()),
    )
    if representative_data is not None:
        from tfcompress.quantize.calibration import activation_quantizers, calibrate

        if not activation_quantizers(qat):
            kinds = sorted({type(layer).__name__ for layer in functional.layers[1:]})
            raise ValueError(
                f"Model '{model.name}' has no layer that int8 quantization changes (its layers "
                f"pass their input through: {', '.join(kinds) or 'none'}), so there is no range "
                "to calibrate. Add the layers that compute (Dense, Conv2D, ...) or export it "
                "as float32. Received: representative_data for a model without such layers"
            )
        calibrated = calibrate(qat, representative_data, config.calibration, config.percentile)
        report = dataclasses.replace(
            report, calibration=calibrated.method, calibration_samples=calibrated.samples
        )
    if quantized_layer_name_prefix != "quant_":
        _rename_quantized(qat, quantized_layer_name_prefix)
    qat.quantize_report = report
    return attach(
        qat,
        Report(
            "quantize_model",
            model.name,
            done=[
                Entry(n, c, f"{s} weights" if s else "output range") for n, c, s in report.quantized
            ],
            skipped=report.kept_float,
            details=report,
        ),
    )


def quantize_apply(
    model: keras.Model,
    config: QuantizeConfig | None = None,
    *,
    scheme: Any = None,
    **kwargs: Any,
) -> keras.Model:
    """Quantize only the annotated layers of `model` (tfmot's `quantize_apply`).

    Args:
        model: a model whose layers were marked with `quantize_annotate_layer`,
            or a model marked whole with `quantize_annotate_model`.
        config: a `QuantizeConfig` (Keras 3) for the quantized layers, or a
            tfmot scheme object (`Default8BitPrunePreserveQuantizeScheme()`,
            `Default8BitClusterPreserveQuantizeScheme()`, ...), as tfmot's
            positional `scheme`.
        scheme: tfmot's keyword for `config`.
        **kwargs: passed to `quantize_model` (`representative_data=`,
            `quantized_layer_name_prefix=`).

    Returns:
        A new QAT model.

    Example:

    >>> inputs = keras.Input((16,))
    >>> hidden = quantize_annotate_layer(keras.layers.Dense(8, name="hidden"))(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(2, name="head")(hidden))
    >>> qat = quantize_apply(model)  # "hidden" is quantized, "head" stays float
    """
    if scheme is not None:
        if config is not None:
            raise ValueError(
                "Pass the scheme once: `config` and tfmot's `scheme` are the same argument. "
                "Received: both."
            )
        config = scheme
    if _flavor.flavor_of(model) == _flavor.TF_KERAS:
        from tfcompress.quantize import _tfmot

        extra = {} if config is None else {"scheme": config}
        return _tfmot.tfmot_quantize().quantize_apply(model, **extra, **kwargs)
    only = not annotate.is_annotated_model(model)
    from tfcompress._graph import flat_layers

    if only and not any(annotate.annotation_of(layer) for layer in flat_layers(model)):
        # As in tfmot: quantizing nothing is a mistake, not a float model.
        raise ValueError(
            f"Model '{model.name}' has no annotated layer, so quantize_apply would quantize "
            "nothing. Annotate layers with quantize_annotate_layer, the whole model with "
            "quantize_annotate_model, or call quantize_model(model). Received: no annotations"
        )
    return quantize_model(model, config, only_annotated=only, **kwargs)


def _rename_quantized(qat, prefix):
    """tfmot's `quantized_layer_name_prefix`: `quant_<name>` becomes `<prefix><name>`."""
    if not isinstance(prefix, str):
        raise TypeError(
            "quantized_layer_name_prefix must be a string such as 'quant_'. "
            f"Received: quantized_layer_name_prefix={prefix!r}"
        )
    for layer in qat.layers:
        if layer.name.startswith("quant_"):
            layer.name = prefix + layer.name[len("quant_") :]


def _as_functional(model):
    import keras

    _check_graph_model(model)
    if isinstance(model, keras.Sequential):
        inputs, outputs = model.inputs, model.outputs
        return keras.Model(
            inputs[0] if len(inputs) == 1 else inputs,
            outputs[0] if len(outputs) == 1 else outputs,
            name=model.name,
        )
    return model


def _nested_graph(layer):
    """The functional graph of a nested model (a Sequential's own), or `None`."""
    import keras
    from keras.src.models.functional import Functional

    if isinstance(layer, Functional):
        return layer
    if isinstance(layer, keras.Sequential):
        return getattr(layer, "_functional", None)
    return None


def copy_layer(layer, shared, overrides=None, rebuild=False):
    """A copy of `layer` for the new model, or `layer` itself.

    A layer without weights that is not changed (`overrides`, `rebuild`) is
    reused as it is. Otherwise it is rebuilt from its config (and built like
    the original). When `from_config` fails (keras-hub layers whose
    `get_config` emits derived fields its `__init__` refuses), it is tried
    again without the fields `__init__` does not name; when that fails too,
    the original is reused. Either way `shared` records what happened.
    """
    if overrides is None and not rebuild and not layer.weights:
        return layer
    try:
        config = layer_config(layer)
    except TypeError as e:  # its get_config fails: nothing to rebuild it from
        if overrides:
            raise
        reason = f"get_config failed ({e.__cause__!r:.120}); shared with the input model"
        shared[layer.name] = (layer.name, type(layer).__name__, reason)
        return layer
    config.update(overrides or {})
    try:
        new = layer.__class__.from_config(config)
    except Exception as e:  # noqa: BLE001  (any from_config failure: retry, reuse, say so)
        failure = f"from_config failed ({type(e).__name__}: {str(e)[:120]})"
        extra = _derived_fields(layer, config)
        new = None
        if extra:
            try:
                new = layer.__class__.from_config(
                    {k: v for k, v in config.items() if k not in extra}
                )
            except Exception:  # noqa: BLE001
                new = None
        if new is None:
            if overrides:
                raise
            shared[layer.name] = (
                layer.name,
                type(layer).__name__,
                f"{failure}; the layer is shared with the input model",
            )
            return layer
        shared[layer.name] = (
            layer.name,
            type(layer).__name__,
            f"{failure}; rebuilt without {sorted(extra)}",
        )
    build_config = layer.get_build_config() if layer.built else None
    if build_config and not overrides:
        try:
            new.build_from_config(build_config)
        except Exception:  # noqa: BLE001  (built on first call instead)
            pass
    note = annotate.annotation_of(layer)
    if note is not None:
        setattr(new, annotate._ATTR, dict(note))
    return new


_BASE_LAYER_ARGS = {"name", "dtype", "trainable", "autocast", "activity_regularizer"}


def _derived_fields(layer, config):
    """Config keys that `type(layer).__init__` does not name (derived fields)."""
    import inspect

    try:
        params = inspect.signature(type(layer).__init__).parameters
    except (TypeError, ValueError):
        return set()
    named = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return {k for k in config if k not in named and k not in _BASE_LAYER_ARGS}


def _inline_nested(model, shared):
    """The same graph with nested models (a task's backbone, a Sequential block) laid out flat.

    keras-hub tasks call their backbone as one layer; ConvNeXt calls
    Sequential blocks. The transform needs to see their own layers. Layers
    with weights are copied (config and weights, annotations kept), so the
    input model's weights are not shared.
    """
    import keras
    from keras import tree

    if not any(_nested_graph(layer) is not None for layer in model.layers):
        return model
    copies = {}  # id(original layer) -> (copy, original); a shared layer stays shared

    def operation_fn(op):
        graph = _nested_graph(op)
        if graph is None:
            if not isinstance(op, keras.layers.Layer):
                return op
            if id(op) not in copies:
                copies[id(op)] = (copy_layer(op, shared), op)
            return copies[id(op)][0]

        def inline(inputs, *args, **kwargs):
            return graph._run_through_graph(
                graph._standardize_inputs(inputs), operation_fn=operation_fn
            )

        return inline

    inputs = tree.map_structure(
        lambda x: keras.Input(batch_shape=x.shape, dtype=x.dtype, name=x.name), model.input
    )
    outputs = model._run_through_graph(inputs, operation_fn=operation_fn)
    flat = keras.Model(inputs, outputs, name=model.name)
    for new, original in copies.values():
        copy_weights(new, original)
    return flat


def _check_graph_model(model):
    check_graph_model(model, "quantize")


def _check_not_quantized(model):
    from tfcompress.quantize.checks import is_quantization_aware

    if is_quantization_aware(model):
        raise AlreadyQuantizedError(
            f"Model '{model.name}' already has fake-quant layers (it is a QAT model). Train or "
            "export it as it is; to start again, quantize the original float model."
        )
    from tfcompress._graph import flat_layers

    for layer in flat_layers(model):
        strip = getattr(layer, "_tfcompress_strip_with", None)
        if strip:  # a pruning / clustering wrapper: QAT would keep it in float, silently
            raise ValueError(
                f"Layer '{layer.name}' of model '{model.name}' is still a "
                f"{type(layer).__name__} training wrapper: call {strip}(model) first; "
                "QuantizeConfig(preserve_sparsity=True) / (preserve_clusters=True) then keeps "
                f"its zeros / shared values through QAT. Received: {type(layer).__name__}"
            )
    for layer in model.layers:
        mode = getattr(layer, "quantization_mode", None)
        if mode:
            raise AlreadyQuantizedError(
                f"Layer '{layer.name}' ({type(layer).__name__}) of model '{model.name}' was "
                f"quantized by Keras (quantization_mode={mode!r}, from model.quantize()). QAT "
                "needs the float model: quantize the model you had before model.quantize()."
            )


def _nodes_of(model):
    nodes = getattr(model, "_nodes", None)
    return nodes


def _inbound(layer, model_nodes):
    # Keras keys a model's nodes as "<id(layer)>_ib-<index>".
    return [
        n
        for i, n in enumerate(layer._inbound_nodes)
        if model_nodes is None or f"{id(layer)}_ib-{i}" in model_nodes
    ]


def _producer(tensor):
    return tensor._keras_history.operation


def _plan(model, config, only_annotated):
    model_nodes = _nodes_of(model)
    annotations = {layer.name: annotate.annotation_of(layer) for layer in model.layers}
    skip = set(config.skip_layers)
    unknown = skip - {layer.name for layer in model.layers}
    if unknown:
        raise ValueError(
            f"QuantizeConfig.skip_layers names layers model '{model.name}' does not "
            f"have: {sorted(unknown)}. Its layers: "
            f"{[layer.name for layer in model.layers]}"
        )
    plans = {
        layer.name: _plan_layer(layer, model, config, only_annotated, skip, annotations[layer.name])
        for layer in model.layers
    }
    first_twin = _twins(model, plans, model_nodes)

    def producer(tensor):
        layer = _producer(tensor)
        return first_twin.get(id(layer), layer)

    consumers = collections.Counter()
    for layer in model.layers:
        if id(layer) in first_twin:  # computed by its first twin: its inputs are read once
            continue
        for node in _inbound(layer, model_nodes):
            for t in node.input_tensors:
                consumers[id(producer(t))] += 1
    if config.fold_batchnorm:
        batchnorm.plan_folds(
            model,
            plans,
            lambda layer: _inbound(layer, model_nodes),
            producer,
            consumers,
            config.freeze_bn_delay,
        )
    fusion.plan_single_rounding(
        model, plans, lambda layer: _inbound(layer, model_nodes), producer, consumers
    )
    for layer in model.layers:
        if id(layer) in first_twin:
            first = first_twin[id(layer)]
            plans[layer.name].twin_of = plans[first.name].twin_of = first.name
    return plans


def _twins(model, plans, model_nodes):
    """`{id(layer): the earlier layer}` for each layer that repeats another one's computation.

    NASNet starts every separable block with its own `Activation("relu")`, so
    one tensor feeds three identical ReLUs. TensorFlow merges identical ops
    before the converter sees them: the file has one RELU (fused into the op
    before it, which then rounds once) on one grid, read by all three blocks.
    The QAT model computes such twins once too: Keras layers of the same class
    and config, without variables, an output range as their role, called once
    on the same tensors.
    """
    import json

    import keras

    outputs = {id(t) for t in model.outputs}
    first: dict[tuple, Any] = {}
    twins = {}
    for layer in model.layers:
        nodes = _inbound(layer, model_nodes)
        if (
            plans[layer.name].action != "output"
            or layer.variables
            # A Keras layer's config says all it computes; a custom one's may not.
            or not type(layer).__module__.startswith("keras.")
            or len(nodes) != 1
            or len(layer._inbound_nodes) != 1
            or any(id(t) in outputs for t in nodes[0].output_tensors)
        ):
            continue
        config = {k: v for k, v in layer.get_config().items() if k != "name"}
        try:
            key = (
                type(layer),
                json.dumps(config, sort_keys=True, default=repr),
                tuple(id(t) for t in nodes[0].input_tensors),
                repr(
                    sorted(
                        (k, v)
                        for k, v in nodes[0].arguments.kwargs.items()
                        if not isinstance(v, keras.KerasTensor)
                    )
                ),
            )
        except (TypeError, ValueError):  # a config or argument with no stable text
            continue
        if key in first:
            twins[id(layer)] = first[key]
        else:
            first[key] = layer
    return twins


def _plan_layer(layer, model, config, only_annotated, skip, note):
    import keras

    handler = registry.handler_for(layer)
    if isinstance(layer, keras.layers.InputLayer):
        return _Plan("passthrough", handler)
    if layer.name in skip:
        return _Plan("float", reason="QuantizeConfig.skip_layers")
    if note is not None and not note["quantize"]:
        return _Plan("float", reason="quantize_annotate_layer(quantize=False)")
    if only_annotated and note is None:
        return _Plan("float", reason="not annotated (quantize_apply)")
    if handler is None:
        what = f"{type(layer).__module__}.{type(layer).__name__}"
        if config.strict:
            raise UnsupportedLayerError(
                f"Layer '{layer.name}' ({what}) of model '{model.name}' has no int8 fake-quant "
                "rule. Keep it in float with quantize_model(model, QuantizeConfig(skip_layers="
                f"('{layer.name}',))) or quantize_annotate_layer(layer, quantize=False), or "
                "teach the transform with tfcompress.quantize.register_layer(cls, "
                f"LayerHandler(...)). Received: {what}"
            )
        return _Plan(
            "float",
            reason=f"no int8 rule for {type(layer).__name__} (register one "
            "with tfcompress.quantize.register_layer)",
        )
    scheme = (note or {}).get("weight_scheme") or config.weight_scheme
    split = None
    if isinstance(handler.behaviour, roles.WeightsRole):
        act = _activation_name(layer)
        split = None if act in _FUSABLE else act
    return _Plan(
        handler.role,
        handler,
        scheme if handler.behaviour.has_weights else None,
        split_activation=split,
        role=handler.behaviour,
    )


class _CloneContext:
    """What a `Role` may use while the transform clones the graph (see roles.py)."""

    def __init__(
        self,
        model: keras.Model,
        plans: dict[str, _Plan],
        config: QuantizeConfig,
        shared: dict[str, tuple[str, str, str]],
    ) -> None:
        import keras

        self.keras = keras
        self.config = config
        self.plans = plans
        self.shared = shared
        self.originals: dict[int, keras.layers.Layer] = {}  # id(new layer) -> original layer
        self.quantized: set[int] = set()  # ids of KerasTensors that carry a fake-quant range
        self.input_quant: dict[int, keras.KerasTensor] = {}  # id(tensor) -> quantized tensor
        self.used_names = {layer.name for layer in model.layers}
        # The first of a group of twins (see `_twins`) -> the output they share.
        self.twin_outputs: dict[str, Any] = {}

    def unique(self, name: str) -> str:
        base, i = name, 1
        while name in self.used_names:
            i += 1
            name = f"{base}_{i}"
        self.used_names.add(name)
        return name

    def copy_layer(
        self,
        layer: keras.layers.Layer,
        overrides: dict[str, Any] | None = None,
        rebuild: bool = False,
    ) -> keras.layers.Layer:
        return copy_layer(layer, self.shared, overrides, rebuild)

    def plan_of(self, new: keras.layers.Layer) -> _Plan:
        return self.plans[self.originals[id(new)].name]

    def original_of(self, new: keras.layers.Layer) -> keras.layers.Layer:
        return self.originals[id(new)]

    def mark(self, outputs: Any) -> Any:
        from keras import tree

        for t in tree.flatten(outputs):
            self.quantized.add(id(t))
        return outputs

    def all_quantized(self, structure: Any) -> bool:
        from keras import tree

        floats = [
            t
            for t in tree.flatten(structure)
            if isinstance(t, self.keras.KerasTensor) and self.keras.backend.is_float_dtype(t.dtype)
        ]
        return bool(floats) and all(id(t) in self.quantized for t in floats)

    def ensure_quantized(self, t: Any) -> Any:
        from tfcompress.quantize.layers import ActivationQuantizer

        keras = self.keras
        if not isinstance(t, keras.KerasTensor) or id(t) in self.quantized:
            return t
        if not keras.backend.is_float_dtype(t.dtype):  # token ids, masks: not activations
            return t
        if id(t) not in self.input_quant:
            name = self.unique(f"{_producer(t).name}_quant")
            q = ActivationQuantizer(ema_decay=self.config.ema_decay, name=name)(t)
            self.quantized.add(id(q))
            self.input_quant[id(t)] = q
        return self.input_quant[id(t)]


def _graph_op_kinds():
    """(ops that keep their input's int8 scale, elementwise ops that get an output range)."""
    from keras.src.ops import core
    from keras.src.ops import numpy as knp

    keep = tuple(
        getattr(knp, n)
        for n in ("GetItem", "Reshape", "Squeeze", "ExpandDims", "Transpose", "Take")
        if hasattr(knp, n)
    )
    keep += tuple(getattr(core, n) for n in ("Slice", "StridedSlice") if hasattr(core, n))
    arithmetic = tuple(
        getattr(knp, n)
        for n in ("Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Negative")
        if hasattr(knp, n)
    )
    return keep, arithmetic


def _clone(model, plans, config, shared):
    import keras
    from keras import tree

    ctx = _CloneContext(model, plans, config, shared)
    scale_keeping, arithmetic = _graph_op_kinds()

    def clone_function(layer):
        if not isinstance(layer, keras.layers.Layer):
            return layer  # an op of the graph (x[:, 0], reshape, ...): stateless
        plan = plans[layer.name]
        new = plan.role.build(layer, plan, ctx)
        ctx.originals[id(new)] = layer
        return new

    def call_function(new_layer, *args, **kwargs):
        if not isinstance(new_layer, keras.layers.Layer):  # a graph op: x[:, 0], x + 3, ...
            out = new_layer(*args, **kwargs)
            floats_in = ctx.all_quantized((args, kwargs))
            if isinstance(new_layer, scale_keeping) and floats_in:
                ctx.mark(out)
            elif (
                isinstance(new_layer, arithmetic)
                and floats_in
                and all(
                    isinstance(t, keras.KerasTensor) and keras.backend.is_float_dtype(t.dtype)
                    for t in tree.flatten(out)
                )
            ):
                out = tree.map_structure(ctx.ensure_quantized, out)  # x + 3.0, x * (1 / 6)
            return out
        if not new_layer._call_has_mask_arg:  # e.g. a folded BatchNormalization's Identity
            kwargs.pop("mask", None)
        original = ctx.originals.get(id(new_layer))
        if original is None:  # not cloned by us (cannot happen for layers of the model)
            return new_layer(*args, **kwargs)
        plan = plans[original.name]
        if plan.twin_of is None:
            return plan.role.call(new_layer, args, kwargs, ctx)
        if plan.twin_of not in ctx.twin_outputs:  # the twin called first computes
            ctx.twin_outputs[plan.twin_of] = plan.role.call(new_layer, args, kwargs, ctx)
        return ctx.twin_outputs[plan.twin_of]

    qat = keras.models.clone_model(
        model, clone_function=clone_function, call_function=call_function
    )
    for new in qat.layers:
        original = ctx.originals.get(id(new))
        if original is not None:
            plan = plans[original.name]
            plan.role.copy_weights(new, original, plan)
    return qat
