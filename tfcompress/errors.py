"""Typed errors a caller may want to catch.

Every error is also a builtin (`ValueError`, `TypeError`, ...) so plain
`except ValueError` keeps working.
"""


class TFCompressError(Exception):
    """Base class of every error tfcompress raises on purpose."""


class UnsupportedModelError(TFCompressError, TypeError):
    """The object is not a model flavour tfcompress can work with."""


class ModelNotBuiltError(TFCompressError, ValueError):
    """The model has no weights yet, so its input shape is unknown."""


class CalibrationDataError(TFCompressError, ValueError):
    """Representative / calibration data is missing or does not fit the model."""


class ConversionError(TFCompressError, RuntimeError):
    """The TFLite converter failed on every route we tried."""


class InvalidTFLiteFileError(TFCompressError, ValueError):
    """A file given as a `.tflite` model is missing, truncated or not a TFLite flatbuffer."""


class VerificationError(TFCompressError, ValueError):
    """A written `.tflite` file disagrees with the Keras model beyond tolerance."""


class UntrustedCodeError(TFCompressError, ValueError):
    """Loading would run Python code named by a file (a `.h5` model, a recipe `factory:`)
    and the caller did not pass `trust_code=True` / `--trust-code`."""


class InvalidModelFileError(TFCompressError, ValueError):
    """A `.keras` / `.h5` model file is missing, empty, truncated or not a model."""


class RunInProgressError(TFCompressError, RuntimeError):
    """Another process holds the lock on the same output folder."""
