"""Model zoo: every keras.applications and keras-hub family through prune, QAT and int8.

Run: `python -m benchmarks.zoo [--quick] [--only FAMILY ...]`. Rewrites the "Model zoo"
section of BENCHMARKS.md.

Two parts per family (`tfcompress.testing.zoo_model`):

- Real size, random weights (MobileNetV2 1.0, MobileNetV3Small, EfficientNetB0,
  ResNet50, DenseNet121, NASNetMobile, ConvNeXtTiny at 224x224; Embedding + LSTM;
  keras-hub BERT-small 4x256 and RoBERTa / DistilBERT of that size at sequence 128;
  GPT-2 small at sequence 128; ViT-B/16 at 224): float32 / dynamic / QAT-int8 file
  sizes, the share of compute ops that run in int8, LiteRT latency on one thread,
  and the step time of pruning and QAT over plain `fit()` (alternating runs), with
  tfmot on the tf_keras twin where one exists and tfmot accepts it.
- Tiny config, briefly trained on real data (digits upsampled, SST-2): the int8 file
  against its QAT model (`tfcompress.testing.check_model`): cosine, top-1 agreement,
  accuracy. Random deep networks amplify int8 rounding into noise, so fidelity is only
  meaningful on trained models.

`--quick` runs 3 families with fewer timing repetitions; a full run takes over an hour
on 2 cores. Results are kept per family in `benchmarks/zoo_results.json`, so the table
shows the latest row of every family and the mode it came from.
"""

import json
import os
import statistics
import sys
import tempfile
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import _common  # noqa: E402

QUICK = ("mobilenet_v2", "lstm", "bert")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "zoo_results.json")
SEQUENCE = 128
_TF_KERAS_APPS = {
    "mobilenet_v2": "MobileNetV2",
    "mobilenet_v3_small": "MobileNetV3Small",
    "efficientnet_b0": "EfficientNetB0",
    "resnet50": "ResNet50",
    "densenet121": "DenseNet121",
    "nasnet_mobile": "NASNetMobile",
    "convnext_tiny": "ConvNeXtTiny",
}


def _families(names, quick):
    from tfcompress import testing

    return tuple(names) if names else (QUICK if quick else testing.ZOO_FAMILIES)


def _error(e):
    return f"{type(e).__name__}: {str(e).splitlines()[0][:160]}" if str(e) else type(e).__name__


def _feed(runner, model, family):
    """One sample at the benchmark's sequence length, keyed by the file's input names."""
    from tfcompress_edge.runner import quantize_array

    from tfcompress import testing

    inputs = testing.zoo_inputs(model, family, 1, sequence_length=SEQUENCE)
    if not isinstance(inputs, dict):
        inputs = {runner.input_names[0]: inputs}
    return {
        name: quantize_array(inputs[name], runner.input_details[name])
        for name in runner.input_names
    }


def _latency(files, model, family, repetitions, runs):
    """Median ms per file, files timed in alternation."""
    runners = {name: _common.litert_runner(path) for name, path in files.items()}
    feeds = {name: _feed(runner, model, family) for name, runner in runners.items()}
    times = {name: [] for name in runners}
    for _ in range(repetitions):
        for name, runner in runners.items():
            times[name].append(runner.benchmark(runs=runs, warmup=2, inputs=feeds[name]).median_ms)
    return {name: statistics.median(t) for name, t in times.items()}


def _step_times(variants, x, y, steps, repetitions, engine):
    """Median seconds per training step of each compiled model, fits alternating."""
    times = {name: [] for name in variants}
    for _ in range(repetitions):
        for name, (model, callbacks) in variants.items():
            timer = _common.step_timer(engine)
            model.fit(
                x,
                y,
                epochs=1,
                batch_size=len(y) // steps,
                verbose=0,
                callbacks=[timer] + list(callbacks),
            )
            times[name].extend(timer.times[1:])  # the first interval includes tracing
    return {name: statistics.median(t) for name, t in times.items()}


def _training_data(model, family, n):
    import numpy as np

    from tfcompress import testing

    x = testing.zoo_inputs(model, family, n, sequence_length=SEQUENCE)
    y = np.random.default_rng(0).integers(0, model.output_shape[-1], size=n)
    return x, y


