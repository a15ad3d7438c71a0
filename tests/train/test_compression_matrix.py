"""Every compression step under MirroredStrategy on two logical CPUs, against one device.

One subprocess trains, from the same briefly trained digits CNN, a pruned model,
a QAT model, a clustered model and a Distiller, once under
`MirroredStrategy(["/cpu:0", "/cpu:1"])` and once under a one-device strategy,
and reports what the assertions below compare. A second subprocess does the
same steps under the `mixed_float16` policy (a global setting, hence its own
process).
"""

import json

import pytest

from tfcompress.testing import run_on_logical_cpus

_COMMON = """
import json, os, tempfile
import numpy as np
import tensorflow as tf
import keras
from tfcompress import cluster, distill, export, prune, quantize, testing, train
from tfcompress.data import load_digits
from tfcompress.quantize.calibration import activation_quantizers

data = load_digits()
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
mirrored = train.strategy(devices=["/cpu:0", "/cpu:1"])

def components(variable):
    # The per-device copies of a (mirrored) variable, as numpy arrays.
    v = getattr(variable, "_value", variable)
    return [np.asarray(c.numpy()) for c in (getattr(v, "values", None) or (v,))]

def max_diff(a, b):
    return max(float(np.abs(np.asarray(u, "float64") - np.asarray(v, "float64")).max())
               for u, v in zip(a, b, strict=True))
"""

MATRIX = (
    _COMMON
    + """
x, y = data.x_train[:384], data.y_train[:384]      # 12 steps of 32 per epoch
x_test, y_test = data.x_test[:200], data.y_test[:200]
single = tf.distribute.OneDeviceStrategy("/cpu:0")

# Every step starts from the same briefly trained float model.
base = testing.digits_cnn(seed=0)
base.compile(keras.optimizers.Adam(3e-3), LOSS)
base.fit(data.x_train, data.y_train, batch_size=32, epochs=3, verbose=0)
BASE = base.get_weights()

def trained_base():
    model = testing.digits_cnn(seed=0)
    model.set_weights(BASE)
    return model

def fit(model, epochs=1, callbacks=()):
    return model.fit(x, y, batch_size=32, epochs=epochs, shuffle=False, verbose=0,
                     callbacks=list(callbacks)).history

def run_prune(strategy):
    with strategy.scope():
        pruned = prune.prune_low_magnitude(
            trained_base(), prune.PolynomialDecay(0.0, 0.75, 0, 8, frequency=2), skip=None)
        pruned.compile(keras.optimizers.SGD(0.02), LOSS, metrics=["accuracy"])
    history = fit(pruned, callbacks=[prune.UpdatePruningStep()])
    wrappers = prune.callbacks.pruning_wrappers(pruned)
    stripped = prune.strip_pruning(pruned)
    report = prune.sparsity_report(stripped)
    return {
        "sparsity": report.sparsity,
        "layer_sparsity": {l.name: l.sparsity for l in report.sparse_layers},
        "zeros_stay_zero": all((w[m == 0] == 0).all()
                               for wr in wrappers for wv, mv in wr.pruned_weights
                               for w, m in zip(components(wv), components(mv))),
        "steps": sorted({int(c) for wr in wrappers for c in components(wr.pruning_step)}),
        "accuracy": history["accuracy"],
    }, stripped.get_weights()

def run_qat(strategy):
    with strategy.scope():
        qat = quantize.quantize_model(trained_base())
        qat.compile(keras.optimizers.SGD(0.02), LOSS)
    fit(qat)
    quantize.check_ranges_set(qat)   # raises if a range never saw data
    ranges = {path: [components(v) for v in (q.range_set, q.range_min, q.range_max)]
              for path, q in activation_quantizers(qat)}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "qat_int8.tflite")
        export.to_tflite(qat, path, mode="int8")   # no representative data
        float_ops = [op.name for op in export.inspect(path).float_compute_ops(export.COMPUTE_OPS)]
        verified = export.verify(path, qat, (x_test, y_test))
    return {
        "replicas_set": all(float(c) == 1.0 for set_, _, _ in ranges.values() for c in set_),
        "replicas_equal": all(max_diff(v, [v[0]] * len(v)) == 0.0
                              for triple in ranges.values() for v in triple),
        "ranges": {p: [float(lo[0]), float(hi[0])] for p, (_, lo, hi) in ranges.items()},
        "float_ops": float_ops,
        "agreement": verified.top1_agreement,
        "accuracy": testing.accuracy(qat, x_test, y_test),
    }, [np.asarray(w) for w in qat.trainable_weights]

def run_cluster(strategy):
    with strategy.scope():
        clustered = cluster.cluster_weights(trained_base(), number_of_clusters=16)
        clustered.compile(keras.optimizers.SGD(0.02), LOSS)
    fit(clustered)
    stripped = cluster.strip_clustering(clustered)
    unique = {l.name: int(np.unique(l.kernel.numpy()).size)
              for l in stripped.layers if hasattr(l, "kernel")}
    return {"unique": unique}, stripped.get_weights()

def run_distill(strategy):
    with strategy.scope():
        teacher = trained_base()
        student = testing.digits_cnn(filters=(4, 8), dense_units=16, seed=1, name="student")
        d = distill.distiller(student, teacher, alpha=0.1, temperature=4.0)
        d.compile(keras.optimizers.SGD(0.05), LOSS)
    return {"loss": fit(d, epochs=2)["loss"]}, student.get_weights()

out = {"replicas": mirrored.num_replicas_in_sync}
for name, run in [("prune", run_prune), ("qat", run_qat), ("cluster", run_cluster),
                  ("distill", run_distill)]:
    m, m_weights = run(mirrored)
    s, s_weights = run(single)
    out[name] = {"mirrored": m, "single": s, "weight_diff": max_diff(m_weights, s_weights)}
print(json.dumps(out))
"""
)

