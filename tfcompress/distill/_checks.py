"""Argument checks shared by the distillation entry points."""

import numbers


def check_alpha(alpha):
    """`alpha` is the weight of the task (label) loss: a number in [0, 1]."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 <= alpha <= 1:
        raise ValueError(
            "`alpha` is the weight of the task (label) loss and must be a number in "
            "[0, 1]; the distillation term gets 1 - alpha (0.1 is the usual choice, "
            f"1.0 means labels only, 0.0 teacher only). Received: alpha={alpha!r}."
        )
    return float(alpha)


def check_temperature(temperature):
    """`temperature` softens both softmaxes: a number > 0."""
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, numbers.Real)
        or not temperature > 0
    ):
        raise ValueError(
            "`temperature` must be a positive number (1 means no softening; 2-8 is "
            f"usual for distillation). Received: temperature={temperature!r}."
        )
    return float(temperature)


def output_shapes(model):
    """The symbolic output shapes of a functional model, or None when unknown."""
    outputs = getattr(model, "outputs", None)
    if not outputs:
        return None
    return [tuple(o.shape) for o in outputs]


def check_outputs_match(teacher, student):
    """Teacher and student must produce logits of the same shape."""
    t_shapes, s_shapes = output_shapes(teacher), output_shapes(student)
    if t_shapes is None or s_shapes is None:
        return
    mismatch = len(t_shapes) != len(s_shapes) or any(
        len(t) != len(s)
        or any(a is not None and b is not None and a != b for a, b in zip(t, s, strict=False))
        for t, s in zip(t_shapes, s_shapes, strict=False)
    )
    if mismatch:
        raise ValueError(
            f"The teacher '{teacher.name}' and the student '{student.name}' must produce "
            "logits of the same shape to be compared, but the teacher outputs "
            f"{_fmt(t_shapes)} and the student outputs {_fmt(s_shapes)}. Give the student "
            "the same output layer (same number of classes / vocabulary size) as the "
            "teacher. Received: teacher output shape="
            f"{_fmt(t_shapes)}, student output shape={_fmt(s_shapes)}."
        )


def _fmt(shapes):
    return str(shapes[0]) if len(shapes) == 1 else str(shapes)
