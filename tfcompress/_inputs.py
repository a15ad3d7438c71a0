"""Turning user data into model inputs: for calibration, verification and benchmarks.

Users hold data in many shapes: a numpy array, `(x, y)` pairs, a batched or
unbatched `tf.data.Dataset` with or without labels, a generator, a dict of
arrays for a keras-hub model. Everything here reduces them to one form, a
list of arrays aligned with the model's inputs, checked against the model's
input shapes and dtypes before any converter sees them.
"""

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from tfcompress.errors import CalibrationDataError

if TYPE_CHECKING:
    import keras

DEFAULT_MAX_SAMPLES = 200


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One model input: its name, shape (batch first, `None` for any) and dtype."""

    name: str
    shape: tuple
    dtype: str

    @property
    def rank(self):
        return len(self.shape)

    @property
    def is_float(self):
        return np.dtype(self.dtype).kind == "f"


def input_specs(model: "keras.Model") -> list[InputSpec]:
    """The model's inputs as `InputSpec`s, in the order the model takes them.

    A model called on a dict (keras-hub tasks) gives its dict keys as names.
    """
    called = _first_call_specs(model)
    if called is not None:
        return called
    structure = getattr(model, "input", None)
    if isinstance(structure, dict):
        items = list(structure.items())
    else:
        items = [(None, t) for t in model.inputs]
    specs = []
    for key, tensor in items:
        shape = tensor.shape
        shape = tuple(shape.as_list()) if hasattr(shape, "as_list") else tuple(shape)
        dtype = getattr(tensor.dtype, "name", tensor.dtype)
        name = key or tensor.name.split(":")[0]
        specs.append(InputSpec(name=name, shape=shape, dtype=str(dtype)))
    return specs


def _first_call_specs(model):
    """The inputs of a subclassed Keras 3 model, from the shapes of its first call.

    It has no input tensors; Keras records the shapes it was built with, and
    `model.export` signs the SavedModel with them too. `None` for other models
    and for nested input structures.
    """
    try:
        if model.inputs:  # functional and Sequential models
            return None
    except (AttributeError, ValueError):
        pass
    shapes = getattr(model, "_build_shapes_dict", None)
    if not shapes or not isinstance(shapes, dict):
        return None
    specs = []
    for key, shape in shapes.items():
        if not isinstance(shape, (tuple, list)) or not all(
            d is None or isinstance(d, int) for d in shape
        ):
            return None
        name = key[: -len("_shape")] if key.endswith("_shape") else key
        dtype = str(getattr(model, "input_dtype", None) or "float32")
        specs.append(InputSpec(name=name, shape=(None, *shape[1:]), dtype=dtype))
    return specs


def takes_dict(model):
    """True when the model is called on a dict of inputs (keras-hub tasks)."""
    return isinstance(getattr(model, "input", None), dict)


def _to_numpy(value):
    if hasattr(value, "numpy"):
        value = value.numpy()
    return np.asarray(value)


def _is_array_like(value):
    return isinstance(value, np.ndarray) or hasattr(value, "numpy") and hasattr(value, "shape")


def _rank_fits(value, spec):
    return _is_array_like(value) and len(value.shape) in (spec.rank, spec.rank - 1)


def _looks_like_inputs(obj, specs):
    """Is `obj` the model's inputs alone (no labels)?"""
    if isinstance(obj, dict):
        return all(s.name in obj for s in specs)
    if len(specs) == 1:
        return _rank_fits(obj, specs[0])
    return (
        isinstance(obj, (list, tuple))
        and len(obj) == len(specs)
        and all(_rank_fits(v, s) for v, s in zip(obj, specs))
    )


def _split_labels(element, specs, what):
    """Return `(inputs, labels_or_None)` for one element of the user's data."""
    if _looks_like_inputs(element, specs):
        return element, None
    if isinstance(element, (list, tuple)) and len(element) in (2, 3):
        if _looks_like_inputs(element[0], specs):
            return element[0], element[1]
    expected = ", ".join(f"'{s.name}' {_shape_str(s.shape)} {s.dtype}" for s in specs)
    raise CalibrationDataError(
        f"The {what} does not match the model's inputs ({expected}). Received "
        f"{_describe(element)}. Pass an array (or dict of arrays keyed by input name) of "
        "inputs, optionally paired with labels as (inputs, labels)."
    )