MIXED = (
    """
import keras
keras.mixed_precision.set_global_policy("mixed_float16")
"""
    + _COMMON
    + """
x, y = data.x_train[:256], data.y_train[:256]      # 8 steps of 32 per epoch
out = {"replicas": mirrored.num_replicas_in_sync}

with mirrored.scope():
    pruned = prune.prune_low_magnitude(
        testing.digits_cnn(seed=0), prune.PolynomialDecay(0.0, 0.75, 0, 8, frequency=2),
        skip=None)
    pruned.compile(keras.optimizers.Adam(3e-3), LOSS)
history = pruned.fit(x, y, batch_size=32, epochs=2, verbose=0,   # 8 steps after the last turn
                     callbacks=[prune.UpdatePruningStep()]).history
wrappers = prune.callbacks.pruning_wrappers(pruned)
out["prune"] = {
    "optimizer": type(pruned.optimizer).__name__,
    "compute_dtype": wrappers[0].layer.compute_dtype,
    "zeros_stay_zero": all((w[m == 0] == 0).all()
                           for wr in wrappers for wv, mv in wr.pruned_weights
                           for w, m in zip(components(wv), components(mv))),
    "sparsity": prune.sparsity_report(prune.strip_pruning(pruned)).sparsity,
    "loss": history["loss"],
}

with mirrored.scope():
    qat = quantize.quantize_model(testing.digits_cnn(seed=0))
    qat.compile(keras.optimizers.Adam(3e-3), LOSS)
history = qat.fit(x, y, batch_size=32, epochs=1, verbose=0).history
quantize.check_ranges_set(qat)
values = [c for _, q in activation_quantizers(qat)
          for v in (q.range_set, q.range_min, q.range_max) for c in components(v)]
out["qat"] = {
    "finite": bool(np.all(np.isfinite(values))),
    "set": all(float(c) == 1.0 for _, q in activation_quantizers(qat)
               for c in components(q.range_set)),
    "ranges_float32": all(q.range_min.dtype == "float32" for _, q in activation_quantizers(qat)),
    "widest": max(abs(float(v)) for v in values),
    "loss": history["loss"],
}
# int8 export: the converter wants a float32 graph, so rebuild under the float32
# policy and copy the weights (ranges included) over.
keras.mixed_precision.set_global_policy("float32")
qat32 = quantize.quantize_model(testing.digits_cnn(seed=0))
qat32.set_weights(qat.get_weights())
keras.mixed_precision.set_global_policy("mixed_float16")
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "qat_int8.tflite")
    export.to_tflite(qat32, path, mode="int8")
    out["qat"]["agreement"] = export.verify(path, qat, data.x_test[:200]).top1_agreement

with mirrored.scope():
    teacher = testing.digits_cnn(seed=0)
    student = testing.digits_cnn(filters=(4, 8), dense_units=16, seed=1, name="student")
    d = distill.distiller(student, teacher, alpha=0.1, temperature=4.0)
    d.compile(keras.optimizers.Adam(3e-3), LOSS)
out["distill"] = {"loss": d.fit(x, y, batch_size=32, epochs=2, verbose=0).history["loss"],
                  "compute_dtype": student.compute_dtype}
print(json.dumps(out))
"""
)