def _real_size(family, quick, folder):
    import keras

    from tfcompress import export, prune, quantize, testing
    from tfcompress.export.verification import locate_ops

    row = {}
    model = testing.zoo_model(family, size="full", sequence_length=SEQUENCE)
    row["params"] = model.count_params()
    calibration = testing.zoo_inputs(model, family, 16, sequence_length=SEQUENCE)
    files = {}
    for mode in ("float32", "dynamic"):
        path = os.path.join(folder, f"{family}_{mode}.tflite")
        files[mode] = export.to_tflite(model, path, mode=mode).path
        row[f"{mode}_bytes"] = os.path.getsize(path)
    qat = quantize.quantize_model(model, representative_data=calibration)
    path = os.path.join(folder, f"{family}_int8.tflite")
    files["int8"] = export.to_tflite(qat, path, mode="int8").path
    row["int8_bytes"] = os.path.getsize(path)
    info = export.inspect(path)
    compute = [op for op in info.ops if op.name in export.COMPUTE_OPS]
    row["int8_share"] = sum(str(op.compute_dtype).startswith("int") for op in compute) / max(
        1, len(compute)
    )
    row["compute_ops"] = len(compute)
    row["float_layers"] = sorted(
        {
            f"{op.op} in {op.layer}"
            for op in locate_ops(path, qat, export.COMPUTE_OPS)
            if not str(op.compute_dtype).startswith("int")
        }
    )
    row["kept_float"] = [
        f"{name} ({cls}): {why}"
        for name, cls, why in getattr(qat.quantize_report, "kept_float", ())
    ]
    repetitions, runs = (2, 5) if quick else (3, 20)
    row["latency_ms"] = _latency(files, model, family, repetitions, runs)

    steps, batch = 4, 8
    x, y = _training_data(model, family, steps * batch)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    variants = {}
    for name, m, callbacks in (
        ("plain", model, ()),
        ("prune", prune.prune_low_magnitude(model, 0.5), (prune.UpdatePruningStep(),)),
        ("qat", qat, ()),
    ):
        m.compile(optimizer=keras.optimizers.Adam(1e-5), loss=loss)
        variants[name] = (m, callbacks)
    step = _step_times(variants, x, y, steps, 1 if quick else 2, "keras3")
    row["prune_over_fit"] = step["prune"] / step["plain"]
    row["qat_over_fit"] = step["qat"] / step["plain"]
    row.update(_tfmot_twin(family, x, y, steps, 1 if quick else 2))
    return row


def _tf_keras_twin(family):
    import tf_keras

    if family in _TF_KERAS_APPS:
        return getattr(tf_keras.applications, _TF_KERAS_APPS[family])(
            weights=None, input_shape=(224, 224, 3), classes=10, classifier_activation=None
        )
    if family == "lstm":
        inputs = tf_keras.Input((SEQUENCE,), dtype="int32")
        h = tf_keras.layers.Embedding(20000, 128)(inputs)
        h = tf_keras.layers.LSTM(128)(h)
        return tf_keras.Model(inputs, tf_keras.layers.Dense(2)(h))
    return None  # keras-hub models have no tf_keras twin


def _tfmot_twin(family, x, y, steps, repetitions):
    twin = _tf_keras_twin(family)
    if twin is None:
        return {"tfmot_qat": "no twin", "tfmot_prune": "no twin"}
    import tensorflow_model_optimization as tfmot
    import tf_keras

    loss = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    variants, out = {"plain": (twin, ())}, {}
    for name, make, callbacks in (
        ("tfmot_qat", lambda: tfmot.quantization.keras.quantize_model(twin), ()),
        (
            "tfmot_prune",
            lambda: tfmot.sparsity.keras.prune_low_magnitude(twin),
            (tfmot.sparsity.keras.UpdatePruningStep(),),
        ),
    ):
        try:
            variants[name] = (make(), callbacks)
        except Exception as e:  # tfmot refuses many of these models: that is a result
            out[name] = f"fails: {_error(e)}"
    for model, _ in variants.values():
        model.compile(optimizer=tf_keras.optimizers.Adam(1e-5), loss=loss)
    step = _step_times(variants, x, y, steps, repetitions, "tf_keras")
    for name in variants:
        if name != "plain":
            out[name] = step[name] / step["plain"]
    return out


def _fidelity(family):
    """The zoo test's recipe: trained while pruned 50% (3 epochs), QAT 1 epoch, int8."""
    import warnings

    from tfcompress import testing

    model = testing.zoo_model(family)
    text = family in ("lstm", "bert", "roberta", "distilbert", "gpt2")
    train, test = testing.zoo_data(model, family, n_train=4096 if text else 1024, n_test=128)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = testing.check_model(
            model,
            train,
            eval_data=test,
            prune_epochs=3,
            prune_learning_rate=3e-3,
            raise_on_failure=False,
        )
    row = {"tiny_float_accuracy": report.pruned_accuracy, "tiny_failures": list(report.failures)}
    if report.fidelity is not None:
        row.update(
            tiny_cosine=report.fidelity.cosine,
            tiny_agreement=report.fidelity.top1_agreement,
            tiny_int8_accuracy=report.fidelity.tflite_accuracy,
            tiny_int8_share=report.int8_share,
        )
    try:
        row.update(_tfmot_fidelity(family, train, test))
    except Exception as e:  # tfmot refusing a twin is a result, not a failed row
        traceback.print_exc()
        row["tfmot_tiny"] = f"fails: {_error(e)}"
    return row


