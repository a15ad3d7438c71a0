"""Is int8 faster than float32 on a CPU? Each change that makes it so, measured.

Run: `python -m benchmarks.int8_speed [--quick]`. Rewrites the "int8 speed"
section of BENCHMARKS.md.

Timing: LiteRT (XNNPACK), 1 thread, inputs set once and `invoke()` called in
a loop (the Python cost of a call, ~1 us, stays in; the signature runner's
input/output copies do not), median over alternating repetitions of all the
files of one model, so machine noise hits them alike. Ratios are float32 /
int8 latency: above 1 means int8 is faster.
"""

import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import _common  # noqa: E402

BERT = dict(
    num_layers=4,
    hidden_dim=256,
    num_heads=4,
    intermediate_dim=1024,
    sequence_length=128,
    vocabulary_size=1000,
)


def invoke_ms(path, seconds=0.3, num_threads=1, sequence_length=128):
    """A function that times `path`: median ms per `invoke()` over ~`seconds`."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=os.fspath(path), num_threads=num_threads)
    for d in interpreter.get_input_details():  # dynamic axes: batch 1, the full sequence
        signature = list(d["shape_signature"])
        if -1 in signature:
            shape = [
                s if s != -1 else 1 if i == 0 else sequence_length for i, s in enumerate(signature)
            ]
            interpreter.resize_tensor_input(d["index"], shape)
    interpreter.allocate_tensors()
    rng = np.random.default_rng(0)
    for d in interpreter.get_input_details():
        dtype = np.dtype(d["dtype"])
        if dtype.kind == "f":
            value = rng.random(d["shape"]).astype(dtype)
        else:
            value = rng.integers(0, 2, d["shape"]).astype(dtype)
        interpreter.set_tensor(d["index"], value)
    for _ in range(3):
        interpreter.invoke()
    start = time.perf_counter()
    interpreter.invoke()
    once = max(time.perf_counter() - start, 1e-6)
    calls = max(3, int(seconds / once))

    def measure():
        start = time.perf_counter()
        for _ in range(calls):
            interpreter.invoke()
        return (time.perf_counter() - start) / calls * 1e3

    return measure


def alternate(paths, repetitions, seconds):
    """`{name: [ms per repetition]}`, the files timed in turn within each repetition."""
    timers = {name: invoke_ms(path, seconds) for name, path in paths.items()}
    times = {name: [] for name in paths}
    for _ in range(repetitions):
        for name, timer in timers.items():
            times[name].append(timer())
    return times


def _ratio_cell(times, base, name):
    ratios = [b / t for b, t in zip(times[base], times[name])]
    return _common.median_spread(ratios, "{:.2f}") + "x"


def _ms_cell(values):
    return _common.median_spread(values, "{:.3f}")


def digits_cnn(folder, quick):
    """Digits CNN: float32 vs int8 (dynamic and static batch), accuracy on held-out digits."""
    import keras

    from tfcompress import export, testing
    from tfcompress.data import load_digits

    data = load_digits()
    model = testing.digits_cnn(filters=(16, 32), dense_units=64)
    model.compile(
        keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(data.x_train, data.y_train, epochs=5 if quick else 20, batch_size=32, verbose=0)
    files = {
        "float32": dict(mode="float32"),
        "int8 (dynamic batch, as before)": dict(mode="int8"),
        "int8, batch fixed to 1": dict(mode="int8", batch_size=1),
        "int8, batch 1, int8 I/O": dict(mode="int8", batch_size=1, int8_io=True),
        "target='cpu'": dict(target="cpu"),
    }
    paths, accuracy = {}, {}
    for i, (name, kwargs) in enumerate(files.items()):
        result = export.to_tflite(
            model,
            os.path.join(folder, f"digits{i}.tflite"),
            representative_data=data.x_train,
            **kwargs,
        )
        if result.target:
            name = f"target='cpu' chose {result.mode}"
        paths[name] = result.path
        accuracy[name] = export.verify(
            result.path, model, (data.x_test, data.y_test)
        ).tflite_accuracy
    return "digits CNN (8x8)", paths, accuracy


def _recalibrate_batchnorm(model, images):
    """Random-weight BatchNorm statistics are meaningless: set them from real images."""
    import keras

    norms = [
        layer
        for layer in model._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    for layer in norms:
        layer.momentum = 0.0
    model(images, training=True)  # momentum 0: moving statistics = this batch's
    for layer in norms:
        layer.momentum = 0.99


def _digit_images(n, size, scale):
    import numpy as np
    import tensorflow as tf

    from tfcompress.data import load_digits

    x = load_digits().x_train[:n]
    x = tf.image.resize(x, (size, size)).numpy()
    return (np.repeat(x, 3, axis=-1) * scale[0] + scale[1]).astype("float32")


def imagenet_cnn(name, folder, quick):
    """keras.applications at 224, random weights, BatchNorm statistics from digit images."""
    import keras

    from tfcompress import export

    build, scale = {
        "MobileNetV2": (keras.applications.MobileNetV2, (2.0, -1.0)),  # expects [-1, 1]
        "EfficientNetB0": (keras.applications.EfficientNetB0, (255.0, 0.0)),  # [0, 255]
        "MobileNetV3Small": (keras.applications.MobileNetV3Small, (255.0, 0.0)),  # [0, 255]
    }[name]
    keras.utils.set_random_seed(0)
    model = build(weights=None, input_shape=(224, 224, 3), classes=10)
    images = _digit_images(32 if quick else 64, 224, scale)
    _recalibrate_batchnorm(model, images)
    files = {
        "float32": dict(mode="float32", batch_size=1),
        "int8": dict(mode="int8", batch_size=1),
    }
    paths = {}
    for i, (label, kwargs) in enumerate(files.items()):
        paths[label] = export.to_tflite(
            model,
            os.path.join(folder, f"{name}{i}.tflite"),
            representative_data=images,
            max_calibration_samples=16 if quick else 32,
            **kwargs,
        ).path
    if name == "MobileNetV3Small":
        # Post-training int8 keeps the converter's int8 HARD_SWISH, which XNNPACK does
        # not run; our QAT model writes hard swish as int8 ADD/MUL ops it does run.
        from tfcompress import quantize

        qat = quantize.quantize_model(model, representative_data=images[:16])
        paths["QAT int8 (hard swish as ADD/MUL)"] = export.to_tflite(
            qat, os.path.join(folder, f"{name}_qat.tflite"), mode="int8", batch_size=1
        ).path
    return f"{name} (224x224, random weights)", paths, {}


def _asymmetric_attention(qat):
    """Undo the symmetric attention operands in `qat` (how QAT files were before)."""
    from tfcompress.quantize.composite import QuantizeComposite

    for layer in qat._flatten_layers():
        if isinstance(layer, QuantizeComposite):
            object.__setattr__(layer, "_symmetric", set())


def bert_small(folder, quick):
    """keras-hub BERT-small (4 layers, hidden 256, 4 heads, 128 tokens), random weights."""
    from tfcompress import export, quantize, testing

    model = testing.tiny_bert_classifier(**BERT)
    x = testing.random_bert_inputs(
        64, vocabulary_size=BERT["vocabulary_size"], sequence_length=BERT["sequence_length"]
    )
    static = dict(batch_size=1, sequence_length=BERT["sequence_length"])
    paths = {}

    def write(name, m, **kwargs):
        path = os.path.join(folder, f"bert{len(paths)}.tflite")
        paths[name] = export.to_tflite(m, path, **kwargs).path

    write("float32, static shapes", model, **static)
    write("float32 (dynamic shapes, as before)", model)
    write("dynamic range, static shapes", model, mode="dynamic", **static)
    write("int8 post-training, static shapes", model, mode="int8", representative_data=x, **static)
    qat = quantize.quantize_model(model, representative_data=x)
    _asymmetric_attention(qat)
    write("QAT int8 (dynamic shapes, as before)", qat, mode="int8")
    write("QAT int8, static shapes", qat, mode="int8", **static)
    qat = quantize.quantize_model(model, representative_data=x)
    write("QAT int8, static shapes, symmetric attention operands", qat, mode="int8", **static)
    chosen = export.to_tflite(
        model,
        os.path.join(folder, "bert_cpu.tflite"),
        target="cpu",
        representative_data=x,
        **static,
    )
    paths[f"float model, target='cpu' chose {chosen.mode}"] = chosen.path
    return "BERT-small (4x256, 128 tokens)", paths, {}


def sst2_bert_accuracy(folder, quick):
    """Tiny SST-2 BERT: QAT int8 accuracy with asymmetric vs symmetric attention operands."""
    import keras

    from benchmarks import tasks
    from tfcompress import export, quantize

    data = tasks._load_sst2(quick)
    model = tasks._bert(keras, data)
    model.compile(
        keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(data.x_train, data.y_train, epochs=2 if quick else 3, batch_size=32, verbose=0)
    static = dict(batch_size=1, sequence_length=tasks.BERT["sequence_length"])
    test = (data.x_test, data.y_test)
    paths, accuracy = {}, {}

    def write(name, m, **kwargs):
        path = os.path.join(folder, f"sst2_{len(paths)}.tflite")
        paths[name] = export.to_tflite(m, path, **kwargs).path
        accuracy[name] = export.verify(paths[name], m, test).tflite_accuracy

    write("float32", model, **static)
    qat = quantize.quantize_model(model, representative_data=data.x_train)
    qat.compile(
        keras.optimizers.Adam(1e-4), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    qat.fit(data.x_train, data.y_train, epochs=1, batch_size=32, verbose=0)
    write("QAT int8, symmetric attention operands", qat, mode="int8", **static)
    _asymmetric_attention(qat)
    write("QAT int8, asymmetric (as before)", qat, mode="int8", **static)
    return "tiny SST-2 BERT (2x64, 32 tokens)", paths, accuracy


MODELS = {
    "bert_small": bert_small,
    "sst2_bert": sst2_bert_accuracy,
    "digits": digits_cnn,
    "mobilenet_v2": lambda folder, quick: imagenet_cnn("MobileNetV2", folder, quick),
    "efficientnet_b0": lambda folder, quick: imagenet_cnn("EfficientNetB0", folder, quick),
    "mobilenet_v3_small": lambda folder, quick: imagenet_cnn("MobileNetV3Small", folder, quick),
}


def run(quick=False, write=True, models=None):
    folder = tempfile.mkdtemp(prefix="tfcompress-int8-speed-")
    repetitions, seconds = (3, 0.2) if quick else (7, 0.5)
    rows, verdicts = [], []
    for key in models or MODELS:
        try:
            title, paths, accuracy = MODELS[key](folder, quick)
            times = alternate(paths, repetitions, seconds)
        except Exception as e:  # one model failing is a row, not the end of the run
            rows.append([key, f"**failed**: {type(e).__name__}: {str(e)[:200]}", "", "", "", ""])
            continue
        base = next(iter(paths))
        for name in paths:
            rows.append(
                [
                    title,
                    name,
                    f"{os.path.getsize(paths[name]):,}",
                    _ms_cell(times[name]),
                    _ratio_cell(times, base, name),
                    "" if name not in accuracy else f"{accuracy[name]:.4f}",
                ]
            )
        speedup = {
            n: statistics.median(b / t for b, t in zip(times[base], times[n]))
            for n in paths
            if n != base
        }
        best = max(speedup, key=speedup.get)
        verdicts.append((title, best, speedup[best]))
        print(
            _common.markdown_table(
                ["model", "file", "bytes", "ms", "float32 / file", "acc"], rows[-len(paths) :]
            ),
            flush=True,
        )
    table = _common.markdown_table(
        [
            "model",
            "file",
            "bytes",
            "ms per call, median (min-max)",
            "speed-up over float32",
            "test accuracy (LiteRT)",
        ],
        rows,
    )
    body = (
        "LiteRT (XNNPACK), 1 thread, one sample per call; each file's `invoke()` timed in a "
        f"loop of ~{seconds} s, {repetitions} alternating repetitions per model. "
        "Speed-up = float32 latency / file latency (above 1: faster than float32)."
        + (" (quick mode)" if quick else "")
        + "\n\n"
        + table
        + "\n\n"
        + "\n".join(
            f"- {title}: best int8 file **{ratio:.2f}x** faster than float32 ({best})."
            for title, best, ratio in verdicts
        )
    )
    print(body)
    if write:
        _common.update_section("int8 speed", body, "benchmarks/int8_speed.py")
    return rows


if __name__ == "__main__":
    sys.exit(_common.script_main(run, __doc__))
