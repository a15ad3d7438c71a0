"""Knowledge distillation built on `keras.distillation`.

`distiller()` sets up Keras's `Distiller` the Hinton way (alpha, temperature,
T^2-scaled KL); `as_teacher` and `cache_teacher_outputs` bring teachers
Keras's Distiller cannot take (tf_keras, SavedModel, callables, a file of
cached logits); `HiddenStateDistillation` and `AttentionDistillation` distill
keras-hub transformers layer by layer; `init_student_from_teacher` starts a
shallower student from the teacher's weights (DistilBERT style).

Example:

>>> d = tfcompress.distill.distiller(student, teacher, alpha=0.1, temperature=4.0)
>>> d.compile(optimizer="adam",
...           loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
>>> d.fit(x_train, y_train, epochs=2)
>>> small = d.student
"""

from tfcompress.distill.cache import (
    TeacherCache,
    TeacherCacheMismatchError,
    cache_teacher_outputs,
    load_teacher_cache,
)
from tfcompress.distill.distillation import Distiller, distiller
from tfcompress.distill.losses import SoftTargetDistillation
from tfcompress.distill.teachers import CallableTeacher, as_teacher
from tfcompress.distill.transfer import (
    TransferReport,
    init_student_from_teacher,
    transfer_weights,
)
from tfcompress.distill.transformer import (
    AttentionDistillation,
    HiddenStateDistillation,
    resolve_layer_map,
)

__all__ = [
    "AttentionDistillation",
    "CallableTeacher",
    "Distiller",
    "SoftTargetDistillation",
    "HiddenStateDistillation",
    "TeacherCache",
    "TeacherCacheMismatchError",
    "TransferReport",
    "as_teacher",
    "cache_teacher_outputs",
    "distiller",
    "init_student_from_teacher",
    "load_teacher_cache",
    "resolve_layer_map",
    "transfer_weights",
]
