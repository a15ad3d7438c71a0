"""Issue 15: hostile or careless input gives one typed error, never a traceback or a lost file.

Cases are numbered as in the issue.
"""

import os
import stat
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from tfcompress import _io, cli, pipeline
from tfcompress.errors import InvalidModelFileError, InvalidTFLiteFileError, UntrustedCodeError
from tfcompress.pipeline import RecipeError

TINY = {
    "name": "tiny",
    "data": {"embedded": "digits"},
    "model": {
        "factory": "tfcompress.testing:digits_cnn",
        "kwargs": {"filters": [2, 4], "dense_units": 8},
    },
    "stages": [{"type": "train", "epochs": 1}],
}


def one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """A tiny Keras 3 model (.keras), its float32 .tflite, and matching .npz data."""
    import keras

    from tfcompress import export

    folder = tmp_path_factory.mktemp("tiny")
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(6, activation="relu"), keras.layers.Dense(3)],
        name="tiny",
    )
    model.save(folder / "m.keras")
    export.to_tflite(model, str(folder / "m.tflite"), mode="float32")
    x = np.random.default_rng(0).normal(size=(20, 8)).astype("float32")
    np.savez(folder / "data.npz", x=x, y=np.arange(20) % 3)
    return folder, model


# 1, 2: an output path that is an input, or another output ---------------------------------


def test_1_export_onto_its_own_model_is_refused(tiny_files, capsys):
    folder, _ = tiny_files
    model = folder / "m.keras"
    before = model.read_bytes()
    assert cli.main(["export", str(model), "-o", str(model)]) == 2
    assert "is the same file as the model" in one_error_line(capsys)
    assert model.read_bytes() == before


def test_2_header_onto_the_tflite_output_is_refused(tiny_files, tmp_path, capsys):
    folder, _ = tiny_files
    out = tmp_path / "x.tflite"
    assert (
        cli.main(["export", str(folder / "m.keras"), "-o", str(out), "--c-header", str(out)]) == 2
    )
    assert "--c-header" in one_error_line(capsys)
    assert not out.exists()


def test_2_output_onto_the_verify_data_through_a_link_is_refused(tiny_files, tmp_path, capsys):
    folder, _ = tiny_files
    link = tmp_path / "alias.npz"
    os.symlink(folder / "data.npz", link)
    before = (folder / "data.npz").read_bytes()
    assert (
        cli.main(
            [
                "export",
                str(folder / "m.keras"),
                "-o",
                str(link),
                "--verify",
                str(folder / "data.npz"),
            ]
        )
        == 2
    )
    one_error_line(capsys)
    assert (folder / "data.npz").read_bytes() == before


# 10, 11: code from files runs only when trusted --------------------------------------------


def test_10_h5_model_needs_trust_and_names_its_lambda(tmp_path, capsys):
    import tf_keras

    marker = tmp_path / "ran"
    inputs = tf_keras.Input((4,))
    # The Lambda's code touches `marker` whenever the model is rebuilt from the file.
    source = f"lambda t: t * float(__import__('pathlib').Path({str(marker)!r}).touch() is None)"
    hidden = tf_keras.layers.Lambda(eval(source), name="sneaky")(inputs)
    marker.unlink()
    tf_keras.Model(inputs, tf_keras.layers.Dense(2)(hidden)).save(tmp_path / "u.h5")
    code = cli.main(["export", str(tmp_path / "u.h5"), "-o", str(tmp_path / "u.tflite")])
    line = one_error_line(capsys)
    assert code == 2
    assert "--trust-code" in line and "Lambda layer 'sneaky'" in line
    assert not (tmp_path / "u.tflite").exists() and not marker.exists()
    with pytest.raises(UntrustedCodeError):
        pipeline.data.load_model_file(str(tmp_path / "u.h5"))
    assert not marker.exists()
    model = pipeline.data.load_model_file(str(tmp_path / "u.h5"), trust_code=True)
    assert model.layers[1].name == "sneaky" and marker.exists()  # trusted: the code ran


