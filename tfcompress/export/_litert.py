"""Load a `.tflite` file through the edge kit's runner, with tfcompress's error types."""

import contextlib

from tfcompress.errors import InvalidTFLiteFileError


@contextlib.contextmanager
def tflite_errors():
    """Re-raise the edge kit's file errors as `InvalidTFLiteFileError`."""
    from tfcompress_edge.runner import InvalidModelFileError

    try:
        yield
    except InvalidModelFileError as e:
        raise InvalidTFLiteFileError(str(e)) from None


def load_runner(path, num_threads=1):
    """A `tfcompress_edge.runner.TFLiteRunner` for `path`."""
    from tfcompress_edge.runner import TFLiteRunner

    with tflite_errors():
        return TFLiteRunner(path, num_threads=num_threads)
