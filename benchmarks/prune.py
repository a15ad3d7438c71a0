"""Pruning on the digits CNN: our Keras 3 engine vs tfmot (tf_keras twin) vs dense.

Run: `python -m benchmarks.prune [--quick]`. Prints tables and rewrites the
"Pruning" section of BENCHMARKS.md: final sparsity, test accuracy after
fine-tuning, gzip size of the float TFLite file, step-time overhead over a
plain fit() (alternating repetitions), the sparse TFLite encoding's latency,
and remove_units at 50% of units.
"""

import os
import statistics
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import _common  # noqa: E402

ARCH = {"filters": (16, 32), "dense_units": 64}
TARGET = 0.8


def _losses():
    import keras
    import tf_keras

    return {
        "keras3": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        "tf_keras": tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    }


def _optimizer(engine, lr):
    if engine == "keras3":
        import keras

        return keras.optimizers.Adam(lr)
    import tf_keras

    return tf_keras.optimizers.Adam(lr)


def _accuracy(model, data):
    import numpy as np

    return float(np.mean(model.predict(data.x_test, verbose=0).argmax(-1) == data.y_test))


def run(quick=False, write=True):
    from tfcompress import export, prune, testing
    from tfcompress.data import load_digits

    data = load_digits()
    dense_epochs, tune_epochs, repetitions = (5, 3, 3) if quick else (20, 10, 9)
    steps_per_epoch = -(-len(data.x_train) // 32)
    losses = _losses()
    builders = {"keras3": testing.digits_cnn, "tf_keras": testing.tf_keras_digits_cnn}
    folder = tempfile.mkdtemp(prefix="tfcompress-bench-prune-")

    dense, pruned, stripped, results = {}, {}, {}, {}
    for engine, build in builders.items():
        model = build(**ARCH)
        model.compile(_optimizer(engine, 3e-3), losses[engine], metrics=["accuracy"])
        model.fit(data.x_train, data.y_train, epochs=dense_epochs, batch_size=32, verbose=0)
        dense[engine] = model
        schedule = prune.PolynomialDecay(
            0.0,
            TARGET,
            begin_step=0,
            end_step=steps_per_epoch * (tune_epochs - 2),
            frequency=max(1, steps_per_epoch // 4),
        )
        p = prune.prune_low_magnitude(model, schedule)
        p.compile(_optimizer(engine, 1e-3), losses[engine], metrics=["accuracy"])
        p.fit(
            data.x_train,
            data.y_train,
            epochs=tune_epochs,
            batch_size=32,
            verbose=0,
            callbacks=[prune.UpdatePruningStep()],
        )
        pruned[engine] = p
        stripped[engine] = prune.strip_pruning(p)

    # gzip sizes of the float32 files (the dense file of the Keras 3 model is the base).
    files = {"dense": export.to_tflite(dense["keras3"], os.path.join(folder, "dense.tflite"))}
    for engine in builders:
        files[engine] = export.to_tflite(stripped[engine], os.path.join(folder, f"{engine}.tflite"))
    sparse_file = prune.to_sparse_tflite(stripped["keras3"], os.path.join(folder, "sparse.tflite"))

    # Step time: median time of one training step inside fit(), plain vs pruning,
    # per engine; the four runs alternate and repeat (the machine is shared, so a
    # per-step median resists the bursts a whole-epoch time would absorb).
    plain = {}
    for engine, build in builders.items():
        twin = build(**ARCH)
        twin.compile(_optimizer(engine, 1e-3), losses[engine], metrics=["accuracy"])
        plain[engine] = twin
    runs = {}
    for engine in builders:
        runs[f"{engine} plain"] = (plain[engine], [])
        runs[f"{engine} pruning"] = (pruned[engine], [prune.UpdatePruningStep()])
    medians = {name: [] for name in runs}
    for repetition in range(repetitions + 1):
        for name, (model, callbacks) in runs.items():
            timer = _common.step_timer(name.split()[0])
            model.fit(
                data.x_train,
                data.y_train,
                epochs=1,
                batch_size=32,
                verbose=0,
                callbacks=callbacks + [timer],
            )
            if repetition:  # the first round traces the train functions
                # Lower quartile: on a shared machine the bursts land above it.
                medians[name].append(statistics.quantiles(timer.times[1:], n=4)[0])
    overhead = {
        e: [p / q for p, q in zip(medians[f"{e} pruning"], medians[f"{e} plain"], strict=True)]
        for e in builders
    }
    ratio_of_ratios = [a / b for a, b in zip(overhead["keras3"], overhead["tf_keras"], strict=True)]
    rr = statistics.median(overhead["keras3"]) / statistics.median(overhead["tf_keras"])

    base_acc = {e: _accuracy(dense[e], data) for e in builders}
    rows = [
        [
            "dense (Keras 3)",
            "0.0%",
            f"{base_acc['keras3']:.4f}",
            "",
            f"{files['dense'].gzip_bytes:,}",
            "1.00x",
            "",
        ]
    ]
    for engine, label in (
        ("keras3", "80% pruned, ours (Keras 3)"),
        ("tf_keras", "80% pruned, tfmot (tf_keras twin)"),
    ):
        report = prune.sparsity_report(stripped[engine])
        acc = _accuracy(stripped[engine], data)
        results[engine] = (report.sparsity, acc)
        rows.append(
            [
                label,
                f"{report.sparsity:.2%}",
                f"{acc:.4f}",
                f"{acc - base_acc[engine]:+.4f}",
                f"{files[engine].gzip_bytes:,}",
                f"{files['dense'].gzip_bytes / files[engine].gzip_bytes:.2f}x",
                _common.median_spread(overhead[engine], "{:.2f}"),
            ]
        )
    table = _common.markdown_table(
        [
            "model",
            "sparsity of pruned layers",
            "test accuracy",
            "vs its dense",
            "float TFLite gzip bytes",
            "dense / this (gzip)",
            "step time / plain fit()",
        ],
        rows,
    )

    # Sparse TFLite encoding and remove_units latency (LiteRT, 1 thread, alternating).
    small = prune.remove_units(dense["keras3"], 0.5)
    small.compile(_optimizer("keras3", 1e-3), losses["keras3"], metrics=["accuracy"])
    small_acc_before = _accuracy(small, data)
    small.fit(data.x_train, data.y_train, epochs=tune_epochs, batch_size=32, verbose=0)
    small_file = export.to_tflite(small, os.path.join(folder, "small.tflite"))
    runners = {
        name: _common.litert_runner(path)
        for name, path in (
            ("dense", files["dense"].path),
            ("pruned", files["keras3"].path),
            ("sparse", sparse_file.path),
            ("half units", small_file.path),
        )
    }
    runs = 200 if quick else 1000
    latency = {name: [] for name in runners}
    for _ in range(repetitions):
        for name, runner in runners.items():
            latency[name].append(runner.benchmark(runs=runs, warmup=50).median_ms)
    speed = {
        name: [d / t for d, t in zip(latency["dense"], latency[name], strict=True)]
        for name in runners
    }

    macs = prune.count_macs
    rows2 = [
        [
            "dense",
            f"{dense['keras3'].count_params():,}",
            f"{macs(dense['keras3']):,}",
            f"{base_acc['keras3']:.4f}",
            f"{files['dense'].bytes:,}",
            _common.median_spread([t * 1000 for t in latency["dense"]], "{:.1f}"),
            "1.00",
        ],
        [
            "80% pruned, dense storage",
            f"{dense['keras3'].count_params():,}",
            "(same)",
            f"{results['keras3'][1]:.4f}",
            f"{files['keras3'].bytes:,}",
            _common.median_spread([t * 1000 for t in latency["pruned"]], "{:.1f}"),
            _common.median_spread(speed["pruned"], "{:.2f}"),
        ],
        [
            f"80% pruned, EXPERIMENTAL_SPARSITY ({sparse_file.sparse_tensors} sparse tensors)",
            f"{dense['keras3'].count_params():,}",
            "(same)",
            f"{results['keras3'][1]:.4f}",
            f"{sparse_file.bytes:,}",
            _common.median_spread([t * 1000 for t in latency["sparse"]], "{:.1f}"),
            _common.median_spread(speed["sparse"], "{:.2f}"),
        ],
        [
            "remove_units(0.5), fine-tuned",
            f"{small.count_params():,}",
            f"{macs(small):,}",
            f"{_accuracy(small, data):.4f} (before fine-tuning {small_acc_before:.4f})",
            f"{small_file.bytes:,}",
            _common.median_spread([t * 1000 for t in latency["half units"]], "{:.1f}"),
            _common.median_spread(speed["half units"], "{:.2f}"),
        ],
    ]
    table2 = _common.markdown_table(
        [
            "float32 TFLite",
            "params",
            "MACs",
            "test accuracy",
            "bytes",
            "latency us, median (min-max)",
            "speed-up vs dense",
        ],
        rows2,
    )

    wide_rows = _wide_remove_units(data, quick, repetitions, runs, folder)
    table3 = _common.markdown_table(
        [
            "float32 TFLite, wide CNN (Conv64-Conv128-Dense256)",
            "params",
            "MACs",
            "test accuracy",
            "bytes",
            "latency us, median (min-max)",
            "speed-up vs dense",
        ],
        wide_rows,
    )

    body = (
        f"Digits CNN (Conv16-Pool-Conv32-Dense64-Dense10, "
        f"{dense['keras3'].count_params():,} parameters), trained {dense_epochs} epochs on "
        f"{len(data.x_train)} of scikit-learn's digits, then pruned to {TARGET:.0%} with "
        f"`PolynomialDecay` over {tune_epochs - 2} of {tune_epochs} fine-tuning epochs "
        "(Adam 1e-3). Default plan: the first conv and the classifier stay dense, so "
        "sparsity is measured over the pruned layers (conv1, dense). Test accuracy on "
        f"{len(data.x_test)} held-out images. Step time: lower quartile of the times of the "
        f"training steps of one epoch of fit() with the pruning wrappers and "
        f"`UpdatePruningStep` / the same for plain fit() of the same architecture; "
        f"{repetitions} alternating one-epoch repetitions, median (min-max) over them."
        f"\n\n{table}\n\n"
        f"Step-time overhead, ours / tfmot's (ratio of the median ratios): **{rr:.2f}** "
        f"(per repetition: min {min(ratio_of_ratios):.2f}, max {max(ratio_of_ratios):.2f}).\n\n"
        f"LiteRT (1 thread, one sample per call, median of {runs} calls, {repetitions} "
        f"alternating repetitions):\n\n{table2}\n\n"
        "On this 38k-parameter CNN one inference takes a few microseconds, mostly fixed "
        "per-call cost, so removing units shows little. The same `remove_units(0.5)` on a "
        "wider CNN, where compute dominates:\n\n" + table3 + ("\n\n(quick mode)" if quick else "")
    )
    print(body)
    if write:
        _common.update_section("Pruning", body, "benchmarks/prune.py")
    return body


def _wide_remove_units(data, quick, repetitions, runs, folder):
    """remove_units(0.5) on a compute-bound CNN: parameters, MACs, accuracy, latency."""
    import keras

    from tfcompress import export, prune, testing

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    wide = testing.digits_cnn(filters=(64, 128), dense_units=256, name="wide")
    wide.compile(keras.optimizers.Adam(2e-3), loss, metrics=["accuracy"])
    wide.fit(data.x_train, data.y_train, epochs=3 if quick else 8, batch_size=32, verbose=0)
    half = prune.remove_units(wide, 0.5)
    half.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    half.fit(data.x_train, data.y_train, epochs=2 if quick else 4, batch_size=32, verbose=0)
    files = {
        name: export.to_tflite(model, os.path.join(folder, f"wide_{name}.tflite"))
        for name, model in (("dense", wide), ("half", half))
    }
    runners = {name: _common.litert_runner(f.path) for name, f in files.items()}
    latency = {name: [] for name in runners}
    for _ in range(repetitions):
        for name, runner in runners.items():
            latency[name].append(runner.benchmark(runs=runs // 2, warmup=30).median_ms)
    speed = [d / h for d, h in zip(latency["dense"], latency["half"], strict=True)]
    rows = []
    for name, model, label, ratio in (
        ("dense", wide, "dense", "1.00"),
        ("half", half, "remove_units(0.5), fine-tuned", _common.median_spread(speed, "{:.2f}")),
    ):
        rows.append(
            [
                label,
                f"{model.count_params():,}",
                f"{prune.count_macs(model):,}",
                f"{_accuracy(model, data):.4f}",
                f"{files[name].bytes:,}",
                _common.median_spread([t * 1000 for t in latency[name]], "{:.1f}"),
                ratio,
            ]
        )
    return rows


def main(argv=None):
    return _common.script_main(run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
