"""QAT of the keras-hub BERT classifier: fit on dict inputs, .keras round trip, int8 export.

The TransformerEncoder is wrapped whole (`QuantizeComposite`): its attention
and feed-forward kernels are fake-quantized per tensor, the activations
between them get EMA ranges, and the exported file runs every
FULLY_CONNECTED and BATCH_MATMUL in int8 without representative data.
"""

import pytest

from tfcompress import export, quantize, testing
from tfcompress.quantize.composite import QuantizeComposite


def _data(n, seed):
    x = testing.random_bert_inputs(n, seed=seed)
    y = (x["token_ids"][:, 0] >= 50).astype("int32")  # learnable: the first token's id
    return x, y


@pytest.fixture(scope="module")
def bert():
    return testing.tiny_bert_classifier()


@pytest.fixture(scope="module")
def qat_bert(bert, compile_classifier):
    x, y = _data(512, seed=0)
    qat = compile_classifier(quantize.quantize_model(bert), lr=3e-3)
    qat.fit(x, y, epochs=5, batch_size=32, verbose=0)
    return qat


@pytest.fixture(scope="module")
def qat_bert_tflite(qat_bert, tmp_path_factory):
    path = tmp_path_factory.mktemp("qat_bert") / "bert_qat_int8.tflite"
    result = export.to_tflite(qat_bert, path, mode="int8")  # no representative_data
    return result, export.inspect(path)


def test_bert_classifier_is_wrapped_and_trains(bert, qat_bert):
    composites = [layer for layer in qat_bert.layers if isinstance(layer, QuantizeComposite)]
    # The embedding LayerNorm is one too (its mean gets a range); the encoder holds the kernels.
    assert [c.layer.name for c in composites] == ["embeddings_layer_norm", "transformer_layer_0"]
    assert [c.layer.name for c in composites if c.kernels()] == ["transformer_layer_0"]
    assert quantize.is_quantization_aware(qat_bert)
    quantize.check_ranges_set(qat_bert)  # fit() measured every range, inner ones included
    report = {name for name, _, _ in qat_bert.quantize_report.quantized}
    assert {"transformer_layer_0", "token_embedding", "pooled_dense", "logits"} <= report
    # The input model is untouched: no fake-quant, and no node added to its layers.
    assert not quantize.is_quantization_aware(bert)
    assert len(bert.backbone.get_layer("transformer_layer_0")._inbound_nodes) == 1
    x, y = _data(256, seed=1)
    assert testing.accuracy(qat_bert, x, y) >= 0.9


def test_bert_qat_exports_int8_matmuls_without_data(qat_bert, qat_bert_tflite):
    result, info = qat_bert_tflite
    assert result.quantization_aware and result.calibration_samples is None
    dtypes = info.compute_dtypes()
    assert dtypes["FULLY_CONNECTED"] == {"int8"}  # q/k/v/output, FFN, pooler, logits
    assert dtypes["BATCH_MATMUL"] == {"int8"}  # q.k and probs.v
    assert info.op_histogram["FULLY_CONNECTED"] == 8
    for name in ("GATHER", "SOFTMAX", "GELU", "TANH"):
        assert "int8" in {op.compute_dtype for op in info.ops if op.name == name}, name
    x, _ = _data(256, seed=2)
    check = export.verify(result.path, qat_bert, x, min_agreement=0.9)
    assert check.top1_agreement >= 0.9


def test_bert_qat_round_trips_as_keras(qat_bert):
    x, _ = _data(32, seed=3)
    loaded = testing.assert_round_trips(qat_bert, x, atol=1e-5)
    assert quantize.is_quantization_aware(loaded)
    quantize.check_ranges_set(loaded)


def test_bert_calibration_and_storage_report(bert):
    x, _ = _data(64, seed=4)
    qat = quantize.quantize_model(bert, representative_data=x)
    assert qat.quantize_report.calibration == "minmax"
    quantize.check_ranges_set(qat)  # calibration reached the ranges inside the encoder
    ranges = quantize.calibrate(qat, x, method="percentile").ranges
    assert "quant_transformer_layer_0/self_attention_layer/probs" in ranges
    assert "quant_transformer_layer_0/feedforward_intermediate_dense/output" in ranges
    rows = quantize.storage_report(qat).rows
    assert any(row[0] == "transformer_layer_0/query" for row in rows)
