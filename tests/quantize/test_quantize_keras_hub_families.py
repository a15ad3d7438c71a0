"""keras-hub beyond BERT: PQAT keeps embedding zeros (issue 16.1), DistilBERT/GPT-2 layers (17.2).

Each model is a tiny config built from scratch (2 layers or fewer, hidden
16-32, sequences of 16): nothing is downloaded.
"""

import keras
import numpy as np
import pytest

from tfcompress import export, quantize, testing
from tfcompress.quantize import QuantizeConfig

SEQ = 16


def _prunable(w):
    return w.trainable and w.path.split("/")[-1] in ("kernel", "embeddings")


def _prune_tables_and_kernels(model, fraction=0.5, seed=0):
    """Zero the smallest half of every kernel and embedding table, as pruning leaves them."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        if _prunable(w):
            v = w.numpy() + rng.normal(scale=1e-6, size=w.shape).astype("float32")
            w.assign(np.where(np.abs(v) < np.quantile(np.abs(v), fraction), 0.0, v))


def _nonzero(model):
    """Non-zero entries of every kernel and embedding table."""
    return sum(int(np.count_nonzero(w.numpy())) for w in model.trainable_weights if _prunable(w))


def _distilbert():
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.DistilBertBackbone(
        vocabulary_size=100,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=SEQ,
    )
    return keras_hub.models.DistilBertTextClassifier(backbone, num_classes=2, preprocessor=None)


def _text_data(model, n, seed):
    x = testing.random_bert_inputs(n, sequence_length=SEQ, seed=seed)
    x = {k: v for k, v in x.items() if k in {t.name for t in _inputs(model)}}
    return x, (x["token_ids"][:, 0] >= 50).astype("int32")


def _inputs(model):
    return model.inputs if isinstance(model.inputs, list) else [model.inputs]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_pqat_keeps_every_zero_of_embedding_tables_and_encoder_kernels(family, compile_classifier):
    model = testing.tiny_bert_classifier() if family == "bert" else _distilbert()
    _prune_tables_and_kernels(model)
    tables = [w for w in model.trainable_weights if "embeddings" in w.path and len(w.shape) >= 2]
    assert tables and all(np.mean(w.numpy() == 0) >= 0.45 for w in tables)
    before = _nonzero(model)
    qat = quantize.quantize_model(model, QuantizeConfig(preserve_sparsity=True))
    assert _nonzero(qat) == before  # the copy kept the zeros
    x, y = _text_data(model, 256, seed=0)
    compile_classifier(qat, lr=3e-3).fit(x, y, epochs=2, batch_size=32, verbose=0)
    assert _nonzero(qat) == before  # and QAT did not regrow any
    trained_tables = [
        w for w in qat.trainable_weights if "embeddings" in w.path and len(w.shape) >= 2
    ]
    assert [float(np.mean(w.numpy() == 0)) for w in trained_tables] == [
        float(np.mean(w.numpy() == 0)) for w in tables
    ]


@pytest.mark.slow
def test_distilbert_token_and_position_embedding_is_quantized_and_exports_int8(
    compile_classifier, tmp_path
):
    model = _distilbert()
    qat = quantize.quantize_model(model)
    report = qat.quantize_report
    classes = {c for _, c, _ in report.quantized}
    assert {"TokenAndPositionEmbedding", "TransformerEncoder"} <= classes, report
    assert report.kept_float == (), report
    x, y = _text_data(model, 512, seed=1)
    compile_classifier(qat, lr=3e-3).fit(x, y, epochs=4, batch_size=32, verbose=0)
    result = export.to_tflite(qat, tmp_path / "distilbert.tflite", mode="int8")
    info = export.inspect(result.path)
    dtypes = info.compute_dtypes()
    assert dtypes["FULLY_CONNECTED"] == {"int8"} and dtypes["BATCH_MATMUL"] == {"int8"}
    xt, _ = _text_data(model, 128, seed=2)
    check = export.verify(result.path, qat, xt, min_agreement=0.9)
    assert check.top1_agreement >= 0.9, check


@pytest.mark.slow
def test_gpt2_decoder_and_tied_lm_head_quantize(compile_classifier):
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=100,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=SEQ,
    )
    # The tied LM head: token_embedding(x, reverse=True) (GPT2CausalLM's head).
    logits = backbone.token_embedding(backbone.output, reverse=True)
    model = keras.Model(backbone.input, logits, name="gpt2_lm")
    qat = quantize.quantize_model(model)
    classes = {c for _, c, _ in qat.quantize_report.quantized}
    assert "TransformerDecoder" in classes and "ReversibleEmbedding" in classes
    x = testing.random_bert_inputs(64, sequence_length=SEQ, seed=3)
    x = {"token_ids": x["token_ids"], "padding_mask": x["padding_mask"]}
    y = np.roll(x["token_ids"], -1, axis=1)  # next-token targets
    compile_classifier(qat, lr=3e-3).fit(x, y, epochs=1, batch_size=16, verbose=0)
    quantize.check_ranges_set(qat)
    wrapper = qat.get_layer("quant_token_embedding")
    # lookups and logits keep separate ranges
    assert float(wrapper.reverse_quantizer.range_max.numpy()) > float(
        wrapper.output_quantizer.range_max.numpy()
    )
    out = qat.predict(x, verbose=0)
    float_out = model.predict(x, verbose=0)
    assert out.shape == float_out.shape == (64, SEQ, 100)
    # causal: the first position's logits do not depend on later tokens
    x2 = {k: v.copy() for k, v in x.items()}
    x2["token_ids"][:, 1:] = (x2["token_ids"][:, 1:] + 1) % 100
    np.testing.assert_allclose(qat.predict(x2, verbose=0)[:, 0], out[:, 0], atol=1e-4)
