"""Activation ranges from calibration data: min/max, percentile or MSE-optimal.

Used to initialise a QAT model's ranges before `fit()`, and on its own as
post-training quantization: `quantize_model(model, representative_data=x)`
exported without training is PTQ with the chosen method.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

from tfcompress.quantize.config import CALIBRATION_METHODS

if TYPE_CHECKING:
    import keras
    from numpy.typing import ArrayLike

    from tfcompress.quantize.layers import ActivationQuantizer

_MAX_VALUES = 200_000  # per quantizer, sampled: plenty for a range


def _minmax(v, percentile):
    return float(v.min()), float(v.max())


def _percentile(v, percentile):
    return float(np.percentile(v, 100.0 - percentile)), float(np.percentile(v, percentile))


def _fake_quant(v, lo, hi, levels=255):
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-8) / levels
    zero = np.round(-lo / scale)
    return (np.clip(np.round(v / scale) + zero, 0, levels) - zero) * scale


def _mse(v, percentile):
    lo, hi = _minmax(v, percentile)
    best, best_err = (lo, hi), np.inf
    for shrink in np.linspace(0.1, 1.0, 46):
        cand = (lo * shrink, hi * shrink)
        err = float(np.mean((_fake_quant(v, *cand) - v) ** 2))
        if err < best_err:
            best, best_err = cand, err
    return best


_METHODS = {"minmax": _minmax, "percentile": _percentile, "mse": _mse}


def compute_range(
    values: ArrayLike, method: str = "minmax", percentile: float = 99.99
) -> tuple[float, float]:
    """The `(min, max)` an int8 fake-quant should use for `values`.

    Args:
        values: an array of activations (any shape).
        method: `"minmax"` (the full range), `"percentile"` (clip the
            `100 - percentile` tails) or `"mse"` (the clipping range with the
            least quantization mean squared error).
        percentile: upper percentile for `"percentile"`.

    Returns:
        `(min, max)` floats, widened to include zero.

    Example:

    >>> compute_range(np.linspace(-4.0, 4.0, 10001), "percentile", 99.9)
    (-3.99..., 3.99...)
    """
    if method not in _METHODS:
        raise ValueError(
            f"method must be one of {CALIBRATION_METHODS}. Received: method={method!r}"
        )
    v = np.asarray(values, dtype=np.float32).ravel()
    if v.size == 0:
        raise ValueError("compute_range needs at least one value. Received: an empty array")
    lo, hi = _METHODS[method](v, percentile)
    return min(lo, 0.0), max(hi, 0.0)


@dataclasses.dataclass(frozen=True)
class CalibrationReport:
    """What `calibrate` did.

    Attributes:
        method: the calibration method.
        samples: how many inputs were run.
        ranges: `{quantizer path: (min, max)}`.
    """

    method: str
    samples: int
    ranges: dict[str, tuple[float, float]]

    def __str__(self) -> str:
        return (
            f"calibrated {len(self.ranges)} activation ranges with {self.method!r} on "
            f"{self.samples} samples"
        )


def _runs_forward(wrapper) -> bool:
    """Whether a tied-embedding wrapper is called as a lookup (not only as `reverse=True`).

    Read from the model's graph (calibration picks its quantizers before any
    call is traced); a wrapper outside a functional graph falls back to the
    calls it has traced.
    """
    nodes = getattr(wrapper, "_inbound_nodes", None) or []
    if not nodes:
        return bool(wrapper._forward_calls)
    return any(
        not getattr(getattr(node, "arguments", None), "kwargs", {}).get("reverse") for node in nodes
    )


def activation_quantizers(model: keras.Model) -> list[tuple[str, ActivationQuantizer]]:
    """Every `ActivationQuantizer` in a QAT model, with a readable path."""
    from tfcompress.quantize.composite import QuantizeComposite
    from tfcompress.quantize.layers import ActivationQuantizer, QuantizeWrapper

    found = []
    for layer in model.layers:
        if isinstance(layer, ActivationQuantizer):
            found.append((layer.name, layer))
        elif isinstance(layer, QuantizeComposite):
            found.extend(layer.used_quantizers())
        elif isinstance(layer, QuantizeWrapper) and layer.output_quantizer is not None:
            if layer.reverse_quantizer is None or _runs_forward(layer):  # else not in the graph
                found.append((f"{layer.name}/output", layer.output_quantizer))
        else:  # other wrappers (separable conv, BatchNorm): the quantizers they own
            flatten = getattr(layer, "_flatten_layers", None)
            inner = flatten(include_self=False, recursive=True) if flatten else []
            found.extend(
                (f"{layer.name}/{q.name}", q) for q in inner if isinstance(q, ActivationQuantizer)
            )
    return found


def calibrate(
    model: keras.Model,
    data: Any,
    method: str = "minmax",
    percentile: float = 99.99,
    max_samples: int = 512,
    batch_size: int = 64,
) -> CalibrationReport:
    """Set a QAT model's activation ranges from data, without training.

    Runs `data` through the model in float (fake-quant off), collects the
    tensor each quantizer sees, and sets its range with `compute_range`.

    Args:
        model: a model from `quantize_model` (Keras 3).
        data: inputs: an array, `(inputs, labels)`, a dict, a `tf.data.Dataset`.
        method: `"minmax"`, `"percentile"` or `"mse"`.
        percentile: upper percentile for `"percentile"`.
        max_samples: most inputs used.
        batch_size: inputs per forward pass.

    Returns:
        A `CalibrationReport`.

    Example:

    >>> report = calibrate(qat_model, x_train[:256], method="mse")
    >>> report.method
    'mse'
    """
    from tfcompress import _inputs as calib

    if method not in _METHODS:
        raise ValueError(
            f"method must be one of {CALIBRATION_METHODS}. Received: method={method!r}"
        )
    quantizers = activation_quantizers(model)
    if not quantizers:
        raise ValueError(
            f"Model '{model.name}' has no activation quantizers to calibrate; "
            "pass it through tfcompress.quantize.quantize_model first."
        )
    specs = calib.input_specs(model)
    inputs, _ = calib.collect(data, specs, what="calibration data", max_samples=max_samples)
    n = len(inputs[0])
    collected: dict[str, list[Any]] = {path: [] for path, _ in quantizers}
    try:
        for _, q in quantizers:
            q._collector = []
        for start in range(0, n, batch_size):
            batch = [a[start : start + batch_size] for a in inputs]
            if calib.takes_dict(model):
                model({s.name: b for s, b in zip(specs, batch, strict=True)}, training=False)
            else:
                model(batch[0] if len(batch) == 1 else batch, training=False)
        for path, q in quantizers:
            collected[path] = q._collector or []
    finally:
        for _, q in quantizers:
            q._collector = None
    rng = np.random.default_rng(0)
    ranges = {}
    for path, q in quantizers:
        values = np.concatenate([np.ravel(b) for b in collected[path]])
        if values.size > _MAX_VALUES:
            values = rng.choice(values, _MAX_VALUES, replace=False)
        lo, hi = compute_range(values, method, percentile)
        q.set_range(lo, hi)
        ranges[path] = (lo, hi)
    return CalibrationReport(method=method, samples=n, ranges=ranges)
