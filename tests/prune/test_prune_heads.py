"""remove_heads: attention-head removal for keras-hub BERT models."""

import os

import keras
import numpy as np
import pytest

from tfcompress import export, prune, testing

HIDDEN, HEADS, KEY_DIM = 32, 4, 8
# Query, key and value kernels + biases and output kernel rows of one head.
PER_HEAD = 4 * HIDDEN * KEY_DIM + 3 * KEY_DIM


@pytest.fixture(scope="module")
def bert():
    return testing.tiny_bert_classifier(num_layers=2, hidden_dim=HIDDEN, num_heads=HEADS)


@pytest.fixture(scope="module")
def x():
    return testing.random_bert_inputs(8)


def _attention(model):
    return [block._self_attention_layer for block in model.backbone.transformer_layers]


@pytest.mark.slow
def test_removed_heads_are_exactly_the_sliced_ones(bert, x):
    drop = {"transformer_layer_0": [1, 3], "transformer_layer_1": [2]}
    # The original with the dropped heads' output rows zeroed: those heads add nothing.
    zeroed = type(bert).from_config(bert.get_config())
    zeroed.set_weights(bert.get_weights())
    for attention, name in zip(_attention(zeroed), drop, strict=True):
        kernel = np.asarray(attention._output_dense.kernel).copy()
        kernel[drop[name]] = 0
        attention._output_dense.kernel.assign(kernel)

    small = prune.remove_heads(zeroed, drop)
    assert type(small) is type(bert)
    assert isinstance(small.backbone, type(bert.backbone))
    assert [a.num_heads for a in _attention(small)] == [2, 3]
    assert {a.key_dim for a in _attention(small)} == {KEY_DIM}
    assert bert.count_params() - small.count_params() == 3 * PER_HEAD
    np.testing.assert_allclose(small.predict(x, verbose=0), zeroed.predict(x, verbose=0),
                               atol=1e-4)
    # The kept heads are the original ones, in order.
    np.testing.assert_array_equal(_attention(small)[1]._query_dense.kernel.numpy(),
                                  _attention(bert)[1]._query_dense.kernel.numpy()[:, [0, 1, 3]])

    # A bare backbone works too.
    backbone = prune.remove_heads(bert.backbone, {"transformer_layer_1": 1})
    assert [b.num_heads for b in backbone.transformer_layers] == [4, 3]
    assert bert.backbone.count_params() - backbone.count_params() == PER_HEAD


@pytest.mark.slow
def test_fraction_ranks_by_l1_then_fits_saves_and_exports(bert, x, tmp_path):
    small = prune.remove_heads(bert, 0.5)
    assert [a.num_heads for a in _attention(small)] == [2, 2]
    assert bert.count_params() - small.count_params() == 4 * PER_HEAD
    for old, new in zip(_attention(bert), _attention(small), strict=True):
        q, k, v, o = (np.abs(w.kernel.numpy()) for w in
                      (old._query_dense, old._key_dense, old._value_dense, old._output_dense))
        norms = q.sum((0, 2)) + k.sum((0, 2)) + v.sum((0, 2)) + o.sum((1, 2))
        kept = np.sort(np.argsort(-norms)[:2])
        np.testing.assert_array_equal(new._value_dense.kernel.numpy(),
                                      old._value_dense.kernel.numpy()[:, kept])

    small.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = small.fit(x, np.zeros(8, "int32"), batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])

    path = os.path.join(tmp_path, "heads.keras")
    small.save(path)
    loaded = keras.saving.load_model(path)
    assert [a.num_heads for a in _attention(loaded)] == [2, 2]
    np.testing.assert_allclose(loaded.predict(x, verbose=0), small.predict(x, verbose=0),
                               atol=1e-6)
    # Feed-forward removal composes with head removal.
    smaller = prune.remove_units(loaded, 0.5)
    assert [a.num_heads for a in _attention(smaller)] == [2, 2]
    assert smaller.count_params() < loaded.count_params()

    result = export.to_tflite(small, os.path.join(tmp_path, "heads.tflite"))
    assert result.bytes > 0


@pytest.mark.slow
def test_clear_errors(bert):
    with pytest.raises(ValueError, match="all 4 attention heads of 'transformer_layer_0'"):
        prune.remove_heads(bert, {"transformer_layer_0": [0, 1, 2, 3]})
    with pytest.raises(ValueError, match="unknown encoder layer.*transformer_layer_7"):
        prune.remove_heads(bert, {"transformer_layer_7": [0]})
    with pytest.raises(ValueError, match="heads 0..3"):
        prune.remove_heads(bert, {"transformer_layer_0": [4]})
    with pytest.raises(ValueError, match="fraction in"):
        prune.remove_heads(bert, 1.0)
    with pytest.raises(NotImplementedError, match="'l1' or 'l2'"):
        prune.remove_heads(bert, 0.5, criterion="taylor")
    with pytest.raises(prune.UnsupportedPruningModelError, match="remove_units"):
        prune.remove_heads(testing.tiny_mlp(), 0.5)
