"""TFLite export modes: one small, registered object per scheme.

A new scheme plugs in with `register_mode(ExportMode(...))`; `to_tflite`
never grows an if-chain.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional


@dataclasses.dataclass(frozen=True)
class ExportMode:
    """How to set up a `tf.lite.TFLiteConverter` for one export mode.

    Attributes:
        name: the `mode=` string users pass.
        description: one line for `--help` and reports.
        calibration: `"required"`, `"optional"` or `"unused"`.
        configure: `configure(converter, tf, int8_io)` sets the converter's options.
        io_dtype: the integer type `int8_io=True` gives inputs and outputs, or
            `None` where integer I/O makes no sense.
        writer: `writer(model, path, **to_tflite_options) -> ExportResult` for a
            mode that writes its file itself (the litert-quantizer modes of
            `tfcompress.export.lowbit`); `to_tflite` hands over to it.
    """

    name: str
    description: str
    calibration: str
    configure: Callable
    io_dtype: Optional[str] = None
    writer: Optional[Callable] = None


_MODES: dict[str, ExportMode] = {}


def register_mode(mode: ExportMode) -> ExportMode:
    """Add an `ExportMode` to the registry (replacing one of the same name)."""
    if mode.calibration not in ("required", "optional", "unused"):
        raise ValueError(
            "ExportMode.calibration must be 'required', 'optional' or 'unused'. "
            f"Received: calibration={mode.calibration!r}"
        )
    _MODES[mode.name] = mode
    return mode


def get_mode(name: str) -> ExportMode:
    """Return the registered `ExportMode` called `name`."""
    try:
        return _MODES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown export mode {name!r}. Choose one of: {', '.join(available_modes())}. "
            f"Received: mode={name!r}"
        ) from None


def available_modes() -> list[str]:
    """Names of the registered modes, in registration order."""
    return list(_MODES)


def _float32(converter, tf, int8_io):
    pass


def _float16(converter, tf, int8_io):
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]


def _dynamic(converter, tf, int8_io):
    converter.optimizations = [tf.lite.Optimize.DEFAULT]


def _int8(converter, tf, int8_io):
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if int8_io:
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8


def _int16x8(converter, tf, int8_io):
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
    ]
    if int8_io:
        converter.inference_input_type = tf.int16
        converter.inference_output_type = tf.int16


register_mode(
    ExportMode("float32", "float32 weights and compute (the reference)", "unused", _float32)
)
register_mode(
    ExportMode("float16", "float16 weights, float32 compute (half the size)", "unused", _float16)
)
register_mode(
    ExportMode("dynamic", "int8 weights, float activations (dynamic range)", "unused", _dynamic)
)
register_mode(
    ExportMode(
        "int8", "full integer: int8 weights and activations", "required", _int8, io_dtype="int8"
    )
)
register_mode(
    ExportMode(
        "int16x8",
        "int16 activations, int8 weights (higher accuracy)",
        "required",
        _int16x8,
        io_dtype="int16",
    )
)
