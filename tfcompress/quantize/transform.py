"""`quantize_model`: a float Keras model in, a new quantization-aware model out."""

import collections
import dataclasses

import numpy as np

from tfcompress import _flavor
from tfcompress._graph import check_graph_model
from tfcompress.quantize import annotate, registry
from tfcompress.quantize.composite import QuantizeComposite, _activation_name
from tfcompress.quantize.config import QuantizeConfig
from tfcompress.quantize.errors import AlreadyQuantizedError, UnsupportedLayerError

# Activations TFLite fuses into CONV_2D / FULLY_CONNECTED; others get their own layer.
_FUSABLE = ("linear", "relu", "relu6")
# Graph ops (not layers) whose int8 TFLite kernels keep their input's scale.
_SCALE_KEEPING_OPS = ("GetItem", "Reshape", "Squeeze", "ExpandDims", "Transpose", "Slice",
                      "StridedSlice", "Take")


@dataclasses.dataclass(frozen=True)
class QuantizeReport:
    """What `quantize_model` did (attached to the QAT model as `.quantize_report`).

    Attributes:
        quantized: `(layer name, class, weight scheme or None)` per quantized layer.
        kept_float: `(layer name, class, reason)` per layer left in float.
        folded_batchnorm: `(conv name, batchnorm name)` pairs folded together.
        calibration: the calibration method used to initialise ranges, or
            `None` (ranges are then set by the first training steps).
        calibration_samples: inputs used for calibration.
    """

    quantized: tuple
    kept_float: tuple
    folded_batchnorm: tuple
    calibration: object = None
    calibration_samples: int = 0

    def __str__(self):
        lines = [f"quantized {len(self.quantized)} layers, kept {len(self.kept_float)} in "
                 f"float, folded {len(self.folded_batchnorm)} BatchNormalization"]
        lines += [f"  quantized {n} ({c}, weights {s or '-'})" for n, c, s in self.quantized]
        lines += [f"  float     {n} ({c}): {r}" for n, c, r in self.kept_float]
        lines += [f"  folded    {b} into {c}" for c, b in self.folded_batchnorm]
        if self.calibration:
            lines.append(f"  ranges: {self.calibration} calibration on "
                         f"{self.calibration_samples} samples")
        else:
            lines.append("  ranges: set by the first training steps")
        return "\n".join(lines)


@dataclasses.dataclass
class _Plan:
    action: str  # "weights" | "output" | "passthrough" | "float" | "folded_bn"
    handler: object = None
    scheme: object = None
    fold_bn: object = None  # the BatchNormalization folded into this layer
    split_activation: object = None  # activation name moved to its own layer
    reason: str = ""


