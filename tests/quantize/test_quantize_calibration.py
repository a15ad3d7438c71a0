"""Range calibration: min/max, percentile, MSE; used for QAT init and PTQ."""

import numpy as np
import pytest

from tfcompress import export, quantize
from tfcompress.quantize import QuantizeConfig


@pytest.fixture(scope="module")
def heavy_tailed():
    rng = np.random.default_rng(0)
    values = rng.normal(size=50_000).astype("float32")
    values[:5] = [40.0, -30.0, 35.0, 25.0, -20.0]  # a few outliers
    return values


def _mse(values, lo, hi):
    from tfcompress.quantize.calibration import _fake_quant

    return float(np.mean((_fake_quant(values, lo, hi) - values) ** 2))


def test_methods_differ_as_designed(heavy_tailed):
    mm = quantize.compute_range(heavy_tailed, "minmax")
    pc = quantize.compute_range(heavy_tailed, "percentile", percentile=99.9)
    mse = quantize.compute_range(heavy_tailed, "mse")
    assert mm == (-30.0, 40.0)
    assert 2.5 < pc[1] < 4.0 and -4.0 < pc[0] < -2.5
    assert mse[1] < mm[1]
    assert _mse(heavy_tailed, *mse) < _mse(heavy_tailed, *mm)
    assert _mse(heavy_tailed, *mse) <= _mse(heavy_tailed, *pc) * 1.05


def test_range_always_includes_zero():
    assert quantize.compute_range(np.array([2.0, 3.0]), "minmax") == (0.0, 3.0)
    with pytest.raises(ValueError, match="Received: method='kl'"):
        quantize.compute_range(np.ones(3), "kl")


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
def test_ptq_with_each_method_exports_int8(method, float_cnn, digits, convert_int8, tmp_path):
    qat = quantize.quantize_model(
        float_cnn, QuantizeConfig(calibration=method), representative_data=digits.x_train[:256]
    )
    assert qat.quantize_report.calibration == method
    assert qat.quantize_report.calibration_samples == 256
    quantize.check_ranges_set(qat)
    path = convert_int8(qat, tmp_path / f"ptq_{method}.tflite")
    assert export.inspect(path).float_compute_ops() == []
    result = export.verify(path, qat, (digits.x_test, digits.y_test))
    assert result.top1_agreement >= 0.97, result
    assert result.tflite_accuracy >= 0.85, result


def test_calibrate_report(float_cnn, digits):
    qat = quantize.quantize_model(float_cnn)
    report = quantize.calibrate(qat, (digits.x_train[:100], digits.y_train[:100]), method="mse")
    assert report.method == "mse" and report.samples == 100
    assert set(report.ranges) == {
        path for path, _ in quantize.calibration.activation_quantizers(qat)
    }
    assert "mse" in str(report)