@pytest.mark.parametrize("factory", ["os:system", "subprocess:run", "subprocess:check_call"])
def test_11_recipe_factory_outside_tfcompress_needs_trust(tmp_path, factory):
    marker = tmp_path / "ran"
    recipe = dict(TINY, model={"factory": factory, "kwargs": {"args": f"touch {marker}"}})
    with pytest.raises(UntrustedCodeError, match=rf"call '{factory.split(':')[1]}\(\.\.\.\)'"):
        pipeline.run(recipe, str(tmp_path / "out"), progress=lambda m: None)
    assert not marker.exists()
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_11_cli_run_refuses_untrusted_student_factory(tmp_path, capsys):
    (tmp_path / "r.yaml").write_text(
        "data: {embedded: digits}\n"
        "model: {factory: 'tfcompress.testing:digits_cnn'}\n"
        "stages:\n  - {type: train, epochs: 1}\n"
        "  - {type: distill, epochs: 1, student: {factory: 'os:getcwd'}}\n"
    )
    assert cli.main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "o")]) == 2
    line = one_error_line(capsys)
    assert "student factory would import the Python module 'os'" in line
    assert "--trust-code" in line


def test_22_missing_factory_module_fails_before_data_loads(tmp_path):
    lines = []
    recipe = dict(TINY, data={"factory": "no_such_module_h3:load"})
    with pytest.raises(RecipeError, match="cannot be imported"):
        pipeline.run(recipe, str(tmp_path / "out"), progress=lines.append, trust_code=True)
    assert not any("loading data" in line for line in lines)


def test_22_factory_that_returns_no_model(tmp_path):
    recipe = dict(TINY, model={"factory": "tfcompress.data:load_digits"})
    with pytest.raises(RecipeError, match="must return a Keras model; it returned a Splits"):
        pipeline.run(recipe, str(tmp_path / "out"), progress=lambda m: None)


# 12: names derived for the C header ---------------------------------------------------------


def test_12_newline_in_tflite_name_cannot_inject_into_the_header(tiny_files, tmp_path):
    from tfcompress import export

    folder, _ = tiny_files
    hostile = tmp_path / "m\n#include <stdio.h>\nint x;\\.tflite"
    hostile.write_bytes((folder / "m.tflite").read_bytes())
    header = tmp_path / "model.h"
    export.to_c_array(str(hostile), str(header))
    text = header.read_text()
    lines = text.splitlines()
    assert not any(line.startswith(("#include", "int x")) for line in lines)
    assert lines[0].startswith("// m?#include") and lines[0].endswith("bytes of TFLite flatbuffer.")
    assert all(
        line.startswith(("//", "#", "TFCOMPRESS", "  0x", "};", "const")) or not line
        for line in lines
    )


# 13: tracebacks -> one line ------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00" * 300, b"PK\x03\x04broken", b"hello"],
    ids=["empty", "zeros", "truncated-zip", "text"],
)
def test_13_bad_keras_files_are_one_line_naming_the_file(tmp_path, capsys, content):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(content)
    assert cli.main(["export", str(bad), "-o", str(tmp_path / "o.tflite")]) == 2
    line = one_error_line(capsys)
    assert "bad.keras" in line and "not a valid .keras model" in line
    with pytest.raises(InvalidModelFileError):
        pipeline.data.load_model_file(str(bad))


def test_13_keras_zip_without_config(tmp_path):
    bad = tmp_path / "noconf.keras"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("metadata.json", "{}")
    with pytest.raises(InvalidModelFileError, match="no config.json"):
        pipeline.data.load_model_file(str(bad))


