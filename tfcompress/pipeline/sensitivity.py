"""Per-layer sensitivity for `tune`: how much each layer suffers at int8, int4 or int2.

Measured on the *file*: one layer kept float (int8) or one layer at the low width (the
others float), exported, and compared with the float model on the validation split.
Results are cached beside the search, keyed on the base model.
"""

import json
import os

import numpy as np

from tfcompress import _io
from tfcompress.pipeline.search_space import kernels

CALIBRATION = 256  # training samples that calibrate PTQ ranges


def predict(model, x):
    return np.asarray(model.predict(x, batch_size=256, verbose=0), dtype=np.float32)


def accuracy(model, x, y):
    return float(np.mean(np.argmax(predict(model, x), -1) == y))


def head(x, n):
    return {k: v[:n] for k, v in x.items()} if isinstance(x, dict) else x[:n]


def int8_sensitivity(base, data, out_dir, base_key, force, progress):
    """Rank the quantizable layers by what keeping each one float buys in the int8 file.

    For each layer, the base model is quantized (PTQ ranges) with that layer
    kept float, exported, and the *file* is compared with the float model on
    the validation split. Layers are ranked by how much the mean absolute
    output error shrinks against the all-int8 file (on a few hundred samples
    accuracy moves by single samples, as likely to fall as to rise); the
    accuracy change is recorded too. A layer the converter quantizes anyway
    (a float layer between two quantized tensors is turned int8 by it) is
    marked `stays_float: false` and never offered as a float layer.
    """
    from tfcompress import export, quantize

    path = os.path.join(out_dir, "sensitivity.json")
    if not force and os.path.isfile(path):
        saved = json.load(open(path))
        if saved.get("base") == base_key:
            progress("per-layer sensitivity: measured before, reusing")
            return saved["layers"]
    progress("per-layer sensitivity: int8 files with one layer kept float at a time")
    folder = os.path.join(out_dir, "sensitivity")
    os.makedirs(folder, exist_ok=True)
    calibration = head(data.x_train, CALIBRATION)

    def score(skip, name):
        q = quantize.quantize_model(
            base, quantize.QuantizeConfig(skip_layers=skip), representative_data=calibration
        )
        file = os.path.join(folder, f"{name}.tflite")
        export.to_tflite(q, file, mode="int8")
        check = export.verify(file, base, (data.x_val, data.y_val), max_samples=10**9)
        floats = len(export.inspect(file).float_compute_ops())
        return check.tflite_accuracy, check.mean_abs_diff, floats, q.quantize_report

    all_acc, all_err, _, report = score((), "all_int8")
    layers = [name for name, _, scheme in report.quantized if scheme is not None]
    rows = []
    for name in layers:
        acc, err, floats, _ = score((name,), name)
        rows.append(
            dict(
                layer=name,
                accuracy_gain=acc - all_acc,
                error_gain=all_err - err,
                stays_float=floats > 0,
            )
        )
        progress(
            f"  {name} kept float: validation accuracy {acc:.4f} ({acc - all_acc:+.4f}), "
            f"mean |output error| {err:.4g} (all int8 {all_err:.4g})"
            + ("" if floats else "; the converter made it int8 anyway")
        )
    rows.sort(key=lambda r: (not r["stays_float"], -r["error_gain"], -r["accuracy_gain"]))
    _io.atomic_write_text(
        path,
        json.dumps(
            dict(base=base_key, all_int8_accuracy=all_acc, all_int8_error=all_err, layers=rows),
            indent=2,
        ),
    )
    return rows


def bit_sensitivity(base, data, out_dir, base_key, force, progress, widths):
    """`{width: [layer, ...]}`, most sensitive first: one layer at the width, the rest float.

    Each file is litert-quantizer's (`tfcompress.export.lowbit`), measured
    against the float model on the validation split (mean |output error|).
    """
    if not widths:
        return {}
    from tfcompress import export
    from tfcompress.export import lowbit

    path = os.path.join(out_dir, "bit_sensitivity.json")
    if not force and os.path.isfile(path):
        saved = json.load(open(path))
        if saved.get("base") == base_key and all(str(w) in saved["errors"] for w in widths):
            progress("per-layer bit-width sensitivity: measured before, reusing")
            return _rank_bits(saved["errors"], widths)
    progress(
        f"per-layer bit-width sensitivity: one layer at int{'/int'.join(map(str, widths))}"
        ", the others float"
    )
    folder = os.path.join(out_dir, "bit_sensitivity")
    os.makedirs(folder, exist_ok=True)
    errors = {}
    for width in widths:
        errors[str(width)] = {}
        for name in kernels(base):
            file = os.path.join(folder, f"{name}_int{width}.tflite")
            written = lowbit.to_lowbit_tflite(
                base, file, mode=f"int{width}", layers={"*": "float", name: f"int{width}"}
            )
            if not any(c.got == f"int{width}" for c in written.layers):
                continue  # the quantizer cannot take this layer at this width
            check = export.verify(file, base, (data.x_val, data.y_val), max_samples=10**9)
            errors[str(width)][name] = check.mean_abs_diff
            progress(f"  {name} at int{width}: mean |output error| {check.mean_abs_diff:.4g}")
    _io.atomic_write_text(path, json.dumps(dict(base=base_key, errors=errors), indent=2))
    return _rank_bits(errors, widths)


def _rank_bits(errors, widths):
    return {w: sorted(errors[str(w)], key=lambda n: -errors[str(w)][n]) for w in widths}
