"""remove_heads: attention-head removal for every keras-hub encoder and decoder family."""

import os

import keras
import numpy as np
import pytest

import tfcompress
from tfcompress import export, prune, quantize, testing

HIDDEN, HEADS, LAYERS, SEQ, VOCAB = 32, 4, 2, 16, 100
KEY_DIM = HIDDEN // HEADS
# Query, key and value kernels + biases and output kernel rows of one head.
PER_HEAD = 4 * HIDDEN * KEY_DIM + 3 * KEY_DIM


def _text(n, segments=False, seed=0):
    rng = np.random.default_rng(seed)
    mask = (np.arange(SEQ)[None, :] < rng.integers(4, SEQ + 1, size=n)[:, None]).astype("int32")
    x = {
        "token_ids": rng.integers(1, VOCAB, size=(n, SEQ)).astype("int32") * mask,
        "padding_mask": mask,
    }
    if segments:
        x["segment_ids"] = np.zeros((n, SEQ), "int32")
    return x


def _hub_model(family):
    """(tiny keras-hub model, inputs, its attention blocks) for one family."""
    import keras_hub

    models = keras_hub.models
    keras.utils.set_random_seed(0)
    text = dict(
        num_layers=LAYERS,
        num_heads=HEADS,
        hidden_dim=HIDDEN,
        intermediate_dim=2 * HIDDEN,
        max_sequence_length=SEQ,
    )
    if family == "bert":
        model = testing.tiny_bert_classifier(
            num_layers=LAYERS, hidden_dim=HIDDEN, num_heads=HEADS, sequence_length=SEQ
        )
        x = testing.random_bert_inputs(8, sequence_length=SEQ)
    elif family == "roberta":
        model = models.RobertaTextClassifier(
            models.RobertaBackbone(vocabulary_size=VOCAB, **text), num_classes=3, preprocessor=None
        )
        x = _text(8)
    elif family == "distilbert":
        model = models.DistilBertTextClassifier(
            models.DistilBertBackbone(vocabulary_size=VOCAB, **text),
            num_classes=3,
            preprocessor=None,
        )
        x = _text(8)
    elif family == "electra":  # keras-hub has no ELECTRA task: the backbone itself
        model = models.ElectraBackbone(vocab_size=VOCAB, embedding_dim=HIDDEN, **text)
        x = _text(8, segments=True)
    elif family == "gpt2":  # TransformerDecoder, causal
        model = models.GPT2CausalLM(
            models.GPT2Backbone(vocabulary_size=VOCAB, **text), preprocessor=None
        )
        x = _text(8)
    else:  # ViT: MultiHeadAttention inside ViTEncoderBlocks inside one ViTEncoder
        backbone = models.ViTBackbone(
            image_shape=(16, 16, 3),
            patch_size=4,
            num_layers=LAYERS,
            num_heads=HEADS,
            hidden_dim=HIDDEN,
            mlp_dim=2 * HIDDEN,
        )
        model = models.ViTImageClassifier(backbone, num_classes=3, preprocessor=None)
        x = np.random.default_rng(0).normal(size=(8, 16, 16, 3)).astype("float32")
    return model, x


def _blocks(model):
    """{block name: its MultiHeadAttention}, sorted by name (= layer order here)."""
    backbone = getattr(model, "backbone", model)
    found = {
        layer.name: attention
        for layer in backbone._flatten_layers()
        for attention in vars(layer).values()
        if isinstance(attention, keras.layers.MultiHeadAttention) and layer is not attention
    }
    return dict(sorted(found.items()))


def _output(model, x):
    return keras.tree.flatten(model.predict(x, verbose=0))[0]


def _copy_with_heads_silenced(model, drop):
    """`model` with the output-projection rows of the `drop` heads zeroed."""
    copy = type(model).from_config(model.get_config())
    copy.set_weights(model.get_weights())
    blocks = _blocks(copy)
    for name, heads in drop.items():
        kernel = np.asarray(blocks[name].output_dense.kernel).copy()
        kernel[heads] = 0
        blocks[name].output_dense.kernel.assign(kernel)
    return copy


