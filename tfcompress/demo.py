"""`tfcompress demo`: the whole export path on real embedded data, in about a minute.

Train a small CNN on scikit-learn's bundled digits, export it in every mode,
verify each file against Keras in LiteRT, time it, and write a table.
"""

import json
import os

from tfcompress import _io


def run_demo(out_dir="tfcompress_demo", epochs=20, threads=1, runs=200, progress=print):
    """Run the demo and return its rows (one dict per export mode).

    Args:
        out_dir: folder for the model, the `.tflite` files and `summary.md`.
        epochs: training epochs for the CNN.
        threads: LiteRT threads for timing.
        runs: timed runs per file.
        progress: called with one line per step.

    Returns:
        A list of dicts: mode, bytes, gzip_bytes, accuracy, keras_accuracy,
        agreement, latency_ms.
    """
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise NotADirectoryError(
            f"The output folder '{out_dir}' is a file. Pass --out with a folder path.")
    os.makedirs(out_dir, exist_ok=True)

    import keras

    from tfcompress import export, testing
    from tfcompress.data import load_digits

    progress("loading scikit-learn's digits (1,797 real 8x8 images, bundled, no download)")
    data = load_digits()
    progress(f"training a digits CNN for {epochs} epochs on {len(data.x_train)} images")
    model = testing.digits_cnn(filters=(16, 32), dense_units=64)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(data.x_train, data.y_train, validation_data=(data.x_val, data.y_val),
              epochs=epochs, batch_size=32, verbose=2)
    model_path = os.path.join(out_dir, "digits_cnn.keras")
    with _io.atomic_path(model_path) as tmp:
        os.replace(_save_keras(model, tmp), tmp)

    rows = []
    for mode in export.available_modes():
        progress(f"exporting {mode}, verifying in LiteRT, timing {runs} runs")
        result = export.to_tflite(model, os.path.join(out_dir, f"digits_{mode}.tflite"),
                                  mode=mode, representative_data=data.x_train)
        check = export.verify(result.path, model, (data.x_test, data.y_test))
        latency = export.benchmark(result.path, num_threads=threads, runs=runs)
        rows.append(dict(mode=mode, bytes=result.bytes, gzip_bytes=result.gzip_bytes,
                         accuracy=check.tflite_accuracy, keras_accuracy=check.keras_accuracy,
                         agreement=check.top1_agreement, latency_ms=latency.median_ms))

    table = format_table(rows)
    _io.atomic_write_text(os.path.join(out_dir, "summary.md"),
                          "# tfcompress demo: digits CNN\n\n" + table + "\n")
    _io.atomic_write_text(os.path.join(out_dir, "summary.json"), json.dumps(rows, indent=2))
    print(table)
    progress(f"wrote {out_dir}/summary.md and {len(rows)} .tflite files")
    return rows


def _save_keras(model, tmp):
    # Keras insists on the .keras suffix, so save beside the temp name and move.
    target = tmp + ".keras"
    model.save(target)
    return target


def format_table(rows):
    """Markdown table of the demo's rows, sizes relative to float32."""
    base = next(r for r in rows if r["mode"] == "float32")
    lines = [
        "| mode | bytes | gzip bytes | size vs float32 | test accuracy (TFLite) | "
        "Keras accuracy | top-1 agreement | latency median ms | latency vs float32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['bytes']:,} | {r['gzip_bytes']:,} | "
            f"{base['bytes'] / r['bytes']:.2f}x smaller | {r['accuracy']:.4f} | "
            f"{r['keras_accuracy']:.4f} | {r['agreement']:.2%} | {r['latency_ms']:.4f} | "
            f"{r['latency_ms'] / base['latency_ms']:.2f} |"
        )
    return "\n".join(lines)