def _tfmot_fidelity(family, train, test):
    """tfmot on the tiny tf_keras twin, trained as the zoo test trains ours.

    Pruned 50% by tfmot while trained 3 epochs (Adam 3e-3), stripped, BatchNorm
    statistics recomputed on 256 samples (momentum 0, one training-mode pass),
    tfmot `quantize_model`, one QAT epoch (Adam 1e-4), int8 file; then the file
    against its tfmot QAT model on the same held-out samples.
    """
    import numpy as np

    from tfcompress import export, testing

    # The LSTM (tfmot has no QAT for it) and keras-hub models have no tf_keras twin.
    if family not in testing.APPLICATION_FAMILIES:
        return {"tfmot_tiny": "no twin"}
    twin = testing.zoo_model(family, flavor="tf_keras")
    import tensorflow_model_optimization as tfmot
    import tf_keras

    (x, y), (x_test, y_test) = train, test
    tf_keras.utils.set_random_seed(0)
    loss = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    sparsity = tfmot.sparsity.keras
    pruned = sparsity.prune_low_magnitude(
        twin, pruning_schedule=sparsity.ConstantSparsity(0.5, begin_step=0, frequency=10)
    )
    pruned.compile(optimizer=tf_keras.optimizers.Adam(3e-3), loss=loss)
    pruned.fit(x, y, epochs=3, batch_size=32, callbacks=[sparsity.UpdatePruningStep()], verbose=0)
    stripped = sparsity.strip_pruning(pruned)
    norms = [
        layer for layer in stripped.layers if isinstance(layer, tf_keras.layers.BatchNormalization)
    ]
    for layer in norms:  # as testing.recalibrate_batchnorm does for Keras 3
        layer.momentum = 0.0
    stripped(x[:256], training=True)
    accuracy = float(np.mean(np.argmax(stripped.predict(x_test, verbose=0), -1) == y_test))
    try:
        qat = tfmot.quantization.keras.quantize_model(stripped)
    except Exception as e:  # tfmot refuses many of these models: that is a result
        return {"tfmot_tiny": f"fails: {_error(e)}", "tfmot_tiny_float_accuracy": accuracy}
    qat.compile(optimizer=tf_keras.optimizers.Adam(1e-4), loss=loss)
    qat.fit(x, y, epochs=1, batch_size=32, verbose=0)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, f"{family}_tfmot_int8.tflite")
        export.to_tflite(qat, path, mode="int8")
        check = export.verify(path, qat, (x_test, y_test))
    return {
        "tfmot_tiny": "ok",
        "tfmot_tiny_float_accuracy": accuracy,
        "tfmot_tiny_cosine": check.cosine,
        "tfmot_tiny_agreement": check.top1_agreement,
    }


def _load():
    if os.path.exists(RESULTS):
        with open(RESULTS) as f:
            return json.load(f)
    return {}


