"""The training process of the fault-tolerance test: prune a digits CNN with BackupAndRestore.

    python _fault_tolerance_job.py WORKDIR

Runs under MirroredStrategy on two logical CPU devices (one worker process).
Trains a pruned digits CNN for EPOCHS epochs (PolynomialDecay whose ramp ends
in the third epoch, UpdatePruningStep) with `keras.callbacks.BackupAndRestore(
WORKDIR/backup)`. On its first run (no WORKDIR/killed marker yet) it writes the
marker and kills itself with `os._exit(1)` in the middle of epoch KILL_EPOCH,
as a lost machine would. Run again with the same command, it resumes from the
last backup, finishes, then trains the same model uninterrupted in the same
process as the reference, and writes WORKDIR/result.json.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

EPOCHS = 4
KILL_EPOCH = 2  # 0-based: killed in the third epoch, after the backup of the second
KILL_BATCH = 5
SAMPLES = 384
BATCH = 32
STEPS = SAMPLES // BATCH  # 12 per epoch
TARGET = 0.8


def main(workdir):
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras
    import numpy as np

    from tfcompress import prune, testing, train
    from tfcompress.data import load_digits

    data = load_digits()
    x, y = data.x_train[:SAMPLES], data.y_train[:SAMPLES]
    strategy = train.strategy(devices=["/cpu:0", "/cpu:1"])
    marker = os.path.join(workdir, "killed")

    class KillOnce(keras.callbacks.Callback):
        """Kills the process mid-epoch, on the first run only."""

        def on_train_batch_end(self, batch, logs=None):
            if self._epoch == KILL_EPOCH and batch == KILL_BATCH and not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(1)

        def on_epoch_begin(self, epoch, logs=None):
            self._epoch = epoch

    def build():
        with strategy.scope():
            schedule = prune.PolynomialDecay(
                0.0, TARGET, begin_step=0, end_step=3 * STEPS, frequency=4
            )
            model = prune.prune_low_magnitude(testing.digits_cnn(seed=0), schedule, skip=None)
            model.compile(
                keras.optimizers.Adam(3e-3),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"],
            )
        return model

    def state(model, history):
        wrappers = prune.callbacks.pruning_wrappers(model)
        return {
            "epochs_run": len(history.history["loss"]),
            "steps": [int(w.pruning_step.numpy()) for w in wrappers],
            "sparsity": prune.sparsity_report(prune.strip_pruning(model)).sparsity,
            "optimizer_iterations": int(model.optimizer.iterations.numpy()),
            "loss": history.history["loss"],
        }

    backup = os.path.join(workdir, "backup")
    model = build()
    history = model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=EPOCHS,
        shuffle=False,
        verbose=0,
        callbacks=[prune.UpdatePruningStep(), keras.callbacks.BackupAndRestore(backup), KillOnce()],
    )
    resumed = state(model, history)

    reference = build()
    history = reference.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=EPOCHS,
        shuffle=False,
        verbose=0,
        callbacks=[prune.UpdatePruningStep()],
    )
    uninterrupted = state(reference, history)
    weight_diff = max(
        float(np.abs(a - b).max())
        for a, b in zip(model.get_weights(), reference.get_weights(), strict=True)
    )
    masks_equal = all(
        np.array_equal(np.asarray(ma), np.asarray(mb))
        for wa, wb in zip(
            prune.callbacks.pruning_wrappers(model),
            prune.callbacks.pruning_wrappers(reference),
            strict=True,
        )
        for ma, mb in zip(wa.masks, wb.masks, strict=True)
    )
    result = {
        "resumed": resumed,
        "uninterrupted": uninterrupted,
        "weight_diff": weight_diff,
        "masks_equal": masks_equal,
        "backup_left": os.path.exists(backup),
        "total_steps": EPOCHS * STEPS,
        "target": TARGET,
        "replicas": strategy.num_replicas_in_sync,
    }
    with open(os.path.join(workdir, "result.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
