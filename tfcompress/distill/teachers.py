"""Teachers Keras's Distiller cannot take directly, wrapped as Keras 3 models.

`keras.distillation.Distiller` needs a Keras 3 `keras.Model`. `as_teacher`
wraps a tf_keras model, a SavedModel folder, or any callable on TF tensors in
a frozen Keras 3 functional model with the student's inputs, so the Distiller
(and its shape checks) work unchanged. The wrapped teacher runs in inference
mode and no gradient flows into it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import keras


class CallableTeacher(keras.layers.Layer):
    """A non-trainable Keras 3 layer that calls `fn` (TF tensors in, logits out).

    Args:
        fn: callable taking the model inputs (a tensor, or a dict of tensors
            for dict-input models) and returning logits.
        description: what `fn` is, for messages.

    Not serializable: save the student (`distiller.student`), not the
    Distiller, when the teacher is wrapped.
    """

    def __init__(self, fn: Callable, description: str = "callable", **kwargs: Any):
        super().__init__(trainable=False, **kwargs)
        if not callable(fn):
            raise TypeError(f"`fn` must be callable. Received: fn={fn!r}.")
        self._fn = fn
        self.description = description

    def call(self, inputs):
        from keras import ops

        outputs = self._fn(inputs)
        return keras.tree.map_structure(ops.stop_gradient, outputs)

    def get_config(self):
        raise NotImplementedError(
            f"A CallableTeacher wrapping a {self.description} cannot be saved. Save the "
            "student model (distiller.student) instead of the Distiller."
        )


def as_teacher(
    teacher: Any,
    like: keras.Model | None = None,
    output_key: str | None = None,
    name: str | None = None,
) -> keras.Model:
    """Returns `teacher` as a frozen Keras 3 model that `Distiller` accepts.

    Args:
        teacher: one of
            - a Keras 3 model (returned as is);
            - a tf_keras model (called with `training=False`);
            - a path to a SavedModel folder (its `serve` endpoint, as written
              by `keras.Model.export`, else its `serving_default` signature);
            - any callable on TF tensors returning logits (a `tf.function`, a
              `tf.Module`'s method, a lambda around a legacy model...).
        like: a Keras 3 model whose inputs (names, shapes, dtypes) the
            wrapper copies: normally the student. Needed for callables and
            SavedModels; a tf_keras teacher's own inputs are used otherwise.
        output_key: for teachers returning a dict (SavedModel signatures),
            which entry holds the logits; needed only when there are several.
        name: name of the wrapper model.

    Returns:
        A non-trainable Keras 3 functional `keras.Model`.

    Example:

    ```python
    teacher = tfcompress.distill.as_teacher("exported_teacher/", like=student)
    d = tfcompress.distill.distiller(student, teacher)
    ```
    """
    from tfcompress._flavor import is_keras3_model, is_tf_keras_model

    if is_keras3_model(teacher):
        return teacher
    if is_tf_keras_model(teacher):
        tf_keras_model = teacher

        def fn(x):
            return tf_keras_model(x, training=False)

        description = f"tf_keras model '{teacher.name}'"
        inputs = _inputs_like(like) if like is not None else _inputs_of_tf_keras(teacher)
        default_name = f"{teacher.name}_as_keras3"
    elif isinstance(teacher, (str, os.PathLike)):
        fn, description = _saved_model_fn(os.fspath(teacher), output_key)
        inputs = _require_like(like, description)
        default_name = "saved_model_teacher"
    elif callable(teacher):
        fn, description = _unwrap_dict(teacher, output_key), f"callable {teacher!r}"
        inputs = _require_like(like, description)
        default_name = "callable_teacher"
    else:
        raise TypeError(
            "A teacher must be a Keras 3 model, a tf_keras model, a SavedModel folder path, "
            "a callable returning logits, or a TeacherCache. Received: teacher of type "
            f"{type(teacher).__module__}.{type(teacher).__qualname__}."
        )
    outputs = CallableTeacher(fn, description=description, name="teacher_call")(inputs)
    wrapper = keras.Model(inputs, outputs, name=name or default_name)
    wrapper.trainable = False
    return wrapper


def _require_like(like, description):
    if like is None:
        raise ValueError(
            f"To wrap a {description} as a teacher its input shapes must be known: pass "
            "`like=student` (the wrapper copies the student's inputs)."
        )
    return _inputs_like(like)


def _inputs_like(model):
    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise ValueError(
            f"The model '{model.name}' has no symbolic inputs to copy. Build it with "
            "keras.Input(...) (a functional or Sequential model with an input shape)."
        )

    def copy(t):
        return keras.Input(batch_shape=t.shape, dtype=t.dtype, name=getattr(t, "name", None))

    # A Keras 3 Sequential that was never called has `inputs` but raises on `input`;
    # only a functional model can take a dict of inputs anyway.
    try:
        structure = model.input
    except AttributeError:
        structure = None
    structure = structure if isinstance(structure, dict) else None
    if structure is not None:
        return {k: copy(v) for k, v in structure.items()}
    copies = [copy(t) for t in inputs]
    return copies[0] if len(copies) == 1 else copies


def _inputs_of_tf_keras(model):
    copies = [
        keras.Input(batch_shape=tuple(t.shape), dtype=t.dtype.name, name=t.name.split(":")[0])
        for t in model.inputs
    ]
    return copies[0] if len(copies) == 1 else copies


def _unwrap_dict(fn, output_key):
    def call(x):
        out = fn(x)
        if isinstance(out, dict):
            return _pick(out, output_key)
        return out

    return call


def _pick(outputs, output_key):
    if output_key is not None:
        if output_key not in outputs:
            raise KeyError(
                f"The teacher has no output '{output_key}'. Its outputs are "
                f"{sorted(outputs)}. Received: output_key={output_key!r}."
            )
        return outputs[output_key]
    if len(outputs) != 1:
        raise ValueError(
            f"The teacher returns several outputs {sorted(outputs)}; say which holds the "
            "logits with `output_key=...`."
        )
    return next(iter(outputs.values()))


def _saved_model_fn(path, output_key):
    import tensorflow as tf

    if not os.path.isdir(path) or not tf.saved_model.contains_saved_model(path):
        raise FileNotFoundError(
            f"'{path}' is not a SavedModel folder (no saved_model.pb). Export the teacher "
            "with `model.export(path)` (Keras 3) or `tf.saved_model.save(model, path)`."
        )
    loaded = tf.saved_model.load(path)
    description = f"SavedModel '{path}'"
    if hasattr(loaded, "serve"):
        endpoint = loaded.serve

        def fn(x):
            out = endpoint(x)
            return _pick(out, output_key) if isinstance(out, dict) else out

    elif "serving_default" in loaded.signatures:
        signature = loaded.signatures["serving_default"]
        input_names = sorted(signature.structured_input_signature[1])

        def fn(x):
            kwargs = x if isinstance(x, dict) else dict(zip(input_names, [x], strict=False))
            return _pick(signature(**kwargs), output_key)

    else:
        raise ValueError(
            f"The SavedModel '{path}' has neither a `serve` endpoint nor a "
            "`serving_default` signature to call. Export it with `model.export(path)`."
        )
    fn._keep_alive = loaded  # the endpoint needs its object alive
    return fn, description
