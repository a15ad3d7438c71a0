"""Issue 15: a resumed run never lies, a killed run never wedges, bad data never trains.

Cases are numbered as in the issue. One tiny recipe (a 2-4 filter CNN on digits,
2 epochs, float32 export) is run once and copied for each scenario.
"""

import copy
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from tfcompress import _io, cli, pipeline
from tfcompress.errors import RunInProgressError
from tfcompress.pipeline import RecipeError
from tfcompress.pipeline import runner as runner_lib
from tfcompress.pipeline.data import DataError

RECIPE = {
    "name": "tiny",
    "data": {"embedded": "digits"},
    "model": {
        "factory": "tfcompress.testing:digits_cnn",
        "kwargs": {"filters": [2, 4], "dense_units": 8},
    },
    "stages": [
        {"type": "train", "epochs": 2, "learning_rate": 0.005},
        {"type": "export", "modes": ["float32"]},
    ],
}


def run(recipe, out, **kwargs):
    lines = []
    records = pipeline.run(recipe, str(out), progress=lines.append, **kwargs)
    return records, lines


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "out"
    records, _ = run(RECIPE, out)
    return out, records


@pytest.fixture
def copy_of(finished, tmp_path):
    out, _ = finished
    target = tmp_path / "out"
    shutil.copytree(out, target)
    return target


def skipped(lines):
    return [line for line in lines if "done before, skipping" in line]


# 3: resume keyed on everything upstream ------------------------------------------------------


def test_3_another_seed_is_not_trusted(finished):
    """The key run() compares: another seed gives another key, which the record refuses."""
    from tfcompress.pipeline import data as data_lib

    out, records = finished
    for seed, trusted in ((0, True), (7, False)):
        recipe = pipeline.load_recipe(dict(RECIPE, seed=seed))
        data = data_lib.validate_data(data_lib.load_data(recipe.data, seed=seed))
        key = runner_lib._stage_key(runner_lib._source_key(recipe, data), recipe.stages[0])
        record, why = runner_lib.check_finished(str(out / "01_train"), key)
        assert (record == records[0]) is trusted
        assert trusted or "its model, data, seed, options" in why


def test_3_keys_follow_model_data_and_version(monkeypatch):
    import tfcompress
    from tfcompress.pipeline import data as data_lib

    recipe = pipeline.load_recipe(RECIPE)
    data = data_lib.validate_data(data_lib.load_data(recipe.data))
    base = runner_lib._source_key(recipe, data)
    other_model = pipeline.load_recipe(
        dict(RECIPE, model=dict(RECIPE["model"], kwargs={"filters": [2, 4], "dense_units": 9}))
    )
    assert runner_lib._source_key(other_model, data) != base
    shifted = copy.copy(data)
    shifted.x_train = data.x_train.copy()
    shifted.x_train[0, 0, 0, 0] += 1.0
    assert runner_lib._source_key(recipe, shifted) != base
    monkeypatch.setattr(tfcompress, "__version__", "999.0")
    assert runner_lib._source_key(recipe, data) != base


# 5, 6: outputs checked by size and hash; corrupt files named and rerun --------------------


@pytest.mark.slow
def test_5_truncated_tflite_reruns_the_export(copy_of):
    target = copy_of / "02_export" / "model_float32.tflite"
    target.write_bytes(target.read_bytes()[:100])
    records, lines = run(RECIPE, copy_of)
    assert len(skipped(lines)) == 1  # the train stage is still trusted
    assert any("model_float32.tflite is 100 bytes" in line for line in lines)
    assert os.path.getsize(target) == records[1]["exports"]["float32"]["bytes"] > 100


def _why(folder):
    record = json.loads((folder / "record.json").read_text())
    return runner_lib.check_finished(str(folder), record["key"])


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda f: (f / "02_export" / "model_float32.tflite").unlink(),
            "02_export/model_float32.tflite is missing",
        ),
        (
            lambda f: (f / "01_train" / "model.keras").write_bytes(b"PK\x03\x04 not a model"),
            "01_train/model.keras is 16 bytes",
        ),
        (
            lambda f: (f / "01_train" / "model.keras").write_bytes(
                (f / "01_train" / "model.keras").read_bytes()[::-1]
            ),
            "01_train/model.keras changed since the stage wrote it",
        ),
    ],
    ids=["deleted", "truncated", "same-size"],
)
def test_5_6_damaged_outputs_are_named_and_not_trusted(copy_of, damage, message):
    folder = copy_of / ("02_export" if "02_export" in message else "01_train")
    assert _why(folder) == (json.loads((folder / "record.json").read_text()), None)
    damage(copy_of)
    record, why = _why(folder)
    assert record is None and message in why


