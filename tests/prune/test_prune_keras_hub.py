"""keras-hub models: embeddings, attention and feed-forward kernels are pruned."""

import os

import keras
import numpy as np
import pytest

from tfcompress import export, prune, testing


@pytest.mark.slow
def test_tiny_bert_classifier(tmp_path):
    model = testing.tiny_bert_classifier()
    x = testing.random_bert_inputs(32)
    before = model.predict(x, verbose=0)
    pruned = prune.prune_low_magnitude(
        model, prune.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=8, frequency=2)
    )
    wrapped = {w.layer.name for w in prune.callbacks.pruning_wrappers(pruned)}
    # The classifier ("logits") is skipped by default. The TransformerEncoder is
    # wrapped as a whole: its attention and feed-forward kernels get masks.
    assert wrapped == {
        "token_embedding",
        "segment_embedding",
        "transformer_layer_0",
        "pooled_dense",
    }
    encoder = next(
        w for w in prune.callbacks.pruning_wrappers(pruned) if w.layer.name == "transformer_layer_0"
    )
    assert len(encoder.masks) == 6  # query, key, value, output, FFN in, FFN out
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(
        x, np.zeros(32, "int32"), batch_size=4, verbose=0, callbacks=[prune.UpdatePruningStep()]
    )
    report = prune.sparsity_report(pruned)
    assert report["transformer_layer_0"].sparsity == pytest.approx(0.8, abs=0.01)
    np.testing.assert_array_equal(model.predict(x, verbose=0), before)  # input untouched

    path = os.path.join(tmp_path, "bert.keras")
    pruned.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-6
    )
    stripped = prune.strip_pruning(pruned)
    np.testing.assert_allclose(
        stripped.predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-6
    )
    assert prune.sparsity_report(stripped).sparsity == pytest.approx(0.8, abs=0.01)
    result = export.to_tflite(stripped, os.path.join(tmp_path, "bert.tflite"))
    assert result.bytes > 0


def _encoders(model):
    from tfcompress.prune.structured_hub import is_ffn_block

    return [layer for layer in prune.plan.flat_layers(model) if is_ffn_block(layer)]


@pytest.mark.slow
def test_remove_feed_forward_units_of_bert():
    model = testing.tiny_bert_classifier(num_layers=2)
    x = testing.random_bert_inputs(8)
    small = prune.remove_units(model, 0.5)
    assert type(small) is type(model)
    assert [e.intermediate_dim for e in _encoders(small)] == [16, 16]
    assert small.count_params() < model.count_params()
    # Same as the big model with the removed units' output rows cut.
    reference = type(model).from_config(model.get_config())
    reference.set_weights(model.get_weights())
    for old, ref in zip(_encoders(model), _encoders(reference), strict=True):
        norms = np.abs(np.asarray(old._feedforward_intermediate_dense.kernel)).sum(axis=0)
        dropped = np.argsort(-norms, kind="stable")[16:]
        kernel = np.asarray(ref._feedforward_output_dense.kernel).copy()
        kernel[dropped] = 0
        ref._feedforward_output_dense.kernel.assign(kernel)
    np.testing.assert_allclose(
        small.predict(x, verbose=0), reference.predict(x, verbose=0), atol=1e-5
    )
    with pytest.raises(ValueError, match="one float"):
        prune.remove_units(model, {"transformer_layer_0": 0.5})
