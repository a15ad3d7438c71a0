"""The benchmark tasks: data, model (and its tf_keras twin), student, training settings.

Three tasks, each small enough for a laptop CPU:

- `digits_cnn`: `tfcompress.testing.digits_cnn` on scikit-learn's 8x8 digits.
- `mobilenet`: a MobileNet-style CNN (DepthwiseConv2D + BatchNorm + ReLU6
  blocks) on the same digits, upsampled to 32x32.
- `sst2_bert`: a tiny keras-hub BERT (2 layers, hidden 64, 32 tokens) trained
  from scratch on a subset of GLUE's SST-2, tested on SST-2's dev set.

A task's `build(k, data)` takes the Keras module (`keras`, or `tf_keras` for
the twin tfmot needs); tasks without a tf_keras twin set `has_twin=False`.
"""

import dataclasses
import types
from typing import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    description: str
    load: Callable  # quick -> namespace of x_train, y_train, x_val, y_val, x_test, y_test
    build: Callable  # (keras module, data) -> built, uncompiled model
    student: Callable  # (trained teacher, data) -> smaller model for distillation
    epochs: tuple  # (quick, full) epochs of the float training
    tune_epochs: tuple  # (quick, full) fine-tuning epochs of the compression methods
    learning_rate: float = 3e-3
    has_twin: bool = True
    sequence_length: int = 16  # for LiteRT timing of models with dynamic sequence inputs


def head(x, n):
    """The first n inputs of an array or a dict of arrays."""
    return {k: v[:n] for k, v in x.items()} if isinstance(x, dict) else x[:n]


def num_samples(x):
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


# --- digits CNN -------------------------------------------------------------------------

DIGITS_ARCH = dict(filters=(16, 32), dense_units=64)
DIGITS_STUDENT = dict(filters=(4, 8), dense_units=12)


def _load_digits(quick):
    from tfcompress.data import load_digits

    return load_digits()


def _digits_cnn(k, data):
    from tfcompress import testing

    build = testing.digits_cnn if k.__name__ == "keras" else testing.tf_keras_digits_cnn
    return build(**DIGITS_ARCH)


def _digits_student(teacher, data):
    from tfcompress import testing

    return testing.digits_cnn(**DIGITS_STUDENT, name="student")


# --- MobileNet-style CNN on digits upsampled to 32x32 --------------------------------------

MOBILENET_BLOCKS = ((32, 1), (64, 2), (64, 1), (128, 2))  # (pointwise filters, stride)


def _load_digits_32(quick):
    d = _load_digits(quick)
    up = lambda x: np.repeat(np.repeat(x, 4, axis=1), 4, axis=2)  # noqa: E731 8x8 -> 32x32
    return types.SimpleNamespace(
        x_train=up(d.x_train),
        y_train=d.y_train,
        x_val=up(d.x_val),
        y_val=d.y_val,
        x_test=up(d.x_test),
        y_test=d.y_test,
    )


def mobilenet_cnn(k, width=1.0, num_classes=10, seed=0, name="mobilenet"):
    """A MobileNet-v1-style CNN for 32x32x1 images from a Keras module `k` (keras or tf_keras)."""
    k.utils.set_random_seed(seed)
    L = k.layers

    def bn_relu6(x, prefix):
        # momentum 0.9: with ~40 steps an epoch, the default 0.99 leaves the moving
        # statistics far behind the weights and inference-mode accuracy at chance.
        x = L.BatchNormalization(momentum=0.9, name=f"{prefix}_bn")(x)
        return L.ReLU(6.0, name=f"{prefix}_relu6")(x)

    inputs = k.Input((32, 32, 1), name="image")
    x = L.Conv2D(int(16 * width), 3, strides=2, padding="same", use_bias=False, name="stem")(inputs)
    x = bn_relu6(x, "stem")
    for i, (filters, stride) in enumerate(MOBILENET_BLOCKS):
        x = L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"dw{i}")(x)
        x = bn_relu6(x, f"dw{i}")
        x = L.Conv2D(int(filters * width), 1, use_bias=False, name=f"pw{i}")(x)
        x = bn_relu6(x, f"pw{i}")
    x = L.GlobalAveragePooling2D(name="pool")(x)
    outputs = L.Dense(num_classes, name="logits")(x)
    return k.Model(inputs, outputs, name=name)


def _mobilenet(k, data):
    return mobilenet_cnn(k)


def _mobilenet_student(teacher, data):
    import keras

    return mobilenet_cnn(keras, width=0.5, name="student")


# --- tiny BERT on SST-2 ------------------------------------------------------------------

BERT = dict(num_layers=2, hidden_dim=64, num_heads=2, intermediate_dim=128, sequence_length=32)
BERT_VOCABULARY = 2000


def _load_sst2(quick):
    from tfcompress.data import encode_for_bert, load_sst2, sst2_tokenizer

    splits = load_sst2(max_train=4000 if quick else 8000, seed=0)
    tokenizer = sst2_tokenizer(splits.x_train, vocabulary_size=BERT_VOCABULARY)

    def encode(x):
        return encode_for_bert(tokenizer, x, sequence_length=BERT["sequence_length"])

    return types.SimpleNamespace(
        x_train=encode(splits.x_train),
        y_train=splits.y_train,
        x_val=encode(splits.x_val[:500]),
        y_val=splits.y_val[:500],
        x_test=encode(splits.x_test),
        y_test=splits.y_test,
        vocabulary_size=int(tokenizer.vocabulary_size()),
    )


def _bert(k, data):
    if k.__name__ != "keras":
        raise NotImplementedError("keras-hub BERT has no tf_keras twin")
    from tfcompress import testing

    return testing.tiny_bert_classifier(vocabulary_size=data.vocabulary_size, **BERT)


def _bert_student(teacher, data):
    from tfcompress import distill

    return distill.init_student_from_teacher(teacher, num_layers=1)


TASKS = {
    "digits_cnn": Task(
        "digits_cnn",
        "digits CNN (Conv16-Pool-Conv32-Dense64-Dense10), scikit-learn digits "
        "8x8, 1257 train / 270 test; distilled into Conv4-Pool-Conv8-Dense12",
        _load_digits,
        _digits_cnn,
        _digits_student,
        epochs=(5, 20),
        tune_epochs=(2, 4),
    ),
    "mobilenet": Task(
        "mobilenet",
        "MobileNet-style CNN (stem + 4 DepthwiseConv2D/BatchNorm/ReLU6 blocks, "
        "GAP, Dense10) on the digits upsampled to 32x32; distilled into the same at width 0.5",
        _load_digits_32,
        _mobilenet,
        _mobilenet_student,
        epochs=(6, 20),
        tune_epochs=(2, 4),
    ),
    "sst2_bert": Task(
        "sst2_bert",
        "keras-hub BERT from scratch (2 layers, hidden 64, 2 heads, 32 tokens, "
        f"WordPiece vocabulary of at most {BERT_VOCABULARY}) on SST-2 (4000 quick / 8000 full "
        "training sentences, 872 dev sentences as test); distilled into 1 layer "
        "(init_student_from_teacher)",
        _load_sst2,
        _bert,
        _bert_student,
        epochs=(3, 4),
        tune_epochs=(1, 2),
        learning_rate=1e-3,
        has_twin=False,
        sequence_length=BERT["sequence_length"],
    ),
}
