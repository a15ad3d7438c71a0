"""The edge kit in export/ runs with LiteRT and numpy alone, TensorFlow unimportable."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tfcompress import export

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVALUATE = os.path.join(ROOT, "export", "evaluate.py")

# Block TensorFlow, Keras and tfcompress: importing any of them raises ImportError.
BLOCKER = (
    "import sys, runpy\n"
    "for name in ('tensorflow', 'keras', 'tf_keras', 'tfcompress', 'tfcompress_edge'):\n"
    "    sys.modules[name] = None\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


@pytest.fixture(scope="module")
def kit(trained_cnn, digits, tmp_path_factory):
    folder = tmp_path_factory.mktemp("kit")
    model = export.to_tflite(
        trained_cnn,
        folder / "digits_int8.tflite",
        mode="int8",
        representative_data=digits.x_train,
        int8_io=True,
    )
    np.savez(folder / "test.npz", x=digits.x_test, y=digits.y_test)
    expected = export.verify(model.path, trained_cnn, (digits.x_test, digits.y_test))
    return folder, expected


def run_without_tensorflow(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-c", BLOCKER, *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def test_evaluate_gives_the_same_accuracy_without_tensorflow(kit):
    folder, expected = kit
    result = run_without_tensorflow(
        EVALUATE,
        str(folder / "digits_int8.tflite"),
        str(folder / "test.npz"),
        "--runs",
        "10",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["samples"] == expected.samples
    assert report["accuracy"] == pytest.approx(expected.tflite_accuracy)
    assert report["latency_median_ms"] > 0


def test_copied_folder_works_on_its_own(kit, tmp_path):
    folder, expected = kit
    device = tmp_path / "device"
    device.mkdir()
    for name in ("evaluate.py", "runner.py"):
        (device / name).write_bytes(open(os.path.join(ROOT, "export", name), "rb").read())
    result = run_without_tensorflow(
        "evaluate.py",
        str(folder / "digits_int8.tflite"),
        str(folder / "test.npz"),
        "--runs",
        "5",
        cwd=device,
    )
    assert result.returncode == 0, result.stderr
    assert f"accuracy   {expected.tflite_accuracy:.4f}" in result.stdout


def test_the_blocker_really_blocks(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text("try:\n    import tensorflow\nexcept ImportError:\n    print('blocked')\n")
    assert run_without_tensorflow(str(script)).stdout.strip() == "blocked"


def test_bad_model_file_is_one_line_exit_2(kit, tmp_path):
    folder, _ = kit
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00" * 64)
    result = run_without_tensorflow(EVALUATE, str(bad), str(folder / "test.npz"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "is not a TFLite model" in result.stderr
