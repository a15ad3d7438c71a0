"""The int8 file computes what its QAT model computes, inside keras-hub composites (issue 18.3).

Each test pins one place where the int8 kernels rounded and the QAT model did not
(found on the zoo's ViT: agreement 96.9%, cosine 0.993 before):

- LayerNorm's mean: the converter makes it an int8 MEAN whose output kept the
  input's scale, so a token whose values span a few steps (blank image patches,
  ViT's class token) lost its mean and LayerNorm amplified the error. Inside
  composites and outside (BERT's embedding LayerNorm, ConvNeXt's): every
  LayerNormalization is wrapped by `QuantizeComposite` now.
- ViT's class token: an int8 CONCATENATION keeps one scale, so the token was
  stored on the patch convolution's output grid.
- ViT's position table: an int8 constant on its own grid.
- Softmax: TFLite's int8 SOFTMAX writes on a fixed 1/256 grid; another range
  added a requantize, rounding the probabilities twice.
- Masked attention: in the file `where(mask, scores, -1e9)` runs on the scores'
  grid, so a masked score is the grid's minimum; that grid now reaches 16 below its
  top, so the masked score keeps no share of the softmax (on the scores' own range,
  real tokens of a padded tiny BERT kept 54% of the attention).

Measured with each rule switched off (relative error of the file vs its QAT
model): LayerNorm mean 0.072, class token 0.126, position table 0.039, softmax
grid 0.043 (tiny ViT, all rules: 1e-7); masked attention 0.063 (tiny BERT, all
rules: 0.013); a functional model's LayerNormalization 0.115 (all rules: 0).
"""

import keras
import numpy as np
import pytest

from tfcompress import export, quantize, testing
from tfcompress.export.verification import first_divergence

SEQ = 16


def _ops(path):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(  # the file's own ops, no delegate nodes
        model_path=str(path),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    return interpreter._get_ops_details(), tensors


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory):
    """A one-block ViT calibrated on digits images (blank patches: low-variance tokens)."""
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(32, 32, 3), patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32
    )
    model = keras_hub.models.ViTImageClassifier(backbone, num_classes=10, preprocessor=None)
    (x, _), (x_test, _) = testing.zoo_data(model, "vit", n_train=64, n_test=32)
    qat = quantize.quantize_model(model, representative_data=x)
    path = tmp_path_factory.mktemp("vit") / "vit_int8.tflite"
    export.to_tflite(qat, path, mode="int8")
    return qat, path, x_test


@pytest.mark.slow
def test_vit_int8_file_computes_what_its_qat_model_computes(vit_file):
    qat, path, x_test = vit_file
    check = export.verify(path, qat, x_test)
    assert check.top1_agreement == 1.0
    assert check.cosine > 0.9999 and check.relative_error < 0.01, str(check)


def test_vit_embeddings_class_token_and_position_table_on_the_file_grids(vit_file):
    qat, path, x_test = vit_file
    report = first_divergence(path, qat, x_test[:4], min_cosine=0.9999)
    rows = {row.layer: row for row in report.layers}
    embedded = rows["quant_vit_patching_and_embedding_quant"]  # concat + add, requantized
    assert embedded.relative_error < 1e-4, str(report)


def test_layer_norm_mean_has_a_range_finer_than_its_input(vit_file):
    _, path, _ = vit_file
    ops, tensors = _ops(path)
    means = [
        (tensors[op["inputs"][0]]["quantization"][0], tensors[op["outputs"][0]]["quantization"][0])
        for op in ops
        if op["op_name"] == "MEAN" and tensors[op["inputs"][0]]["dtype"] == np.int8
    ]
    assert len(means) == 3  # ln_1, ln_2 of the block and the encoder's final ln
    assert all(0 < out < inp / 4 for inp, out in means), means


def test_softmax_writes_on_the_kernel_grid_without_a_requantize(vit_file):
    _, path, _ = vit_file
    ops, tensors = _ops(path)
    softmax_outputs = {op["outputs"][0] for op in ops if op["op_name"] == "SOFTMAX"}
    assert softmax_outputs
    for i in softmax_outputs:
        scale, zero_point = tensors[i]["quantization"]
        assert tensors[i]["dtype"] == np.int8 and scale == 1 / 256 and zero_point == -128
    readers = [op["op_name"] for op in ops if softmax_outputs & set(op["inputs"])]
    assert readers == ["BATCH_MATMUL"], readers


def test_layer_norm_of_a_functional_model_gets_its_mean_range_too(tmp_path):
    L = keras.layers
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 16))
    h = L.LayerNormalization(name="ln")(L.Dense(16, name="embed")(inputs))
    outputs = L.Dense(4, name="logits")(L.GlobalAveragePooling1D(name="gap")(h))
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(0).normal(size=(64, 8, 16)).astype("float32")
    x[:, :3] *= 0.01  # three tokens whose values span a few steps of the grid
    qat = quantize.quantize_model(model, representative_data=x[:32])
    assert "ln" in {entry[0] for entry in qat.quantize_report.quantized}
    # Its ranges are int8, its gamma and beta stay float: the report says no weights.
    entries = {entry[0]: entry for entry in qat.quantize_report.quantized}
    assert entries["ln"] == ("ln", "LayerNormalization", None)
    assert entries["embed"] == ("embed", "Dense", "int8")
    assert "quantized ln (LayerNormalization, weights -)" in str(qat.quantize_report)
    path = tmp_path / "ln_int8.tflite"
    export.to_tflite(qat, path, mode="int8")
    check = export.verify(path, qat, x[32:])
    assert check.cosine > 0.9999 and check.relative_error < 0.01, str(check)  # 0.115 before


