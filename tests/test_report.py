"""The one report shape: every verb stores a `tfcompress.Report` on what it returns."""

import keras
import numpy as np

import tfcompress
from tfcompress import distill, prune


def _mlp(name):
    return keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu", name="hidden"),
            keras.layers.Dense(3, name="out"),
        ],
        name=name,
    )


def test_report_normalises_tuples_and_prints_a_table():
    report = tfcompress.Report(
        "quantize_model",
        "net",
        done=[("dense", "Dense", "int8")],
        skipped=[("lstm", "LSTM", "no int8 rule")],
    )
    assert report.done == (tfcompress.Entry("dense", "Dense", "int8"),)
    assert str(report).splitlines() == [
        "quantize_model on 'net': 1 done, 1 skipped",
        "  done     dense (Dense): int8",
        "  skipped  lstm (LSTM): no int8 rule",
    ]
    assert report.to_dict()["skipped"][0]["note"] == "no int8 rule"


def test_remove_units_stores_its_report():
    model = _mlp("mlp")
    small = prune.remove_units(model, 0.5)
    report = tfcompress.report_of(small)
    assert report.verb == "remove_units"
    assert report.done_names == ("hidden",)
    assert report.done[0].note == "16 -> 8 units"
    assert small.get_layer("hidden").units == 8
    assert tfcompress.report_of(model) is None  # the input model is not touched


def test_distiller_stores_its_report():
    teacher, student = _mlp("teacher"), _mlp("student")
    d = distill.distiller(student, teacher, alpha=0.25, temperature=3.0)
    report = tfcompress.report_of(d)
    assert report.verb == "distiller" and report.model_name == "student"
    assert report.details["temperature"] == 3.0
    assert "alpha=0.25" in report.done[-1].note
    d.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    d.fit(np.zeros((4, 8)), np.zeros(4), epochs=1, verbose=0)  # still trains with it attached


def test_every_verb_reports_in_the_same_shape(tmp_path):
    from tfcompress import cluster, export, quantize

    model = _mlp("mlp")
    x = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
    model(x[:1])
    pruned = prune.prune_low_magnitude(model, 0.5)
    report = tfcompress.report_of(pruned)
    assert report.verb == "prune_low_magnitude" and report.model_name == "mlp"
    assert set(report.done_names) | set(report.skipped_names) == {"hidden", "out"}

    qat = quantize.quantize_model(model, representative_data=x)
    report = tfcompress.report_of(qat)
    assert report.verb == "quantize_model"
    assert {"hidden", "out"} <= set(report.done_names)
    assert report.details is qat.quantize_report

    clustered = cluster.cluster_weights(model, number_of_clusters=4)
    report = tfcompress.report_of(clustered)
    assert report.verb == "cluster_weights" and "hidden" in report.done_names[0]
    assert report.done[0].note.endswith("-> 4 values")

    result = export.to_tflite(model, str(tmp_path / "m.tflite"))
    assert result.report.verb == "to_tflite" and result.report.model_name == "mlp"
    assert result.report.done[0].name == "m.tflite"
    assert result.report.done[0].note.startswith("float32, ")
    for made in (pruned, qat, clustered):
        assert isinstance(tfcompress.report_of(made), tfcompress.Report)


def test_tf_keras_models_report_what_tfmot_wrapped():
    import tf_keras

    from tfcompress import cluster

    model = tf_keras.Sequential(
        [
            tf_keras.Input((8,)),
            tf_keras.layers.Dense(16, name="hidden"),
            tf_keras.layers.Dense(3, name="out"),
        ],
        name="legacy",
    )
    clustered = cluster.cluster_weights(model, number_of_clusters=4)
    report = tfcompress.report_of(clustered)
    assert report.verb == "cluster_weights" and report.model_name == "legacy"
    assert report.done_names == ("hidden", "out")
    assert len(model.get_weights()) == 4  # tfmot worked on a copy: the kernels are still here
    pruned = prune.prune_low_magnitude(model, 0.5)
    assert tfcompress.report_of(pruned).verb == "prune_low_magnitude"
