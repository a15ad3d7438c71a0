"""Start a student from the teacher's weights (DistilBERT's initialisation).

For keras-hub encoders, `init_student_from_teacher` builds a shallower
backbone of the same width from the teacher's config and copies the
embeddings, the pooler and the chosen transformer blocks. For plain Keras
models, `transfer_weights` copies every layer whose name and weight shapes
match.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence

import keras

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TransferReport:
    """What `transfer_weights` copied and what it skipped, and why.

    Attributes:
        copied: list of `(student_layer, teacher_layer)` names.
        skipped: list of `(student_layer, reason)`.
    """

    copied: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)

    def __str__(self):
        lines = [f"copied {len(self.copied)} layers, skipped {len(self.skipped)}"]
        lines += [f"  copied  {s} <- {t}" for s, t in self.copied]
        lines += [f"  skipped {s}: {why}" for s, why in self.skipped]
        return "\n".join(lines)


def transfer_weights(
    teacher: keras.Model,
    student: keras.Model,
    layer_pairs: Sequence[tuple[str, str]] | None = None,
) -> TransferReport:
    """Copies weights from teacher layers to student layers of the same name and shapes.

    Args:
        teacher: a Keras 3 model.
        student: a Keras 3 model, changed in place.
        layer_pairs: optional explicit list of `(student_layer_name,
            teacher_layer_name)`; by default every student layer with weights
            is paired with the teacher layer of the same name.

    Returns:
        A `TransferReport`.

    Example:

    ```python
    report = tfcompress.distill.transfer_weights(teacher, student)
    print(report)  # copied conv0 <- conv0, skipped dense: shapes differ ...
    ```
    """
    report = TransferReport()
    teacher_layers = {layer.name: layer for layer in teacher.layers}
    if layer_pairs is None:
        layer_pairs = [(layer.name, layer.name) for layer in student.layers if layer.weights]
    for s_name, t_name in layer_pairs:
        s_layer = _get_layer(student, s_name, "student")
        t_layer = teacher_layers.get(t_name)
        if t_layer is None:
            report.skipped.append((s_name, f"the teacher has no layer '{t_name}'"))
            continue
        s_shapes = [tuple(w.shape) for w in s_layer.weights]
        t_shapes = [tuple(w.shape) for w in t_layer.weights]
        if s_shapes != t_shapes:
            report.skipped.append(
                (s_name, f"weight shapes differ: student {s_shapes}, teacher '{t_name}' {t_shapes}")
            )
            continue
        s_layer.set_weights(t_layer.get_weights())
        report.copied.append((s_name, t_name))
    return report


def _get_layer(model, name, who):
    try:
        return model.get_layer(name)
    except ValueError as e:
        raise ValueError(
            f"The {who} '{model.name}' has no layer '{name}'. Its layers are "
            f"{[layer.name for layer in model.layers]}. Received: layer name {name!r}."
        ) from e


def init_student_from_teacher(
    teacher: keras.Model,
    num_layers: int | None = None,
    layer_map: str | Sequence[int] | Mapping[int, int] = "every_other",
    student: keras.Model | None = None,
) -> keras.Model:
    """Builds a shallower student initialised from the teacher's weights.

    Args:
        teacher: a keras-hub encoder backbone (`BertBackbone`, ...) or a
            keras-hub task built on one (e.g. `BertTextClassifier`), or a plain
            Keras 3 model (then `student` is required).
        num_layers: transformer blocks of the student; by default the length
            of an explicit `layer_map`, or half the teacher's (rounded up).
        layer_map: which teacher blocks the student's blocks start from:
            `"every_other"` (0, 2, 4, ...: DistilBERT), `"uniform"` (evenly
            spread, last block included), or a list of block indices or names.
        student: for plain models, the student to fill (same layer names and
            shapes are copied, the rest keeps its initialisation).

    Returns:
        The student: a backbone (or task) of the teacher's class and width
        with `num_layers` blocks, or the given `student`.

    Example:

    ```python
    student_backbone = tfcompress.distill.init_student_from_teacher(
        teacher.backbone, num_layers=2, layer_map="every_other")
    student = keras_hub.models.BertTextClassifier(student_backbone, num_classes=2,
                                                  preprocessor=None)
    ```
    """
    if student is not None or not _is_hub_encoder(teacher):
        if student is None:
            raise ValueError(
                f"'{teacher.name}' ({type(teacher).__name__}) is not a keras-hub encoder, so "
                "its student cannot be derived from a config. Build the student yourself and "
                "pass it: init_student_from_teacher(teacher, student=student)."
            )
        report = transfer_weights(teacher, student)
        logger.info("init_student_from_teacher: %s", report)
        return student

    from tfcompress.distill.transformer import find_backbone

    backbone = find_backbone(teacher)
    names = [layer.name for layer in backbone.transformer_layers]
    chosen = _choose_layers(layer_map, names, num_layers)
    config = backbone.get_config()
    config.update(num_layers=len(chosen), name=f"{backbone.name}_student")
    student_backbone = type(backbone).from_config(config)
    for layer in student_backbone.layers:
        if layer.weights and layer not in student_backbone.transformer_layers:
            layer.set_weights(backbone.get_layer(layer.name).get_weights())
    for s_layer, t_index in zip(student_backbone.transformer_layers, chosen, strict=False):
        s_layer.set_weights(backbone.transformer_layers[t_index].get_weights())
    logger.info(
        "init_student_from_teacher: teacher blocks %s -> student blocks 0..%d",
        chosen,
        len(chosen) - 1,
    )
    if teacher is backbone:
        return student_backbone
    return _task_like(teacher, student_backbone)


def _task_like(task, student_backbone):
    """A task of `task`'s class on `student_backbone`, head weights copied."""
    config = task.get_config()
    config["backbone"] = keras.saving.serialize_keras_object(student_backbone)
    config["name"] = f"{task.name}_student"
    student = type(task).from_config(config)
    student.backbone.set_weights(student_backbone.get_weights())
    head = [
        (layer.name, layer.name)
        for layer in student.layers
        if layer.weights and layer is not student.backbone
    ]
    transfer_weights(task, student, layer_pairs=head)
    return student


