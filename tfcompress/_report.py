"""One report shape for every verb: what was done, what was skipped and why.

`prune_low_magnitude`, `quantize_model`, `cluster_weights`, `remove_units`,
`remove_heads`, `distiller` and `to_tflite` each build a `Report` and store it
on the model they return (as `model.tfcompress_report`), the way Keras's
`Model.quantize` tells what it quantized and what it skipped. The verb's own
richer object (a `QuantizeReport`, a `PruningPlan`, ...) rides along in
`details`, so nothing it said is lost.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

#: The attribute under which a verb stores its `Report` on the model it returns.
ATTRIBUTE = "tfcompress_report"


@dataclasses.dataclass(frozen=True)
class Entry:
    """One layer (or file, or tensor) a verb acted on or left alone.

    Attributes:
        name: the layer's name (or the file / tensor the line is about).
        class_name: the layer's class name, `""` when not a layer.
        note: for a done entry what was done ("int8 weights", "80% sparse");
            for a skipped entry why it was skipped and, where it helps, what to do.
    """

    name: str
    class_name: str = ""
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Report:
    """What a tfcompress verb did to a model.

    Attributes:
        verb: the function that made it (`"quantize_model"`, `"to_tflite"`, ...).
        model_name: the model it worked on.
        done: an `Entry` per layer changed.
        skipped: an `Entry` per layer left alone, with the reason.
        details: the verb's own report object or numbers (a `QuantizeReport`,
            an `ExportResult`, ...), `None` when there is nothing more to say.

    Example:

    >>> report = Report("prune_low_magnitude", "net", done=(Entry("dense", "Dense", "pruned"),),
    ...                 skipped=(Entry("conv", "Conv2D", "first convolution"),))
    >>> report.done_names, report.skipped_names
    (('dense',), ('conv',))
    >>> print(report.summary())
    prune_low_magnitude on 'net': 1 done, 1 skipped
    """

    verb: str
    model_name: str
    done: Sequence[Any] = ()
    skipped: Sequence[Any] = ()
    details: Any = None

    def __post_init__(self):
        object.__setattr__(self, "done", tuple(_entry(e) for e in self.done))
        object.__setattr__(self, "skipped", tuple(_entry(e) for e in self.skipped))

    @property
    def done_names(self) -> tuple:
        """Names of the entries in `done`."""
        return tuple(e.name for e in self.done)

    @property
    def skipped_names(self) -> tuple:
        """Names of the entries in `skipped`."""
        return tuple(e.name for e in self.skipped)

    def summary(self) -> str:
        """One line: the verb, the model, how many done and skipped."""
        return (
            f"{self.verb} on '{self.model_name}': {len(self.done)} done, "
            f"{len(self.skipped)} skipped"
        )

    def __str__(self) -> str:
        lines = [self.summary()]
        lines += [f"  done     {e.name}{_klass(e)}{_note(e)}" for e in self.done]
        lines += [f"  skipped  {e.name}{_klass(e)}{_note(e)}" for e in self.skipped]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """A JSON-friendly dict (the details as their `str`)."""
        return {
            "verb": self.verb,
            "model_name": self.model_name,
            "done": [dataclasses.asdict(e) for e in self.done],
            "skipped": [dataclasses.asdict(e) for e in self.skipped],
            "details": None if self.details is None else str(self.details),
        }


def _entry(value) -> Entry:
    if isinstance(value, Entry):
        return value
    if isinstance(value, str):
        return Entry(value)
    return Entry(*(str(v) if v is not None else "" for v in tuple(value)[:3]))


def _klass(entry):
    return f" ({entry.class_name})" if entry.class_name else ""


def _note(entry):
    return f": {entry.note}" if entry.note else ""


def attach(model: Any, report: Report) -> Any:
    """Store `report` on `model` (as `model.tfcompress_report`) and return `model`."""
    try:
        setattr(model, ATTRIBUTE, report)
    except AttributeError:  # an object that takes no attributes keeps no report
        pass
    return model


def wrapper_report(verb: str, model: Any, result: Any, note: str) -> Report:
    """A `Report` listing the layers `result` wraps (tfmot's wrappers keep theirs in `.layer`).

    Args:
        verb: the tfcompress verb that delegated to tfmot.
        model: the model it was given.
        result: the model (or layer) tfmot returned.
        note: what was done to each wrapped layer.

    Returns:
        A `Report` with one done entry per wrapped layer.
    """
    layers = getattr(result, "layers", None)
    candidates = layers if layers is not None else [result]
    done = [
        Entry(layer.layer.name, type(layer.layer).__name__, note)
        for layer in candidates
        if hasattr(layer, "layer")
    ]
    return Report(verb, getattr(model, "name", ""), done=done, details="tfmot (tf_keras)")


def report_of(model: Any) -> Report | None:
    """The `Report` the last tfcompress verb stored on `model`, or `None`.

    Args:
        model: a model a tfcompress verb returned.

    Returns:
        A `Report`, or `None` for a model no verb made.

    Example:

    >>> import keras
    >>> report_of(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])) is None
    True
    """
    return getattr(model, ATTRIBUTE, None)
