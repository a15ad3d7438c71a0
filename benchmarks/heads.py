"""Attention-head removal on BERT-small: LiteRT latency with half the heads, float32 and int8.

Run: `python -m benchmarks.heads [--quick]`. Prints a table and rewrites the
"Attention-head removal" section of BENCHMARKS.md.

BERT-small here: keras-hub `BertBackbone`, 4 layers, hidden 256, 4 heads of
64, feed-forward 1024, random weights, a 5,000-token vocabulary (the
vocabulary only sizes the embedding table, not the per-token work), inputs
fixed at batch 1 and 128 tokens. `prune.remove_heads(model, 0.5)` keeps 2
heads per layer; a third model also loses half its feed-forward units
(`prune.remove_units(model, 0.5)`), for scale. Full mode adds the same
comparison with 8 heads of 32 (50% removal is then 4 of 8 heads).
"""

import os
import statistics
import sys
import tempfile
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import _common  # noqa: E402

LAYERS, HIDDEN, FFN, SEQ, VOCAB = 4, 256, 1024, 128, 5000


def bert_small(num_heads, seed=0):
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=VOCAB,
        num_layers=LAYERS,
        num_heads=num_heads,
        hidden_dim=HIDDEN,
        intermediate_dim=FFN,
        max_sequence_length=SEQ,
    )
    return keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=None)


def encoder_macs(attention_width, ffn):
    """Multiply-adds of one encoder layer per sequence, with `attention_width` = heads x size."""
    projections = 4 * SEQ * HIDDEN * attention_width  # query, key, value, output
    scores = 2 * SEQ * SEQ * attention_width  # q.k and attention-weighted values
    return projections + scores + 2 * SEQ * HIDDEN * ffn


def _variants(num_heads):
    from tfcompress import prune

    full = bert_small(num_heads)
    heads = prune.remove_heads(full, 0.5)
    both = prune.remove_units(heads, 0.5)
    return {
        f"{num_heads} heads (all)": full,
        f"{num_heads // 2} of {num_heads} heads": heads,
        f"{num_heads // 2} of {num_heads} heads, FFN {FFN // 2}": both,
    }


def measure(num_heads, folder, repetitions, runs):
    """Rows of the table for BERT-small with `num_heads` heads, and the float32 speed-up."""
    from tfcompress import export, testing

    models = _variants(num_heads)
    calibration = testing.random_bert_inputs(32, vocabulary_size=VOCAB, sequence_length=SEQ)
    check = testing.random_bert_inputs(16, vocabulary_size=VOCAB, sequence_length=SEQ, seed=1)
    files, errors = {}, {}
    for mode in ("float32", "int8"):
        for i, (name, model) in enumerate(models.items()):
            path = os.path.join(folder, f"bert_small_{num_heads}_{i}_{mode}.tflite")
            files[name, mode] = export.to_tflite(
                model,
                path,
                mode=mode,
                batch_size=1,
                sequence_length=SEQ,
                representative_data=calibration if mode == "int8" else None,
            )
            with warnings.catch_warnings():  # random weights: near-constant class logits
                warnings.simplefilter("ignore")
                errors[name, mode] = export.verify(path, model, check).relative_error

    # Alternate the files within each repetition so machine noise hits all alike.
    runners = {key: _common.litert_runner(r.path) for key, r in files.items()}
    latency = {key: [] for key in files}
    for _ in range(repetitions):
        for key, runner in runners.items():
            latency[key].append(runner.benchmark(runs=runs, warmup=5).median_ms)

    rows, speedups = [], {}
    base = next(iter(models))
    for mode in ("float32", "int8"):
        for name, model in models.items():
            ms = latency[name, mode]
            speedup = [b / t for b, t in zip(latency[base, mode], ms, strict=True)]
            speedups[name, mode] = statistics.median(speedup)
            rows.append(
                [
                    name,
                    mode,
                    f"{model.count_params():,}",
                    f"{files[name, mode].bytes:,}",
                    f"{errors[name, mode]:.2g}",
                    _common.median_spread(ms, "{:.2f}"),
                    "1.00x (baseline)"
                    if name == base
                    else _common.median_spread(speedup, "{:.2f}") + "x",
                ]
            )
    return rows, speedups


def run(quick=False, write=True):
    repetitions, runs = (3, 20) if quick else (7, 50)
    with tempfile.TemporaryDirectory(prefix="tfcompress-bench-heads-") as folder:
        rows, speedups = measure(4, folder, repetitions, runs)
        if not quick:
            more, more_speedups = measure(8, folder, repetitions, runs)
            rows += more
            speedups.update(more_speedups)
    saved = 1 - encoder_macs(HIDDEN // 2, FFN) / encoder_macs(HIDDEN, FFN)
    table = _common.markdown_table(
        [
            "model",
            "mode",
            "parameters",
            "file bytes",
            "relative error vs Keras",
            "latency ms, median (min-max)",
            "speed-up vs all heads, median (min-max)",
        ],
        rows,
    )
    f32 = speedups["2 of 4 heads", "float32"]
    i8 = speedups["2 of 4 heads", "int8"]
    body = (
        f"BERT-small: keras-hub `BertTextClassifier`, {LAYERS} layers, hidden {HIDDEN}, "
        f"feed-forward {FFN}, random weights, {VOCAB:,}-token vocabulary, inputs fixed at "
        f"batch 1 x {SEQ} tokens. `prune.remove_heads(model, 0.5)` removes the half of each "
        "layer's heads with the smallest L1 norm; the FFN rows also apply "
        "`prune.remove_units(model, 0.5)`. Exported with `tfcompress.export.to_tflite` "
        "(float32, and int8 calibrated on 32 random inputs), each file checked against its "
        "Keras model on 16 inputs (relative error of the logits). Latency: LiteRT "
        "(ai-edge-litert, XNNPACK), "
        f"1 thread, median of {runs} calls, {repetitions} alternating repetitions; speed-up "
        "= latency of the model with all heads / latency of the row, per repetition.\n\n"
        f"{table}\n\n"
        f"Removing half of the 4 heads: **{f32:.2f}x** faster in float32 (target 1.3x: "
        f"{'met' if f32 >= 1.3 else 'not met'}), {i8:.2f}x in int8. Half the heads are "
        f"{saved:.0%} of the encoder's multiply-adds at {SEQ} tokens (query/key/value/output "
        "projections and attention scores; the feed-forward network is untouched), so a "
        f"latency proportional to multiply-adds would give {1 / (1 - saved):.2f}x."
        + (" (quick mode: 4 heads only)" if quick else "")
    )
    print(body)
    if write:
        _common.update_section("Attention-head removal", body, "benchmarks/heads.py")
    return rows


def main(argv=None):
    return _common.script_main(run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