def _result(code):
    return json.loads(run_on_logical_cpus(code, timeout=600).strip().splitlines()[-1])


@pytest.fixture(scope="module")
def matrix():
    return _result(MATRIX)


def test_matrix_runs_on_two_replicas(matrix):
    assert matrix["replicas"] == 2


def test_pruning_reaches_the_same_sparsity_as_one_device(matrix):
    m, s = matrix["prune"]["mirrored"], matrix["prune"]["single"]
    assert m["sparsity"] == pytest.approx(0.75, abs=0.005)
    assert m["sparsity"] == pytest.approx(s["sparsity"], abs=0.005)
    for name, sparsity in m["layer_sparsity"].items():
        assert sparsity == pytest.approx(0.75, abs=0.005), name
    assert m["zeros_stay_zero"]
    # Every replica's copy of every layer's step counter saw the 12 batches.
    assert m["steps"] == s["steps"] == [12]
    assert m["accuracy"] == pytest.approx(s["accuracy"], abs=1e-4)  # aggregated metric
    assert matrix["prune"]["weight_diff"] < 1e-4


def test_qat_ranges_are_set_on_every_replica_and_export_without_calibration(matrix):
    m, s = matrix["qat"]["mirrored"], matrix["qat"]["single"]
    assert m["replicas_set"] and m["replicas_equal"]
    # Each replica measures its own half of the batch and the range variables are
    # mean-aggregated (as in tfmot), so the ranges are the mean of the replicas'
    # extremes: close to one device's, not equal.
    assert m["ranges"].keys() == s["ranges"].keys()
    for path, (lo, hi) in m["ranges"].items():
        assert lo == pytest.approx(s["ranges"][path][0], rel=0.2, abs=1e-6), path
        assert hi == pytest.approx(s["ranges"][path][1], rel=0.2, abs=1e-6), path
    assert m["float_ops"] == [] and s["float_ops"] == []
    assert m["agreement"] >= 0.97 and s["agreement"] >= 0.97
    assert m["accuracy"] == pytest.approx(s["accuracy"], abs=0.03)
    assert matrix["qat"]["weight_diff"] < 5e-3  # trainable weights only


def test_clustering_keeps_16_values_per_kernel(matrix):
    for run in ("mirrored", "single"):
        unique = matrix["cluster"][run]["unique"]
        assert set(unique) == {"conv0", "conv1", "dense", "logits"}
        assert max(unique.values()) <= 16, unique
    assert matrix["cluster"]["weight_diff"] < 1e-4


def test_distiller_trains_like_one_device(matrix):
    m, s = matrix["distill"]["mirrored"]["loss"], matrix["distill"]["single"]["loss"]
    assert m[-1] < m[0]
    # Same loss (not num_replicas times the distillation term) and same student.
    assert m == pytest.approx(s, rel=1e-4)
    assert matrix["distill"]["weight_diff"] < 1e-4


def test_mixed_float16_under_mirrored_strategy():
    out = _result(MIXED)
    assert out["replicas"] == 2
    p = out["prune"]
    assert p["optimizer"] == "LossScaleOptimizer" and p["compute_dtype"] == "float16"
    assert p["zeros_stay_zero"]
    assert p["sparsity"] == pytest.approx(0.75, abs=0.005)
    q = out["qat"]
    assert q["finite"] and q["set"] and q["ranges_float32"]
    assert 0 < q["widest"] < 1e4
    assert q["agreement"] >= 0.9  # float32 rebuild's int8 file vs the float16 QAT model
    d = out["distill"]
    assert d["compute_dtype"] == "float16"
    assert all(abs(v) < 1e4 for v in d["loss"]) and d["loss"][-1] < d["loss"][0]
    for run in (p, q):
        assert all(abs(v) < 1e4 for v in run["loss"])