@pytest.mark.slow
def test_masked_attention_in_the_file_matches_the_qat_model(tmp_path):
    model = testing.tiny_bert_classifier(num_layers=1, hidden_dim=16, sequence_length=SEQ)
    # Sharper attention than a fresh init gives, so where masked scores land matters.
    for w in model.weights:
        if "self_attention_layer" in w.path and w.path.endswith("kernel"):
            if "query" in w.path or "key" in w.path:
                w.assign(w.numpy() * 8)
            elif "value" in w.path or "attention_output" in w.path:
                w.assign(w.numpy() * 4)
    # Short sentences in long padding: 3 to 6 tokens of 16.
    rng = np.random.default_rng(1)
    mask = (np.arange(SEQ)[None] < rng.integers(3, 7, size=96)[:, None]).astype("int32")
    x = {
        "token_ids": np.where(mask == 1, rng.integers(1, 100, size=mask.shape), 0).astype("int32"),
        "segment_ids": np.zeros_like(mask),
        "padding_mask": mask,
    }
    qat = quantize.quantize_model(model, representative_data={k: v[:64] for k, v in x.items()})
    path = tmp_path / "bert_int8.tflite"
    export.to_tflite(qat, path, mode="int8")
    ops, _ = _ops(path)
    assert "SELECT_V2" in {op["op_name"] for op in ops}  # the mask runs in int8
    check = export.verify(path, qat, {k: v[64:] for k, v in x.items()})
    assert check.cosine > 0.999 and check.relative_error < 0.03, str(check)
    # Masked tokens get no attention in the file: the scores grid reaches 16 below its
    # top (on the scores' own range, real tokens kept 54% of it, 32% at worst).
    held = {k: v[64:80] for k, v in x.items()}
    real = _attention_on_real_tokens(path, held)
    assert real.min() > 0.95 and real.mean() > 0.98, real


def _attention_on_real_tokens(path, x):
    """Share of each real query token's int8 SOFTMAX output that falls on real keys."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_path=str(path),
        experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    (softmax,) = [op for op in interpreter._get_ops_details() if op["op_name"] == "SOFTMAX"]
    detail = {t["index"]: t for t in interpreter.get_tensor_details()}[softmax["outputs"][0]]
    scale, zero_point = detail["quantization"]
    runner = interpreter.get_signature_runner()
    shares = []
    for i in range(len(x["padding_mask"])):
        runner(**{k: v[i : i + 1] for k, v in x.items()})
        probs = (interpreter.get_tensor(detail["index"]).astype("float32") - zero_point) * scale
        keep = x["padding_mask"][i].astype(bool)
        shares.append(probs[..., keep, :][..., keep].sum(-1).ravel())  # (heads * real queries)
    return np.concatenate(shares)


@pytest.mark.slow
def test_roberta_token_and_position_tables_are_int8_in_the_file(tmp_path):
    # keras-hub's TokenAndPositionEmbedding (RoBERTa, DistilBERT): with one range on the
    # sum, the converter kept the token table float32 (a float GATHER: 35.1 MB at full
    # size against 11.75 MB dynamic range); each table now gets its own int8 grid.
    model = testing.zoo_model("roberta")
    x = testing.zoo_inputs(model, "roberta", 32)
    qat = quantize.quantize_model(model, representative_data=x)
    path = tmp_path / "roberta_int8.tflite"
    int8_bytes = export.to_tflite(qat, path, mode="int8").bytes
    dynamic_bytes = export.to_tflite(model, tmp_path / "roberta_dr.tflite", mode="dynamic").bytes
    ops, tensors = _ops(path)
    gathers = [op for op in ops if op["op_name"] == "GATHER"]
    assert gathers and all(tensors[op["inputs"][0]]["dtype"] == np.int8 for op in gathers)
    # keras-hub's task models hold their backbone as `.backbone`; its layer name carries a
    # suffix when another RoBERTa was built earlier in the process.
    embedding = model.backbone.get_layer("embeddings")
    for table in (embedding.token_embedding.embeddings, embedding.position_embedding.weights[0]):
        stored = [t for t in tensors.values() if tuple(t["shape"]) == tuple(table.shape)]
        assert stored and all(t["dtype"] == np.int8 for t in stored), table.path
    # The token table costs one byte an entry as in the dynamic-range file; the rest of
    # the difference is the tiny model's per-tensor quantization parameters (7.9 KB
    # measured). A float32 token table added three bytes an entry (59 KB over).
    assert int8_bytes - dynamic_bytes < int(np.prod(embedding.token_embedding.embeddings.shape))
    check = export.verify(path, qat, x)
    assert check.top1_agreement >= 0.99 and check.cosine >= 0.999, check