@pytest.mark.slow
def test_13_pipeline_qat_model_exports_from_the_cli(tmp_path, capsys, digits):
    """A stage's model.keras holds our fake-quant layers: the CLI registers them."""
    import keras

    from tfcompress import quantize, testing

    model = testing.digits_cnn(filters=[2, 4], dense_units=8)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(digits.x_train[:64], digits.y_train[:64], epochs=1, verbose=0)
    qat = quantize.quantize_model(model, representative_data=digits.x_train[:32])
    qat.save(tmp_path / "qat.keras")
    code = subprocess.run(
        [
            sys.executable,
            "-m",
            "tfcompress.cli",
            "export",
            str(tmp_path / "qat.keras"),
            "-o",
            str(tmp_path / "qat.tflite"),
            "--mode",
            "int8",
            "--calibration",
            str(_npz(tmp_path, x=digits.x_train[:32])),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert code.returncode == 0, code.stderr[-800:]
    from tfcompress import export

    assert export.inspect(str(tmp_path / "qat.tflite")).is_fully_integer()


def _npz(folder, **arrays):
    path = folder / "c.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "content, message",
    [
        (b"just some text\n", "is not an .npz archive"),
        (b"PK\x03\x04\x00\x00", "is not an .npz archive"),
    ],
)
def test_13_text_as_calibration_is_one_line(tiny_files, tmp_path, capsys, content, message):
    folder, _ = tiny_files
    (tmp_path / "c.npz").write_bytes(content)
    assert (
        cli.main(
            [
                "export",
                str(folder / "m.keras"),
                "-o",
                str(tmp_path / "o.tflite"),
                "--mode",
                "int8",
                "--calibration",
                str(tmp_path / "c.npz"),
            ]
        )
        == 2
    )
    assert message in one_error_line(capsys)
    assert not (tmp_path / "o.tflite").exists()


def test_13_verify_data_with_unequal_x_and_y(tiny_files, tmp_path, capsys):
    folder, _ = tiny_files
    np.savez(tmp_path / "v.npz", x=np.zeros((5, 8), "float32"), y=np.zeros(4, "int64"))
    assert (
        cli.main(
            [
                "export",
                str(folder / "m.keras"),
                "-o",
                str(tmp_path / "o.tflite"),
                "--verify",
                str(tmp_path / "v.npz"),
            ]
        )
        == 2
    )
    assert "same, non-zero number of rows" in one_error_line(capsys)


def test_13_verify_with_the_wrong_sample_shape(tiny_files, tmp_path, capsys):
    import keras

    from tfcompress import export

    folder, model = tiny_files
    with pytest.raises(ValueError, match=r"has shape \(5,\) per sample"):
        export.verify(str(folder / "m.tflite"), model, np.zeros((4, 5), "float32"))
    # Data that fits the model but not the file (a file of another model): the runner's
    # check, not an XNNPack RuntimeError.
    five = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)], name="five")
    with pytest.raises(ValueError, match=r"takes samples of shape \(8,\)"):
        export.verify(str(folder / "m.tflite"), five, np.zeros((4, 5), "float32"))
    np.savez(tmp_path / "v.npz", x=np.zeros((5, 9), "float32"))
    code = cli.main(
        [
            "export",
            str(folder / "m.keras"),
            "-o",
            str(tmp_path / "o.tflite"),
            "--verify",
            str(tmp_path / "v.npz"),
        ]
    )
    line = one_error_line(capsys)
    assert code == 2 and "--verify" in line


def test_13_verify_a_file_of_another_model(tiny_files):
    import keras

    from tfcompress import export

    folder, _ = tiny_files
    other = keras.Sequential([keras.Input((8,)), keras.layers.Dense(5)], name="other")
    with pytest.raises(ValueError, match="was not exported from this model"):
        export.verify(str(folder / "m.tflite"), other, np.zeros((4, 8), "float32"))


def test_13_non_utf8_recipe(tmp_path, capsys):
    (tmp_path / "r.yaml").write_bytes(b"name: caf\xe9\n")
    assert cli.main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "is not UTF-8 text" in one_error_line(capsys)


def test_13_malformed_sst2_is_a_data_error(tmp_path, monkeypatch):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\nnice film\t1\nbad\t7\n")
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\nok\t1\n")
    monkeypatch.setenv("TFCOMPRESS_SST2_DIR", str(tmp_path))
    recipe = dict(TINY, data={"embedded": "sst2"})
    with pytest.raises(pipeline.data.DataError, match="train.tsv, line 3"):
        pipeline.run(recipe, str(tmp_path / "out"), progress=lambda m: None)


def test_13_unexpected_errors_are_one_line_unless_debug(monkeypatch, capsys):
    def boom(args):
        raise KeyError("surprise")

    monkeypatch.setattr(cli, "_cmd_inspect", boom)
    assert cli.main(["inspect", "x.tflite"]) == 1
    line = one_error_line(capsys)
    assert "KeyError" in line and "--debug" in line
    assert cli.main(["--debug", "inspect", "x.tflite"]) == 1
    assert "Traceback" in capsys.readouterr().err


# 16: the edge kit's evaluate.py ---------------------------------------------------------------


def _evaluate(*args):
    kit = os.path.join(os.path.dirname(__file__), "..", "..", "export", "evaluate.py")
    return subprocess.run([sys.executable, kit, *args], capture_output=True, text=True, timeout=300)


