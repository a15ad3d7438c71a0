"""MirroredStrategy on two logical CPUs, and mixed precision (each in a fresh process)."""

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MIRRORED = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np
from tfcompress import prune, testing

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
x = np.random.default_rng(0).normal(size=(64, 16)).astype("float32")
y = x[:, :4].argmax(axis=1)
with strategy.scope():
    pruned = prune.prune_low_magnitude(
        testing.tiny_mlp(), prune.PolynomialDecay(0.0, 0.7, 0, 8, frequency=2), skip=None)
    pruned.compile(keras.optimizers.Adam(0.01),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True))
pruned.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[prune.UpdatePruningStep()])
for w in prune.callbacks.pruning_wrappers(pruned):
    for weight, mask in w.pruned_weights:
        weight, mask = np.asarray(weight), np.asarray(mask)
        assert (weight[mask == 0] == 0).all()
report = prune.sparsity_report(prune.strip_pruning(pruned))
assert abs(report.sparsity - 0.7) < 0.005, report
print("OK", strategy.num_replicas_in_sync, round(report.sparsity, 4))
"""

MIXED = """
import keras, numpy as np
keras.mixed_precision.set_global_policy("mixed_float16")
from tfcompress import prune, testing

x = np.random.default_rng(0).normal(size=(64, 16)).astype("float32")
y = x[:, :4].argmax(axis=1)
pruned = prune.prune_low_magnitude(testing.tiny_mlp(),
                                   prune.ConstantSparsity(0.6, 0, frequency=2), skip=None)
pruned.compile(keras.optimizers.Adam(0.01),
               keras.losses.SparseCategoricalCrossentropy(from_logits=True))
pruned.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[prune.UpdatePruningStep()])
assert pruned.optimizer.__class__.__name__ == "LossScaleOptimizer"
for w in prune.callbacks.pruning_wrappers(pruned):
    for weight, mask in w.pruned_weights:
        assert (np.asarray(weight)[np.asarray(mask) == 0] == 0).all()
report = prune.sparsity_report(pruned)
assert abs(report.sparsity - 0.6) < 0.01, report
print("OK", round(report.sparsity, 4))
"""


def _run(code):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_mirrored_strategy_two_cpus():
    assert "OK 2 " in _run(MIRRORED)


@pytest.mark.slow
def test_mixed_precision():
    assert "OK" in _run(MIXED)
