"""Keras's built-in `model.quantize("int8")`, as its own row: accuracy, and whether it exports.

The export column comes from a real attempt with the TFLite converter on
every route, not from a note. Run: `python -m benchmarks.keras_builtin`.
"""

import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import _common  # noqa: E402


def _raw_conversion(model, folder):
    """Try the converter directly (both routes) and return (ok, message)."""
    import tensorflow as tf

    from tfcompress.export.convert import _last_lines, _quiet

    errors = []
    for route in ("from_keras_model", "saved_model"):
        try:
            with _quiet(True):
                if route == "from_keras_model":
                    converter = tf.lite.TFLiteConverter.from_keras_model(model)
                else:
                    saved = os.path.join(folder, "sm")
                    model.export(saved, format="tf_saved_model", verbose=False)
                    converter = tf.lite.TFLiteConverter.from_saved_model(saved)
                data = converter.convert()
            return True, f"{route}: {len(data):,} bytes"
        except Exception as e:
            errors.append(f"{route}: {_last_lines(str(e), n=1)}")
    return False, " / ".join(errors)


def run(quick=False, write=True):
    import keras

    from benchmarks.export_modes import train_digits_cnn
    from tfcompress.data import load_digits

    data = load_digits()
    model = train_digits_cnn(data, epochs=5 if quick else 20)
    _, float_accuracy = model.evaluate(data.x_test, data.y_test, verbose=0)
    quantized = keras.models.clone_model(model)
    quantized.set_weights(model.get_weights())
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one warning per layer without int8 support
        quantized.quantize("int8")
    quantized.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )
    _, q_accuracy = quantized.evaluate(data.x_test, data.y_test, verbose=0)
    int8_layers = sorted({w.path.split("/")[0] for w in quantized.weights if w.dtype == "int8"})
    with tempfile.TemporaryDirectory() as folder:
        ok, message = _raw_conversion(quantized, folder)
    rows = [
        ["float model (Keras)", f"{float_accuracy:.4f}", "-", "yes (see Export modes)"],
        [
            '`model.quantize("int8")`',
            f"{q_accuracy:.4f}",
            ", ".join(int8_layers) or "none",
            ("yes: " if ok else "**no**: ") + message.replace("|", "\\|"),
        ],
    ]
    table = _common.markdown_table(
        ["model", "test accuracy (Keras)", "layers holding int8 weights", "converts to TFLite"],
        rows,
    )
    body = (
        "Keras 3's built-in weight-only int8 quantization on the digits CNN (same training "
        "as the Export modes section). Keras quantizes only Dense / EinsumDense / Embedding "
        "layers (Conv2D has no `quantize` method). The export column is the TFLite "
        "converter's own verdict, tried on both routes.\n\n"
        + table
        + ("\n\n(quick mode)" if quick else "")
    )
    print(body)
    if write:
        _common.update_section("Keras built-in quantization", body, "benchmarks/keras_builtin.py")
    return rows


def main(argv=None):
    return _common.script_main(run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
