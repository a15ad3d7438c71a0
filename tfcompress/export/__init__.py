"""Export Keras models to TFLite (LiteRT), and check what was written.

`to_tflite` converts (float32, float16, dynamic, int8, int16x8), `verify`
runs the file beside the Keras model, `inspect` lists its ops and dtypes,
`benchmark` times it, and `to_c_array` makes a header for microcontrollers.
"""

from tfcompress._inputs import InputSpec, input_specs
from tfcompress._io import gzip_size
from tfcompress.export import lowbit  # registers the litert-quantizer modes (int4, ...)
from tfcompress.export.c_array import to_c_array
from tfcompress.export.convert import ExportResult, to_tflite
from tfcompress.export.inspection import COMPUTE_OPS, OpInfo, TensorInfo, TFLiteInfo, inspect
from tfcompress.export.lowbit import LowBitExportResult, read_weights
from tfcompress.export.modes import ExportMode, available_modes, get_mode, register_mode
from tfcompress.export.profiling import OpProfile, OpTime, profile
from tfcompress.export.target import Candidate
from tfcompress.export.timing import benchmark
from tfcompress.export.verification import (
    DivergenceReport,
    LayerFidelity,
    VerifyResult,
    first_divergence,
    verify,
)

__all__ = [
    "COMPUTE_OPS",
    "Candidate",
    "OpProfile",
    "OpTime",
    "profile",
    "DivergenceReport",
    "ExportMode",
    "ExportResult",
    "InputSpec",
    "LayerFidelity",
    "LowBitExportResult",
    "OpInfo",
    "TFLiteInfo",
    "TensorInfo",
    "VerifyResult",
    "available_modes",
    "first_divergence",
    "benchmark",
    "get_mode",
    "gzip_size",
    "input_specs",
    "inspect",
    "lowbit",
    "read_weights",
    "register_mode",
    "to_c_array",
    "to_tflite",
    "verify",
]
