"""Refuse to overwrite a file that is clearly not what we are about to write."""

from __future__ import annotations

import os

# Leading bytes of the files a user keeps next to their exports.
_KINDS = (
    (b"PK\x03\x04", 0, "a zip archive (a .keras model or an .npz data file)"),
    (b"\x89HDF\r\n\x1a\n", 0, "an HDF5 file (a .h5 model)"),
    (b"TFL3", 4, "a TFLite model"),
)


def refuse_overwriting(path: str, what: str, allow: tuple[str, ...] = ()) -> None:
    """Raise `FileExistsError` if `path` holds a model or data file we would destroy.

    Args:
        path: the output path (absolute).
        what: what would be written, for the message.
        allow: kinds from `_KINDS` that may be overwritten (a `.tflite` over a
            `.tflite`).
    """
    if not os.path.isfile(path):
        return
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return
    for magic, offset, kind in _KINDS:
        if head[offset : offset + len(magic)] == magic and kind not in allow:
            raise FileExistsError(
                f"'{path}' holds {kind}; writing the {what} there would destroy it. Choose "
                f"another path, or delete the file first. Received: the path of {kind}"
            )


TFLITE = "a TFLite model"
