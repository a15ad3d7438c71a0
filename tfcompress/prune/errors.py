"""Errors of the pruning subpackage (also builtins, so `except ValueError` works)."""

from tfcompress.errors import TFCompressError, UnsupportedModelError


class MissingPruningStepError(TFCompressError, RuntimeError):
    """A pruning model was trained without the `UpdatePruningStep` callback."""


class PruningStepNotCountedError(TFCompressError, RuntimeError):
    """A pruning wrapper was called without `training=True` during `fit()`."""


class NoPrunableLayersError(TFCompressError, ValueError):
    """Nothing in the model can be pruned with the given options."""


class UnsupportedPruningModelError(UnsupportedModelError):
    """The model cannot be cloned layer by layer (e.g. a subclassed model)."""
