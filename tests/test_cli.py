import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tfcompress import cli


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "tfcompress.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def test_help_imports_no_tensorflow():
    code = (
        "import sys, contextlib, io\n"
        "from tfcompress import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try: cli.main(['--help'])\n"
        "    except SystemExit: pass\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'tf_keras', 'keras_hub') "
        "if m in sys.modules]\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr


@pytest.mark.parametrize("command", ["demo", "export", "inspect", "bench"])
def test_every_command_explains_itself(command, capsys):
    assert cli.main([command, "--help"]) == 0
    assert len(capsys.readouterr().out.splitlines()) > 4


@pytest.mark.parametrize(
    "argv, message",
    [
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["export", "m.keras", "-o", "x.tflite", "--mode", "int3"], "invalid choice: 'int3'"),
        (["export", "m.keras"], "the following arguments are required: -o/--output"),
        (["bench", "x.tflite", "--runs", "0"], "expected a positive integer, got '0'"),
        (["export", "nope.keras", "-o", "x.tflite"], "no model at 'nope.keras'"),
        (["export", "m.keras", "-o", "x.tflite", "--int8-io"], "--int8-io needs --mode int8"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_no_command_prints_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


@pytest.fixture(scope="module")
def saved(trained_cnn, digits, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    trained_cnn.save(folder / "cnn.keras")
    np.savez(folder / "calib.npz", x=digits.x_train[:100])
    np.savez(folder / "test.npz", x=digits.x_test, y=digits.y_test)
    return folder


def test_export_verify_and_c_header_end_to_end(saved, capsys):
    out = saved / "cnn_int8.tflite"
    code = cli.main(
        [
            "export",
            str(saved / "cnn.keras"),
            "-o",
            str(out),
            "--mode",
            "int8",
            "--calibration",
            str(saved / "calib.npz"),
            "--verify",
            str(saved / "test.npz"),
            "--c-header",
            str(saved / "cnn.h"),
        ]
    )
    text = capsys.readouterr().out
    assert code == 0
    assert "calibrated on 100 samples" in text
    assert "top-1 agreement" in text and "accuracy" in text
    assert out.exists() and (saved / "cnn.h").exists()

    assert cli.main(["inspect", str(out)]) == 0
    assert "FULLY_CONNECTED (int8)" in capsys.readouterr().out
    assert cli.main(["bench", str(out), "--runs", "5"]) == 0
    assert "median" in capsys.readouterr().out


def test_a_bad_file_is_one_error_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.tflite"
    bad.write_text("nope")
    assert cli.main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a TFLite model" in err[0]


def test_demo_runs_the_pipeline_and_writes_its_report(tmp_path):
    result = run_cli("demo", "--out", str(tmp_path / "demo"), "--quick")
    assert result.returncode == 0, result.stderr[-2000:]
    files = set(os.listdir(tmp_path / "demo"))
    assert {
        "01_train",
        "02_prune",
        "03_qat",
        "04_export",
        "report.md",
        "report.html",
        "run.json",
    } <= files
    assert (tmp_path / "demo" / "04_export" / "model_int8.tflite").is_file()
    assert "smaller (gzip) than the float32 teacher" in result.stdout
    assert "| 4. export | model_int8.tflite |" in result.stdout
    assert "fully_quantize" not in result.stderr


def test_text_demo_distils_prunes_and_exports_bert(tmp_path):
    result = run_cli("demo", "--text", "--quick", "--out", str(tmp_path / "text"))
    assert result.returncode == 0, result.stderr[-2000:]
    records = [
        json.loads((tmp_path / "text" / f / "record.json").read_text())
        for f in ("01_train", "02_distill", "03_prune", "04_export")
    ]
    assert records[1]["parameters"] < records[0]["parameters"] / 2
    assert records[2]["nonzero_parameters"] < 0.5 * records[2]["parameters"]
    assert set(records[3]["exports"]) == {"dynamic", "int8", "int4"}
    assert "model_dynamic.tflite" in result.stdout and "model_int4.tflite" in result.stdout
    exports = records[3]["exports"]  # int4 weights and tables: the smallest file
    assert exports["int4"]["gzip_bytes"] < exports["dynamic"]["gzip_bytes"]


def test_demo_refuses_a_file_as_output_folder(tmp_path):
    target = tmp_path / "afile"
    target.write_text("keep me")
    result = run_cli("demo", "--out", str(target))
    assert result.returncode == 2
    assert "is a file" in result.stderr.strip().splitlines()[-1]
    assert target.read_text() == "keep me"


def test_int8_without_calibration_needs_a_qat_model(saved, tmp_path, capsys):
    from tfcompress import export, quantize
    from tfcompress.pipeline.data import load_model_file

    argv = ["export", str(saved / "cnn.keras"), "-o", str(tmp_path / "x.tflite"), "--mode", "int8"]
    assert cli.main(argv) == 2
    assert "needs --calibration" in capsys.readouterr().err
    assert not (tmp_path / "x.tflite").exists()
    # A QAT model carries its ranges: no calibration data needed.
    model = load_model_file(saved / "cnn.keras")
    qat = quantize.quantize_model(model, representative_data=np.load(saved / "calib.npz")["x"])
    qat.save(tmp_path / "qat.keras")
    argv[1] = str(tmp_path / "qat.keras")
    assert cli.main(argv) == 0
    assert export.inspect(str(tmp_path / "x.tflite")).is_fully_integer()


def test_registered_low_bit_modes_are_reachable_from_the_cli(saved, tmp_path):
    from tfcompress import export

    out = tmp_path / "m_int4.tflite"
    assert cli.main(["export", str(saved / "cnn.keras"), "-o", str(out), "--mode", "int4"]) == 0
    bits = {w.bits for w in export.inspect(str(out)).weights}
    assert 4 in bits