def test_16_evaluate_wrong_rank_and_zero_threads(tiny_files, tmp_path):
    folder, _ = tiny_files
    np.savez(tmp_path / "rank.npz", x=np.zeros((20, 8, 2), "float32"), y=np.zeros(20))
    result = _evaluate(str(folder / "m.tflite"), str(tmp_path / "rank.npz"))
    assert result.returncode == 2
    assert "takes samples of shape (8,)" in result.stderr and "(20, 8, 2)" in result.stderr
    assert "Traceback" not in result.stderr
    result = _evaluate(str(folder / "m.tflite"), str(folder / "data.npz"), "--threads", "0")
    assert result.returncode == 2 and "expected a positive integer, got '0'" in result.stderr
    assert "corrupt" not in result.stderr
    good = _evaluate(str(folder / "m.tflite"), str(folder / "data.npz"), "--json", "--runs", "2")
    assert good.returncode == 0 and '"samples": 20' in good.stdout


def test_16_runner_refuses_zero_threads_by_name(tiny_files):
    from tfcompress_edge.runner import TFLiteRunner

    folder, _ = tiny_files
    with pytest.raises(ValueError, match="num_threads must be a whole number of at least 1"):
        TFLiteRunner(str(folder / "m.tflite"), num_threads=0)


# 17, 18 ----------------------------------------------------------------------------------------


def test_17_distilling_a_model_into_itself_is_refused():
    from tfcompress import distill, testing

    student = testing.digits_cnn(filters=[2, 4], dense_units=8)
    with pytest.raises(ValueError, match="are the same model"):
        distill.distiller(student, student)


def test_18_verify_with_fractional_labels(tiny_files):
    from tfcompress import export

    folder, model = tiny_files
    x = np.random.default_rng(1).normal(size=(4, 8)).astype("float32")
    with pytest.raises(ValueError, match="fractional or NaN"):
        export.verify(str(folder / "m.tflite"), model, (x, np.array([0, 1, 100.5, 2])))
    result = export.verify(str(folder / "m.tflite"), model, (x, np.array([0.0, 1.0, 2.0, 1.0])))
    assert result.tflite_accuracy is not None


# 19: atomic writes respect the umask ---------------------------------------------------------


def test_19_atomic_writes_follow_the_umask_and_keep_modes(tmp_path):
    old = os.umask(0o022)
    try:
        _io.atomic_write_text(tmp_path / "a.json", "{}")
        assert stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode) == 0o644
        os.umask(0o077)
        _io.atomic_write_text(tmp_path / "b.json", "{}")
        assert stat.S_IMODE(os.stat(tmp_path / "b.json").st_mode) == 0o600
        os.chmod(tmp_path / "a.json", 0o640)
        _io.atomic_write_bytes(tmp_path / "a.json", b"[]")  # overwrite keeps 0640
        assert stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode) == 0o640
    finally:
        os.umask(old)


# 20: YAML ---------------------------------------------------------------------------------------


def test_20_duplicate_keys_are_refused_with_both_lines(tmp_path):
    (tmp_path / "r.yaml").write_text(
        "name: a\ndata: {embedded: digits}\nmodel: {factory: 'tfcompress.testing:digits_cnn'}\n"
        "stages:\n  - {type: train, epochs: 1, epochs: 5}\n"
    )
    with pytest.raises(RecipeError, match=r"found the key 'epochs' twice \(lines 5 and 5\)"):
        pipeline.load_recipe(tmp_path / "r.yaml")


def test_20_alias_bomb_is_refused(tmp_path):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i, name in enumerate("bcdefgh"):
        prev = "abcdefgh"[i]
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\n")
    assert os.path.getsize(tmp_path / "bomb.yaml") < 800
    with pytest.raises(RecipeError, match="aliases expand to more than"):
        pipeline.load_recipe(tmp_path / "bomb.yaml")


def test_20_merge_keys_still_work(tmp_path):
    (tmp_path / "r.yaml").write_text(
        "data: {embedded: digits}\nmodel: {factory: 'tfcompress.testing:digits_cnn'}\n"
        "stages:\n  - &t {type: train, epochs: 1}\n  - {<<: *t, epochs: 2}\n"
    )
    recipe = pipeline.load_recipe(tmp_path / "r.yaml")
    assert [s.epochs for s in recipe.stages] == [1, 2]


# 21: exit codes -----------------------------------------------------------------------------