def _describe(value):
    if isinstance(value, dict):
        return "a dict with keys " + str(sorted(value))
    if isinstance(value, (list, tuple)):
        return (
            f"a {type(value).__name__} of {len(value)}: ["
            + ", ".join(_describe(v) for v in value)
            + "]"
        )
    if _is_array_like(value):
        return f"an array of shape {tuple(value.shape)} and dtype {np.dtype(_dtype_of(value))}"
    return f"a {type(value).__name__}"


def _dtype_of(value):
    dtype = value.dtype
    return getattr(dtype, "as_numpy_dtype", dtype)


def _shape_str(shape):
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def _align(inputs, specs):
    if isinstance(inputs, dict):
        return [inputs[s.name] for s in specs]
    if len(specs) == 1:
        return [inputs]
    return list(inputs)


def _check_and_batch(arrays, specs, what, first_index):
    """Validate arrays against specs; return them with a batch axis."""
    batched = []
    for value, spec in zip(arrays, specs):
        value = _to_numpy(value)
        if value.ndim == spec.rank - 1:
            value = value[np.newaxis]
        if value.ndim != spec.rank or any(
            want is not None and got != want for got, want in zip(value.shape[1:], spec.shape[1:])
        ):
            raise CalibrationDataError(
                f"The {what} for input '{spec.name}' has shape {value.shape[1:]} per sample, "
                f"but the model expects {_shape_str(spec.shape[1:])} (shape "
                f"{_shape_str(spec.shape)} with the batch axis first). Reshape the data to "
                "match the model's input."
            )
        kind = value.dtype.kind
        if spec.is_float:
            if kind not in "fiub":
                raise CalibrationDataError(
                    f"The {what} for input '{spec.name}' has dtype {value.dtype}; the input is "
                    f"{spec.dtype}. Pass numeric (float) arrays."
                )
            value = value.astype(spec.dtype)
            bad = ~np.isfinite(value).reshape(len(value), -1).all(axis=1) if len(value) else []
            if np.any(bad):
                index = first_index + int(np.argmax(bad))
                raise CalibrationDataError(
                    f"The {what} for input '{spec.name}' contains NaN or inf (first in sample "
                    f"{index}). Clean or drop those samples: they would corrupt the "
                    "quantization ranges."
                )
        else:
            if kind not in "iub":
                raise CalibrationDataError(
                    f"The {what} for input '{spec.name}' has dtype {value.dtype}, but the input "
                    f"is {spec.dtype} (ids or a mask). Pass integer arrays for it."
                )
            value = value.astype(spec.dtype)
        batched.append(value)
    sizes = {len(v) for v in batched}
    if len(sizes) != 1:
        raise CalibrationDataError(
            f"The {what} has inputs with different numbers of samples: "
            + ", ".join(f"'{s.name}': {len(v)}" for s, v in zip(specs, batched))
            + ". Every input needs one row per sample."
        )
    return batched


def _elements(data, specs):
    """Yield the elements of the user's data, each a batch or a single sample."""
    if callable(data) and not _is_array_like(data):
        data = data()
    if _is_tf_dataset(data):
        yield from data.as_numpy_iterator()
        return
    if _is_array_like(data) or isinstance(data, dict):
        yield data
        return
    if isinstance(data, (list, tuple)):
        if _looks_like_inputs(data, specs):
            yield data
            return
        if len(data) in (2, 3) and _looks_like_inputs(data[0], specs):
            first = _align(data[0], specs)[0]
            if (
                _is_array_like(data[1])
                and np.ndim(data[1]) > 0
                and len(data[1]) == len(first)
                and (len(first.shape) == specs[0].rank)
            ):
                yield data
                return
    try:
        iterator = iter(data)
    except TypeError:
        raise CalibrationDataError(
            f"Cannot read model inputs from {_describe(data)}. Pass a numpy array, a dict of "
            "arrays, (inputs, labels), a tf.data.Dataset, or a generator."
        ) from None
    yield from iterator


