import json
import os

import numpy as np
import pytest

from tfcompress import cli, pipeline
from tfcompress.errors import UntrustedCodeError
from tfcompress.pipeline import RecipeError

RECIPE = {
    "name": "tiny",
    "data": {"embedded": "digits"},
    "model": {
        "factory": "tfcompress.testing:digits_cnn",
        "kwargs": {"filters": [4, 8], "dense_units": 16},
    },
    "stages": [
        {"type": "train", "epochs": 2, "learning_rate": 0.005},
        {
            "type": "distill",
            "epochs": 1,
            "student": {
                "factory": "tfcompress.testing:digits_cnn",
                "kwargs": {"filters": [2, 4], "dense_units": 8, "seed": 1},
            },
        },
        {"type": "export", "modes": ["float32", "int8"]},
    ],
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    records = pipeline.run(RECIPE, str(out), progress=lambda m: None)
    return out, records


def test_each_stage_writes_model_and_record(finished):
    out, records = finished
    assert [r["type"] for r in records] == ["train", "distill", "export"]
    for folder in ("01_train", "02_distill", "03_export"):
        assert (out / folder / "model.keras").is_file()
        record = json.loads((out / folder / "record.json").read_text())
        assert record["status"] == "done" and record["seconds"] >= 0
    assert records[0]["accuracy"] > 0.5
    assert records[1]["parameters"] < records[0]["parameters"]
    exported = records[2]["exports"]
    assert set(exported) == {"float32", "int8"}
    assert exported["int8"]["bytes"] < exported["float32"]["bytes"]
    assert (out / "03_export" / "model_int8.tflite").is_file()


def test_report_has_table_and_plots(finished):
    out, _ = finished
    text = (out / "report.md").read_text()
    assert "| 3. export | model_int8.tflite |" in text
    for png in ("accuracy_vs_size.png", "sparsity.png", "weight_histograms.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png in text
    assert "<table>" in (out / "report.html").read_text()


def test_rerun_skips_finished_stages(finished):
    out, _ = finished
    before = os.path.getmtime(out / "01_train" / "model.keras")
    lines = []
    pipeline.run(RECIPE, str(out), progress=lines.append)
    assert sum("done before, skipping" in line for line in lines) == 3
    assert os.path.getmtime(out / "01_train" / "model.keras") == before


def test_a_killed_run_resumes_after_the_last_finished_stage(finished, tmp_path):
    out, _ = finished
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    # As if the process died inside stage 2: its record was never written.
    os.remove(copy / "02_distill" / "record.json")
    train_model = (copy / "01_train" / "model.keras").read_bytes()
    lines = []
    pipeline.run(RECIPE, str(copy), progress=lines.append)
    assert any("stage 1/3 train: done before" in line for line in lines)
    assert any(line == "stage 2/3 distill" for line in lines)
    assert (copy / "01_train" / "model.keras").read_bytes() == train_model
    assert json.loads((copy / "02_distill" / "record.json").read_text())["status"] == "done"


def test_changing_a_stage_reruns_it_and_later_ones(finished, tmp_path):
    out, _ = finished
    import copy as copy_module
    import shutil

    target = tmp_path / "changed"
    shutil.copytree(out, target)
    recipe = copy_module.deepcopy(RECIPE)
    recipe["stages"][2]["modes"] = ["float16"]
    lines = []
    pipeline.run(recipe, str(target), progress=lines.append)
    assert any(line == "stage 3/3 export" for line in lines)
    assert (target / "03_export" / "model_float16.tflite").is_file()


def test_a_write_failure_keeps_earlier_stages(tmp_path, monkeypatch):
    from tfcompress.pipeline import stages

    def disk_full(ctx, spec):
        raise OSError(28, "No space left on device")

    monkeypatch.setitem(stages._STAGES, "export", disk_full)
    recipe = dict(RECIPE, stages=[RECIPE["stages"][0], RECIPE["stages"][2]])
    with pytest.raises(OSError, match="No space left"):
        pipeline.run(recipe, str(tmp_path / "out"), progress=lambda m: None)
    first = json.loads((tmp_path / "out" / "01_train" / "record.json").read_text())
    assert first["status"] == "done"
    assert not (tmp_path / "out" / "02_export" / "record.json").exists()
    leftovers = [p for p in (tmp_path / "out").rglob("*.tmp")]
    assert leftovers == []


def test_output_folder_that_is_a_file(tmp_path):
    target = tmp_path / "file"
    target.write_text("keep")
    with pytest.raises(RecipeError, match="is a file"):
        pipeline.run(RECIPE, str(target), progress=lambda m: None)
    assert target.read_text() == "keep"


@pytest.mark.parametrize(
    "data, error, message",
    [
        (
            {"npz": "/nowhere/data.npz"},
            RecipeError,
            "The data file '/nowhere/data.npz' does not exist",
        ),
        ({"factory": "tfcompress.testing:nope"}, UntrustedCodeError, "runs only when"),
        # It runs a code string: in tfcompress, yet not a model builder.
        (
            {"factory": "tfcompress.testing:run_on_logical_cpus"},
            UntrustedCodeError,
            "call 'run_on_logical_cpus",
        ),
        # Other tfcompress modules can write files: they need trust too.
        (
            {"factory": "tfcompress._io:atomic_write_text"},
            UntrustedCodeError,
            "runs only when you trust",
        ),
    ],
)
def test_bad_data_sources(tmp_path, data, error, message):
    recipe = dict(RECIPE, data=data)
    with pytest.raises(error, match=message):
        pipeline.run(recipe, str(tmp_path / "out"), progress=lambda m: None)


def test_a_factory_that_raises(tmp_path):
    recipe = dict(
        RECIPE, model={"factory": "tfcompress.testing:digits_cnn", "kwargs": {"filters": "wide"}}
    )
    with pytest.raises(RecipeError, match="factory 'tfcompress.testing:digits_cnn' raised"):
        pipeline.run(recipe, str(tmp_path / "out"), progress=lambda m: None)


def test_npz_data_and_cli_run(tmp_path, digits, capsys):
    np.savez(
        tmp_path / "d.npz",
        x_train=digits.x_train,
        y_train=digits.y_train,
        x_test=digits.x_test,
        y_test=digits.y_test,
    )
    (tmp_path / "r.yaml").write_text(
        "data: {npz: " + str(tmp_path / "d.npz") + "}\n"
        "model: {factory: 'tfcompress.testing:digits_cnn', kwargs: {filters: [4, 8]}}\n"
        "stages:\n  - {type: train, epochs: 2}\n"
    )
    assert cli.main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "o")]) == 0
    record = json.loads((tmp_path / "o" / "01_train" / "record.json").read_text())
    assert record["accuracy"] > 0.3 and "stage 1/1 train" in capsys.readouterr().out
    assert cli.main(["run", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "No recipe file" in capsys.readouterr().err