def test_6_corrupt_record_json_is_named(copy_of):
    (copy_of / "02_export" / "record.json").write_text('{"status": "do')
    record, why = runner_lib.check_finished(str(copy_of / "02_export"), "any")
    assert record is None and "02_export/record.json is corrupt" in why


# 4, 7, 8: backups tied to the stage key, checked, kept until the model is saved ------------


TRAIN_ONLY = dict(RECIPE, stages=RECIPE["stages"][:1])


def _killed_after_fit(out, monkeypatch, recipe=TRAIN_ONLY, **kwargs):
    """Run until fit() has finished, then die as a kill -9 would (before the save)."""
    real = runner_lib.measure

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner_lib, "measure", killed)
    with pytest.raises(KeyboardInterrupt):
        run(recipe, out, **kwargs)
    monkeypatch.setattr(runner_lib, "measure", real)
    (weights,) = (out / "01_train" / "backup").rglob("latest.weights.h5")
    return weights


@pytest.mark.slow
def test_4_7_8_a_kill_after_fit_resumes_only_from_its_own_intact_backup(tmp_path, monkeypatch):
    killed = tmp_path / "killed"
    _killed_after_fit(killed, monkeypatch)
    same, changed, partial = (tmp_path / n for n in ("same", "changed", "partial"))
    for target in (same, changed, partial):
        shutil.copytree(killed, target)

    # 8: a kill between the end of fit() and the save no longer loses the stage: it is
    # restored at its last epoch, with nothing left to train.
    records, _ = run(TRAIN_ONLY, same)
    assert records[0]["history"] == {}
    assert records[0]["accuracy"] > 0.3
    assert not (same / "01_train" / "backup").exists()

    # 4: another learning rate is another stage key: the old backup is not restored.
    other = copy.deepcopy(TRAIN_ONLY)
    other["stages"][0]["learning_rate"] = 0.01
    records, _ = run(other, changed)
    assert len(records[0]["history"]["loss"]) == 2

    # 7: a backup the disk cut short is discarded with a warning, and the stage restarts.
    (weights,) = (partial / "01_train" / "backup").rglob("latest.weights.h5")
    weights.write_bytes(weights.read_bytes()[:1000])
    records, lines = run(TRAIN_ONLY, partial)
    assert any(
        "discarding the training backup" in line and "partial or corrupt" in line for line in lines
    )
    assert len(records[0]["history"]["loss"]) == 2