@pytest.mark.slow
@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "electra", "gpt2", "vit"])
def test_removes_heads_exactly_saves_exports_and_verifies(family, tmp_path):
    model, x = _hub_model(family)
    names = list(_blocks(model))
    assert len(names) == LAYERS

    # Exact slicing: removing heads = silencing them (their output rows zeroed).
    drop = {names[0]: [1, 3], names[1]: [0]}
    silenced = _copy_with_heads_silenced(model, drop)
    small = prune.remove_heads(silenced, drop)
    # A task stays its class; a backbone becomes the head-pruned subclass of its class.
    assert type(small) is type(model) or type(small).__name__ == f"HeadPruned{type(model).__name__}"
    assert isinstance(getattr(small, "backbone", small), type(getattr(model, "backbone", model)))
    assert [a.num_heads for a in _blocks(small).values()] == [2, 3]
    assert {a.key_dim for a in _blocks(small).values()} == {KEY_DIM}
    assert model.count_params() - small.count_params() == 3 * PER_HEAD
    np.testing.assert_allclose(_output(small, x), _output(silenced, x), atol=2e-5)
    assert not np.allclose(_output(model, x), _output(silenced, x), atol=2e-5)
    # The kept heads are the original ones, in order.
    kept, old = _blocks(small)[names[1]], _blocks(model)[names[1]]
    np.testing.assert_array_equal(
        kept.query_dense.kernel.numpy(), old.query_dense.kernel.numpy()[:, [1, 2, 3]]
    )
    np.testing.assert_array_equal(
        kept.output_dense.kernel.numpy(), old.output_dense.kernel.numpy()[[1, 2, 3]]
    )
    report = tfcompress.report_of(small).details
    assert report.removed == ((names[0], 4, (1, 3)), (names[1], 4, (0,)))
    assert report.params_before - report.params_after == 3 * PER_HEAD

    # Half of every layer's heads, ranked by L1 norm of the head's kernel slices.
    half = prune.remove_heads(model, 0.5)
    for name, attention in _blocks(model).items():
        norms = sum(
            np.abs(np.moveaxis(dense.kernel.numpy(), axis, 0)).reshape(HEADS, -1).sum(1)
            for dense, axis in (
                (attention.query_dense, 1),
                (attention.key_dense, 1),
                (attention.value_dense, 1),
                (attention.output_dense, 0),
            )
        )
        lowest = tuple(sorted(np.argsort(norms, kind="stable")[:2].tolist()))
        assert (name, HEADS, lowest) in tfcompress.report_of(half).details.removed
    assert [a.num_heads for a in _blocks(half).values()] == [2, 2]

    # Each layer of the backbone's graph that holds attention rebuilds from its config
    # with the kept heads, as clone_model and quantize_model rebuild it.
    rebuilt = [
        layer
        for layer in getattr(half, "backbone", half).layers
        if getattr(layer, "pruned_heads", None)
    ]
    assert rebuilt
    for layer in rebuilt:
        clone = type(layer).from_config(layer.get_config())
        if not clone.built:  # TransformerDecoder builds in __init__ from its config
            clone.build_from_config(layer.get_build_config())
        assert [w.shape for w in clone.weights] == [w.shape for w in layer.weights]

    path = os.path.join(tmp_path, f"{family}.keras")
    half.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(_output(loaded, x), _output(half, x), atol=1e-6)
    assert [a.num_heads for a in _blocks(loaded).values()] == [2, 2]
    assert type(loaded) is type(half)
    assert type(getattr(loaded, "backbone", loaded)) is type(getattr(half, "backbone", half))

    for mode, cosine in (("float32", 0.9999), ("int8", 0.98)):
        path = os.path.join(tmp_path, f"{family}_{mode}.tflite")
        export.to_tflite(half, path, mode=mode, representative_data=x if mode == "int8" else None)
        result = export.verify(path, half, x, min_cosine=cosine)
        assert not result.collapsed
        if mode == "int8":
            ops = export.inspect(path).ops
            assert any(op.name == "FULLY_CONNECTED" and op.compute_dtype == "int8" for op in ops), [
                (op.name, op.compute_dtype) for op in ops
            ]


@pytest.mark.slow
def test_fits_and_composes_with_remove_units_pruning_and_qat(tmp_path):
    bert, x = _hub_model("bert")
    small = prune.remove_heads(bert, 0.5)
    small.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = small.fit(x, np.zeros(8, "int32"), batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])

    # Feed-forward removal keeps the removed heads removed, and vice versa.
    smaller = prune.remove_units(small, 0.5)
    assert [a.num_heads for a in _blocks(smaller).values()] == [2, 2]
    assert smaller.count_params() < small.count_params()
    again = prune.remove_heads(smaller, {"transformer_layer_0": 1})
    assert [a.num_heads for a in _blocks(again).values()] == [1, 2]
    np.testing.assert_allclose(
        _output(prune.remove_heads(smaller, {"transformer_layer_0": []}), x),
        _output(smaller, x),
        atol=1e-6,
    )

    # Pruning wrappers and QAT rebuild blocks from their config: the heads stay removed.
    for wrapped in (
        prune.prune_low_magnitude(small, prune.ConstantSparsity(0.5, 0)),
        quantize.quantize_model(small),
    ):
        attention = [
            layer.num_heads
            for layer in wrapped._flatten_layers()
            if isinstance(layer, keras.layers.MultiHeadAttention)
        ]
        assert attention == [2, 2], type(wrapped)
        np.testing.assert_allclose(_output(wrapped, x), _output(small, x), atol=0.05)


