"""tfcompress: make trained Keras models small and fast for edge devices.

Subpackages load on first use, so `import tfcompress` (and the `tfcompress`
command's `--help`) stays instant; TensorFlow is imported only when a
subpackage that needs it is used.

Example:

>>> import tfcompress
>>> result = tfcompress.export.to_tflite(model, "model.tflite", mode="int8",
...                                      representative_data=x_train)
"""

import importlib

__version__ = "0.1.0"

_SUBPACKAGES = (
    "cluster",
    "data",
    "distill",
    "export",
    "pipeline",
    "prune",
    "quantize",
    "testing",
    "train",
)

# The one report shape every verb stores on the model it returns.
_CORE = {
    "Entry": "tfcompress._report",
    "Report": "tfcompress._report",
    "report_of": "tfcompress._report",
}

__all__ = ["__version__", *_SUBPACKAGES, *_CORE]


def __getattr__(name):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"tfcompress.{name}")
    if name in _CORE:
        return getattr(importlib.import_module(_CORE[name]), name)
    raise AttributeError(f"module 'tfcompress' has no attribute '{name}'")


def __dir__():
    return sorted(list(globals()) + list(_SUBPACKAGES) + list(_CORE))
