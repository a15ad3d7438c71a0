"""Run the TFLite converter in a child process, so that a crash in it cannot kill the caller.

The converter is C++; on some graphs (int8 calibration of LSTM/GRU loops) it
dies with a segmentation fault, which in-process takes the user's Python
session with it. Here the parent writes the SavedModel and the calibration
samples to a temporary folder, a fresh `python -m tfcompress.export._isolated`
converts them, and a crash or an error comes back as a `ConversionError`.
It costs a second TensorFlow import (a few seconds), so `to_tflite` uses it
where crashes are known (recurrent models) or when asked (`isolate=True`).
"""

import json
import os
import signal
import subprocess
import sys

import numpy as np

from tfcompress.errors import ConversionError

_RESULT = "model.tflite"
_ERROR = "error.txt"


def convert(
    saved_model_dir,
    folder,
    mode,
    quantization_aware,
    int8_io,
    calibration,
    as_dict,
    verbose=False,
    timeout=None,
):
    """Convert `saved_model_dir` in a child process; returns the `.tflite` bytes.

    Args:
        saved_model_dir: the SavedModel written by the caller.
        folder: a private temporary folder for the job files.
        mode: the registered export mode's name.
        quantization_aware: configure for a QAT graph (ranges in the graph).
        int8_io: integer inputs and outputs.
        calibration: a `CalibrationSet`, or `None`.
        as_dict: feed calibration samples keyed by input name.
        verbose: let the converter's messages through.
        timeout: seconds before the child is stopped.

    Raises:
        ConversionError: the child crashed, timed out or the converter failed.
    """
    job = {
        "saved_model": saved_model_dir,
        "mode": mode,
        "quantization_aware": bool(quantization_aware),
        "int8_io": bool(int8_io),
        "as_dict": bool(as_dict),
        "names": None,
        "folder": folder,
    }
    if calibration is not None:
        job["names"] = [s.name for s in calibration.specs]
        np.savez(
            os.path.join(folder, "calibration.npz"),
            **{
                f"input{i}": np.concatenate([sample[i] for sample in calibration.samples])
                for i in range(len(calibration.specs))
            },
        )
    with open(os.path.join(folder, "job.json"), "w") as f:
        json.dump(job, f)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    output = None if verbose else subprocess.DEVNULL
    try:
        code = subprocess.run(
            [sys.executable, "-m", "tfcompress.export._isolated", folder],
            stdout=output,
            stderr=output,
            env=env,
            timeout=timeout,
        ).returncode
    except subprocess.TimeoutExpired:
        raise ConversionError(
            f"The TFLite converter did not finish within {timeout} s (mode {mode!r}); it was "
            "stopped. Try a simpler mode ('float32' or 'dynamic')."
        ) from None
    result = os.path.join(folder, _RESULT)
    if code == 0 and os.path.exists(result):
        with open(result, "rb") as f:
            return f.read()
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        raise ConversionError(
            f"The TFLite converter crashed ({name}) in mode {mode!r}. It ran in a separate "
            "process, so this one is unharmed. Recurrent layers (LSTM/GRU loops) crash its "
            "int8 calibration: export them with mode='dynamic' or 'float32'."
        )
    message = "no output"
    error = os.path.join(folder, _ERROR)
    if os.path.exists(error):
        with open(error) as f:
            message = f.read().strip() or message
    raise ConversionError(message)


def _child(folder):
    """The child's side: read the job, convert, write the file (or the error)."""
    import tensorflow as tf

    with open(os.path.join(folder, "job.json")) as f:
        job = json.load(f)
    try:
        converter = tf.lite.TFLiteConverter.from_saved_model(job["saved_model"])
        if job["quantization_aware"]:
            from tfcompress.quantize import configure_converter as configure
        else:
            from tfcompress.export.modes import get_mode

            configure = get_mode(job["mode"]).configure
        configure(converter, tf, job["int8_io"])
        if job["names"] is not None:
            stored = np.load(os.path.join(folder, "calibration.npz"))
            arrays = [stored[f"input{i}"] for i in range(len(job["names"]))]

            def samples():
                for row in range(len(arrays[0])):
                    sample = [a[row : row + 1] for a in arrays]
                    yield dict(zip(job["names"], sample)) if job["as_dict"] else sample

            converter.representative_dataset = samples
        data = converter.convert()
    except Exception as e:  # the converter raises many unrelated types
        with open(os.path.join(folder, _ERROR), "w") as f:
            f.write(f"{type(e).__name__}: {e}")
        return 1
    with open(os.path.join(folder, _RESULT), "wb") as f:
        f.write(data)
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
