"""`tune`: a tiny digits search (tiny CNN, 1 epoch per step, 3 trials), bad input, CLI codes."""

import json
import shutil

import pytest

from tfcompress import cli, export, pipeline

RECIPE = {
    "name": "tiny",
    "data": {"embedded": "digits"},
    "model": {
        "factory": "tfcompress.testing:digits_cnn",
        "kwargs": {"filters": [4, 8], "dense_units": 16},
    },
    "stages": [
        {"type": "train", "epochs": 3, "learning_rate": 0.005},
        {"type": "prune", "final_sparsity": 0.5, "epochs": 1},  # ignored by tune
    ],
}


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "out"
    lines = []
    result = pipeline.tune(
        RECIPE, str(out), max_accuracy_drop=0.05, trials=3, epochs=1, progress=lines.append
    )
    return out, result, lines


def test_search_table_has_every_trial_and_the_budget(searched):
    out, result, _ = searched
    summary = json.loads((out / "tune.json").read_text())
    assert 1 <= len(summary["trials"]) <= 3
    assert summary["budget"] == pytest.approx(summary["base_val_accuracy"] - 0.05)
    table = (out / "tune.md").read_text()
    assert "| trial | sparsity | clusters | float layers | method | val accuracy |" in table
    for trial in summary["trials"]:
        assert f"| {trial['trial']}" in table
    # Smallest estimated size first.
    sizes = [t["estimated_bytes"] for t in summary["trials"]]
    assert sizes == sorted(sizes)
    assert (out / "base" / "01_train" / "model.keras").is_file()
    assert not (out / "base" / "02_prune").exists()


def test_chosen_file_is_int8_and_within_budget_or_reported_closest(searched):
    out, result, _ = searched
    best = result.best
    assert best is not None and (out / "best_int8.tflite").is_file()
    assert (out / "best_int8.tflite").read_bytes() == (out / best["file"]).read_bytes()
    info = export.inspect(str(out / "best_int8.tflite"))
    if not best["float_layers"]:
        assert info.float_compute_ops() == []
    table = (out / "tune.md").read_text()
    if result.within_budget:
        assert best["val_accuracy"] >= result.budget - 1e-9
        assert "Chosen: trial" in table
        within = [t for t in result.trials if t["within_budget"]]
        assert best["gzip_bytes"] == min(t["gzip_bytes"] for t in within)
    else:
        assert all(not t["within_budget"] for t in result.trials)
        assert "No trial met the budget" in table
        assert best["val_accuracy"] == max(t["val_accuracy"] for t in result.trials)


def test_sensitivity_ranks_every_quantizable_layer(searched):
    out, result, _ = searched
    assert {s["layer"] for s in result.sensitivity} == {"conv0", "conv1", "dense", "logits"}
    assert "Per-layer sensitivity" in (out / "tune.md").read_text()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_accuracy_drop=-0.01), "max_accuracy_drop=-0.01"),
        (dict(max_accuracy_drop=1.0), "max_accuracy_drop=1.0"),
        (dict(trials=0), "trials=0"),
        (dict(epochs=0), "epochs=0"),
    ],
)
def test_bad_arguments_are_clear_errors(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipeline.tune(RECIPE, str(tmp_path), progress=lambda m: None, **kwargs)


@pytest.mark.parametrize(
    "argv",
    [
        ["--max-accuracy-drop", "-0.5"],
        ["--max-accuracy-drop", "1"],
        ["--trials", "0"],
        ["--max-accuracy-drop", "lots"],
    ],
)
def test_cli_bad_input_exits_2(tmp_path, capsys, argv):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps(RECIPE))
    assert cli.main(["tune", str(recipe), "--out", str(tmp_path / "o"), *argv]) == 2
    assert "tfcompress tune" in capsys.readouterr().err


def test_cli_missing_recipe_exits_2(tmp_path):
    assert cli.main(["tune", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")]) == 2


def test_cli_exit_code_says_whether_the_budget_was_met(searched, tmp_path):
    out, _, _ = searched
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps(RECIPE))
    common = ["tune", str(recipe), "--out", str(copy), "--trials", "1", "--epochs", "1"]
    # Trial 1 (the most compressed candidate) is reused from the search above.
    assert cli.main([*common, "--max-accuracy-drop", "0.99"]) == 0
    assert json.loads((copy / "tune.json").read_text())["within_budget"] is True
    code = cli.main([*common, "--max-accuracy-drop", "0"])
    summary = json.loads((copy / "tune.json").read_text())
    trial = summary["trials"][0]
    expected = trial["val_accuracy"] >= summary["base_val_accuracy"] - 1e-9
    assert summary["within_budget"] is expected
    assert code == (0 if expected else 1)
    if not expected:
        assert "No trial met the budget" in (copy / "tune.md").read_text()
