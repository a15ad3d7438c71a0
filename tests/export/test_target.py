"""`to_tflite(..., target=...)`: the file chosen for a device, and why."""

import pytest

from tfcompress import export
from tfcompress.export.target import CPU_CANDIDATES


@pytest.fixture(scope="module")
def cpu_export(trained_cnn, digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("target") / "cpu.tflite"
    return export.to_tflite(
        trained_cnn,
        path,
        target="cpu",
        representative_data=digits.x_train,
        max_calibration_samples=64,
    )


def test_cpu_writes_the_fastest_candidate_that_agrees(cpu_export):
    result = cpu_export
    assert result.target == "cpu" and result.mode in CPU_CANDIDATES
    assert [c.mode for c in result.candidates] == list(CPU_CANDIDATES)
    by_mode = {c.mode: c for c in result.candidates}
    assert all(c.latency_ms > 0 and c.bytes > 0 for c in result.candidates)
    eligible = [c for c in result.candidates if not c.note]
    assert by_mode[result.mode] in eligible
    assert by_mode[result.mode].latency_ms == min(c.latency_ms for c in eligible)
    assert by_mode[result.mode].latency_ms <= by_mode["float32"].latency_ms
    assert by_mode["int8"].agreement >= 0.95
    assert result.mode in result.choice and "float32" in result.choice
    info = export.inspect(result.path)
    assert info.inputs[0].shape[0] == 1  # an edge file: batch fixed to 1
    assert result.bytes == by_mode[result.mode].bytes


def test_cpu_without_calibration_data_skips_int8(trained_cnn, tmp_path):
    result = export.to_tflite(trained_cnn, tmp_path / "m.tflite", target="cpu")
    int8 = next(c for c in result.candidates if c.mode == "int8")
    assert int8.latency_ms is None and "representative_data" in int8.note
    assert result.mode in ("dynamic", "float32")


@pytest.mark.parametrize("target", ["npu", "mcu"])
def test_npu_and_mcu_get_full_int8_with_int8_io(trained_cnn, digits, tmp_path, target):
    result = export.to_tflite(
        trained_cnn,
        tmp_path / f"{target}.tflite",
        target=target,
        representative_data=digits.x_train,
        max_calibration_samples=32,
    )
    info = export.inspect(result.path)
    assert result.mode == "int8" and result.int8_io and result.target == target
    assert info.is_fully_integer() and info.inputs[0].dtype == "int8"
    assert info.outputs[0].dtype == "int8" and "int8" in result.choice


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"target": "gpu"}, r"Unknown target 'gpu'.*Received: target='gpu'"),
        ({"target": "cpu", "mode": "int8"}, "either target= .* or mode="),
        ({"target": "cpu", "int8_io": True}, "int8 I/O"),
    ],
)
def test_bad_targets(trained_cnn, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        export.to_tflite(trained_cnn, tmp_path / "x.tflite", **kwargs)
