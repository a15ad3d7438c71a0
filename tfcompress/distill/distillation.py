"""`distiller()`: keras.distillation.Distiller set up the Hinton (2015) way.

The soft-target term is our `SoftTargetDistillation` (T^2-scaled KL from
log-softmax), not Keras's `LogitsDistillation()`, whose default loss string
skips the softmax and the T^2 factor in keras 3.15.1 (see `losses.py`). We
also add argument checks with clear errors, teachers Keras's Distiller cannot
take (tf_keras, SavedModel, callables, cached outputs), and transformer losses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from tfcompress._report import Entry, Report, attach
from tfcompress.distill import _checks
from tfcompress.distill.transformer import TRANSFORMER_FEATURES, TransformerFeatureExtractor


@keras.saving.register_keras_serializable(package="tfcompress")
class Distiller(keras.distillation.Distiller):
    """A `keras.distillation.Distiller` that also trains from cached teacher outputs.

    Behaves exactly like Keras's Distiller (the loss is
    `student_loss_weight * task_loss + (1 - student_loss_weight) * sum(w_i * L_i)`)
    and adds:

    - cached teachers: with `teacher=TeacherCache`, batches are
      `(x, (y, teacher_outputs))` as made by `TeacherCache.dataset`, and the
      teacher is never run;
    - the trainable parts of distillation losses (e.g. the projection of
      `HiddenStateDistillation`) are tracked and trained with the student;
    - transformer losses get hidden states and attention maps of keras-hub
      backbones.

    Use `tfcompress.distill.distiller(...)` to build one; `.student` is the
    plain student model, ready for pruning, QAT and export.
    """

    def __init__(
        self,
        teacher: Any,
        student: keras.Model,
        distillation_losses: Any,
        distillation_loss_weights: Sequence[float] | None = None,
        student_loss_weight: float = 0.1,
        name: str = "distiller",
        **kwargs: Any,
    ):
        from tfcompress.distill.cache import TeacherCache, _CachedTeacher

        self._cache = teacher if isinstance(teacher, TeacherCache) else None
        if self._cache is not None:
            teacher = _CachedTeacher(self._cache)
        super().__init__(
            teacher=teacher,
            student=student,
            distillation_losses=distillation_losses,
            distillation_loss_weights=distillation_loss_weights,
            student_loss_weight=student_loss_weight,
            name=name,
            **kwargs,
        )
        # Tracked as attributes of the model, so the optimizer trains them.
        self.distillation_layers = [
            layer
            for loss in self.distillation_losses
            for layer in getattr(loss, "trainable_layers", list)()
        ]
        self._cached_outputs = None

    @property
    def alpha(self):
        """Weight of the task (label) loss; the distillation terms get `1 - alpha`."""
        return self.student_loss_weight

    @property
    def uses_cache(self):
        """True when the teacher's outputs come from a `TeacherCache`."""
        return self._cache is not None

    # Transformer features: a second (inference-only for the teacher) pass
    # through the keras-hub backbone that returns hidden states and attention.
    def _create_feature_extractor(self, model, layer_names):
        if TRANSFORMER_FEATURES not in layer_names:
            return super()._create_feature_extractor(model, layer_names)
        if self._cache is not None and model is self.teacher:
            raise ValueError(
                "Transformer losses (HiddenStateDistillation, AttentionDistillation) need "
                "the live teacher's hidden states, but the teacher is a TeacherCache, which "
                "holds logits only. Pass the teacher model itself."
            )
        others = [n for n in layer_names if n != TRANSFORMER_FEATURES]
        return TransformerFeatureExtractor(
            model, layer_names=others, with_final_output=model is not self.student
        )

    def _split_cached(self, y):
        if not isinstance(y, (tuple, list)) or len(y) != 2:
            raise ValueError(
                "A Distiller built on a TeacherCache trains on batches of "
                "(x, (y, teacher_outputs)); make them with cache.dataset(x, y). Received "
                f"targets of type {type(y).__name__} instead of a (y, teacher_outputs) pair."
            )
        labels, teacher_outputs = y
        return labels, self._cache.decode(teacher_outputs)

    def _extract_all_teacher_features(self, x):
        if self._cache is not None:
            return {"final_output": self._cached_outputs}
        return super()._extract_all_teacher_features(x)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if self._cache is not None:
            y, self._cached_outputs = self._split_cached(y)
        try:
            return super().compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
            )
        finally:
            self._cached_outputs = None

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if self._cache is not None and isinstance(y, (tuple, list)) and len(y) == 2:
            y = y[0]
        return super().compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def distiller(
    student: keras.Model,
    teacher: Any,
    alpha: float = 0.1,
    temperature: float = 4.0,
    extra_losses: Sequence[keras.distillation.DistillationLoss] | None = None,
    extra_loss_weights: Sequence[float] | None = None,
    name: str = "distiller",
) -> Distiller:
    """Builds a Keras `Distiller` for classic (Hinton 2015) knowledge distillation.

    The training loss is
    `alpha * task_loss + (1 - alpha) * T^2 * KL(softmax(t / T) || softmax(s / T))`
    (`SoftTargetDistillation`)
    plus, optionally, `(1 - alpha) * w_i * L_i` for each extra loss (e.g.
    `HiddenStateDistillation`, `AttentionDistillation`). The task loss is the
    `loss` given to `compile()`.

    Args:
        student: a Keras 3 model (keras-hub models included) producing logits.
            It is trained in place; after `fit()`, `distiller.student` is that
            same plain model, ready for pruning, QAT and export.
        teacher: the trained teacher producing logits of the same shape: a
            Keras 3 model, a tf_keras model, a SavedModel folder, a callable
            on TF tensors (see `as_teacher`), or a `TeacherCache` from
            `cache_teacher_outputs` (then train on `cache.dataset(x, y)`).
        alpha: float in [0, 1]. Weight of the task (label) loss. Defaults to
            `0.1`.
        temperature: float > 0. Softmax temperature of the soft targets.
            Defaults to `4.0`.
        extra_losses: optional list of `keras.distillation.DistillationLoss`
            added to the logits loss.
        extra_loss_weights: weights of `extra_losses` (1.0 each by default).
        name: name of the distiller model.

    Returns:
        A `tfcompress.distill.Distiller` (a `keras.distillation.Distiller`),
        not compiled. Its `tfcompress_report` (a `tfcompress.Report`) lists the
        losses and their weights.

    Example:

    ```python
    d = tfcompress.distill.distiller(student, teacher, alpha=0.1, temperature=4.0)
    d.compile(optimizer="adam",
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"])
    d.fit(x_train, y_train, epochs=10, callbacks=[keras.callbacks.EarlyStopping()])
    small = d.student
    ```
    """
    from tfcompress._flavor import KERAS3, KERAS_HUB, flavor_of
    from tfcompress.distill.cache import TeacherCache
    from tfcompress.distill.losses import SoftTargetDistillation
    from tfcompress.distill.teachers import as_teacher
    from tfcompress.errors import UnsupportedModelError

    alpha = _checks.check_alpha(alpha)
    temperature = _checks.check_temperature(temperature)
    if flavor_of(student) not in (KERAS3, KERAS_HUB):
        raise UnsupportedModelError(
            f"The student '{student.name}' is a tf_keras model; keras.distillation trains "
            "Keras 3 students only. Build the student with `import keras` (Keras 3); the "
            "teacher may stay a tf_keras model."
        )
    if teacher is student:
        # Keras freezes the teacher: the student would silently never train.
        raise ValueError(
            f"The teacher and the student are the same model '{student.name}'; the teacher "
            "is frozen during distillation, so the student would never train. Pass a "
            f"separate (smaller) student model. Received: student is teacher ({student.name!r})."
        )
    if isinstance(teacher, TeacherCache):
        teacher.check_student(student)
    else:
        teacher = as_teacher(teacher, like=student)
        _checks.check_outputs_match(teacher, student)

    losses = [SoftTargetDistillation(temperature=temperature)]
    weights = [1.0]
    extra_losses = list(extra_losses or [])
    if extra_loss_weights is None:
        extra_loss_weights = [1.0] * len(extra_losses)
    if len(extra_loss_weights) != len(extra_losses):
        raise ValueError(
            "`extra_loss_weights` needs one weight per extra loss. Received: "
            f"{len(extra_losses)} extra_losses and extra_loss_weights={extra_loss_weights!r}."
        )
    all_losses = losses + extra_losses
    all_weights = weights + [float(w) for w in extra_loss_weights]
    d = Distiller(
        teacher=teacher,
        student=student,
        distillation_losses=all_losses,
        distillation_loss_weights=all_weights,
        student_loss_weight=alpha,
        name=name,
    )
    report = Report(
        "distiller",
        student.name,
        done=[
            Entry(type(loss).__name__, "DistillationLoss", f"weight {w:g}")
            for loss, w in zip(all_losses, all_weights)
        ]
        + [Entry("labels", "", f"task loss weight alpha={alpha:g}")],
        details={
            "alpha": alpha,
            "temperature": temperature,
            "teacher": getattr(teacher, "name", type(teacher).__name__),
        },
    )
    return attach(d, report)
