"""Run the teacher once, keep its logits in a file, train later epochs from it.

The file (NumPy `.npz`, written atomically) holds the logits (or their top-k
for large vocabularies) and a fingerprint of the inputs they were computed
from: the number of examples, the shapes and dtypes, and a SHA-256 of the
bytes. Training from the cache checks the fingerprint, so a cache made from
other data (another split, a reshuffle, other preprocessing) fails loudly
instead of teaching the student nonsense.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from tfcompress.errors import TFCompressError

if TYPE_CHECKING:
    import tensorflow as tf

_FORMAT = "tfcompress.teacher_cache/1"
# Vocabularies above this many classes are stored as top-k by default.
AUTO_TOP_K_ABOVE = 1024
AUTO_TOP_K = 64
# Logit given to classes outside the stored top-k: softmax sends them to ~0.
_MISSING_LOGIT = -1e9


class TeacherCacheMismatchError(TFCompressError, ValueError):
    """A teacher cache was made from other inputs than the ones given."""


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """What identifies the inputs a cache was computed from."""

    num_examples: int
    shapes: dict
    sha256: str

    def describe(self):
        return f"{self.num_examples} examples, shapes {self.shapes}, sha256 {self.sha256[:12]}"


def fingerprint(x):
    """Fingerprint of model inputs: an array, a list of arrays or a dict of arrays.

    Args:
        x: the inputs, as NumPy-convertible arrays with examples on axis 0.

    Returns:
        A `Fingerprint`.
    """
    items = _named_arrays(x)
    digest = hashlib.sha256()
    shapes = {}
    for key, array in items:
        array = np.ascontiguousarray(array)
        shapes[key] = [str(array.dtype), *array.shape]
        digest.update(f"{key}|{array.dtype}|{array.shape}".encode())
        digest.update(array.tobytes())
    num = int(items[0][1].shape[0])
    return Fingerprint(num_examples=num, shapes=shapes, sha256=digest.hexdigest())


def _named_arrays(x):
    if isinstance(x, dict):
        items = [(str(k), np.asarray(x[k])) for k in sorted(x)]
    elif isinstance(x, (list, tuple)):
        items = [(str(i), np.asarray(v)) for i, v in enumerate(x)]
    else:
        items = [("x", np.asarray(x))]
    if not items or any(a.ndim == 0 for _, a in items):
        raise ValueError(
            "Teacher caching needs the inputs as in-memory arrays with examples on axis 0 "
            "(a NumPy array, a list or a dict of them). Received: "
            f"{type(x).__name__}. For a tf.data pipeline, collect the inputs first "
            "(np.concatenate over its batches) in a fixed order."
        )
    sizes = {a.shape[0] for _, a in items}
    if len(sizes) != 1:
        raise ValueError(
            f"All inputs must have the same number of examples. Received sizes {sizes}."
        )
    return items


class TeacherCache:
    """Teacher outputs stored in a file, with the fingerprint of their inputs.

    Pass it as the teacher of `tfcompress.distill.distiller(...)` and train on
    `cache.dataset(x, y)`: the teacher is not run again.

    Attributes:
        path: the cache file.
        num_classes: size of the logits' last axis.
        top_k: how many logits per position are stored (`None`: all).
        fingerprint: the `Fingerprint` of the inputs.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        arrays: dict[str, np.ndarray],
        fingerprint_: Fingerprint,
        num_classes: int,
        top_k: int | None,
        teacher_name: str = "",
    ):
        self.path = path
        self._arrays = arrays
        self.fingerprint = fingerprint_
        self.num_classes = int(num_classes)
        self.top_k = top_k
        self.teacher_name = teacher_name

    def __repr__(self):
        stored = "all logits" if self.top_k is None else f"top-{self.top_k} logits"
        return (
            f"TeacherCache('{self.path}', {stored} of {self.num_classes} classes, "
            f"{self.fingerprint.describe()})"
        )

    @property
    def outputs(self):
        """The stored teacher outputs: logits, or a dict of top-k values/indices."""
        if self.top_k is None:
            return self._arrays["logits"]
        return {"values": self._arrays["values"], "indices": self._arrays["indices"]}

    def check(self, x: Any) -> None:
        """Raise `TeacherCacheMismatchError` unless `x` is the data the cache was made from."""
        found = fingerprint(x)
        if found != self.fingerprint:
            raise TeacherCacheMismatchError(
                f"The teacher cache '{self.path}' was computed from other inputs: it holds "
                f"{self.fingerprint.describe()}, but the inputs given have "
                f"{found.describe()}. Pass exactly the inputs the cache was made from (same "
                "examples, order and preprocessing), or rebuild it with "
                "cache_teacher_outputs(teacher, x, path)."
            )

    def check_student(self, student: keras.Model) -> None:
        """Raise a clear error if the student's logits do not match the cached ones."""
        outputs = getattr(student, "outputs", None)
        if outputs and outputs[0].shape[-1] not in (None, self.num_classes):
            raise ValueError(
                f"The teacher cache '{self.path}' holds logits over {self.num_classes} classes "
                f"but the student '{student.name}' outputs {tuple(outputs[0].shape)}. Give the "
                "student the teacher's number of classes. Received: student output shape="
                f"{tuple(outputs[0].shape)}."
            )

    def dataset(
        self, x: Any, y: Any, batch_size: int = 32, shuffle: bool = True, seed: int = 0
    ) -> tf.data.Dataset:
        """A `tf.data.Dataset` of `(x, (y, teacher_outputs))` batches for `fit()`.

        Args:
            x: the inputs the cache was made from (checked by fingerprint).
            y: the labels, aligned with `x`.
            batch_size: batch size.
            shuffle: reshuffle every epoch (inputs, labels and teacher
                outputs stay aligned).
            seed: shuffle seed.

        Returns:
            A batched, prefetched `tf.data.Dataset`.
        """
        import tensorflow as tf

        self.check(x)
        if len(y) != self.fingerprint.num_examples:
            raise ValueError(
                f"`y` has {len(y)} labels but the cache holds {self.fingerprint.num_examples} "
                "examples. Pass the labels aligned with the cached inputs."
            )
        ds = tf.data.Dataset.from_tensor_slices((x, (y, self.outputs)))
        if shuffle:
            ds = ds.shuffle(self.fingerprint.num_examples, seed=seed, reshuffle_each_iteration=True)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    def decode(self, teacher_outputs: Any) -> Any:
        """Dense logits (tensor) from a batch of stored outputs (dense or top-k)."""
        from keras import ops

        if not isinstance(teacher_outputs, dict):
            return ops.cast(teacher_outputs, "float32")
        values = ops.cast(teacher_outputs["values"], "float32")
        indices = ops.cast(teacher_outputs["indices"], "int32")
        # One slot at a time keeps memory at batch x classes (not x k).
        dense = ops.one_hot(indices[..., 0], self.num_classes, dtype="float32") * 0.0
        dense = dense + _MISSING_LOGIT
        for j in range(int(self.top_k or 0)):
            hit = ops.one_hot(indices[..., j], self.num_classes, dtype="bool")
            dense = ops.where(hit, ops.expand_dims(values[..., j], -1), dense)
        return dense


