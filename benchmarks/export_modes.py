"""Export modes on the digits CNN: size, accuracy and LiteRT latency per mode.

Run: `python -m benchmarks.export_modes [--quick]`. Prints a table and
rewrites the "Export modes" section of BENCHMARKS.md.
"""

import os
import statistics
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import _common  # noqa: E402


def train_digits_cnn(data, epochs):
    import keras

    from tfcompress import testing

    model = testing.digits_cnn(filters=(16, 32), dense_units=64)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(data.x_train, data.y_train, epochs=epochs, batch_size=32, verbose=0)
    return model


def run(quick=False, write=True):
    from tfcompress import export
    from tfcompress.data import load_digits

    data = load_digits()
    model = train_digits_cnn(data, epochs=5 if quick else 20)
    repetitions, runs = (3, 100) if quick else (7, 500)
    folder = tempfile.mkdtemp(prefix="tfcompress-bench-")
    results, checks = {}, {}
    for mode in export.available_modes():
        results[mode] = export.to_tflite(
            model,
            os.path.join(folder, f"{mode}.tflite"),
            mode=mode,
            representative_data=data.x_train,
        )
        checks[mode] = export.verify(results[mode].path, model, (data.x_test, data.y_test))

    # Alternate the files within each repetition so machine noise hits all alike.
    runners = {mode: _common.litert_runner(r.path) for mode, r in results.items()}
    latency = {mode: [] for mode in results}
    for _ in range(repetitions):
        for mode, runner in runners.items():
            latency[mode].append(runner.benchmark(runs=runs, warmup=20).median_ms)
    ratio_int8 = [i / f for i, f in zip(latency["int8"], latency["float32"])]

    base = results["float32"]
    rows = []
    for mode, r in results.items():
        c = checks[mode]
        ratios = [t / f for t, f in zip(latency[mode], latency["float32"])]
        rows.append(
            [
                mode,
                f"{r.bytes:,}",
                f"{r.gzip_bytes:,}",
                f"{base.bytes / r.bytes:.2f}x",
                f"{c.tflite_accuracy:.4f}",
                f"{c.tflite_accuracy - c.keras_accuracy:+.4f}",
                f"{c.top1_agreement:.2%}",
                _common.median_spread([t * 1000 for t in latency[mode]], "{:.2f}"),
                _common.median_spread(ratios, "{:.2f}"),
            ]
        )
    table = _common.markdown_table(
        [
            "mode",
            "bytes",
            "gzip bytes",
            "float32 / mode size",
            "test accuracy (LiteRT)",
            "vs Keras float",
            "top-1 agreement",
            "latency us, median (min-max)",
            "latency / float32",
        ],
        rows,
    )
    body = (
        f"Digits CNN (Conv16-Pool-Conv32-Dense64-Dense10, {model.count_params():,} "
        f"parameters), trained on {len(data.x_train)} of scikit-learn's digits, tested on "
        f"{len(data.x_test)} held-out images. Keras float accuracy: "
        f"{checks['float32'].keras_accuracy:.4f}. Latency: LiteRT (ai-edge-litert, XNNPACK), "
        f"1 thread, one sample per call, median of {runs} calls, {repetitions} alternating "
        f"repetitions.\n\n{table}\n\n"
        f"LiteRT latency ratio int8 / float32 on one thread: "
        f"**{statistics.median(ratio_int8):.2f}** (min {min(ratio_int8):.2f}, max "
        f"{max(ratio_int8):.2f}).{' (quick mode)' if quick else ''}"
    )
    print(body)
    if write:
        _common.update_section("Export modes", body, "benchmarks/export_modes.py")
    return rows


def main(argv=None):
    return _common.script_main(run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
