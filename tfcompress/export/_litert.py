"""Load a `.tflite` file through the edge kit's runner, with tfcompress's error types."""

import contextlib
import re

from tfcompress.errors import InvalidTFLiteFileError

_MISSING_OP = re.compile(r"unresolved custom op: ([\w.]+)|find op for builtin opcode '(\w+)'")


@contextlib.contextmanager
def tflite_errors(path=None):
    """Re-raise the edge kit's file errors as a one-line `InvalidTFLiteFileError`."""
    from tfcompress_edge.runner import InvalidModelFileError

    try:
        yield
    except InvalidModelFileError as e:
        message = " ".join(str(e).split())
        missing = _MISSING_OP.search(message)
        if missing and path is not None:
            op = missing.group(1) or missing.group(2)
            message = (
                f"LiteRT cannot run '{path}': it needs the op '{op}', which LiteRT does "
                "not have (a custom or TensorFlow op). Export the model again without it "
                "(tfcompress.export.to_tflite writes builtin ops only)."
            )
        raise InvalidTFLiteFileError(message) from None


def load_runner(path, num_threads=1):
    """A `tfcompress_edge.runner.TFLiteRunner` for `path`."""
    from tfcompress_edge.runner import TFLiteRunner

    with tflite_errors(path):
        return TFLiteRunner(path, num_threads=num_threads)


@contextlib.contextmanager
def run_errors(path):
    """Re-raise LiteRT's failure to run a loaded file as a one-line `InvalidTFLiteFileError`."""
    try:
        yield
    except (RuntimeError, ValueError) as e:
        text = str(e).strip()
        first = text.splitlines()[0] if text else type(e).__name__
        raise InvalidTFLiteFileError(
            f"LiteRT cannot run '{path}': {first[:300]}. Export it again with a mode LiteRT "
            "runs (tfcompress.export.to_tflite), without custom or Flex ops."
        ) from None
