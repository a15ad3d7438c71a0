"""Clustering reaches every weight: RNN cells, Embedding, MultiHeadAttention, keras-hub blocks."""

import keras
import numpy as np
import pytest

from tfcompress import cluster

K = 16


@pytest.fixture(scope="module")
def sequence_model():
    """Embedding -> keras-hub encoder and decoder -> LSTM -> MultiHeadAttention -> Dense."""
    import keras_hub

    keras.utils.set_random_seed(0)
    inp = keras.Input((16,), dtype="int32")
    x = keras_hub.layers.TokenAndPositionEmbedding(100, 16, 32, name="embed")(inp)
    x = keras_hub.layers.TransformerEncoder(32, 2, name="encoder")(x)
    x = keras_hub.layers.TransformerDecoder(32, 2, name="decoder")(x)
    x = keras.layers.LSTM(8, return_sequences=True, name="lstm")(x)
    x = keras.layers.MultiHeadAttention(2, 8, name="mha")(x, x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inp, keras.layers.Dense(2, name="logits")(x))


@pytest.mark.slow
def test_every_inner_kernel_is_clustered_and_stays_clustered(sequence_model, tmp_path):
    clustered = cluster.cluster_weights(sequence_model, number_of_clusters=K)
    names = {name for name, _, _ in clustered.cluster_report.clustered}
    for block in ("encoder", "decoder"):
        for sub in (
            "query",
            "key",
            "value",
            "attention_output",
            "feedforward_intermediate_dense",
            "feedforward_output_dense",
        ):
            assert f"{block}/{sub}/kernel" in names
    assert {
        "embed/token_embedding/embeddings",
        "lstm/lstm_cell/kernel",
        "lstm/lstm_cell/recurrent_kernel",
        "mha/query/kernel",
        "mha/attention_output/kernel",
    } <= names
    assert dict(clustered.cluster_report.skipped) == {"logits": "only 16 weights for 16 clusters"}

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 100, size=(64, 16)), rng.integers(0, 2, size=64)
    clustered.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    clustered.fit(x, y, epochs=1, batch_size=32, verbose=0)
    path = tmp_path / "clustered.keras"
    clustered.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        loaded.predict(x[:8], verbose=0), clustered.predict(x[:8], verbose=0), atol=1e-5
    )

    stripped = cluster.strip_clustering(clustered)
    np.testing.assert_allclose(
        stripped.predict(x[:8], verbose=0), clustered.predict(x[:8], verbose=0), atol=1e-5
    )
    checked = 0
    for w in stripped.weights:
        if w.name in ("kernel", "recurrent_kernel") or w.path.endswith(
            "token_embedding/embeddings"
        ):
            assert len(np.unique(np.asarray(w))) <= K, w.path
            checked += 1
    assert checked == 12 + 2 + 4 + 1 + 1  # encoder+decoder, LSTM, MHA, embedding, logits


def test_layers_nothing_knows_are_left_alone():
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.LayerNormalization(), keras.layers.Dense(32, name="d")]
    )
    clustered = cluster.cluster_weights(model, number_of_clusters=4)
    assert [name for name, _, _ in clustered.cluster_report.clustered] == ["d"]
    with pytest.raises(ValueError, match="has no weight clustering knows"):
        cluster.ClusterWeights(keras.layers.LayerNormalization(), number_of_clusters=4).build(
            (None, 4)
        )
