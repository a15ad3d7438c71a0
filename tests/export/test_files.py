"""inspect, benchmark and to_c_array; and what each does with a bad file."""

import os
import shutil
import subprocess

import numpy as np
import pytest

from tfcompress import export
from tfcompress.errors import InvalidTFLiteFileError


@pytest.fixture(scope="module")
def int8_file(trained_cnn, digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("files") / "digits_int8.tflite"
    return export.to_tflite(trained_cnn, path, mode="int8", representative_data=digits.x_train).path


def test_inspect_lists_real_ops_not_delegates(int8_file):
    info = export.inspect(int8_file)
    hist = info.op_histogram
    assert hist["CONV_2D"] == 2 and hist["FULLY_CONNECTED"] == 2
    assert hist["QUANTIZE"] == 1 and hist["DEQUANTIZE"] == 1
    assert "DELEGATE" not in hist
    assert info.inputs[0].shape == (-1, 8, 8, 1)
    assert "CONV_2D (int8)" in info.summary()


def test_benchmark_reports_latency(int8_file):
    result = export.benchmark(int8_file, num_threads=1, runs=20, warmup=2)
    assert result.runs == 20 and result.num_threads == 1
    assert 0 < result.median_ms <= result.p90_ms


def test_benchmark_rejects_zero_threads(int8_file):
    with pytest.raises(ValueError, match="Received: num_threads=0"):
        export.benchmark(int8_file, num_threads=0)


def _compile_and_dump(compiler, source_name, header, tmp_path):
    src = tmp_path / source_name
    src.write_text(
        '#include <stdio.h>\n#include "model_data.h"\n'
        "int main(void) {\n"
        "  if (((unsigned long)g_digits_int8) % 16 != 0) return 3;\n"
        "  fwrite(g_digits_int8, 1, g_digits_int8_len, stdout);\n  return 0;\n}\n"
    )
    exe = tmp_path / (source_name + ".bin")
    std = "-std=c++11" if compiler.endswith("++") else "-std=c11"
    subprocess.run([compiler, std, "-I", str(header.parent), str(src), "-o", str(exe)], check=True)
    return subprocess.run([str(exe)], check=True, capture_output=True).stdout


@pytest.mark.parametrize("compiler,source", [("gcc", "main.c"), ("g++", "main.cc")])
def test_c_array_compiles_and_holds_the_exact_bytes(int8_file, tmp_path, compiler, source):
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} is not installed")
    header = tmp_path / "model_data.h"
    assert export.to_c_array(int8_file, header) == str(header)
    assert _compile_and_dump(compiler, source, header, tmp_path) == open(int8_file, "rb").read()


def test_c_array_parses_back_in_python(int8_file, tmp_path):
    header = tmp_path / "h.h"
    export.to_c_array(int8_file, header, variable_name="model")
    text = header.read_text()
    body = text[text.index("{") + 1 : text.index("};")]
    values = bytes(int(v, 16) for v in body.replace("\n", "").split(",") if v.strip())
    assert values == open(int8_file, "rb").read()
    assert f"const unsigned int model_len = {len(values)};" in text


def test_c_array_rejects_bad_variable_name(int8_file, no_leftovers):
    folder, check = no_leftovers
    with pytest.raises(ValueError, match="C identifier.*Received: variable_name='9lives'"):
        export.to_c_array(int8_file, folder / "h.h", variable_name="9lives")
    check()


def _bad_files(folder, good):
    data = open(good, "rb").read()
    files = {
        "missing": folder / "nope.tflite",
        "empty": folder / "empty.tflite",
        "text": folder / "notes.tflite",
        "truncated": folder / "truncated.tflite",
    }
    files["empty"].write_bytes(b"")
    files["text"].write_text("this is not a model at all")
    files["truncated"].write_bytes(data[: len(data) // 2])
    return files


@pytest.mark.parametrize("kind", ["missing", "empty", "text", "truncated"])
def test_bad_files_give_one_clear_error_everywhere(int8_file, trained_cnn, digits, tmp_path, kind):
    bad = _bad_files(tmp_path, int8_file)[kind]
    expected = {
        "missing": "No TFLite file at",
        "empty": "is not a TFLite model",
        "text": "is not a TFLite model",
        "truncated": "truncated or corrupt",
    }[kind]
    calls = [
        lambda: export.inspect(bad),
        lambda: export.benchmark(bad),
        lambda: export.verify(bad, trained_cnn, digits.x_test),
        lambda: export.to_c_array(bad, tmp_path / "out.h"),
    ]
    for call in calls:
        with pytest.raises(InvalidTFLiteFileError, match=expected) as info:
            call()
        assert str(bad) in str(info.value)
    assert not os.path.exists(tmp_path / "out.h")


def test_edge_runner_predicts_like_verify(int8_file, digits):
    from tfcompress_edge.runner import TFLiteRunner

    runner = TFLiteRunner(int8_file)
    batched = runner.predict(digits.x_test[:40], batch_size=16)
    single = np.concatenate([runner.predict(digits.x_test[i : i + 1]) for i in range(40)])
    np.testing.assert_allclose(batched, single, atol=1e-6)