class _CachedTeacher(keras.Model):
    """Stands in for the teacher in a Distiller that reads a TeacherCache."""

    def __init__(self, cache, **kwargs):
        super().__init__(name="cached_teacher", **kwargs)
        self.cache_path = cache.path

    def call(self, inputs):
        raise RuntimeError(
            f"This teacher is a cache ('{self.cache_path}') and cannot be called: train on "
            "cache.dataset(x, y), whose batches carry the teacher outputs."
        )


def cache_teacher_outputs(
    teacher: Any,
    x: Any,
    path: str | os.PathLike,
    batch_size: int = 256,
    top_k: int | str | None = "auto",
    like: keras.Model | None = None,
) -> TeacherCache:
    """Runs the teacher once over `x` and stores its logits in `path`.

    Args:
        teacher: anything `as_teacher` takes (Keras 3 or tf_keras model,
            SavedModel folder, callable).
        x: the training inputs (array, list or dict of arrays), in the order
            training will use them; shuffling happens later, in
            `TeacherCache.dataset`.
        path: the cache file (`.npz`); written atomically.
        batch_size: teacher batch size.
        top_k: `None` stores all logits; an int stores the k largest per
            position (values and indices); `"auto"` (default) stores all for
            up to 1024 classes and the top 64 above that.
        like: the student, to copy input shapes from (callables, SavedModels).

    Returns:
        A `TeacherCache`.

    Example:

    ```python
    cache = tfcompress.distill.cache_teacher_outputs(teacher, x_train, "teacher.npz")
    d = tfcompress.distill.distiller(student, cache, alpha=0.1, temperature=4.0)
    d.compile(optimizer="adam",
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    d.fit(cache.dataset(x_train, y_train, batch_size=32), epochs=10)
    ```
    """
    from tfcompress._io import atomic_path, check_output_path
    from tfcompress.distill.teachers import as_teacher

    path = check_output_path(path, what="teacher cache")
    fp = fingerprint(x)
    model = as_teacher(teacher, like=like)
    logits = np.asarray(model.predict(x, batch_size=batch_size, verbose=0), dtype=np.float32)
    num_classes = logits.shape[-1]
    k = _resolve_top_k(top_k, num_classes)
    if k is None:
        arrays = {"logits": logits}
    else:
        order = np.argsort(-logits, axis=-1)[..., :k]
        index_dtype = np.int16 if num_classes <= np.iinfo(np.int16).max else np.int32
        arrays = {
            "values": np.take_along_axis(logits, order, axis=-1),
            "indices": order.astype(index_dtype),
        }
    meta = {
        "format": _FORMAT,
        "num_classes": int(num_classes),
        "top_k": k,
        "teacher": getattr(model, "name", ""),
        "fingerprint": dataclasses.asdict(fp),
    }
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            payload: dict[str, Any] = {"meta": np.array(json.dumps(meta)), **arrays}
            np.savez(f, **payload)
    return TeacherCache(path, arrays, fp, num_classes, k, meta["teacher"])


def load_teacher_cache(path: str | os.PathLike) -> TeacherCache:
    """Opens a cache written by `cache_teacher_outputs`.

    Args:
        path: the `.npz` file.

    Returns:
        A `TeacherCache`.
    """
    path = os.path.abspath(os.fspath(path))
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            arrays = {k: data[k] for k in data.files if k != "meta"}
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(
            f"'{path}' is not a teacher cache written by cache_teacher_outputs ({e}). "
            "Rebuild it with cache_teacher_outputs(teacher, x, path)."
        ) from e
    if meta.get("format") != _FORMAT:
        raise ValueError(f"'{path}' has cache format {meta.get('format')!r}, expected {_FORMAT!r}.")
    fp = Fingerprint(**meta["fingerprint"])
    return TeacherCache(path, arrays, fp, meta["num_classes"], meta["top_k"], meta["teacher"])


def _resolve_top_k(top_k, num_classes):
    if top_k == "auto":
        return None if num_classes <= AUTO_TOP_K_ABOVE else AUTO_TOP_K
    if top_k is None:
        return None
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(
            "`top_k` must be None (all logits), 'auto' or a positive integer. "
            f"Received: top_k={top_k!r}."
        )
    return None if top_k >= num_classes else top_k