def _save_row(family, row):
    """Merge one family's row into the results file; returns all rows.

    Read under a lock just before writing, so two zoo runs at once (different
    families) do not drop each other's rows.
    """
    import fcntl

    from tfcompress._io import atomic_write_text

    with open(RESULTS + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = _load()
        results[family] = row
        atomic_write_text(RESULTS, json.dumps(results, indent=1, sort_keys=True))
    return results


def _fmt(value, kind):
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    return {
        "bytes": lambda v: f"{v / 1e6:.2f} MB",
        "ratio": lambda v: f"{v:.2f}x",
        "pct": lambda v: f"{v:.1%}",
        "ms": lambda v: f"{v:.1f}",
        "cos": lambda v: f"{v:.4f}",
        "m": lambda v: f"{v / 1e6:.1f}M",
    }[kind](value)


def _table(results):
    from tfcompress import testing

    headers = [
        "family",
        "params",
        "float32",
        "dynamic",
        "QAT int8",
        "compute ops in int8",
        "ms float32 / dynamic / int8",
        "prune step / fit",
        "QAT step / fit",
        "tfmot prune / fit",
        "tfmot QAT / fit",
        "tiny: cosine",
        "tiny: top-1 agr.",
        "tiny: acc. float / int8",
        "tiny tfmot: cosine / top-1 agr.",
        "mode",
    ]
    rows, notes = [], []
    for family in testing.ZOO_FAMILIES:
        r = results.get(family)
        if r is None:
            continue
        lat = r.get("latency_ms") or {}
        rows.append(
            [
                family,
                _fmt(r.get("params"), "m"),
                _fmt(r.get("float32_bytes"), "bytes"),
                _fmt(r.get("dynamic_bytes"), "bytes"),
                _fmt(r.get("int8_bytes"), "bytes"),
                _fmt(r.get("int8_share"), "pct"),
                " / ".join(_fmt(lat.get(m), "ms") for m in ("float32", "dynamic", "int8")),
                _fmt(r.get("prune_over_fit"), "ratio"),
                _fmt(r.get("qat_over_fit"), "ratio"),
                _fmt(r.get("tfmot_prune"), "ratio"),
                _fmt(r.get("tfmot_qat"), "ratio"),
                _fmt(r.get("tiny_cosine"), "cos"),
                _fmt(r.get("tiny_agreement"), "pct"),
                _fmt(r.get("tiny_float_accuracy"), "pct")
                + " / "
                + _fmt(r.get("tiny_int8_accuracy"), "pct"),
                _tfmot_cell(r),
                f"{r.get('mode')} {r.get('date', '')}".strip(),
            ]
        )
        for key in ("error", "fidelity_error"):
            if r.get(key):
                notes.append(f"- {family}: {key.replace('_', ' ')}: {r[key]}")
        if r.get("float_layers"):
            shown = ", ".join(r["float_layers"][:6])
            more = len(r["float_layers"]) - 6
            notes.append(
                f"- {family}: float compute ops in the QAT int8 file: {shown}"
                + (f" and {more} more" if more > 0 else "")
            )
        if str(r.get("tfmot_tiny", "")).startswith("fails"):
            notes.append(f"- {family} (tiny, tfmot twin): {r['tfmot_tiny'][:300]}")
        for failure in r.get("tiny_failures", [])[:3]:
            notes.append(f"- {family} (tiny): {failure[:300]}")
    return _common.markdown_table(headers, rows), notes


def _tfmot_cell(r):
    if r.get("tfmot_tiny") != "ok":
        return "–" if r.get("tfmot_tiny") is None else r["tfmot_tiny"].split(":")[0]
    cosine, agreement = r.get("tfmot_tiny_cosine"), r.get("tfmot_tiny_agreement")
    return f"{_fmt(cosine, 'cos')} / {_fmt(agreement, 'pct')}"


def _write_section(results, write):
    table, notes = _table(results)
    body = (
        "Real-size architectures with random weights (224x224 images, sequence 128): file "
        "sizes (float32, dynamic-range, and int8 from `quantize_model` with 16 random "
        "calibration samples), the share of compute ops (CONV_2D, DEPTHWISE_CONV_2D, "
        "FULLY_CONNECTED, BATCH_MATMUL, ...) computing in int8, LiteRT latency on one "
        "thread (median ms, files timed in alternation), and training step time of "
        "pruning and QAT over plain `fit()` (batch 8, alternating fits); tfmot on the "
        "tf_keras twin where one exists. `tiny:` columns are the tiny config of the same "
        "family as in the zoo test: trained 3 epochs on real data while pruned 50% (1,024 digits "
        "upsampled to 32x32; 4,096 SST-2 phrases at sequence 16), QAT fine-tuned one "
        "epoch; the int8 file against its QAT model on 128 held-out samples "
        "(`tfcompress.testing.check_model`); accuracy float = the pruned float model. "
        "`tiny tfmot:` the same for tfmot on the tf_keras twin of the tiny config (same "
        "builder and sizes, same data and training: tfmot pruning, BatchNorm statistics "
        "recomputed, tfmot QAT), where tfmot accepts it."
        " `mode` says which run wrote the row (`quick` uses fewer repetitions).\n\n"
        + table
        + ("\n\n" + "\n".join(notes) if notes else "")
    )
    print(body)
    if write:
        _common.update_section("Model zoo", body, "benchmarks/zoo.py")


def run(quick=False, write=True, families=None):
    """Measure the zoo families (3 with `quick`) and rewrite the "Model zoo" section."""
    results = _load()
    folder = tempfile.mkdtemp(prefix="tfcompress-bench-zoo-")
    mode = "quick" if quick else "full"
    for family in _families(families, quick):
        print(f"-- {family}", flush=True)
        start = time.perf_counter()
        row = {"mode": mode, "date": time.strftime("%Y-%m-%d")}
        try:
            row.update(_real_size(family, quick, folder))
        except Exception as e:  # one family failing is a row of the table
            traceback.print_exc()
            row["error"] = _error(e)
        try:
            row.update(_fidelity(family))
        except Exception as e:
            traceback.print_exc()
            row["fidelity_error"] = _error(e)
        row["seconds"] = round(time.perf_counter() - start)
        results[family] = row
        if write:
            results = _save_row(family, row)
            # The table after every family: a run cut short keeps what it measured.
            _write_section(results, write)
    if not write:
        _write_section(results, write)  # prints the table
    return results


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--only", nargs="+", metavar="FAMILY", help="these families only")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args(argv)
    run(quick=args.quick, write=not args.no_write, families=args.only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
