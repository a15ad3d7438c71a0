"""init_student_from_teacher and transfer_weights."""

import numpy as np
import pytest

from tfcompress import distill, testing


def _w(layer):
    return layer.get_weights()


def test_every_other_from_a_bert_backbone():
    teacher = testing.tiny_bert_classifier(
        num_layers=4, hidden_dim=16, intermediate_dim=32
    ).backbone
    student = distill.init_student_from_teacher(teacher, num_layers=2)
    assert type(student) is type(teacher) and student.num_layers == 2
    assert student.hidden_dim == teacher.hidden_dim
    for name in ("token_embedding", "position_embedding", "embeddings_layer_norm", "pooled_dense"):
        for a, b in zip(_w(student.get_layer(name)), _w(teacher.get_layer(name)), strict=False):
            np.testing.assert_array_equal(a, b)
    for s_layer, t_index in zip(student.transformer_layers, (0, 2), strict=False):
        for a, b in zip(_w(s_layer), _w(teacher.transformer_layers[t_index]), strict=False):
            np.testing.assert_array_equal(a, b)


def test_uniform_list_and_task(bert_data, trained_bert):
    teacher = testing.tiny_bert_classifier(num_layers=4, hidden_dim=16, intermediate_dim=32)
    student = distill.init_student_from_teacher(teacher, num_layers=2, layer_map="uniform")
    for s_layer, t_index in zip(student.backbone.transformer_layers, (1, 3), strict=False):
        np.testing.assert_array_equal(
            _w(s_layer)[0], _w(teacher.backbone.transformer_layers[t_index])[0]
        )
    np.testing.assert_array_equal(
        _w(student.get_layer("logits"))[0], _w(teacher.get_layer("logits"))[0]
    )
    picked = distill.init_student_from_teacher(teacher.backbone, layer_map=["transformer_layer_3"])
    np.testing.assert_array_equal(
        _w(picked.transformer_layers[0])[0], _w(teacher.backbone.transformer_layers[3])[0]
    )


def test_bad_layer_maps():
    teacher = testing.tiny_bert_classifier(
        num_layers=2, hidden_dim=16, intermediate_dim=32
    ).backbone
    with pytest.raises(ValueError, match="teacher block 'transformer_layer_5'.*Received"):
        distill.init_student_from_teacher(teacher, layer_map=["transformer_layer_5"])
    with pytest.raises(ValueError, match="at most 1 blocks"):
        distill.init_student_from_teacher(teacher, num_layers=2, layer_map="every_other")
    with pytest.raises(ValueError, match="Received: num_layers=3"):
        distill.init_student_from_teacher(teacher, num_layers=3)


def test_plain_models_copy_matching_layers(trained_cnn):
    student = testing.digits_cnn(filters=(8, 4), dense_units=16, seed=5, name="s")
    report = distill.transfer_weights(trained_cnn, student)
    assert ("conv0", "conv0") in report.copied
    assert {name for name, _ in report.skipped} == {"conv1", "dense", "logits"}
    np.testing.assert_array_equal(
        _w(student.get_layer("conv0"))[0], _w(trained_cnn.get_layer("conv0"))[0]
    )
    assert distill.init_student_from_teacher(trained_cnn, student=student) is student
    with pytest.raises(ValueError, match="pass it: init_student_from_teacher"):
        distill.init_student_from_teacher(trained_cnn)
