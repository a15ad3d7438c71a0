"""Quantization and clustering on the digits CNN: ours (Keras 3) beside tfmot (tf_keras).

Run: `python -m benchmarks.quantize [--quick]`. Prints the tables and
rewrites the "Quantization" section of BENCHMARKS.md.

Compared: float32, PTQ int8 (converter calibration and our three calibration
methods), our Keras 3 QAT, tfmot QAT on the tf_keras twin, int4 and binary
weights, and 16-cluster weights. Accuracy is on held-out digits; sizes are
the TFLite files (raw and gzip -9); latency is LiteRT on one thread;
training overhead is one fit() epoch against plain fit(), alternating runs.
"""

import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import _common  # noqa: E402

ARCH = dict(filters=(16, 32), dense_units=64)


def _compile(model, k, lr):
    model.compile(
        optimizer=k.optimizers.Adam(lr),
        loss=k.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _convert_qat(model, path):
    # The QAT route: optimizations=[DEFAULT] and no representative data
    # (what to_tflite(mode="int8") does for QAT models once it asks
    # tfcompress.quantize.is_quantization_aware).
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    data = converter.convert()
    with open(path, "wb") as f:
        f.write(data)
    return path


def run(quick=False, write=True):
    import keras
    import numpy as np
    import tf_keras

    from tfcompress import cluster, export, quantize, testing
    from tfcompress.data import load_digits
    from tfcompress.quantize import QuantizeConfig

    data = load_digits()
    x, y, xt, yt = data.x_train, data.y_train, data.x_test, data.y_test
    epochs, qat_epochs = (5, 1) if quick else (20, 3)
    repetitions, runs = (3, 100) if quick else (7, 300)
    folder = tempfile.mkdtemp(prefix="tfcompress-bench-quant-")
    path = lambda name: os.path.join(folder, f"{name}.tflite")  # noqa: E731

    model = _compile(testing.digits_cnn(**ARCH), keras, 3e-3)
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    twin = _compile(testing.tf_keras_digits_cnn(**ARCH), tf_keras, 3e-3)
    twin.fit(x, y, epochs=epochs, batch_size=32, verbose=0)

    files, keras_models = {}, {}
    files["float32"] = export.to_tflite(model, path("float32")).path
    keras_models["float32"] = model
    files["PTQ int8 (converter)"] = export.to_tflite(
        model, path("ptq"), mode="int8", representative_data=x
    ).path
    keras_models["PTQ int8 (converter)"] = model
    for method in ("minmax", "percentile", "mse"):
        ptq = quantize.quantize_model(
            model, QuantizeConfig(calibration=method), representative_data=x[:512]
        )
        name = f"PTQ int8 (ours, {method})"
        files[name] = _convert_qat(ptq, path(f"ptq_{method}"))
        keras_models[name] = ptq

    qat = _compile(quantize.quantize_model(model, representative_data=x[:512]), keras, 1e-3)
    qat.fit(x, y, epochs=qat_epochs, batch_size=32, verbose=0)
    files["QAT int8 (ours, Keras 3)"] = _convert_qat(qat, path("qat"))
    keras_models["QAT int8 (ours, Keras 3)"] = qat

    twin_float = export.to_tflite(twin, path("twin_float")).path
    tfmot_qat = _compile(quantize.quantize_model(twin), tf_keras, 1e-3)
    tfmot_qat.fit(x, y, epochs=qat_epochs, batch_size=32, verbose=0)
    files["QAT int8 (tfmot, tf_keras twin)"] = _convert_qat(tfmot_qat, path("tfmot_qat"))
    keras_models["QAT int8 (tfmot, tf_keras twin)"] = tfmot_qat

    lowbit = {}
    for scheme in ("int4", "binary"):
        m = _compile(
            quantize.quantize_model(
                model, QuantizeConfig(weight_scheme=scheme), representative_data=x[:512]
            ),
            keras,
            1e-3,
        )
        m.fit(x, y, epochs=qat_epochs + (1 if quick else 2), batch_size=32, verbose=0)
        name = f"QAT {scheme} weights (ours)"
        files[name] = _convert_qat(m, path(scheme))
        keras_models[name] = m
        lowbit[scheme] = quantize.storage_report(m)

    clustered = _compile(cluster.cluster_weights(model, number_of_clusters=16), keras, 1e-3)
    clustered.fit(x, y, epochs=qat_epochs, batch_size=32, verbose=0)
    stripped = cluster.strip_clustering(clustered)
    files["16 clusters, float32"] = export.to_tflite(stripped, path("clustered")).path
    keras_models["16 clusters, float32"] = stripped

    # Latency: alternate the files within each repetition so machine noise hits all alike.
    from tfcompress_edge.runner import TFLiteRunner

    runners = {name: TFLiteRunner(p, num_threads=1) for name, p in files.items()}
    latency = {name: [] for name in files}
    for _ in range(repetitions):
        for name, r in runners.items():
            latency[name].append(r.benchmark(runs=runs, warmup=20).median_ms)

    float_raw = os.path.getsize(files["float32"])
    rows = []
    for name, p in files.items():
        check = export.verify(p, keras_models[name], (xt, yt))
        raw = os.path.getsize(p)
        gz = export.gzip_size(open(p, "rb").read())
        info = export.inspect(p)
        ratios = [a / b for a, b in zip(latency[name], latency["float32"], strict=True)]
        rows.append(
            [
                name,
                f"{check.keras_accuracy:.4f}",
                f"{check.tflite_accuracy:.4f}",
                f"{check.top1_agreement:.2%}",
                "yes" if info.is_fully_integer() else "no",
                f"{raw:,}",
                f"{gz:,}",
                f"{float_raw / raw:.2f}x",
                _common.median_spread(ratios, "{:.2f}"),
            ]
        )
    float_acc = float(np.mean(np.argmax(model.predict(xt, verbose=0), -1) == yt))
    twin_acc = export.verify(twin_float, twin, (xt, yt)).keras_accuracy
    table = _common.markdown_table(
        [
            "variant",
            "Keras accuracy",
            "TFLite accuracy",
            "TFLite vs Keras top-1",
            "all compute int8",
            "bytes",
            "gzip bytes",
            "float32 / variant size",
            "latency / float32, median (min-max)",
        ],
        rows,
    )

    # Training step overhead: fit() of each, alternating; every model traced beforehand.
    plain = _compile(testing.digits_cnn(**ARCH), keras, 1e-3)
    plain_tfk = _compile(testing.tf_keras_digits_cnn(**ARCH), tf_keras, 1e-3)
    fits = {
        "Keras 3 plain": plain,
        "Keras 3 QAT (ours)": qat,
        "tf_keras plain": plain_tfk,
        "tf_keras QAT (tfmot)": tfmot_qat,
    }
    for m in fits.values():
        m.fit(x[:64], y[:64], epochs=1, batch_size=32, verbose=0)
    timed_epochs = 1 if quick else 4
    times = _common.alternating_times(
        {
            name: (lambda m=m: m.fit(x, y, epochs=timed_epochs, batch_size=32, verbose=0))
            for name, m in fits.items()
        },
        repetitions=repetitions,
    )
    ours = [q / p for q, p in zip(times["Keras 3 QAT (ours)"], times["Keras 3 plain"], strict=True)]
    theirs = [
        q / p for q, p in zip(times["tf_keras QAT (tfmot)"], times["tf_keras plain"], strict=True)
    ]
    overhead = _common.markdown_table(
        [
            "engine",
            f"fit() of {timed_epochs} epoch(s), s, median (min-max)",
            "QAT / plain, median (min-max)",
        ],
        [
            [
                "Keras 3 (ours)",
                _common.median_spread(times["Keras 3 QAT (ours)"]),
                _common.median_spread(ours, "{:.2f}"),
            ],
            [
                "tf_keras (tfmot)",
                _common.median_spread(times["tf_keras QAT (tfmot)"]),
                _common.median_spread(theirs, "{:.2f}"),
            ],
        ],
    )

    cluster_gzip = export.gzip_size(open(files["16 clusters, float32"], "rb").read())
    float_gzip = export.gzip_size(open(files["float32"], "rb").read())
    clustered_acc = float(np.mean(np.argmax(stripped.predict(xt, verbose=0), -1) == yt))
    storage = _common.markdown_table(
        [
            "weights",
            "kernel bytes float32",
            "int8 (what TFLite stores)",
            "packed n-bit + per-channel scales",
        ],
        [
            [
                "int8",
                f"{lowbit['int4'].float32_bytes:,}",
                f"{lowbit['int4'].int8_bytes:,}",
                f"{lowbit['int4'].int8_bytes:,}",
            ],
            [
                "int4",
                f"{lowbit['int4'].float32_bytes:,}",
                f"{lowbit['int4'].int8_bytes:,}",
                f"{lowbit['int4'].packed_bytes:,}",
            ],
            [
                "binary",
                f"{lowbit['binary'].float32_bytes:,}",
                f"{lowbit['binary'].int8_bytes:,}",
                f"{lowbit['binary'].packed_bytes:,}",
            ],
        ],
    )
    qat_row = rows[list(files).index("QAT int8 (ours, Keras 3)")]
    body = (
        f"Digits CNN (Conv16-Pool-Conv32-Dense64-Dense10, {model.count_params():,} parameters), "
        f"trained {epochs} epochs on {len(x)} of scikit-learn's digits; QAT and clustering "
        f"fine-tune {qat_epochs} epoch(s) from it; tested on {len(xt)} held-out images. "
        f"Keras float accuracy {float_acc:.4f} (tf_keras twin {twin_acc:.4f}). QAT files are "
        "converted with optimizations=[DEFAULT] and no representative data. Latency: LiteRT, "
        f"1 thread, one sample per call, median of {runs} calls, {repetitions} alternating "
        f"repetitions.{' (quick mode)' if quick else ''}\n\n{table}\n\n"
        f"Our QAT int8 file vs the float Keras model: {float(qat_row[2]) - float_acc:+.4f} "
        f"accuracy.\n\n**Training step overhead** (fit() over {len(x)} samples, batch "
        f"32, {repetitions} alternating repetitions):\n\n{overhead}\n\n"
        f"**Clustering** (16 clusters per kernel, k-means++, {qat_epochs} fine-tune epoch(s), "
        f"stripped, float32 file): gzip {float_gzip:,} -> {cluster_gzip:,} bytes "
        f"(**{float_gzip / cluster_gzip:.2f}x** smaller), accuracy {clustered_acc:.4f} vs "
        f"{float_acc:.4f} float.\n\n**Low-bit storage** (TFLite stores every kernel as int8; "
        f"a packed format would need):\n\n{storage}"
    )
    print(body)
    if write:
        _common.update_section("Quantization", body, "benchmarks/quantize.py")
    return rows


def main(argv=None):
    return _common.script_main(run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
