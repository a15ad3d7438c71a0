"""Tiny models and assertions for tests: ours, and users' tests of their own models.

Example:

>>> from tfcompress import testing
>>> model = testing.digits_cnn()
>>> testing.assert_exports_int8(model, representative_data=x_train[:64])
"""

import os
import tempfile

import numpy as np


def _digits_cnn(k, filters, dense_units, num_classes, seed, name):
    # Built from a Keras module `k` (keras or tf_keras): the two twins share one recipe.
    k.utils.set_random_seed(seed)
    inputs = k.Input((8, 8, 1), name="image")
    x = inputs
    for i, f in enumerate(filters):
        x = k.layers.Conv2D(f, 3, padding="same", activation="relu", name=f"conv{i}")(x)
        if i == 0:
            x = k.layers.MaxPooling2D(2, name="pool0")(x)
    x = k.layers.Flatten(name="flatten")(x)
    if dense_units:
        x = k.layers.Dense(dense_units, activation="relu", name="dense")(x)
    outputs = k.layers.Dense(num_classes, name="logits")(x)
    return k.Model(inputs, outputs, name=name)


def digits_cnn(filters=(8, 16), dense_units=32, num_classes=10, seed=0, name="digits_cnn"):
    """A small Keras 3 CNN for 8x8x1 digits images (logits out).

    Args:
        filters: Conv2D filters per block.
        dense_units: width of the hidden Dense layer (0 for none).
        num_classes: output units.
        seed: weight initialisation seed.
        name: model name.

    Returns:
        An uncompiled, built `keras.Model`.
    """
    import keras

    return _digits_cnn(keras, filters, dense_units, num_classes, seed, name)


def tf_keras_digits_cnn(filters=(8, 16), dense_units=32, num_classes=10, seed=0,
                        name="digits_cnn_tf_keras"):
    """The tf_keras twin of `digits_cnn` (same layers, same names), for the tfmot engine."""
    import tf_keras

    return _digits_cnn(tf_keras, filters, dense_units, num_classes, seed, name)


def tiny_mlp(input_dim=16, hidden=(32,), num_classes=4, seed=0, name="tiny_mlp"):
    """A Keras 3 MLP on flat features."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((input_dim,), name="features")
    x = inputs
    for i, units in enumerate(hidden):
        x = keras.layers.Dense(units, activation="relu", name=f"hidden{i}")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def tiny_bert_classifier(vocabulary_size=100, num_layers=1, hidden_dim=16, num_heads=2,
                         intermediate_dim=32, sequence_length=16, num_classes=2, seed=0):
    """A keras-hub `BertTextClassifier` built from config (no download), dict inputs.

    Returns:
        A `keras_hub.models.BertTextClassifier` without preprocessor, taking
        `{"token_ids", "segment_ids", "padding_mask"}` int32 arrays of shape
        `(batch, sequence_length)`.
    """
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=vocabulary_size,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        intermediate_dim=intermediate_dim,
        max_sequence_length=sequence_length,
    )
    return keras_hub.models.BertTextClassifier(backbone, num_classes=num_classes,
                                               preprocessor=None)


def random_bert_inputs(n, vocabulary_size=100, sequence_length=16, seed=0):
    """Random but valid inputs for `tiny_bert_classifier` (dict of int32 arrays)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, sequence_length + 1, size=n)
    mask = (np.arange(sequence_length)[None, :] < lengths[:, None]).astype("int32")
    token_ids = rng.integers(1, vocabulary_size, size=(n, sequence_length)).astype("int32") * mask
    return {
        "token_ids": token_ids,
        "segment_ids": np.zeros((n, sequence_length), "int32"),
        "padding_mask": mask,
    }


def accuracy(model, x, y, batch_size=256):
    """Top-1 accuracy of a Keras model (logits or probabilities out) on integer labels."""
    predictions = model.predict(x, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(predictions, axis=-1) == np.asarray(y)))


def assert_exports_int8(model, representative_data=None, data=None, min_agreement=0.9,
                        op_names=None):
    """Export `model` to full-int8 TFLite and assert every compute op runs in int8.

    Args:
        model: the model to export.
        representative_data: calibration data (not needed for QAT models).
        data: inputs to compare the file with the model on; the calibration
            data by default.
        min_agreement: least top-1 agreement with the Keras model.
        op_names: the ops that must compute in int8; `COMPUTE_OPS` by default.

    Returns:
        `(ExportResult, TFLiteInfo, VerifyResult)`.
    """
    from tfcompress import export

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{model.name}_int8.tflite")
        result = export.to_tflite(model, path, mode="int8",
                                  representative_data=representative_data)
        info = export.inspect(path)
        names = op_names or export.COMPUTE_OPS
        float_ops = info.float_compute_ops(names)
        assert not float_ops, (
            f"{len(float_ops)} compute ops of '{model.name}' still run in float: "
            + ", ".join(f"{op.name}({op.compute_dtype})" for op in float_ops)
        )
        assert any(op.name in names for op in info.ops), "the file has no compute op at all"
        check = data if data is not None else representative_data
        verification = export.verify(path, model, check, min_agreement=min_agreement)
    return result, info, verification


def assert_round_trips(model, inputs, atol=1e-6):
    """Save `model` as `.keras`, load it back, and assert identical predictions."""
    import keras

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
    expected = model.predict(inputs, verbose=0)
    actual = loaded.predict(inputs, verbose=0)
    np.testing.assert_allclose(actual, expected, atol=atol)
    return loaded


def run_on_logical_cpus(code, num_devices=2, timeout=300):
    """Run Python `code` in a fresh process whose CPU is split into `num_devices` devices.

    Logical devices must be configured before TensorFlow starts, hence the
    subprocess. The code sees `/cpu:0` ... `/cpu:N-1`, enough to test
    `MirroredStrategy` code on a machine without GPUs.

    Args:
        code: Python source to run after the devices are configured.
        num_devices: logical CPU devices.
        timeout: seconds before the process is killed.

    Returns:
        The process's standard output.

    Raises:
        AssertionError: with the process's error output if it fails.
    """
    import subprocess
    import sys
    import textwrap

    prelude = textwrap.dedent(f"""
        import os
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tensorflow as tf
        _cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            _cpu, [tf.config.LogicalDeviceConfiguration()] * {num_devices})
    """)
    result = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"the multi-device script failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    return result.stdout
