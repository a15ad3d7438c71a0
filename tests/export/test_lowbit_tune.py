"""`tune` with per-layer bit widths: int4/int2 files chosen by measured sensitivity."""

import json

import pytest

from tfcompress import export, pipeline

RECIPE = {
    "name": "tiny-lowbit",
    "data": {"embedded": "digits"},
    "model": {
        "factory": "tfcompress.testing:digits_cnn",
        "kwargs": {"filters": [4, 8], "dense_units": 32},
    },
    "stages": [{"type": "train", "epochs": 3, "learning_rate": 0.005}],
}


@pytest.mark.slow
def test_tune_searches_low_bit_widths(tmp_path):
    out = tmp_path / "out"
    result = pipeline.tune(
        RECIPE,
        str(out),
        max_accuracy_drop=0.2,
        trials=1,
        epochs=1,
        bit_widths=(4, 2),
        max_float_layers=1,
        progress=lambda m: None,
    )
    ranking = json.loads((out / "bit_sensitivity.json").read_text())["errors"]
    # every Dense/Conv measured at int4; int2 only where LiteRT runs it (FULLY_CONNECTED)
    assert set(ranking["4"]) == {"conv0", "conv1", "dense", "logits"}
    assert set(ranking["2"]) == {"dense", "logits"}
    best = result.best
    assert best["bits"] in (4, 2) and result.path.endswith(f"best_int{best['bits']}.tflite")
    widths = {w.dtype for w in export.inspect(result.path).weights}
    assert f"int{best['bits']}" in widths
    assert best["layer_widths"]  # what each layer got, in the trial record
    table = (out / "tune.md").read_text()
    assert "| weights |" in table and f"| int{best['bits']}" in table
    sizes = [t["estimated_bytes"] for t in result.trials]
    assert sizes == sorted(sizes)


def test_bad_bit_widths(tmp_path):
    with pytest.raises(ValueError, match=r"bit_widths=\(3,\)"):
        pipeline.tune(RECIPE, str(tmp_path), bit_widths=(3,), progress=lambda m: None)
