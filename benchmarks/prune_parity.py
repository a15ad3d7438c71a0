"""Pruning parity with tfmot on the MobileNet-style CNN, both engines from the same weights.

Run: `python -m benchmarks.prune_parity [--quick]`. Trains the Summary's MobileNet-style
CNN (DepthwiseConv2D + BatchNorm + ReLU6, digits upsampled to 32x32) once in Keras 3,
copies its weights into the tf_keras twin, then prunes both to 80% with the Summary's
schedule, ours on the Keras 3 model and tfmot on the twin, over several seeds (the seed
sets the fine-tuning shuffles), and rewrites the "Pruning parity with tfmot" section of
BENCHMARKS.md. Starting both engines from the same weights is what makes the rows compare
the pruning engines rather than two separately trained dense models.
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import _common  # noqa: E402
from benchmarks.tasks import TASKS  # noqa: E402

SPARSITY = 0.8
BATCH = 32


def _compile(model, k, learning_rate):
    model.compile(
        optimizer=k.optimizers.Adam(learning_rate),
        loss=k.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _accuracy(model, data):
    import numpy as np

    return float(np.mean(model.predict(data.x_test, verbose=0).argmax(-1) == data.y_test))


def _prune(dense, k, data, steps, tune_epochs, seed):
    import keras
    import numpy as np
    import tf_keras

    from tfcompress import prune

    keras.utils.set_random_seed(seed)
    tf_keras.utils.set_random_seed(seed)
    # The Summary's schedule: 0 -> 80% over 70% of the fine-tuning steps, 4 updates an epoch.
    schedule = prune.PolynomialDecay(
        0.0,
        SPARSITY,
        begin_step=0,
        end_step=max(2, int(0.7 * steps * tune_epochs)),
        frequency=max(1, steps // 4),
    )
    pruned = _compile(prune.prune_low_magnitude(dense, schedule), k, 1e-3)
    pruned.fit(
        data.x_train,
        data.y_train,
        epochs=tune_epochs,
        batch_size=BATCH,
        verbose=0,
        callbacks=[prune.UpdatePruningStep()],
    )
    stripped = prune.strip_pruning(pruned)
    nonzero = sum(int(np.count_nonzero(w)) for w in stripped.get_weights())
    return _accuracy(stripped, data), nonzero


def run(quick=False, write=True):
    import keras
    import tf_keras

    start = time.perf_counter()
    task = TASKS["mobilenet"]
    data = task.load(quick)
    epochs, tune_epochs = task.epochs[0 if quick else 1], task.tune_epochs[0 if quick else 1]
    seeds = (1,) if quick else (1, 2, 3)
    steps = -(-len(data.x_train) // BATCH)
    ours = _compile(task.build(keras, data), keras, task.learning_rate)
    ours.fit(data.x_train, data.y_train, epochs=epochs, batch_size=BATCH, verbose=0)
    twin = _compile(task.build(tf_keras, data), tf_keras, task.learning_rate)
    twin.set_weights(ours.get_weights())
    dense_acc = {"ours": _accuracy(ours, data), "tfmot": _accuracy(twin, data)}
    results = {"ours": [], "tfmot": []}
    for seed in seeds:
        # Alternate the engines so that machine load drifts hit both alike.
        results["ours"].append(_prune(ours, keras, data, steps, tune_epochs, seed))
        results["tfmot"].append(_prune(twin, tf_keras, data, steps, tune_epochs, seed))
    rows, means = [], {}
    for engine, label in (("ours", "ours (Keras 3)"), ("tfmot", "tfmot (tf_keras twin)")):
        accs = [a for a, _ in results[engine]]
        means[engine] = statistics.mean(accs)
        rows.append(
            [
                label,
                f"{dense_acc[engine]:.4f}",
                " / ".join(f"{a:.4f}" for a in accs),
                f"{means[engine]:.4f}",
                f"{means[engine] - dense_acc[engine]:+.4f}",
                f"{results[engine][0][1]:,}",
            ]
        )
    table = _common.markdown_table(
        [
            "pruning 80%",
            "dense accuracy (same weights)",
            "test accuracy per seed",
            "mean",
            "mean vs dense",
            "non-zero parameters",
        ],
        rows,
    )
    gap = means["ours"] - means["tfmot"]
    spread = {e: max(a for a, _ in r) - min(a for a, _ in r) for e, r in results.items()}
    body = (
        "MobileNet-style CNN (stem + 4 DepthwiseConv2D/BatchNorm/ReLU6 blocks, GAP, Dense10) "
        "on scikit-learn's digits upsampled to 32x32 (the Summary's `mobilenet` task); the "
        f"Keras 3 model trained {epochs} epochs, its weights copied "
        f"into the tf_keras twin, then each engine pruned it to {SPARSITY:.0%} with "
        f"`PolynomialDecay` (0 -> {SPARSITY:.0%} over 70% of {tune_epochs} fine-tuning "
        f"epochs, 4 mask updates an epoch, Adam 1e-3, batch {BATCH}) and the default plan "
        "(stem, depthwise convolutions and classifier dense), seeds "
        f"{', '.join(map(str, seeds))}. Test accuracy on {len(data.x_test)} held-out "
        f"images (one image is {1 / len(data.x_test):.2%}).\n\n{table}\n\n"
        f"Mean accuracy, ours - tfmot: **{gap:+.4f}** "
        f"({'within' if abs(gap) <= 0.01 else 'outside'} 1 point); seed-to-seed spread of "
        f"ours {spread['ours']:.4f}, of tfmot {spread['tfmot']:.4f}. The Summary's tfmot rows "
        "start from the Keras 3 model's weights too: a twin trained on its own reaches "
        "another dense accuracy, which those rows used to count as the engine's "
        f"({time.perf_counter() - start:.0f} s)." + ("\n\n(quick mode)" if quick else "")
    )
    print(body)
    if write:
        _common.update_section("Pruning parity with tfmot", body, "benchmarks/prune_parity.py")
    return means


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, fewer epochs")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args(argv)
    run(quick=args.quick, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
