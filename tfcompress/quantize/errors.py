"""Errors of the quantization engine (all are `TFCompressError` and `ValueError`/`TypeError`)."""

from tfcompress.errors import TFCompressError


class UnsupportedLayerError(TFCompressError, ValueError):
    """A layer the QAT transform cannot quantize and was not told to keep in float."""


class AlreadyQuantizedError(TFCompressError, ValueError):
    """The model already carries fake-quant (ours, tfmot's or Keras' own int8 mode)."""


class RangesNotSetError(TFCompressError, ValueError):
    """A QAT model's activation ranges were never measured (no fit, no calibration)."""
