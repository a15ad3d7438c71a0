"""Writing artifacts so that a killed run never leaves a half-written file behind."""

import contextlib
import os
import tempfile


def check_output_path(path, what="output file"):
    """Fail early, before any work, if `path` cannot be written.

    Args:
        path: where the artifact will go.
        what: what the artifact is, for the message.

    Returns:
        `path` as an absolute `str`.
    """
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    if os.path.isdir(path):
        raise IsADirectoryError(
            f"The {what} path '{path}' is a folder. Pass a file name inside it, "
            f"e.g. '{os.path.join(path, 'model.tflite')}'."
        )
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"The folder '{folder}' for the {what} '{os.path.basename(path)}' does not exist. "
            "Create it first (os.makedirs(folder, exist_ok=True)) or choose another path."
        )
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"The folder '{folder}' for the {what} is not writable.")
    return path


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in the same folder; rename it to `path` on success.

    On any error the temporary file is removed and `path` is left as it was
    (absent, or the previous complete version).

    Example:

    >>> with atomic_path("model.tflite") as tmp:
    ...     open(tmp, "wb").write(data)
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def atomic_write_bytes(path, data):
    """Write `data` to `path` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return path


def atomic_write_text(path, text):
    """Write `text` (UTF-8) to `path` through a temporary file and a rename."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_keras(model, path):
    """`model.save(path)` as `.keras`, through a temporary file and a rename."""
    # Keras insists on the .keras suffix: save beside the temporary name, then move.
    with atomic_path(path) as tmp:
        model.save(tmp + ".keras")
        os.replace(tmp + ".keras", tmp)
    return path
