"""End to end: digits CNN -> small CNN -> int8 TFLite; tiny BERT on SST-2 -> shallower BERT."""

import os

import keras
import numpy as np
import pytest

from tfcompress import distill, export, testing


def ce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def accuracy(logits, labels):
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


@pytest.mark.slow
def test_digits_teacher_to_small_student_to_int8(tmp_path, digits, trained_cnn):
    student = testing.digits_cnn(filters=(4, 8), dense_units=12, seed=1, name="student")
    assert trained_cnn.count_params() >= 4 * student.count_params()
    cache = distill.cache_teacher_outputs(trained_cnn, digits.x_train, tmp_path / "t.npz")
    d = distill.distiller(student, cache, alpha=0.1, temperature=4.0)
    d.compile(optimizer=keras.optimizers.Adam(5e-3), loss=ce())
    d.fit(cache.dataset(digits.x_train, digits.y_train, batch_size=32), epochs=12, verbose=0)
    teacher_acc = accuracy(trained_cnn.predict(digits.x_test, verbose=0), digits.y_test)
    student_acc = accuracy(student.predict(digits.x_test, verbose=0), digits.y_test)
    assert student_acc >= 0.85 * teacher_acc, (student_acc, teacher_acc)
    _, _, verification = testing.assert_exports_int8(
        d.student, representative_data=digits.x_train[:200], data=digits.x_test, min_agreement=0.9
    )
    assert verification.top1_agreement >= 0.9


@pytest.mark.slow
def test_tiny_bert_on_sst2(tmp_path):
    from tfcompress.data import encode_for_bert, load_sst2, sst2_tokenizer

    splits = load_sst2(max_train=384)  # CI has ../shared/data/sst2 beside the checkout
    tokenizer = sst2_tokenizer(splits.x_train, vocabulary_size=600)
    x_train = encode_for_bert(tokenizer, splits.x_train, sequence_length=24)
    x_test = encode_for_bert(tokenizer, splits.x_test[:128], sequence_length=24)
    teacher = testing.tiny_bert_classifier(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=2,
        hidden_dim=32,
        intermediate_dim=64,
        sequence_length=24,
        seed=0,
    )
    teacher.compile(optimizer=keras.optimizers.Adam(2e-3), loss=ce())
    teacher.fit(x_train, splits.y_train, epochs=2, batch_size=32, verbose=0)

    student = distill.init_student_from_teacher(teacher, num_layers=1)
    assert student.backbone.num_layers == 1
    d = distill.distiller(
        student,
        teacher,
        alpha=0.1,
        temperature=2.0,
        extra_losses=[distill.HiddenStateDistillation(), distill.AttentionDistillation()],
        extra_loss_weights=[0.1, 0.1],
    )
    d.compile(optimizer=keras.optimizers.Adam(2e-3), loss=ce())
    history = d.fit(x_train, splits.y_train, epochs=2, batch_size=32, verbose=0)
    assert history.history["distillation_loss"][-1] < history.history["distillation_loss"][0]
    teacher_pred = np.argmax(teacher.predict(x_test, verbose=0), -1)
    student_pred = np.argmax(student.predict(x_test, verbose=0), -1)
    assert np.mean(teacher_pred == student_pred) > 0.6

    path = os.path.join(tmp_path, "student.tflite")
    export.to_tflite(
        student, path, mode="int8", representative_data={k: v[:64] for k, v in x_train.items()}
    )
    result = export.verify(path, student, x_test, max_samples=64)
    assert result.top1_agreement >= 0.8, str(result)
