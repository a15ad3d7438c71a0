"""Evaluate a `.tflite` file on a device: accuracy and latency, with LiteRT only.

Needs `numpy` and `ai-edge-litert` (no TensorFlow). Copy this folder to the
device and run:

    python evaluate.py model.tflite data.npz --threads 1 --runs 50

`data.npz` holds `x` (inputs; or one `x_<input name>` array per input of a
multi-input model) and optionally `y` (integer labels). Float inputs are
quantized for int8 files using the file's own scale and zero point.
"""

import argparse
import json
import os
import sys
import zipfile

import numpy as np

try:
    from tfcompress_edge.runner import (
        InvalidModelFileError,
        TFLiteRunner,
        labels_to_classes,
        top1,
    )
except ImportError:  # run as a copied script: the runner sits next to this file
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from runner import InvalidModelFileError, TFLiteRunner, labels_to_classes, top1


def load_npz(path):
    """Read inputs and labels from an `.npz` file: `x` or `x_<name>`, and `y`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No data file at '{path}'.")
    with np.load(path, allow_pickle=False) as data:
        keys = list(data.keys())
        labels = data["y"] if "y" in keys else None
        if "x" in keys:
            return data["x"], labels
        named = {k[2:]: data[k] for k in keys if k.startswith("x_")}
    if not named:
        raise ValueError(
            f"'{path}' has arrays {keys}; expected 'x' (or 'x_<input name>' per input) and "
            "optionally 'y'."
        )
    return named, labels


def evaluate(model_path, data_path, num_threads=1, runs=50, batch_size=32):
    """Return a dict with accuracy (when labels are present) and latency."""
    runner = TFLiteRunner(model_path, num_threads=num_threads)
    inputs, labels = load_npz(data_path)
    outputs = runner.predict(inputs, batch_size=batch_size)
    if isinstance(outputs, dict):
        outputs = outputs[runner.output_names[0]]
    result = {"model": model_path, "samples": int(len(outputs))}
    if labels is not None:
        result["accuracy"] = float(np.mean(top1(outputs) == labels_to_classes(labels, outputs)))
    latency = runner.benchmark(runs=runs)
    result.update(
        latency_median_ms=latency.median_ms,
        latency_p90_ms=latency.p90_ms,
        num_threads=num_threads,
        bytes=os.path.getsize(model_path),
    )
    return result


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="evaluate.py",
        description="Accuracy and latency of a .tflite file with LiteRT only (no TensorFlow).",
    )
    parser.add_argument("model", help="the .tflite file")
    parser.add_argument("data", help=".npz with x (or x_<input>) and optional y")
    parser.add_argument("--threads", type=_positive_int, default=1, help="CPU threads (default 1)")
    parser.add_argument("--runs", type=_positive_int, default=50, help="timed runs (default 50)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        result = evaluate(args.model, args.data, num_threads=args.threads, runs=args.runs)
    except (InvalidModelFileError, OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        print(f"model      {result['model']} ({result['bytes']} bytes)")
        print(f"samples    {result['samples']}")
        if "accuracy" in result:
            print(f"accuracy   {result['accuracy']:.4f}")
        print(
            f"latency    median {result['latency_median_ms']:.3f} ms, "
            f"p90 {result['latency_p90_ms']:.3f} ms on {args.threads} thread(s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
