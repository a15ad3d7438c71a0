"""The one report shape: every verb stores a `tfcompress.Report` on what it returns."""

import keras
import numpy as np

import tfcompress
from tfcompress import distill, prune


def _mlp(name):
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu",
                             name="hidden"), keras.layers.Dense(3, name="out")], name=name)


def test_report_normalises_tuples_and_prints_a_table():
    report = tfcompress.Report("quantize_model", "net", done=[("dense", "Dense", "int8")],
                               skipped=[("lstm", "LSTM", "no int8 rule")])
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
