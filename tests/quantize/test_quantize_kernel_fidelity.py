"""The QAT model rounds where the int8 kernels round (issue 18 item 3, issue 17).

Each test builds one small block, quantizes it with calibrated ranges,
exports it, and compares the file's output with the QAT model's in units of
the output's int8 step: a faithful simulation is off by one step only on the
rare values that sit on a rounding tie, a wrong one on a large share.
"""

import keras
import numpy as np

from tfcompress import export, quantize
from tfcompress.quantize import _ops, bias
from tfcompress.quantize.batchnorm import FoldedBatchNormWrapper, QuantizeBatchNorm
from tfcompress.quantize.layers import QuantizeWrapper

L = keras.layers


def _randomize_batchnorm(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, c),
                    rng.normal(0.2, 0.3, c),
                    rng.normal(0.0, 0.3, c),
                    rng.uniform(0.5, 2.0, c),
                ]
            )


def _file_outputs(path, x, xnnpack=False):
    """The file's float output and its int8 step, run by LiteRT's builtin kernels.

    With `xnnpack`, by the XNNPACK delegate (as `export.verify` runs files), whose
    int8 MUL and ADD round once where the builtin kernels round twice.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = Interpreter(
        model_path=str(path), num_threads=1, experimental_op_resolver_type=resolver
    )
    interpreter.allocate_tensors()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    dequantize = next(op for op in interpreter._get_ops_details() if op["op_name"] == "DEQUANTIZE")
    step = tensors[dequantize["inputs"][0]]["quantization"][0]
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    ys = []
    for i in range(len(x)):
        interpreter.set_tensor(inp["index"], x[i : i + 1])
        interpreter.invoke()
        ys.append(interpreter.get_tensor(out["index"]).copy())
    return np.concatenate(ys), step


def _off_by_a_step(qat, path, x, xnnpack=False):
    """Share of output values where file and QAT model differ by half a step or more."""
    actual, step = _file_outputs(path, x, xnnpack)
    expected = qat.predict(x, verbose=0)
    return float(np.mean(np.abs(expected - actual) >= 0.5 * step))


def _export(model, x, tmp_path):
    qat = quantize.quantize_model(model, representative_data=x[:64])
    path = tmp_path / f"{model.name}.tflite"
    export.to_tflite(qat, path, mode="int8")
    return qat, path, export.inspect(path)


def test_relu_fused_into_conv_add_and_batchnorm_rounds_once(tmp_path):
    # Conv -> BN -> ReLU6 (MobileNet), DepthwiseConv -> ReLU, Add -> ReLU (ResNet),
    # Concatenate -> BN -> ReLU (DenseNet): each pair is one int8 op with a fused
    # activation; a range on the producer's own output would round twice.
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(16, 3, padding="same", use_bias=False, name="conv")(inp)
    x = L.BatchNormalization(name="conv_bn")(x)
    a = L.ReLU(6.0, name="conv_relu")(x)
    y = L.DepthwiseConv2D(3, padding="same", name="dw")(a)
    y = L.ReLU(name="dw_relu")(y)
    z = L.Add(name="add")([a, y])
    z = L.Activation("relu", name="add_relu")(z)
    w = L.Concatenate(name="cat")([z, a])
    w = L.BatchNormalization(name="cat_bn")(w)
    out = L.ReLU(name="cat_relu")(w)
    model = keras.Model(inp, out, name="fused_relus")
    _randomize_batchnorm(model)
    x = np.random.default_rng(1).uniform(0, 1, (96, 8, 8, 3)).astype("float32")

    qat, path, info = _export(model, x, tmp_path)

    for name in ("quant_conv", "quant_dw", "quant_add", "quant_cat_bn"):
        layer = qat.get_layer(name)
        assert isinstance(layer, (QuantizeWrapper, FoldedBatchNormWrapper, QuantizeBatchNorm))
        assert layer.output_quantizer is None, name  # the ReLU's range is the op's
    assert not {"RELU", "RELU6"} & set(info.op_histogram), info.summary()
    assert info.op_histogram["DEPTHWISE_CONV_2D"] == 2  # dw and the unfolded BatchNorm
    assert _off_by_a_step(qat, path, x[64:]) < 0.01  # 32% with a range on each producer


def test_relu_not_fused_when_its_input_is_used_elsewhere(tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", name="conv")(inp)
    r = L.ReLU(name="relu")(x)
    out = L.Concatenate(name="cat")([x, r])  # the linear conv output is needed too
    model = keras.Model(inp, out, name="shared_conv_output")
    x = np.random.default_rng(1).uniform(0, 1, (80, 8, 8, 3)).astype("float32")

    qat, path, _ = _export(model, x, tmp_path)

    assert qat.get_layer("quant_conv").output_quantizer is not None
    assert _off_by_a_step(qat, path, x[64:]) < 0.01


def test_sigmoid_swish_and_tanh_round_onto_the_fixed_int8_grids(tmp_path):
    # A squeeze-excite block (EfficientNet): swish is LOGISTIC then MUL, the gate a
    # LOGISTIC; int8 LOGISTIC writes steps of 1/256 and TANH steps of 1/128 whatever
    # range the model asks for, so the QAT model must round the sigmoid there too.
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(16, 3, padding="same", name="conv")(inp)
    x = L.Activation("swish", name="swish")(x)
    s = L.GlobalAveragePooling2D(keepdims=True, name="squeeze")(x)
    s = L.Conv2D(4, 1, activation="swish", name="reduce")(s)
    s = L.Conv2D(16, 1, activation="sigmoid", name="expand")(s)
    x = L.Multiply(name="excite")([x, s])
    out = L.Activation("tanh", name="tanh")(x)
    model = keras.Model(inp, out, name="squeeze_excite")
    x = np.random.default_rng(1).uniform(0, 1, (96, 8, 8, 3)).astype("float32")

    qat, path, info = _export(model, x, tmp_path)

    assert info.op_histogram["LOGISTIC"] == 3 and info.op_histogram["TANH"] == 1
    assert info.op_histogram["MUL"] == 3  # two swishes and the excite
    # The gate's and tanh's range is their fixed grid (no requantization after them).
    assert "QUANTIZE" not in {op.name for op in info.ops[1:]}, info.summary()
    assert qat.get_layer("quant_tanh").output_quantizer is None
    assert _off_by_a_step(qat, path, x[64:]) < 0.01  # 74% without the fixed grids


def test_hard_swish_runs_as_int8_ops_xnnpack_takes(tmp_path):
    # MobileNetV3: int8 HARD_SWISH has no XNNPACK kernel (75% of MobileNetV3Small's
    # int8 time at 224), so hard swish is written as ADD(+3, RELU6 fused), MUL by 1/6
    # and MUL by x, each ranged as the file rounds it; the converter must not fold
    # them back into HARD_SWISH. A Conv2D's fused hard swish is split off the same way.
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", activation="hard_swish", name="conv")(inp)
    x = L.Conv2D(8, 3, padding="same", name="conv2")(x)
    x = L.Activation("hard_silu", name="hswish")(x)
    # A hard-sigmoid gate (squeeze-excite): int8 ADD and MUL on the fixed [0, 1] grid,
    # where it was two float ops between QUANTIZE and DEQUANTIZE.
    gate = L.Activation("hard_sigmoid", name="hsig")(L.Conv2D(8, 1, name="expand")(x))
    out = L.Multiply(name="excite")([x, gate])
    model = keras.Model(inp, out, name="hard_swish_block")
    x = np.random.default_rng(1).normal(0, 2, (96, 8, 8, 3)).astype("float32")

    qat, path, info = _export(model, x, tmp_path)

    assert "HARD_SWISH" not in info.op_histogram, info.summary()
    assert info.op_histogram["ADD"] == 3 and info.op_histogram["MUL"] == 6
    assert {op.name for op in info.ops[1:-1]} <= {"CONV_2D", "ADD", "MUL"}, info.summary()
    assert qat.get_layer("quant_hsig").output_quantizer is None
    # Under XNNPACK, which runs these ops; the builtin MUL rounds twice (5.5% off here).
    assert _off_by_a_step(qat, path, x[64:], xnnpack=True) < 0.01
    ops = export.profile(path, runs=2).ops
    assert all(op.xnnpack for op in ops if op.name in ("ADD", "MUL")), ops


def test_an_op_read_only_by_a_concatenate_rounds_onto_its_range(tmp_path):
    # NASNet / DenseNet cells: int8 CONCATENATION keeps one scale, and the converter
    # writes a single-use input (the ADD) straight onto it; an input used elsewhere
    # too ("c", also pooled) keeps its own range and gets a QUANTIZE op (next test).
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    a = L.Conv2D(8, 3, padding="same", name="a")(inp)
    b = L.Conv2D(8, 3, padding="same", name="b")(inp)
    c = L.Conv2D(8, 3, padding="same", name="c")(inp)
    added = L.Add(name="add")([a, b])
    pooled = L.MaxPooling2D(3, strides=1, padding="same", name="pool")(c)
    out = L.Concatenate(name="cat")([added, c, pooled])
    model = keras.Model(inp, out, name="concat_cell")
    model.get_layer("c").set_weights([w * 4 for w in model.get_layer("c").get_weights()])
    x = np.random.default_rng(1).uniform(0, 1, (96, 8, 8, 3)).astype("float32")

    qat, path, info = _export(model, x, tmp_path)

    assert qat.get_layer("quant_add").output_quantizer is None
    assert qat.get_layer("quant_c").output_quantizer is not None
    assert _off_by_a_step(qat, path, x[64:]) < 0.01


def test_average_pool_after_a_shared_max_pool_keeps_its_siblings_int8(tmp_path):
    # InceptionV3's mixed blocks: one MaxPooling2D output feeds 1x1 convs and an
    # AveragePooling2D. Rounding the average onto its input's grid put a fake-quant
    # on that edge alone, and the converter left the three sibling convs in float.
    inputs = keras.Input((12, 12, 3))
    x = L.Conv2D(8, 3, activation="relu", name="stem")(inputs)
    x = L.MaxPooling2D(3, strides=2, name="pool")(x)
    b1 = L.Conv2D(4, 1, activation="relu", name="b1")(x)
    b3 = L.Conv2D(4, 1, activation="relu", name="b3")(x)
    bp = L.AveragePooling2D(3, strides=1, padding="same", name="avg")(x)
    bp = L.Conv2D(4, 1, activation="relu", name="bp")(bp)
    x = L.Concatenate(name="mixed")([b1, b3, bp])
    x = L.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, L.Dense(5, name="logits")(x), name="inception_like")
    x = np.random.default_rng(0).uniform(0, 1, (64, 12, 12, 3)).astype("float32")
    _, path, info = _export(model, x, tmp_path)
    compute = [op for op in info.ops if op.name in ("CONV_2D", "FULLY_CONNECTED")]
    assert len(compute) == 5
    assert all(op.compute_dtype == "int8" for op in compute), [
        (op.name, op.compute_dtype) for op in compute
    ]


def test_a_concatenate_input_with_its_own_range_is_requantized_as_xnnpack_does(tmp_path):
    # "s" feeds an Add too, so it keeps its range and the file requantizes it onto the
    # Concatenate's grid with a QUANTIZE op. XNNPACK multiplies by the scale ratio in
    # steps of 1/256: a fake-quant of "s" onto the wider grid put 6% of the values a
    # step apart.
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 1, name="a")(inp)
    b = L.Conv2D(4, 1, name="b")(inp)
    s = L.Add(name="s")([a, b])
    wide = L.Conv2D(4, 1, name="wide", kernel_initializer=keras.initializers.RandomNormal(0, 3))
    out = L.Concatenate(name="cat")([s, wide(b)])
    other = L.Add(name="other")([s, L.Conv2D(4, 1, name="z")(inp)])
    model = keras.Model(inp, L.Concatenate(name="both")([out, other]), name="requantized_concat")
    x = np.random.default_rng(0).normal(0, 1, (96, 8, 8, 3)).astype("float32")

    qat, path, info = _export(model, x, tmp_path)

    assert qat.get_layer("quant_s").output_quantizer is not None
    assert info.op_histogram["QUANTIZE"] >= 2  # the input's, and the requantize of "s"
    assert _off_by_a_step(qat, path, x[64:], xnnpack=True) == 0.0
    # first_divergence reads the tensors XNNPACK computes, as verify runs the file.
    rows = {row.layer: row for row in export.first_divergence(path, qat, x[64:72]).layers}
    assert rows["quant_cat"].relative_error < 1e-6, rows["quant_cat"]


def test_average_pooling_rounds_ties_as_the_int8_kernel(tmp_path):
    # int8 AVERAGE_POOL_2D sums the stored int8 values of a window and rounds half away
    # from zero; border windows of 4 and 6 values make ties. The pooled tensor is also
    # max-pooled (shared, as in NASNet's reduction cells and InceptionV3), and the QAT
    # model's rounding ops are left out of the file.
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 1, name="conv")(inp)
    avg = L.AveragePooling2D(3, strides=1, padding="same", name="avg")(x)
    half = L.AveragePooling2D(2, name="avg2")(x)
    top = L.MaxPooling2D(3, strides=1, padding="same", name="max")(x)
    out = L.Concatenate(name="cat")([avg, top])
    model = keras.Model(
        inp, L.Concatenate(name="both")([L.Flatten()(out), L.Flatten()(half)]), name="pooled"
    )
    x = np.random.default_rng(1).normal(0, 1, (96, 8, 8, 3)).astype("float32")

    qat, path, info = _export(model, x, tmp_path)

    assert info.op_histogram["AVERAGE_POOL_2D"] == 2
    float_ops = [op.name for op in info.ops if op.compute_dtype == "float32"]
    assert float_ops == ["QUANTIZE"], float_ops  # the input's, nothing around the pooling
    assert _off_by_a_step(qat, path, x[64:], xnnpack=True) == 0.0
    # Ties were there to get wrong: a fake-quant of the float average rounds some apart.
    pool = qat.get_layer("quant_avg")
    probe = keras.Model(qat.input, [pool.input, pool.output])
    pooled_in, pooled = probe.predict(x[64:], verbose=0)
    lo, hi = (float(v) for v in bias.input_range(pool))
    naive = _ops.fake_quant_activation(pool.layer(pooled_in), lo, hi).numpy()
    assert np.mean(np.abs(naive - pooled) > 1e-6) > 0.001


def test_a_qat_model_converted_by_hand_has_no_emulation_ops(tmp_path):
    # from_keras_model and model.export trace the graph in TensorFlow's save context,
    # where the ops that only emulate a kernel (average pooling, requantize) are left out.
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 1, name="conv")(inp)
    x = L.Concatenate(name="cat")([L.AveragePooling2D(3, 1, "same", name="avg")(x), x])
    model = keras.Model(inp, L.Conv2D(4, 1, name="head")(x), name="by_hand")
    x = np.random.default_rng(1).normal(0, 1, (64, 8, 8, 3)).astype("float32")
    qat, path, info = _export(model, x, tmp_path)

    converter = tf.lite.TFLiteConverter.from_keras_model(qat)
    quantize.configure_converter(converter, tf)
    (tmp_path / "by_hand.tflite").write_bytes(converter.convert())

    by_hand = export.inspect(tmp_path / "by_hand.tflite")
    assert by_hand.op_histogram == info.op_histogram
    assert _off_by_a_step(qat, tmp_path / "by_hand.tflite", x, xnnpack=True) == 0.0


def test_identical_layers_on_one_tensor_are_computed_once(tmp_path):
    # NASNet: three separable blocks each start with Activation("relu") on the same
    # tensor. TensorFlow merges the three ReLUs before conversion, so the file has
    # one RELU, fused into the unfolded BatchNorm before it (one rounding).
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = L.Concatenate(name="cat0")([L.Conv2D(4, 1, name="a")(inp), L.Conv2D(4, 1, name="b")(inp)])
    p = L.BatchNormalization(name="bn")(x)
    branches = [
        L.DepthwiseConv2D(3, padding="same", name=f"dw{k}")(L.Activation("relu", name=f"r{k}")(p))
        for k in range(3)
    ]
    model = keras.Model(inp, L.Concatenate(name="cat")(branches), name="twins")
    _randomize_batchnorm(model)
    x = np.random.default_rng(1).normal(0, 1, (96, 8, 8, 3)).astype("float32")

    qat, path, info = _export(model, x, tmp_path)

    relus = [
        layer.name for layer in qat.layers if layer.name in ("quant_r0", "quant_r1", "quant_r2")
    ]
    assert len(relus) == 1
    assert qat.get_layer("quant_bn").output_quantizer is None  # the ReLU's range is its
    assert "RELU" not in info.op_histogram
    assert _off_by_a_step(qat, path, x[64:], xnnpack=True) == 0.0
    assert [name for name, _, _ in qat.quantize_report.quantized].count("r1") == 1
    qat.save(tmp_path / "twins.keras")
    loaded = keras.saving.load_model(tmp_path / "twins.keras")
    np.testing.assert_array_equal(loaded.predict(x[:8], verbose=0), qat.predict(x[:8], verbose=0))
