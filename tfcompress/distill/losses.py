"""The Hinton (2015) soft-target loss, computed stably from logits.

Why not `keras.distillation.LogitsDistillation()` as is: in keras 3.15.1 its
default `loss="kl_divergence"` is turned into the *function*
`keras.losses.kl_divergence`, while the softmax and the T^2 factor are applied
only when the loss is an *instance* of `keras.losses.KLDivergence`. With the
default, the KL is taken between temperature-scaled logits clipped to
[1e-7, 1] (no softmax, no T^2): the loss can go negative and the student
learns little. `LogitsDistillation(loss=keras.losses.KLDivergence())` is
correct but clips probabilities; `SoftTargetDistillation` uses log-softmax on
both sides, so it stays exact for confident teachers and for the -1e9 logits
that top-k caches give to classes they did not keep.
"""

from __future__ import annotations

import keras
from keras import ops

from tfcompress.distill import _checks


def scale_for_replicas(loss):
    """Divide a per-replica mean loss by the number of replicas in sync.

    Under `tf.distribute` the gradients of the replicas are summed, so Keras's
    own losses return `mean / num_replicas` (and `fit()` multiplies the
    reported value back). A `DistillationLoss` that returns a plain mean must
    do the same, or its gradient counts `num_replicas` times under
    MirroredStrategy / MultiWorkerMirroredStrategy.
    """
    if keras.backend.backend() != "tensorflow":
        return loss
    import tensorflow as tf

    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss if replicas == 1 else loss * (1.0 / replicas)


@keras.saving.register_keras_serializable(package="tfcompress")
class SoftTargetDistillation(keras.distillation.DistillationLoss):
    """`T^2 * KL(softmax(teacher / T) || softmax(student / T))`, averaged over examples.

    The T^2 factor keeps the gradient with respect to the student logits at
    the same scale for any temperature (Hinton et al., 2015, section 2), so
    `alpha` means the same thing whatever `temperature` is. The KL is summed
    over the last axis and averaged over every other axis (examples, and
    positions for sequence outputs).

    Args:
        temperature: float > 0. Defaults to `4.0`.

    Example:

    ```python
    d = keras.distillation.Distiller(
        teacher, student,
        distillation_losses=tfcompress.distill.SoftTargetDistillation(temperature=4.0),
        student_loss_weight=0.1,
    )
    ```
    """

    def __init__(self, temperature: float = 4.0):
        self.temperature = _checks.check_temperature(temperature)

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        t = self.temperature
        losses = []
        for teacher, student in zip(
            keras.tree.flatten(teacher_outputs), keras.tree.flatten(student_outputs), strict=False
        ):
            teacher_log_p = ops.log_softmax(ops.cast(teacher, "float32") / t, axis=-1)
            student_log_q = ops.log_softmax(ops.cast(student, "float32") / t, axis=-1)
            teacher_p = ops.stop_gradient(ops.exp(teacher_log_p))
            kl = ops.sum(teacher_p * (ops.stop_gradient(teacher_log_p) - student_log_q), axis=-1)
            losses.append(ops.mean(kl) * (t * t))
        return scale_for_replicas(ops.sum(ops.stack(losses)))

    def get_config(self):
        return {"temperature": self.temperature}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