def test_21_missing_model_and_out_that_is_a_file_exit_2(tmp_path, capsys):
    assert cli.main(["export", str(tmp_path / "nope.keras"), "-o", str(tmp_path / "x")]) == 2
    one_error_line(capsys)
    (tmp_path / "r.yaml").write_text(
        "data: {embedded: digits}\nmodel: {factory: 'tfcompress.testing:digits_cnn'}\n"
        "stages:\n  - {type: train, epochs: 1}\n"
    )
    (tmp_path / "afile").write_text("keep")
    assert cli.main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "afile")]) == 2
    assert "is a file" in one_error_line(capsys)
    assert (tmp_path / "afile").read_text() == "keep"


# inspect / bench on corrupt files -----------------------------------------------------------


def _corrupt_names(data):
    """Flip the bytes of every tensor name so they are no longer UTF-8."""
    out = bytearray(data)
    for name in (b"StatefulPartitionedCall", b"serving_default"):
        start = 0
        while (i := out.find(name, start)) >= 0:
            out[i + 1] = 0xD5
            start = i + 1
    return bytes(out)


def test_13_inspect_and_bench_on_corrupt_tensor_names(tiny_files, tmp_path, capsys):
    folder, _ = tiny_files
    bad = tmp_path / "names.tflite"
    bad.write_bytes(_corrupt_names((folder / "m.tflite").read_bytes()))
    from tfcompress import export

    with pytest.raises(InvalidTFLiteFileError, match="corrupt"):
        export.inspect(str(bad))
    for command in (["inspect", str(bad)], ["bench", str(bad), "--runs", "2"]):
        assert cli.main(command) == 2
        assert "names.tflite" in one_error_line(capsys)


def _without_subgraphs(data):
    """The same file with the Model table's `subgraphs` field marked absent."""
    import struct

    out = bytearray(data)
    root = struct.unpack_from("<I", out, 0)[0]
    vtable = root - struct.unpack_from("<i", out, root)[0]
    struct.pack_into("<H", out, vtable + 4 + 2 * 2, 0)
    return bytes(out)


def test_13_a_model_without_subgraphs_is_an_error_not_a_segfault(tiny_files, tmp_path, capsys):
    """LiteRT itself segfaults on this file (found by the property test below)."""
    from tfcompress import export

    folder, _ = tiny_files
    bad = tmp_path / "nograph.tflite"
    bad.write_bytes(_without_subgraphs((folder / "m.tflite").read_bytes()))
    with pytest.raises(InvalidTFLiteFileError, match="has no subgraph"):
        export.inspect(str(bad))
    assert cli.main(["bench", str(bad), "--runs", "2"]) == 2
    assert "has no subgraph" in one_error_line(capsys)


def test_10_keras_lambda_needs_trust_and_is_named(tmp_path, capsys):
    import keras

    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda t: t * 2, name="doubler")(inputs)
    keras.Model(inputs, outputs).save(tmp_path / "lam.keras")
    with pytest.raises(UntrustedCodeError, match="Lambda layer 'doubler'"):
        pipeline.data.load_model_file(str(tmp_path / "lam.keras"))
    assert cli.main(["export", str(tmp_path / "lam.keras"), "-o", str(tmp_path / "l.tflite")]) == 2
    assert "--trust-code" in one_error_line(capsys)
    model = pipeline.data.load_model_file(str(tmp_path / "lam.keras"), trust_code=True)
    assert model.layers[-1].name == "doubler"


def test_21_a_bad_header_path_fails_before_the_conversion(tiny_files, tmp_path, capsys):
    folder, _ = tiny_files
    out = tmp_path / "x.tflite"
    code = cli.main(
        [
            "export",
            str(folder / "m.keras"),
            "-o",
            str(out),
            "--c-header",
            str(tmp_path / "missing" / "h.h"),
        ]
    )
    assert code == 2 and "does not exist" in one_error_line(capsys)
    assert not out.exists()


def test_11_tune_refuses_untrusted_code_before_any_work(tmp_path, capsys):
    marker = tmp_path / "ran"
    (tmp_path / "r.yaml").write_text(
        "data: {embedded: digits}\n"
        f"model: {{factory: 'os:system', kwargs: {{command: 'touch {marker}'}}}}\n"
        "stages:\n  - {type: train, epochs: 1}\n"
    )
    assert cli.main(["tune", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "call 'system(...)'" in one_error_line(capsys)
    assert not marker.exists() and not (tmp_path / "o").exists()
