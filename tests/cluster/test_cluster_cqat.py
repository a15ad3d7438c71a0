"""CQAT inside keras-hub encoders and decoders: clusters survive QAT and reach the int8 file.

Tiny configs built from scratch (2 layers, hidden 16, sequences of 16), nothing
downloaded: cluster_weights -> strip_clustering -> quantize_model with
preserve_clusters=True -> a few fit steps -> cluster_report and the int8 file.
"""

import keras
import numpy as np
import pytest

from tfcompress import cluster, export, quantize, testing
from tfcompress.quantize import QuantizeConfig
from tfcompress.quantize.composite import QuantizeComposite

K = 8
SEQ = 16


def _bert(num_layers=2):
    model = testing.tiny_bert_classifier(num_layers=num_layers, hidden_dim=16, sequence_length=SEQ)
    x = testing.random_bert_inputs(96, sequence_length=SEQ, seed=0)
    return model, x, (x["token_ids"][:, 0] >= 50).astype("int32")


def _gpt2():
    """A GPT-2 decoder with its tied LM head (token_embedding(x, reverse=True))."""
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=100,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=SEQ,
    )
    logits = backbone.token_embedding(backbone.output, reverse=True)
    model = keras.Model(backbone.input, logits, name="gpt2_lm")
    x = testing.random_bert_inputs(96, sequence_length=SEQ, seed=1)
    x = {"token_ids": x["token_ids"], "padding_mask": x["padding_mask"]}
    return model, x, np.roll(x["token_ids"], -1, axis=1)  # next-token targets


def _fit(qat, x, y):
    qat.compile(
        keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    qat.fit(x, y, epochs=1, batch_size=32, verbose=0)  # 3 steps: kernels move
    return qat


def _inner_kernels(qat):
    """`{"wrapper/sublayer": kernel the QAT model computes with}` for every encoder kernel."""
    found = {}
    for layer in qat.layers:
        if isinstance(layer, QuantizeComposite):
            for sub, kernel in layer.quantized_kernels():
                found[f"{layer.name}/{sub.name}"] = np.asarray(kernel)
    return found


def _file_tables_and_kernels(path):
    """The int8 constants of rank 2 with more than K entries (biases and scalars left out)."""
    weights = export.read_weights(path)
    return {
        name: w
        for name, w in weights.items()
        if w.dtype == "int8" and len(w.shape) == 2 and w.values.size > K
    }


def _distinct_per_channel(w):
    """Distinct int8 values: of the whole tensor, or of the worst channel if per channel."""
    if w.scales.size == 1:
        return len(np.unique(w.values))
    values = np.moveaxis(w.values, w.axis, 0)
    return max(len(np.unique(row)) for row in values)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_cqat_keeps_every_encoder_kernel_clustered_into_the_int8_file(family, tmp_path):
    model, x, y = _bert() if family == "bert" else _gpt2()
    clustered = cluster.cluster_weights(model, number_of_clusters=K)
    names = [name for name, _, _ in clustered.cluster_report.clustered]
    inner = [n for n in names if n.startswith("transformer_layer_")]
    assert len(inner) == 12, names  # 2 blocks x (q, k, v, attention output, 2 feed-forward)
    final = cluster.strip_clustering(clustered)

    qat = quantize.quantize_model(final, QuantizeConfig(preserve_clusters=True))
    assert all(
        0 < layer.preserve_clusters <= K
        for layer in qat.layers
        if isinstance(layer, QuantizeComposite) and layer.kernels()  # not a LayerNorm alone
    )
    before = _inner_kernels(qat)
    _fit(qat, x, y)
    after = _inner_kernels(qat)
    assert len(after) == 12
    for name, kernel in after.items():
        assert len(np.unique(kernel)) <= K, name
    assert any(not np.array_equal(before[n], after[n]) for n in after)  # QAT did train them

    report = cluster.cluster_report(qat, K)
    assert [n for n, _, _ in report.preserved] == names, str(report)
    assert report.skipped == () and report.clustered == (), str(report)

    path = export.to_tflite(qat, tmp_path / f"{family}_cqat.tflite", mode="int8").path
    info = export.inspect(path)
    assert info.float_compute_ops() == []
    weights = _file_tables_and_kernels(path)
    clustered_in_file = {n: w for n, w in weights.items() if "position_embedding" not in n}
    # 12 encoder kernels + the token table (+ BERT's segment table, pooler and logits;
    # GPT-2's tied head: the table once for lookups, once per row for the logits).
    assert len(clustered_in_file) == (16 if family == "bert" else 14), sorted(weights)
    for name, w in clustered_in_file.items():
        assert _distinct_per_channel(w) <= K, name
    # The position table was never clustered (cluster_weights leaves it alone).
    assert any(
        "position_embedding" in n and len(np.unique(w.values)) > K for n, w in weights.items()
    )


@pytest.mark.slow
def test_cluster_report_says_why_plain_qat_loses_the_clusters_and_cqat_round_trips(tmp_path):
    model, x, y = _bert(num_layers=1)
    final = cluster.strip_clustering(cluster.cluster_weights(model, number_of_clusters=K))
    assert len(cluster.cluster_report(final, K).clustered) == 10  # 6 kernels, 2 tables, 2 heads

    plain = _fit(quantize.quantize_model(final), x, y)
    report = cluster.cluster_report(plain, K)
    lost = dict(report.skipped)
    assert "transformer_layer_0/feedforward_intermediate_dense/kernel" in lost, str(report)
    assert all("without preserve_clusters" in reason for reason in lost.values()), str(report)
    assert report.preserved == ()  # nothing kept them, even kernels still holding few values

    cqat = _fit(quantize.quantize_model(final, QuantizeConfig(preserve_clusters=True)), x, y)
    cqat.save(tmp_path / "cqat.keras")
    loaded = keras.saving.load_model(tmp_path / "cqat.keras")
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), cqat.predict(x, verbose=0), rtol=1e-5, atol=1e-5
    )
    assert len(cluster.cluster_report(loaded, K).preserved) == 10


def test_cqat_on_an_unclustered_encoder_names_the_kernel():
    model, _, _ = _bert()
    with pytest.raises(ValueError, match=r"kernel '.*' inside 'transformer_layer_0'.*Received"):
        quantize.quantize_model(model, QuantizeConfig(preserve_clusters=True))


def test_cluster_report_checks_its_arguments():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(32, name="d")])
    report = cluster.cluster_report(model, 4)
    assert report.skipped == (("d", "128 distinct values: not clustered"),)
    with pytest.raises(ValueError, match="Received: number_of_clusters=1"):
        cluster.cluster_report(model, 1)