def _is_tf_dataset(data):
    return type(data).__module__.startswith("tensorflow") and hasattr(data, "as_numpy_iterator")


def iter_batches(data, specs, what="data", max_samples=None):
    """Yield `(inputs, labels)` batches: inputs aligned with `specs`, labels or `None`.

    Stops reading once `max_samples` samples have been produced, so an endless
    (`.repeat()`) dataset is fine.
    """
    if data is None:
        raise CalibrationDataError(f"No {what} was given.")
    seen = 0
    for element in _elements(data, specs):
        inputs, labels = _split_labels(element, specs, what)
        arrays = _check_and_batch(_align(inputs, specs), specs, what, seen)
        n = len(arrays[0])
        if labels is not None:
            labels = _to_numpy(labels)
            if labels.ndim == 0:
                labels = labels[np.newaxis]
        if max_samples is not None and seen + n > max_samples:
            keep = max_samples - seen
            arrays = [a[:keep] for a in arrays]
            labels = None if labels is None else labels[:keep]
            n = keep
        if n:
            yield arrays, labels
        seen += n
        if max_samples is not None and seen >= max_samples:
            return


def collect(data, specs, what="data", max_samples=None):
    """Read all of `data` into `(inputs, labels)`: arrays aligned with `specs`."""
    inputs, labels = [], []
    for arrays, y in iter_batches(data, specs, what, max_samples):
        inputs.append(arrays)
        labels.append(y)
    if not inputs:
        raise CalibrationDataError(f"The {what} is empty: it produced no samples.")
    merged = [np.concatenate([b[i] for b in inputs]) for i in range(len(specs))]
    y = None
    if all(lab is not None for lab in labels):
        y = np.concatenate(labels)
    return merged, y


@dataclasses.dataclass
class CalibrationSet:
    """Validated single-sample inputs for the TFLite converter's representative dataset.

    Attributes:
        samples: one list of arrays (batch of 1, aligned with `specs`) per sample.
        specs: the model's inputs.
        exhausted: `False` when the data had more samples than were taken.
    """

    samples: list
    specs: list
    exhausted: bool

    def __len__(self):
        return len(self.samples)

    def representative_dataset(self, as_dict):
        """A generator function for `converter.representative_dataset`."""

        def generate():
            for sample in self.samples:
                if as_dict:
                    yield {s.name: v for s, v in zip(self.specs, sample)}
                else:
                    yield list(sample)

        return generate


def calibration_set(data, specs, max_samples=DEFAULT_MAX_SAMPLES):
    """Validate `data` and take at most `max_samples` single samples from it.

    Args:
        data: a numpy array, a dict of arrays, `(inputs, labels)`, a
            `tf.data.Dataset` (batched or not, with or without labels), or a
            generator (or a function returning one).
        specs: the model's inputs (`input_specs(model)`).
        max_samples: most samples to use.

    Returns:
        A `CalibrationSet`.
    """
    if max_samples is not None and max_samples < 1:
        raise CalibrationDataError(
            f"max_samples must be at least 1. Received: max_samples={max_samples}"
        )
    samples = []
    exhausted = True
    batches = iter_batches(data, specs, "calibration data", None)
    for arrays, _ in batches:
        for i in range(len(arrays[0])):
            if max_samples is not None and len(samples) == max_samples:
                exhausted = False
                break
            samples.append([a[i : i + 1] for a in arrays])
        if max_samples is not None and len(samples) == max_samples:
            if exhausted:
                exhausted = next(batches, None) is None
            break
    if not samples:
        raise CalibrationDataError("The calibration data is empty: it produced no samples.")
    return CalibrationSet(samples=samples, specs=list(specs), exhausted=exhausted)
