"""Embedding tables in low bits: GATHER / SLICE tables stored int8/int4/int2 behind a DEQUANTIZE."""

import keras
import numpy as np
import pytest
from tfcompress_edge.runner import TFLiteRunner

from tfcompress import export, testing
from tfcompress.export import lowbit
from tfcompress.quantize.grid import litert_grid
from tfcompress.quantize.lowbit import TablesOnGrid

VOCAB, DIM, LENGTH = 300, 32, 8


def _bag_of_embeddings(seed=0):
    keras.utils.set_random_seed(seed)
    ids = keras.Input((LENGTH,), dtype="int32", name="ids")
    x = keras.layers.Embedding(VOCAB, DIM, name="emb")(ids)
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(ids, keras.layers.Dense(2, name="logits")(x), name="bag")


def _ids(n, seed):
    return np.random.default_rng(seed).integers(0, VOCAB, (n, LENGTH)).astype("int32")


@pytest.fixture(scope="module")
def bag():
    """Trained on a rule the embedding must learn: label 1 iff most tokens are below VOCAB/2."""
    model = _bag_of_embeddings()
    x = _ids(2048, 0)
    y = (np.mean(x < VOCAB // 2, axis=1) > 0.5).astype("int32")
    model.compile(
        keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(x, y, epochs=4, batch_size=64, verbose=0)
    return model


def _forward(model, table, x):
    """The bag model in numpy with `table` as its embedding."""
    logits = model.get_layer("logits")
    return table[x].mean(axis=1) @ logits.kernel.numpy() + logits.bias.numpy()


@pytest.mark.parametrize("fmt,bits", [("int8", 8), ("int4", 4), ("int2", 2)])
def test_table_is_stored_low_bit(bag, tmp_path, fmt, bits):
    float_file = export.to_tflite(bag, tmp_path / "f32.tflite")
    result = lowbit.to_lowbit_tflite(
        bag, tmp_path / f"{fmt}.tflite", mode="int4", layers={"emb": fmt, "logits": "float"}
    )
    table = next(c for c in result.layers if c.op == "GATHER")
    assert (table.layer, table.requested, table.got) == ("emb", fmt, fmt)
    (weight,) = [w for w in export.read_weights(result.path).values() if w.shape == (VOCAB, DIM)]
    assert (weight.dtype, weight.bits, weight.block_size, weight.axis) == (fmt, bits, 0, 1)
    assert weight.scales.shape == (DIM,)  # one scale per column (embedding dimension)
    assert np.abs(weight.values).max() == 2 ** (bits - 1) - 1
    # The float table left the file: about bits/32 of it remains.
    assert result.bytes < float_file.bytes - VOCAB * DIM * 4 * (1 - bits / 32) + 2048
    assert export.inspect(result.path).op_histogram["DEQUANTIZE"] == 1
    x = _ids(256, 1)
    in_file = TFLiteRunner(result.path).predict(x)
    # The file computes with exactly the stored integers times their scales ...
    np.testing.assert_allclose(in_file, _forward(bag, weight.dequantized(), x), atol=1e-5)
    # ... which are the table on the grid of table_grid (and of the QAT schemes).
    q, scales = lowbit.table_grid(bag.get_layer("emb").embeddings.numpy(), bits)
    np.testing.assert_array_equal(weight.values, q)
    np.testing.assert_array_equal(weight.scales, scales)
    keras_top1 = bag.predict(x, verbose=0).argmax(1)
    agreement = np.mean(in_file.argmax(1) == keras_top1)
    assert agreement >= {8: 0.99, 4: 0.97, 2: 0.8}[bits]


def test_a_table_on_the_grid_is_stored_unchanged(bag, tmp_path):
    model = _bag_of_embeddings()
    model.set_weights(bag.get_weights())
    emb = model.get_layer("emb")
    emb.embeddings.assign(np.asarray(litert_grid(emb.embeddings, 4)))  # channels last
    result = lowbit.to_lowbit_tflite(model, tmp_path / "grid.tflite", mode="int4")
    (weight,) = [w for w in export.read_weights(result.path).values() if w.shape == (VOCAB, DIM)]
    np.testing.assert_allclose(weight.dequantized(), emb.embeddings.numpy(), rtol=1e-6, atol=0)
    x = _ids(256, 2)
    agreement = export.verify(result.path, model, x).top1_agreement
    assert agreement == 1.0


def test_float_choice_and_block_fallback(bag, tmp_path):
    kept = lowbit.to_lowbit_tflite(bag, tmp_path / "f.tflite", mode="int4", layers={"emb": "float"})
    assert {c.layer: c.got for c in kept.layers} == {"emb": "float", "logits": "int4"}
    assert "DEQUANTIZE" not in export.inspect(kept.path).op_histogram
    blocked = lowbit.to_lowbit_tflite(bag, tmp_path / "b.tflite", mode="int4_block32")
    (fallback,) = blocked.fallbacks
    assert (fallback.layer, fallback.op, fallback.requested, fallback.got) == (
        "emb",
        "GATHER",
        "int4_block32",
        "int4",
    )
    assert "one scale per column" in fallback.reason


def test_sparse_table_rows_compress(bag, tmp_path):
    model = _bag_of_embeddings()
    model.set_weights(bag.get_weights())
    emb = model.get_layer("emb")
    table = emb.embeddings.numpy()
    table[VOCAB // 4 :] = 0.0  # three quarters of the vocabulary dropped
    emb.embeddings.assign(table)
    dense = lowbit.to_lowbit_tflite(bag, tmp_path / "dense.tflite", mode="int4")
    sparse = lowbit.to_lowbit_tflite(model, tmp_path / "sparse.tflite", mode="int4")
    assert sparse.bytes == dense.bytes and sparse.gzip_bytes < 0.5 * dense.gzip_bytes
    (weight,) = [w for w in export.read_weights(sparse.path).values() if w.shape == (VOCAB, DIM)]
    assert np.all(weight.values[VOCAB // 4 :] == 0)


def _rule(x):
    return (np.mean(x < VOCAB // 2, axis=1) > 0.5).astype("int32")


def test_tables_trained_on_the_int2_grid(bag, tmp_path):
    model = _bag_of_embeddings()
    model.set_weights(bag.get_weights())
    model.compile(
        keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    callback = TablesOnGrid(model, num_bits=2, layers=["emb"])
    x = _ids(2048, 0)
    model.fit(x, _rule(x), epochs=2, batch_size=64, verbose=0, callbacks=[callback])
    table = model.get_layer("emb").embeddings.numpy()
    np.testing.assert_array_equal(table, np.asarray(litert_grid(table, 2)))  # on the grid
    (shadow,) = callback._shadows
    assert not np.array_equal(shadow.numpy(), table)  # the float shadow kept its own values
    result = lowbit.to_lowbit_tflite(
        model, tmp_path / "t.tflite", mode="int4", layers={"emb": "int2", "logits": "float"}
    )
    (weight,) = [w for w in export.read_weights(result.path).values() if w.shape == (VOCAB, DIM)]
    assert weight.dtype == "int2"
    np.testing.assert_allclose(weight.dequantized(), table, rtol=1e-6, atol=0)
    test = _ids(512, 4)
    check = export.verify(result.path, model, (test, _rule(test)))
    assert check.top1_agreement == 1.0 and check.tflite_accuracy >= 0.9
    with pytest.raises(ValueError, match=r"num_bits must be one of \(4, 2\).*Received: num_bits=3"):
        TablesOnGrid(model, num_bits=3)
    with pytest.raises(ValueError, match=r"'tok\*', which matches no table layer.*tables: emb"):
        TablesOnGrid(model, layers=["tok*"])
    with pytest.raises(ValueError, match="has no embedding table"):
        TablesOnGrid(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))


def test_large_files_read_back(tmp_path):
    # Over 256 KB of constants, litert-quantizer stores buffers after the flatbuffer.
    keras.utils.set_random_seed(0)
    ids = keras.Input((LENGTH,), dtype="int32")
    x = keras.layers.Embedding(2048, 64, name="emb")(ids)
    x = keras.layers.Dense(32, name="hidden")(keras.layers.GlobalAveragePooling1D()(x))
    model = keras.Model(ids, keras.layers.Dense(2, name="logits")(x))
    kept = lowbit.to_lowbit_tflite(
        model, tmp_path / "k.tflite", mode="int4", layers={"emb": "float"}
    )
    assert kept.bytes > 512 * 1024
    assert {w.dtype for w in export.read_weights(kept.path).values()} == {"int4"}
    packed = lowbit.to_lowbit_tflite(model, tmp_path / "p.tflite", mode="int4")
    (table,) = [w for w in export.read_weights(packed.path).values() if w.shape == (2048, 64)]
    assert table.dtype == "int4" and packed.bytes < kept.bytes / 4


class _Lookup(keras.layers.Layer):
    """Gathers from a constant (no weight): the converter's table is no layer's weight."""

    def call(self, ids):
        table = np.linspace(-1, 1, VOCAB * 4, dtype="float32").reshape(VOCAB, 4)
        return keras.ops.take(keras.ops.convert_to_tensor(table), ids, axis=0)


def test_a_derived_constant_stays_float(tmp_path):
    keras.utils.set_random_seed(0)
    ids = keras.Input((LENGTH,), dtype="int32")
    x = keras.layers.GlobalAveragePooling1D()(_Lookup(name="lookup")(ids))
    model = keras.Model(ids, keras.layers.Dense(2, name="logits")(x))
    result = lowbit.to_lowbit_tflite(
        model, tmp_path / "c.tflite", mode="int4", layers={"logits": "float"}
    )
    assert [(c.layer, c.got) for c in result.layers] == [("logits", "float")]
    assert "DEQUANTIZE" not in export.inspect(result.path).op_histogram
    x = _ids(64, 3)
    np.testing.assert_allclose(
        TFLiteRunner(result.path).predict(x), model.predict(x, verbose=0), atol=1e-5
    )


@pytest.mark.slow
def test_keras_hub_bert_tables(tmp_path):
    """Token, segment and position embeddings of a keras-hub BERT: int4 tables, exact file."""
    model = testing.tiny_bert_classifier(
        vocabulary_size=200, num_layers=1, hidden_dim=16, intermediate_dim=32, sequence_length=8
    )
    x = testing.random_bert_inputs(64, vocabulary_size=200, sequence_length=8)
    on_grid = {w.path.split("/")[-2] for w in TablesOnGrid(model, num_bits=4).tables}
    assert on_grid == {"token_embedding", "segment_embedding", "position_embedding"}
    # Tables int4, every other weight float: the file must equal the Keras model whose
    # tables hold the dequantized values.
    result = lowbit.to_lowbit_tflite(
        model,
        tmp_path / "bert.tflite",
        mode="int4",
        layers={"*": "float", "*_embedding": "int4"},
    )
    tables = {c.layer.split(", ")[-1]: (c.op, c.got) for c in result.layers if c.got != "float"}
    assert tables == {
        "token_embedding": ("GATHER", "int4"),
        "segment_embedding": ("GATHER", "int4"),
        "position_embedding": ("SLICE", "int4"),
    }
    stored = {w.shape: w for w in export.read_weights(result.path).values()}
    assert {(w.dtype, w.axis) for w in stored.values()} == {("int4", 1)}
    for name in ("token_embedding", "segment_embedding", "position_embedding"):
        (variable,) = model.backbone.get_layer(name).weights
        assert stored[tuple(variable.shape)].scales.shape == (16,)
        variable.assign(stored[tuple(variable.shape)].dequantized())
    in_file = TFLiteRunner(result.path).predict(x)
    np.testing.assert_allclose(in_file, model.predict(x, verbose=0), atol=1e-4)