@pytest.mark.slow
def test_report_fractions_and_clear_errors():
    bert, _ = _hub_model("bert")
    # 0.1 of 4 heads rounds to none: both layers are skipped and said so.
    same = prune.remove_heads(bert, 0.1)
    assert tfcompress.report_of(same).details.removed == ()
    assert [r for _, r in tfcompress.report_of(same).details.skipped] == [
        "0.1 of its 4 heads rounds to none"
    ] * 2
    assert same.count_params() == bert.count_params()
    # A fraction never removes every head; a dict names some layers only.
    most = prune.remove_heads(bert, 0.99)
    assert [a.num_heads for a in _blocks(most).values()] == [1, 1]
    one = prune.remove_heads(bert, {"transformer_layer_1": 0.5})
    assert tfcompress.report_of(one).details.skipped == (
        ("transformer_layer_0", "not named in `heads`"),
    )
    assert "transformer_layer_1: 4 -> 2 heads" in str(tfcompress.report_of(one).details)
    report = tfcompress.report_of(one)  # the one report shape every verb stores
    assert report.verb == "remove_heads" and report.model_name == bert.name
    assert report.done_names == ("transformer_layer_1",)
    assert report.done[0].class_name == "TransformerEncoder"
    assert report.skipped_names == ("transformer_layer_0",)

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

    # The head-pruned encoder on its own: heads keyed by the block's name, checked on build.
    encoder = prune.HeadPrunedTransformerEncoder(16, 4, name="enc", pruned_heads={"enc": 2})
    encoder.build((None, 8, 16))
    attention = encoder._self_attention_layer
    assert (attention.num_heads, attention.key_dim) == (2, 4)
    for pruned_heads, message in (({"enc": 0}, "can keep 1 to 4"), ({"x": 2}, "no attention")):
        encoder = prune.HeadPrunedTransformerEncoder(16, 4, name="enc", pruned_heads=pruned_heads)
        with pytest.raises(ValueError, match=message):
            encoder.build((None, 8, 16))


def test_gpt2_causal_lm_report_warns_about_generation():
    import keras_hub

    keras.utils.set_random_seed(0)
    models = keras_hub.models
    lm = models.GPT2CausalLM(
        models.GPT2Backbone(
            vocabulary_size=VOCAB,
            num_layers=1,
            num_heads=2,
            hidden_dim=8,
            intermediate_dim=8,
            max_sequence_length=8,
        ),
        preprocessor=None,
    )
    small = prune.remove_heads(lm, 0.5)
    assert tfcompress.report_of(small).details.removed[0][1:] == (
        2,
        tfcompress.report_of(small).details.removed[0][2],
    )
    assert len(tfcompress.report_of(small).details.removed[0][2]) == 1
    assert "generate()" in tfcompress.report_of(small).details.notes[0]


def _fully_connected_weight_shapes(path):
    """Shapes of the weight operand of every FULLY_CONNECTED op of a .tflite file."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(str(path))
    interpreter.allocate_tensors()
    shapes = {
        t["index"]: tuple(int(d) for d in t["shape"]) for t in interpreter.get_tensor_details()
    }
    return sorted(
        shapes[op["inputs"][1]]
        for op in interpreter._get_ops_details()
        if op["op_name"] == "FULLY_CONNECTED"
    )


@pytest.mark.slow
def test_the_head_pruned_file_computes_with_smaller_projections_and_static_shapes(tmp_path):
    # What benchmarks/heads.py measures: nothing of the removed heads is left in the file
    # (no masked or zero-padded projections) and no dynamic shape ops.
    bert, _ = _hub_model("bert")
    half = prune.remove_heads(bert, 0.5)
    shapes = {}
    for name, model in (("all", bert), ("half", half)):
        path = tmp_path / f"{name}.tflite"
        export.to_tflite(model, path, mode="float32", batch_size=1, sequence_length=SEQ)
        info = export.inspect(path)
        assert all(tuple(t.shape) == (1, SEQ) for t in info.inputs), info.inputs
        assert "SHAPE" not in info.op_histogram, info.op_histogram
        shapes[name] = _fully_connected_weight_shapes(path)
    kept = HIDDEN // 2  # 2 of 4 heads of KEY_DIM
    inner = bert.backbone.intermediate_dim
    ffn = [(inner, HIDDEN), (HIDDEN, inner)] * LAYERS
    heads = lambda width: [(width, HIDDEN)] * 3 * LAYERS + [(HIDDEN, width)] * LAYERS  # noqa: E731
    head_layers = [(HIDDEN, HIDDEN), (2, HIDDEN)]  # pooler, logits of 2 classes
    assert shapes["all"] == sorted(heads(HIDDEN) + ffn + head_layers)
    assert shapes["half"] == sorted(heads(kept) + ffn + head_layers)
