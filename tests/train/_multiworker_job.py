"""One worker of the two-process test: trains a tiny model under tfcompress.train.strategy()."""

import json
import os
import sys

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"


def main(out_path, timeout):
    import numpy as np
    import tensorflow as tf

    from tfcompress import train

    strategy = train.strategy(cluster_timeout=float(timeout))
    import keras

    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)]
        )
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0).astype("int32")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    history = model.fit(ds, epochs=3, verbose=0)
    json.dump(
        {
            "replicas": strategy.num_replicas_in_sync,
            "multi_worker": isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy),
            "loss": history.history["loss"],
            "weights": [w.tolist() for w in model.get_weights()],
        },
        open(out_path, "w"),
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
