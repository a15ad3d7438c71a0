"""Writing artifacts so that a killed run never leaves a half-written file behind."""

import contextlib
import gzip
import hashlib
import os
import re
import shutil
import tempfile
import threading
import time
import types

fcntl: types.ModuleType | None
try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are then not guarded
    fcntl = None

_UMASK_LOCK = threading.Lock()

#: Temporary names `atomic_path` makes: `.<name>.<8 random chars>.tmp`, plus the
#: `.keras` twin `atomic_save_keras` writes beside it.
_TEMP_FILE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(\.keras)?$")
EXPORT_TEMP_PREFIX = "tfcompress-export-"


def check_output_path(path: str | os.PathLike, what: str = "output file") -> str:
    """Fail early, before any work, if `path` cannot be written.

    Args:
        path: where the artifact will go.
        what: what the artifact is, for the message.

    Returns:
        `path` as an absolute `str`.
    """
    if not isinstance(path, (str, os.PathLike)) or (isinstance(path, str) and not path):
        raise TypeError(
            f"The {what} path must be a file name (a str or os.PathLike), "
            f"e.g. 'model.tflite'. Received: path={path!r}"
        )
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
        # mkstemp makes 0600 files: give the artifact the mode a plain open() would
        # (0644 under umask 022), or keep the mode of the file it replaces.
        os.chmod(tmp, _target_mode(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _target_mode(path):
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        with _UMASK_LOCK:
            umask = os.umask(0)
            os.umask(umask)
        return 0o666 & ~umask


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


def file_digest(path):
    """`(size in bytes, sha256 hex)` of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def remove_stale_temp_files(folder):
    """Delete the temporary files a killed `atomic_path` left under `folder`.

    Call it only while holding `folder_lock(folder)`: a live writer's
    temporary file looks the same.

    Returns:
        The paths removed.
    """
    removed = []
    for root, _, files in os.walk(folder):
        for name in files:
            if _TEMP_FILE.match(name) or name == ".size_probe.tflite":
                path = os.path.join(root, name)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
                    removed.append(path)
    return removed


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def export_temp_prefix():
    """Prefix of this process's conversion folders: `tfcompress-export-<pid>-`."""
    return f"{EXPORT_TEMP_PREFIX}{os.getpid()}-"


def remove_stale_temp_dirs(max_age_s=24 * 3600):
    """Delete `tfcompress-export-*` folders in the temp directory whose process died.

    Folders named with a pid are removed when that process is gone; older
    folders without one when they are older than `max_age_s`.

    Returns:
        The folders removed.
    """
    root = tempfile.gettempdir()
    removed = []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(EXPORT_TEMP_PREFIX):
            continue
        path = os.path.join(root, name)
        match = re.match(r"(\d+)-", name[len(EXPORT_TEMP_PREFIX) :])
        try:
            if match:
                stale = not _alive(int(match.group(1)))
            else:
                stale = time.time() - os.path.getmtime(path) > max_age_s
        except OSError:
            continue
        if stale and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


LOCK_NAME = ".tfcompress.lock"


@contextlib.contextmanager
def folder_lock(folder):
    """Hold an exclusive lock on `folder` for one run; fail at once if another has it.

    Raises:
        RunInProgressError: another process holds the lock; the message names its pid.
    """
    from tfcompress.errors import RunInProgressError

    if fcntl is None:
        yield
        return
    path = os.path.join(folder, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise RunInProgressError(
                f"Another tfcompress run is already running in '{folder}' (pid {pid}). Wait "
                "for it to finish, stop it, or pass another output folder. "
                f"Received: out={folder!r}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def gzip_size(data: bytes) -> int:
    """Bytes after `gzip -9`, a fair proxy for what sparsity or clustering saves.

    Args:
        data: the bytes of a file (a `.tflite` flatbuffer, say).

    Returns:
        The length of the gzip-compressed bytes.

    Example:

    >>> gzip_size(bytes(1000)) < 100
    True
    """
    return len(gzip.compress(data, compresslevel=9, mtime=0))


# Refuse to overwrite a file that is clearly not what we are about to write.
# Leading bytes of the files a user keeps next to their exports.
_FILE_KINDS = (
    (b"PK\x03\x04", 0, "a zip archive (a .keras model or an .npz data file)"),
    (b"\x89HDF\r\n\x1a\n", 0, "an HDF5 file (a .h5 model)"),
    (b"TFL3", 4, "a TFLite model"),
)


def refuse_overwriting(path: str, what: str, allow: tuple[str, ...] = ()) -> None:
    """Raise `FileExistsError` if `path` holds a model or data file we would destroy.

    Args:
        path: the output path (absolute).
        what: what would be written, for the message.
        allow: kinds from `_FILE_KINDS` that may be overwritten (a `.tflite` over a
            `.tflite`).
    """
    if not os.path.isfile(path):
        return
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return
    for magic, offset, kind in _FILE_KINDS:
        if head[offset : offset + len(magic)] == magic and kind not in allow:
            raise FileExistsError(
                f"'{path}' holds {kind}; writing the {what} there would destroy it. Choose "
                f"another path, or delete the file first. Received: the path of {kind}"
            )


TFLITE_KIND = "a TFLite model"
