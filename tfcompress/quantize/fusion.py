"""ReLU / ReLU6 layers the converter fuses into the int8 op before them.

TFLite's int8 CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, ADD and SUB carry
a fused activation: a Conv -> BatchNormalization -> ReLU6 chain (MobileNet),
or an Add -> ReLU (ResNet), becomes one op that rounds its accumulator once,
straight onto the activation's output grid (the output scale of the ReLU's
range, clamped at zero / six). A fake-quant on the producer's own output
would round twice, first onto the producer's wider grid, then onto the
ReLU's: about a quarter of a step of error per layer, compounding through a
deep network, that the file never makes (the converter drops that range).

The same holds for an op whose only consumer is a Concatenate: int8
CONCATENATION keeps one scale for all its inputs, and the converter folds
the requantization of a single-use input into the op that makes it (an ADD
writes straight onto the Concatenate's grid), while an input used elsewhere
too keeps its range and gets a QUANTIZE op (two roundings, as in the QAT
model).

`plan_single_rounding` finds those chains, and the producer's output
range is left out (`_Plan.rounds_onto`), so the QAT model rounds
exactly where the int8 kernel does.
"""

from __future__ import annotations

from typing import Any

import keras

#: ReLU variants TFLite fuses (RELU, RELU6); LeakyReLU and clipped others are ops of their own.
_FUSED = ("relu", "relu6")


def is_fusable_activation(layer: keras.layers.Layer) -> bool:
    """Whether `layer` is a ReLU / ReLU6 the converter fuses into the op before it."""
    L = keras.layers
    if isinstance(layer, L.ReLU):
        return (
            float(layer.negative_slope) == 0.0
            and float(layer.threshold) == 0.0
            and (layer.max_value is None or float(layer.max_value) == 6.0)
        )
    if isinstance(layer, L.Activation) and type(layer).call is L.Activation.call:
        from tfcompress.quantize.composite import _activation_name

        return _activation_name(layer) in _FUSED
    return False


def _fusing_producer(layer: keras.layers.Layer, plan: Any, input_rank: int) -> bool:
    """Whether the int8 op `layer` becomes takes a fused activation."""
    from tfcompress.quantize import batchnorm, roles

    L = keras.layers
    if plan.role.name in ("weights", "folded_weights"):
        if plan.split_activation is not None:
            return False
        if isinstance(layer, (L.Conv2D, L.DepthwiseConv2D)) and not isinstance(
            layer, (L.Conv2DTranspose, L.SeparableConv2D)
        ):
            return getattr(layer, "groups", 1) == 1
        # A Dense on a feature map is reshaped around the FULLY_CONNECTED: no fusion.
        return isinstance(layer, L.Dense) and input_rank == 2
    if isinstance(plan.role, batchnorm.BatchNormRole):
        # A 1x1 DEPTHWISE_CONV_2D on a feature map (other ranks are reshaped around it).
        return input_rank == 4 and batchnorm._bn_axis_is_last(layer)
    return isinstance(plan.role, roles.OutputRole) and isinstance(layer, (L.Add, L.Subtract))


def plan_single_rounding(model, plans, inbound, producer, consumers):
    """Set `plans[p].rounds_onto` where the converter drops the range of `p`'s output.

    That is, for each producer whose ReLU the converter fuses, or whose only
    consumer is a Concatenate.

    Args:
        model: the functional model being planned.
        plans: `{layer name: _Plan}`, changed in place (after BatchNorm folding).
        inbound: `layer -> its inbound nodes in model`.
        producer: `tensor -> the layer that made it`.
        consumers: `{id(layer): number of inbound uses}`.
    """
    outputs = {id(t) for t in model.outputs}

    def round_onto(source, plan, tensor, consumer):
        # Only a producer used once, by `consumer` alone, drops its own range.
        if (
            plan is None
            or consumers[id(source)] != 1
            or id(tensor) in outputs
            or len(inbound(source)) != 1
            or plan.rounds_onto is not None
        ):
            return
        rank = len(inbound(source)[0].input_tensors[0].shape)
        if _fusing_producer(source, plan, rank):
            plan.rounds_onto = consumer

    for act in model.layers:
        if not is_fusable_activation(act) or plans[act.name].role.name != "output":
            continue
        nodes = inbound(act)
        if len(nodes) != 1 or len(nodes[0].input_tensors) != 1:
            continue
        tensor = nodes[0].input_tensors[0]
        source = producer(tensor)
        plan = plans.get(source.name)
        # A folded BatchNormalization sits between the conv and the ReLU as an Identity.
        if plan is not None and plan.role.name == "folded_bn":
            if consumers[id(source)] != 1 or id(tensor) in outputs:
                continue
            tensor = inbound(source)[0].input_tensors[0]
            source = producer(tensor)
            plan = plans.get(source.name)
        round_onto(source, plan, tensor, act)
    for concat in model.layers:
        if not isinstance(concat, keras.layers.Concatenate):
            continue
        if plans[concat.name].role.name != "output" or len(inbound(concat)) != 1:
            continue
        for tensor in inbound(concat)[0].input_tensors:
            source = producer(tensor)
            plan = plans.get(source.name)
            round_onto(source, plan, tensor, concat)