_DISK_FULL = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
from tfcompress import cli
sys.exit(cli.main(["run", sys.argv[1], "--out", sys.argv[2]]))
"""


@pytest.mark.slow
def test_7_a_full_disk_is_an_error_not_a_crash_and_the_rerun_works(tmp_path):
    """Writes over 20 kB fail (EFBIG) as on a full disk: exit 1, then a clean rerun."""
    (tmp_path / "r.yaml").write_text(json.dumps(TRAIN_ONLY))
    result = subprocess.run(
        [sys.executable, "-c", _DISK_FULL, str(tmp_path / "r.yaml"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1, result.stderr[-1500:]  # not 139
    assert "File too large" in result.stderr.strip().splitlines()[-1]
    assert cli.main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out")]) == 0
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_8_stale_temporary_files_and_folders_are_removed(copy_of):
    stale = [
        copy_of / "01_train" / ".model.keras.ab12cd34.tmp",
        copy_of / "01_train" / ".model.keras.ab12cd34.tmp.keras",
        copy_of / ".run.json.zz99aa11.tmp",
    ]
    for path in stale:
        path.write_bytes(b"half")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    dead_dir = tempfile.mkdtemp(prefix=f"tfcompress-export-{dead.pid}-")
    live_dir = tempfile.mkdtemp(prefix=_io.export_temp_prefix())
    try:
        _, lines = run(RECIPE, copy_of)
        assert len(skipped(lines)) == 2
        assert not any(p.exists() for p in stale)
        assert sum("removed a temporary file" in line for line in lines) == 3
        assert not os.path.exists(dead_dir) and os.path.isdir(live_dir)
    finally:
        shutil.rmtree(dead_dir, ignore_errors=True)
        shutil.rmtree(live_dir, ignore_errors=True)


# 9: one run per output folder ----------------------------------------------------------------


def test_9_a_second_run_on_the_same_folder_is_refused(copy_of, capsys):
    with _io.folder_lock(str(copy_of)):
        with pytest.raises(RunInProgressError, match=rf"already running .*\(pid {os.getpid()}\)"):
            run(RECIPE, copy_of)
        (copy_of / "r.yaml").write_text(json.dumps(RECIPE))
        assert cli.main(["run", str(copy_of / "r.yaml"), "--out", str(copy_of)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "already running" in err[0]
    _, lines = run(RECIPE, copy_of)  # released: the next run goes ahead
    assert len(skipped(lines)) == 2


# 19: files a run writes follow the umask -----------------------------------------------------


def test_19_run_outputs_follow_the_umask(finished):
    out, _ = finished
    umask = os.umask(0)
    os.umask(umask)
    for name in ("run.json", "report.md", "01_train/record.json", "02_export/model_float32.tflite"):
        assert stat.S_IMODE(os.stat(out / name).st_mode) == 0o666 & ~umask, name


# 14: data validated before the first stage ----------------------------------------------------


def _digits_npz(folder, **changes):
    from tfcompress.data import load_digits

    d = load_digits()
    arrays = dict(x_train=d.x_train, y_train=d.y_train, x_test=d.x_test, y_test=d.y_test)
    arrays.update(changes)
    np.savez(folder / "d.npz", **arrays)
    return str(folder / "d.npz")


def _nan_x(x):
    x = x.copy()
    x[3, 2, 2, 0] = np.nan
    return x


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: dict(x_train=_nan_x(d.x_train)), "x_train holds 1 NaN or infinite values"),
        (lambda d: dict(x_train=d.x_train[:0], y_train=d.y_train[:0]), "x_train is empty"),
        (lambda d: dict(y_train=d.y_train + 0.5), "fractional and would be truncated"),
        (lambda d: dict(y_train=d.y_train[:-3]), "y_train must hold one integer label per sample"),
        (lambda d: dict(y_test=d.y_test + 10), "labels go up to 19 but model 'digits_cnn' has 10"),
        (
            lambda d: dict(x_train=d.x_train[:, :6], x_test=d.x_test[:, :6]),
            r"takes samples of shape \(8, 8, 1\) but x_train's samples have shape \(6, 8, 1\)",
        ),
    ],
    ids=["nan", "empty", "float-labels", "lengths", "label-range", "shape"],
)
def test_14_bad_data_stops_before_the_first_stage(tmp_path, change, message):
    from tfcompress.data import load_digits

    recipe = dict(RECIPE, data={"npz": _digits_npz(tmp_path, **change(load_digits()))})
    with pytest.raises(DataError, match=message):
        run(recipe, tmp_path / "out")
    assert not (tmp_path / "out" / "01_train").exists()


# 15: clustering that cannot work says so ------------------------------------------------------


def test_15_clusters_larger_than_every_kernel_is_an_error(tmp_path):
    from tfcompress import testing

    testing.digits_cnn(filters=[2, 4], dense_units=8).save(tmp_path / "m.keras")
    recipe = dict(
        RECIPE,
        model={"path": str(tmp_path / "m.keras")},
        stages=[{"type": "cluster", "number_of_clusters": 5000, "epochs": 1}],
    )
    with pytest.raises(RecipeError, match="number_of_clusters=5000 leaves every layer"):
        run(recipe, tmp_path / "out")


def test_15_a_nan_weight_names_its_layer():
    from tfcompress import cluster, testing

    model = testing.digits_cnn(filters=[2, 4], dense_units=8)
    layer = next(la for la in model.layers if la.name.startswith("dense"))
    kernel = layer.kernel.numpy()
    kernel[0, 0] = np.nan
    layer.kernel.assign(kernel)
    with pytest.raises(ValueError, match=rf"'{layer.name}'.* 1 NaN or infinite"):
        cluster.cluster_weights(model, number_of_clusters=4)
