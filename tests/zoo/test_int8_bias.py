"""QAT rounds each bias onto the int32 grid the converter stores it on (issue 18).

The converter stores `round(bias / (input scale * weight scale))`; a float bias
differs by up to half a bias step, which flips outputs that sit on a tie. Blank
image regions repeat such ties at every position of every sample: on the zoo's
MobileNetV2 the float bias alone cost 5.5 points of top-1 agreement (94.5% -> 100%).
"""

import keras
import numpy as np
import pytest

from tfcompress import export, quantize
from tfcompress.quantize import bias

L = keras.layers


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = L.ReLU(6.0, name="relu")(L.BatchNormalization(name="conv_bn")(x))
    x = L.ZeroPadding2D(((0, 1), (0, 1)), name="pad")(x)  # keeps the ReLU's grid
    x = L.DepthwiseConv2D(3, strides=2, use_bias=False, name="dw")(x)
    x = L.BatchNormalization(name="dw_bn")(x)  # linear: the folded op has its own range
    x = L.Conv2D(6, 1, name="project")(x)
    outputs = L.Dense(4, name="logits")(L.GlobalAveragePooling2D(name="gap")(x))
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # statistics and biases away from their initial values
        for w in layer.weights:
            if "moving_variance" in w.path or "gamma" in w.path:
                w.assign(rng.uniform(0.5, 2.0, w.shape).astype("float32"))
            elif w.path.endswith(("moving_mean", "beta", "bias")):
                w.assign(rng.normal(0, 0.5, w.shape).astype("float32"))
    return model


def _file_biases(path):
    """`{kernel tensor name: (input scale, bias as the file dequantizes it)}`."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    found = {}
    for op in interpreter._get_ops_details():
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            x, w, b = (tensors[i] for i in op["inputs"][:3])
            values = interpreter.get_tensor(b["index"]).astype("float64")
            scales = b["quantization_parameters"]["scales"]
            found[w["name"]] = (x["quantization"][0], values * scales, scales)
    return found


def _qat_biases(qat):
    """`{wrapper name: (input scale, the bias the QAT model adds, the float bias)}`."""
    out = {}
    for w in qat.layers:
        if getattr(w, "weight_scheme", None) is None:
            continue
        layer = w.layer
        if hasattr(w, "folded"):
            kernel, float_bias = w.folded()
            replace = {id(layer.kernel): w.quantize_weight(kernel), id(layer.bias): float_bias}
        else:
            float_bias = layer.bias
            replace = {id(layer.kernel): w.quantized_kernel()}
        used = bias.with_rounded_bias(w, replace, training=False)[id(layer.bias)]
        out[w.name] = (float(bias.input_scale(w)), np.asarray(used), np.asarray(float_bias))
    return out


@pytest.mark.parametrize("reload", [False, True])
def test_qat_biases_are_the_int32_biases_of_the_file(tmp_path, reload):
    x = np.random.default_rng(1).uniform(0, 1, (64, 8, 8, 3)).astype("float32")
    qat = quantize.quantize_model(_model(), representative_data=x)
    if reload:  # the input grids are found again when .keras loading rebuilds the graph
        qat.save(tmp_path / "qat.keras")
        qat = keras.saving.load_model(tmp_path / "qat.keras")
    path = tmp_path / "int8.tflite"
    export.to_tflite(qat, path, mode="int8")
    in_file = _file_biases(path)
    in_qat = _qat_biases(qat)
    assert sorted(in_qat) == ["quant_conv", "quant_dw", "quant_logits", "quant_project"]
    moved = 0
    for name, (scale, used, float_bias) in in_qat.items():
        (key,) = [k for k in in_file if f"/{name}_1/" in k or f"/{name}/" in k]
        file_scale, file_bias, steps = in_file[key]
        assert scale == pytest.approx(file_scale, rel=1e-6), name  # found through "pad" too
        np.testing.assert_allclose(used, file_bias, rtol=1e-6, atol=0.01 * steps.min())
        moved += int(np.sum(np.abs(float_bias - file_bias) > 1e-2 * steps))
    assert moved > 10  # the float biases were off the int32 grid: the rule is what matches


def test_a_layer_called_on_two_grids_keeps_its_float_bias():
    inputs = keras.Input((4,))
    a = quantize.ActivationQuantizer(name="a")(inputs)
    b = quantize.ActivationQuantizer(name="b")(inputs)
    dense = quantize.QuantizeWrapper(L.Dense(2), weight_scheme="int8", granularity="per_tensor")
    dense(a)
    assert bias.input_scale(dense) is not None
    dense(b)
    assert bias.input_scale(dense) is None


def test_average_pooling_rounds_onto_its_input_grid(tmp_path):
    # int8 AVERAGE_POOL_2D keeps its input's scale and rounds each average onto it
    # (NASNet's cells): the QAT model's pooled values sit on that grid too.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inputs)
    x = L.AveragePooling2D(3, strides=1, padding="same", name="pool")(x)
    outputs = L.Dense(4, name="logits")(L.Flatten(name="flat")(x))
    x = np.random.default_rng(1).uniform(0, 1, (32, 8, 8, 3)).astype("float32")
    qat = quantize.quantize_model(keras.Model(inputs, outputs), representative_data=x)
    qat.save(tmp_path / "qat.keras")
    qat = keras.saving.load_model(tmp_path / "qat.keras")
    path = tmp_path / "int8.tflite"
    export.to_tflite(qat, path, mode="int8")
    ops = export.inspect(path).ops
    (pool,) = [op for op in ops if op.name == "AVERAGE_POOL_2D"]
    assert pool.compute_dtype == "int8"
    lo, hi = (float(v) for v in bias.input_range(qat.get_layer("quant_pool")))
    scale = (hi - lo) / 255.0
    probe = keras.Model(qat.input, qat.get_layer("quant_pool").output)
    steps = (probe.predict(x, verbose=0) - lo) / scale
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)  # on the grid
    assert np.mean(np.abs(steps - np.round(steps)) > 0.01) == 0
    check = export.verify(path, qat, x)
    assert check.top1_agreement == 1.0 and check.cosine > 0.999, str(check)
