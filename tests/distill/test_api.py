"""The public surface of tfcompress.distill, compared with a golden list."""

import tfcompress.distill

GOLDEN = [
    "AttentionDistillation",
    "CallableTeacher",
    "Distiller",
    "HiddenStateDistillation",
    "SoftTargetDistillation",
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


def test_public_names():
    assert sorted(tfcompress.distill.__all__) == sorted(GOLDEN)
    for name in GOLDEN:
        assert getattr(tfcompress.distill, name) is not None