def quantize_model(model, config=None, *, representative_data=None, only_annotated=False):
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
        only_annotated: quantize only layers marked by
            `quantize_annotate_layer` (what `quantize_apply` does).

    Returns:
        A new `keras.Model`; its `.quantize_report` is a `QuantizeReport`.

    Raises:
        UnsupportedLayerError: a layer cannot be quantized (its name, class,
            and how to keep it in float are in the message).
        UnsupportedModelError: a subclassed model, or not a Keras model.
        AlreadyQuantizedError: the model already has fake-quant.

    Example:

    >>> qat = quantize_model(model)
    >>> qat.compile("adam", loss=...); qat.fit(x, y, epochs=2)
    >>> tfcompress.export.to_tflite(qat, "model_int8.tflite", mode="int8")
    """
    config = config if config is not None else QuantizeConfig()
    if not isinstance(config, QuantizeConfig):
        raise TypeError("config must be a tfcompress.quantize.QuantizeConfig. "
                        f"Received: config={config!r}")
    flavor = _flavor.flavor_of(model)
    if flavor != _flavor.TF_KERAS:
        _check_graph_model(model)  # before check_built: a subclassed model has no inputs
    _flavor.check_built(model, what="quantization-aware training")
    if flavor == _flavor.TF_KERAS:
        _check_not_quantized(model)
        from tfcompress.quantize import _tfmot

        if representative_data is not None:
            raise ValueError("representative_data= is for Keras 3 models; tfmot sets tf_keras "
                             "ranges during fit(). Received: representative_data")
        return _tfmot.quantize_model(model, config)
    functional = _as_functional(model)
    _check_not_quantized(functional)
    functional = _inline_nested(functional)
    plans = _plan(functional, config, only_annotated)
    qat = _clone(functional, plans, config)
    report = QuantizeReport(
        quantized=tuple((layer.name, type(layer).__name__, plans[layer.name].scheme)
                        for layer in functional.layers
                        if plans[layer.name].action in ("weights", "output", "composite")),
        kept_float=tuple((layer.name, type(layer).__name__, plans[layer.name].reason)
                         for layer in functional.layers if plans[layer.name].action == "float"),
        folded_batchnorm=tuple((layer.name, p.fold_bn.name) for layer in functional.layers
                               if (p := plans[layer.name]).fold_bn is not None),
    )
    if representative_data is not None:
        from tfcompress.quantize.calibration import calibrate

        calibrated = calibrate(qat, representative_data, config.calibration, config.percentile)
        report = dataclasses.replace(report, calibration=calibrated.method,
                                     calibration_samples=calibrated.samples)
    qat.quantize_report = report
    return qat


def _as_functional(model):
    import keras

    _check_graph_model(model)
    if isinstance(model, keras.Sequential):
        inputs, outputs = model.inputs, model.outputs
        return keras.Model(inputs[0] if len(inputs) == 1 else inputs,
                           outputs[0] if len(outputs) == 1 else outputs, name=model.name)
    return model


def _inline_nested(model):
    """The same graph with nested functional models (a task's backbone) laid out flat.

    keras-hub tasks call their backbone as one layer; the transform needs to
    see the backbone's own layers. Every layer is copied (config and
    weights, annotations kept), so the input model gains no new nodes.
    """
    import keras
    from keras import tree
    from keras.src.models.functional import Functional

    if not any(isinstance(layer, Functional) for layer in model.layers):
        return model
    copies = {}  # id(original layer) -> (copy, original); a shared layer stays shared

    def operation_fn(op):
        if not isinstance(op, Functional):
            if not isinstance(op, keras.layers.Layer):
                return op
            if id(op) not in copies:
                new = op.__class__.from_config(op.get_config())
                note = annotate.annotation_of(op)
                if note is not None:
                    setattr(new, annotate._ATTR, dict(note))
                copies[id(op)] = (new, op)
            return copies[id(op)][0]

        def inline(inputs, *args, **kwargs):
            return op._run_through_graph(op._standardize_inputs(inputs),
                                         operation_fn=operation_fn)
        return inline

    inputs = tree.map_structure(
        lambda x: keras.Input(batch_shape=x.shape, dtype=x.dtype, name=x.name), model.input)
    outputs = model._run_through_graph(inputs, operation_fn=operation_fn)
    flat = keras.Model(inputs, outputs, name=model.name)
    for new, original in copies.values():
        new.set_weights(original.get_weights())
    return flat


def _check_graph_model(model):
    check_graph_model(model, "quantize")


def _check_not_quantized(model):
    from tfcompress.quantize.checks import is_quantization_aware

    if is_quantization_aware(model):
        raise AlreadyQuantizedError(
            f"Model '{model.name}' already has fake-quant layers (it is a QAT model). Train or "
            "export it as it is; to start again, quantize the original float model.")
    for layer in model.layers:
        mode = getattr(layer, "quantization_mode", None)
        if mode:
            raise AlreadyQuantizedError(
                f"Layer '{layer.name}' ({type(layer).__name__}) of model '{model.name}' was "
                f"quantized by Keras (quantization_mode={mode!r}, from model.quantize()). QAT "
                "needs the float model: quantize the model you had before model.quantize().")


def _nodes_of(model):
    nodes = getattr(model, "_nodes", None)
    return nodes


def _inbound(layer, model_nodes):
    # Keras keys a model's nodes as "<id(layer)>_ib-<index>".
    return [n for i, n in enumerate(layer._inbound_nodes)
            if model_nodes is None or f"{id(layer)}_ib-{i}" in model_nodes]


def _producer(tensor):
    return tensor._keras_history.operation


def _plan(model, config, only_annotated):
    import keras

    model_nodes = _nodes_of(model)
    consumers = collections.Counter()
    for layer in model.layers:
        for node in _inbound(layer, model_nodes):
            for t in node.input_tensors:
                consumers[id(_producer(t))] += 1
    annotations = {layer.name: annotate.annotation_of(layer) for layer in model.layers}
    skip = set(config.skip_layers)
    unknown = skip - {layer.name for layer in model.layers}
    if unknown:
        raise ValueError(f"QuantizeConfig.skip_layers names layers model '{model.name}' does not "
                         f"have: {sorted(unknown)}. Its layers: "
                         f"{[layer.name for layer in model.layers]}")

    plans = {}
    for layer in model.layers:
        note = annotations[layer.name]
        handler = registry.handler_for(layer)
        if isinstance(layer, keras.layers.InputLayer):
            plans[layer.name] = _Plan("passthrough", handler)
        elif layer.name in skip:
            plans[layer.name] = _Plan("float", reason="QuantizeConfig.skip_layers")
        elif note is not None and not note["quantize"]:
            plans[layer.name] = _Plan("float", reason="quantize_annotate_layer(quantize=False)")
        elif only_annotated and note is None:
            plans[layer.name] = _Plan("float", reason="not annotated (quantize_apply)")
        elif handler is None:
            raise UnsupportedLayerError(
                f"Layer '{layer.name}' ({type(layer).__module__}.{type(layer).__name__}) of model "
                f"'{model.name}' has no int8 fake-quant rule. Keep it in float with "
                f"quantize_model(model, QuantizeConfig(skip_layers=('{layer.name}',))) or "
                "quantize_annotate_layer(layer, quantize=False), or teach the transform with "
                "tfcompress.quantize.registry.register_layer(cls, LayerHandler(...)).")
        elif handler.role == "composite":
            if config.preserve_clusters:
                raise ValueError(
                    f"preserve_clusters=True cannot keep the clusters of the kernels inside "
                    f"'{layer.name}' ({type(layer).__name__}); keep it in float with "
                    f"QuantizeConfig(skip_layers=('{layer.name}',)) or drop preserve_clusters.")
            scheme = (note or {}).get("weight_scheme") or config.weight_scheme
            plans[layer.name] = _Plan("composite", handler, scheme)
        elif handler.role == "weights":
            scheme = (note or {}).get("weight_scheme") or config.weight_scheme
            act = _activation_name(layer)
            plans[layer.name] = _Plan("weights", handler, scheme,
                                      split_activation=None if act in _FUSABLE else act)
        else:
            plans[layer.name] = _Plan(handler.role, handler)

    if config.fold_batchnorm:
        for layer in model.layers:
            if not isinstance(layer, keras.layers.BatchNormalization):
                continue
            if plans[layer.name].action != "output":
                continue
            nodes = _inbound(layer, model_nodes)
            if len(nodes) != 1 or len(nodes[0].input_tensors) != 1:
                continue
            conv = _producer(nodes[0].input_tensors[0])
            p = plans.get(getattr(conv, "name", None))
            axis = layer.axis if isinstance(layer.axis, int) else -1
            if (p is not None and p.action == "weights" and p.fold_bn is None
                    and type(conv).__name__ in ("Conv1D", "Conv2D", "DepthwiseConv2D", "Dense")
                    and isinstance(conv, _foldable_classes())
                    and p.split_activation is None and _activation_name(conv) == "linear"
                    and consumers[id(conv)] == 1 and len(_inbound(conv, model_nodes)) == 1
                    and axis in (-1, len(layer.input.shape) - 1)
                    and getattr(conv, "data_format", "channels_last") == "channels_last"):
                p.fold_bn = layer
                plans[layer.name] = _Plan("folded_bn")
    return plans


def _foldable_classes():
    import keras

    L = keras.layers
    return (L.Conv1D, L.Conv2D, L.DepthwiseConv2D, L.Dense)


def _clone(model, plans, config):
    import keras
    from keras import tree

    from tfcompress.quantize.layers import ActivationQuantizer, QuantizeWrapper

    originals = {}  # id(new layer) -> original layer
    quantized = set()  # ids of KerasTensors that carry a fake-quant range
    input_quant = {}  # id(tensor) -> quantized tensor
    used_names = {layer.name for layer in model.layers}

    def unique(name):
        base, i = name, 1
        while name in used_names:
            i += 1
            name = f"{base}_{i}"
        used_names.add(name)
        return name

    def clone_function(layer):
        if not isinstance(layer, keras.layers.Layer):
            return layer  # an op of the graph (x[:, 0], reshape, ...): stateless
        plan = plans[layer.name]
        config_ = layer.get_config()
        if plan.action == "folded_bn":
            new = keras.layers.Identity(name=layer.name)
        elif plan.action == "weights":
            if plan.fold_bn is not None:
                config_["use_bias"] = True
            if plan.split_activation is not None:
                config_["activation"] = "linear"
            inner = layer.__class__.from_config(config_)
            clusters = 0
            if config.preserve_clusters:
                clusters = _count_clusters(layer, plan)
            new = QuantizeWrapper(inner, weight_scheme=plan.scheme,
                                  granularity=plan.handler.granularity,
                                  kernel_attr=plan.handler.kernel_attr, quantize_output=True,
                                  ema_decay=config.ema_decay,
                                  preserve_sparsity=config.preserve_sparsity,
                                  preserve_clusters=clusters,
                                  name=unique(f"quant_{layer.name}"))
        elif plan.action == "composite":
            new = QuantizeComposite(layer.__class__.from_config(config_),
                                    weight_scheme=plan.scheme, ema_decay=config.ema_decay,
                                    preserve_sparsity=config.preserve_sparsity,
                                    name=unique(f"quant_{layer.name}"))
        elif plan.action == "output":
            new = QuantizeWrapper(layer.__class__.from_config(config_), quantize_output=True,
                                  ema_decay=config.ema_decay, name=unique(f"quant_{layer.name}"))
        else:
            new = layer.__class__.from_config(config_)
        originals[id(new)] = layer
        return new

    def ensure_quantized(t):
        if not isinstance(t, keras.KerasTensor) or id(t) in quantized:
            return t
        if not keras.backend.is_float_dtype(t.dtype):  # token ids, masks: not activations
            return t
        if id(t) not in input_quant:
            name = unique(f"{_producer(t).name}_quant")
            q = ActivationQuantizer(ema_decay=config.ema_decay, name=name)(t)
            quantized.add(id(q))
            input_quant[id(t)] = q
        return input_quant[id(t)]

    def call_function(new_layer, *args, **kwargs):
        original = originals.get(id(new_layer))
        plan = plans[original.name] if original is not None else _Plan("passthrough")
        in_tensors = [t for t in tree.flatten((args, kwargs)) if isinstance(t, keras.KerasTensor)]
        if not isinstance(new_layer, keras.layers.Layer):  # a graph op: x[:, 0], reshape, ...
            out = new_layer(*args, **kwargs)
            floats = [t for t in in_tensors if keras.backend.is_float_dtype(t.dtype)]
            if type(new_layer).__name__ in _SCALE_KEEPING_OPS and floats and all(
                    id(t) in quantized for t in floats):
                for t in tree.flatten(out):
                    quantized.add(id(t))
            return out
        if not new_layer._call_has_mask_arg:  # e.g. a folded BatchNormalization's Identity
            kwargs.pop("mask", None)
        if plan.action == "composite":
            args = (ensure_quantized(args[0]),) + tuple(args[1:])
            out = new_layer(*args, **kwargs)
            if new_layer.output_quantized:
                for t in tree.flatten(out):
                    quantized.add(id(t))
            return out
        if plan.action in ("weights", "output"):
            args = tree.map_structure(ensure_quantized, args)
            out = new_layer(*args, **kwargs)
            if plan.split_activation is not None:
                act = QuantizeWrapper(keras.layers.Activation(plan.split_activation),
                                      quantize_output=True, ema_decay=config.ema_decay,
                                      name=unique(f"quant_{original.name}_{plan.split_activation}"))
                out = act(out)
            marked = True
        else:
            out = new_layer(*args, **kwargs)
            marked = plan.action in ("passthrough", "folded_bn") and all(
                id(t) in quantized for t in in_tensors)
        if marked:
            for t in tree.flatten(out):
                quantized.add(id(t))
        return out

    qat = keras.models.clone_model(model, clone_function=clone_function,
                                   call_function=call_function)
    for new in qat.layers:
        original = originals.get(id(new))
        if original is None:
            continue
        plan = plans[original.name]
        if plan.action == "weights":
            _copy_kernel_weights(new, original, plan)
        elif plan.action == "output":
            new.layer.set_weights(original.get_weights())
        elif plan.action == "composite":
            new.layer.set_weights(original.get_weights())
            if new.preserve_sparsity:
                new.set_sparsity_masks()
        elif plan.action != "folded_bn":
            new.set_weights(original.get_weights())
    return qat


def _copy_kernel_weights(wrapper, original, plan):
    if plan.fold_bn is not None:
        kernel, bias = _fold(original, plan.fold_bn)
        wrapper.layer.kernel.assign(kernel)
        wrapper.layer.bias.assign(bias)
    else:
        wrapper.layer.set_weights(original.get_weights())
    kernel = getattr(wrapper.layer, plan.handler.kernel_attr).numpy()
    if wrapper.preserve_sparsity:
        wrapper.sparsity_mask.assign((kernel != 0).astype("float32"))
    if wrapper.preserve_clusters:
        ids = np.unique(kernel, return_inverse=True)[1].reshape(kernel.shape)
        wrapper.cluster_ids.assign(ids.astype("int32"))


_MAX_CLUSTERS = 256


def _count_clusters(layer, plan):
    if plan.fold_bn is not None:
        raise ValueError(
            f"preserve_clusters cannot keep the clusters of '{layer.name}' when "
            f"'{plan.fold_bn.name}' is folded into it (folding scales each channel apart). "
            "Pass QuantizeConfig(preserve_clusters=True, fold_batchnorm=False).")
    kernel = getattr(layer, plan.handler.kernel_attr).numpy()
    n = len(np.unique(kernel))
    if n > _MAX_CLUSTERS:
        raise ValueError(
            f"preserve_clusters=True, but layer '{layer.name}' has {n} distinct kernel values, "
            "so it is not clustered. Cluster the model first (tfcompress.cluster.cluster_weights,"
            " fit, strip_clustering), or skip it with QuantizeConfig(skip_layers=(...)).")
    return n


def _fold(conv, bn):
    """Kernel and bias of `conv` followed by inference-mode `bn`, as one layer."""
    import keras

    kernel = np.asarray(conv.kernel.numpy())
    channels = bn.moving_mean.shape[-1]
    bias = np.asarray(conv.bias.numpy()) if conv.use_bias else np.zeros(channels, "float32")
    gamma = np.asarray(bn.gamma.numpy()) if bn.scale else np.ones(channels, "float32")
    beta = np.asarray(bn.beta.numpy()) if bn.center else np.zeros(channels, "float32")
    mean = np.asarray(bn.moving_mean.numpy())
    var = np.asarray(bn.moving_variance.numpy())
    factor = gamma / np.sqrt(var + bn.epsilon)
    if isinstance(conv, keras.layers.DepthwiseConv2D):
        kernel = kernel * factor.reshape(kernel.shape[2], kernel.shape[3])
    else:
        kernel = kernel * factor
    return kernel.astype("float32"), ((bias - mean) * factor + beta).astype("float32")
