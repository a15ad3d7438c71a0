"""Hidden-state and attention distillation for keras-hub BERT, with layer maps."""

import keras
import numpy as np
import pytest

from tfcompress import distill, testing
from tfcompress.distill.transformer import TRANSFORMER_FEATURES, TransformerFeatureExtractor
from tfcompress.errors import UnsupportedModelError


def ce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def test_uniform_and_explicit_layer_maps():
    t = [f"transformer_layer_{i}" for i in range(4)]
    s = t[:2]
    assert distill.resolve_layer_map(None, s, t) == [(0, 0), (1, 2), (2, 4)]
    assert distill.resolve_layer_map(None, s, t, allow_embeddings=False) == [(1, 2), (2, 4)]
    assert distill.resolve_layer_map(
        [("embeddings", "embeddings"), (1, "transformer_layer_3")], s, t
    ) == [(0, 0), (2, 4)]
    with pytest.raises(ValueError, match="teacher layer 'transformer_layer_9'.*Received"):
        distill.resolve_layer_map([(0, "transformer_layer_9")], s, t)
    with pytest.raises(ValueError, match="student layer 5"):
        distill.resolve_layer_map([(5, 0)], s, t)


def test_features_of_a_bert_task(bert_data, tiny_bert_teacher):
    inputs, _ = bert_data
    features = TransformerFeatureExtractor(tiny_bert_teacher)(
        {k: v[:4] for k, v in inputs.items()}
    )[TRANSFORMER_FEATURES]
    assert len(features["hidden_states"]) == 3 and len(features["attention"]) == 2
    assert tuple(features["attention"][0].shape) == (4, 2, 16, 16)
    probs = np.asarray(features["attention"][1]).sum(-1)
    np.testing.assert_allclose(probs, 1.0, atol=1e-4)
    # The last hidden state is the backbone's sequence output.
    sequence = tiny_bert_teacher.backbone({k: v[:4] for k, v in inputs.items()})
    np.testing.assert_allclose(
        features["hidden_states"][-1], sequence["sequence_output"], atol=1e-5
    )


def test_losses_are_zero_for_an_identical_student(bert_data, tiny_bert_teacher):
    inputs, _ = bert_data
    twin = distill.init_student_from_teacher(tiny_bert_teacher, layer_map=[0, 1])
    losses = [distill.HiddenStateDistillation(), distill.AttentionDistillation()]
    for loss in losses:
        loss.validate_model_compatibility(tiny_bert_teacher, twin)
    batch = {k: v[:8] for k, v in inputs.items()}
    t = TransformerFeatureExtractor(tiny_bert_teacher)(batch)[TRANSFORMER_FEATURES]
    s = TransformerFeatureExtractor(twin)(batch)[TRANSFORMER_FEATURES]
    for loss in losses:
        assert float(loss.compute_loss(t, s)) == pytest.approx(0.0, abs=1e-6)
    other = testing.tiny_bert_classifier(num_layers=2, hidden_dim=16, intermediate_dim=32, seed=9)
    s2 = TransformerFeatureExtractor(other)(batch)[TRANSFORMER_FEATURES]
    hidden_loss, attention_loss = (float(loss.compute_loss(t, s2)) for loss in losses)
    assert hidden_loss > 1e-2 and attention_loss > 1e-6


def test_narrow_student_trains_with_projection(bert_data, tiny_bert_teacher):
    inputs, labels = bert_data
    student = testing.tiny_bert_classifier(
        num_layers=1, hidden_dim=8, num_heads=1, intermediate_dim=16, seed=3
    )
    hidden = distill.HiddenStateDistillation()
    d = distill.distiller(
        student, tiny_bert_teacher, extra_losses=[hidden, distill.AttentionDistillation()]
    )
    projection = hidden.trainable_layers()[0]
    assert projection.kernel.shape == (8, 16)
    before = np.array(projection.kernel)
    d.compile(optimizer=keras.optimizers.Adam(3e-3), loss=ce())
    history = d.fit(inputs, labels, epochs=2, batch_size=64, verbose=0)
    assert history.history["distillation_loss"][-1] < history.history["distillation_loss"][0]
    assert not np.allclose(before, np.array(projection.kernel))
    assert projection.kernel.path not in {w.path for w in student.weights}


def test_bad_mapping_and_unsupported_models(trained_cnn, small_student_factory, tiny_bert_teacher):
    student = testing.tiny_bert_classifier(num_layers=1, hidden_dim=16, intermediate_dim=32)
    with pytest.raises(ValueError, match="teacher layer 'transformer_layer_7'"):
        distill.distiller(
            student,
            tiny_bert_teacher,
            extra_losses=[distill.AttentionDistillation(layer_map=[(0, "transformer_layer_7")])],
        )
    with pytest.raises(UnsupportedModelError, match="TransformerEncoder"):
        distill.distiller(
            small_student_factory(), trained_cnn, extra_losses=[distill.HiddenStateDistillation()]
        )