def _is_hub_encoder(model):
    from tfcompress._flavor import is_keras_hub_model

    if not is_keras_hub_model(model):
        return False
    backbone = getattr(model, "backbone", model)
    return bool(getattr(backbone, "transformer_layers", None))


def _choose_layers(layer_map, names, num_layers):
    total = len(names)
    if num_layers is not None and (
        isinstance(num_layers, bool)
        or not isinstance(num_layers, int)
        or not 1 <= num_layers <= total
    ):
        raise ValueError(
            f"`num_layers` must be an integer from 1 to the teacher's {total} blocks. "
            f"Received: num_layers={num_layers!r}."
        )
    if layer_map == "every_other":
        available = list(range(0, total, 2))
        n = num_layers if num_layers is not None else len(available)
        if n > len(available):
            raise ValueError(
                f"layer_map='every_other' gives at most {len(available)} blocks from a "
                f"{total}-block teacher. Use layer_map='uniform' or a list of blocks. "
                f"Received: num_layers={num_layers}."
            )
        return available[:n]
    if layer_map == "uniform":
        n = num_layers if num_layers is not None else (total + 1) // 2
        return [round((i + 1) * total / n) - 1 for i in range(n)]
    if isinstance(layer_map, str) or not hasattr(layer_map, "__iter__"):
        raise ValueError(
            "`layer_map` must be 'every_other', 'uniform' or a list of teacher block indices "
            f"or names. Received: layer_map={layer_map!r}."
        )
    chosen = []
    for ref in layer_map:
        if isinstance(ref, int) and not isinstance(ref, bool) and 0 <= ref < total:
            chosen.append(ref)
        elif isinstance(ref, str) and ref in names:
            chosen.append(names.index(ref))
        else:
            raise ValueError(
                f"`layer_map` names teacher block {ref!r}, which the teacher does not have: it "
                f"has {total} blocks, indices 0..{total - 1} or names {names}. "
                f"Received: layer_map={list(layer_map)!r}."
            )
    if num_layers is not None and num_layers != len(chosen):
        raise ValueError(
            f"`num_layers`={num_layers} but `layer_map` lists {len(chosen)} blocks; give one "
            f"or make them agree. Received: layer_map={list(layer_map)!r}."
        )
    return chosen
