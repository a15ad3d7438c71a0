"""Architectures beyond the zoo families (docs/zoo.md, "Also checked"): each test is a tiny
model that reproduces what a swept architecture failed on before its fix.

- mixed precision (`mixed_float16`): QAT and export crashed on float16 ops;
- a sublayer built lazily in `call` (keras-hub DeBERTa's `RelativeEmbedding`): the QAT
  copy lacked its weights;
- a subclassed model called once: export refused it as "not built";
- converter errors (FNet's FFT, the dynamic-shape StridedSlice of Llama / Mistral /
  RoFormer attention masks): they did not say which layer;
- a layer whose `get_config` itself fails (keras-hub 0.32 `LlamaTransformerDecoder`,
  `DeiTEncoder`): a bare AttributeError without the layer's name;
- a layer whose config leaves out an argument that makes weights (keras-hub 0.32 MiT
  encoder, `sr_ratio`): a `set_weights` length error without the layer's name.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcompress import export, prune, quantize
from tfcompress.errors import ConversionError, UnsupportedModelError

L = keras.layers


def _images(n=16, side=8, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, side, side, 3)).astype("float32")


def _fit(model, x, y):
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=1, batch_size=len(x), verbose=0)
    return model


@pytest.mark.filterwarnings("ignore:model .* predicts class")  # random weights: cosine is the check
def test_mixed_precision_model_quantizes_and_exports(tmp_path):
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inputs = keras.Input((8, 8, 3))
        x = L.Conv2D(8, 3, activation="relu", name="conv")(inputs)
        x = L.BatchNormalization(name="bn")(x)
        x = L.GlobalAveragePooling2D(name="gap")(x)
        model = keras.Model(inputs, L.Dense(4, dtype="float32", name="logits")(x))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    x, y = _images(), np.arange(16) % 4
    float_file = export.to_tflite(model, tmp_path / "f32.tflite", mode="float32")
    assert any("float32 compute" in note for note in float_file.notes)
    assert export.verify(float_file.path, model, x).cosine > 0.999
    assert model.get_layer("conv").compute_dtype == "float16"  # the user's model is unchanged

    qat = _fit(quantize.quantize_model(model), x, y)
    assert {layer.compute_dtype for layer in qat.layers} == {"float32"}
    assert "conv" in {name for name, *_ in qat.quantize_report.quantized}
    path = export.to_tflite(qat, tmp_path / "int8.tflite", mode="int8").path
    info = export.inspect(path)
    assert info.compute_dtypes()["CONV_2D"] == {"int8"}, info.summary()
    assert export.verify(path, qat, x).cosine > 0.99


class LazyNormedTable(L.Layer):
    """A weight normalised by a LayerNormalization made in __init__ and built in call()."""

    def __init__(self, rows=4, **kwargs):
        super().__init__(**kwargs)
        self.rows = rows
        self.norm = L.LayerNormalization(name="table_norm")

    def build(self, input_shape):
        self.table = self.add_weight(shape=(self.rows, input_shape[-1]), name="table")

    def call(self, inputs):
        return inputs + keras.ops.sum(self.norm(self.table), axis=0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rows": self.rows}


def test_sublayer_built_in_call_keeps_its_weights():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6,))
    h = LazyNormedTable(name="lazy")(L.Dense(6, name="dense")(inputs))
    model = keras.Model(inputs, L.Dense(3, name="logits")(h))
    x = np.random.default_rng(1).normal(size=(8, 6)).astype("float32")
    model.predict(x, verbose=0)  # the first eager call builds the norm (a symbolic one does not)
    model.get_layer("lazy").norm.gamma.assign(np.full(6, 2.0, "float32"))

    qat = quantize.quantize_model(model, representative_data=x)
    lazy = qat.get_layer("lazy")
    assert len(lazy.weights) == 3 and np.all(lazy.norm.gamma.numpy() == 2.0)
    assert "lazy" in {name for name, *_ in qat.quantize_report.kept_float}
    expected = model.predict(x, verbose=0)
    error = np.abs(qat.predict(x, verbose=0) - expected).max()
    assert error < 0.05 * np.abs(expected).max()


class Net(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = L.Conv2D(4, 3, activation="relu")
        self.pool = L.GlobalAveragePooling2D()
        self.head = L.Dense(3)

    def call(self, inputs):
        return self.head(self.pool(self.conv(inputs)))


def test_subclassed_model_called_once_exports(tmp_path):
    keras.utils.set_random_seed(2)
    model = Net(name="net")
    x = _images()
    model(x[:1])
    for mode in ("float32", "int8"):
        result = export.to_tflite(
            model, tmp_path / f"{mode}.tflite", mode=mode, representative_data=x
        )
        assert export.verify(result.path, model, x).top1_agreement >= 0.9
    with pytest.raises(UnsupportedModelError, match="'net' is a subclassed model"):
        quantize.quantize_model(model)


class Spectrum(L.Layer):
    def call(self, inputs):
        return tf.math.real(tf.signal.fft2d(tf.cast(inputs, tf.complex64)))


def test_conversion_errors_name_the_layer(tmp_path):
    inputs = keras.Input((4, 4))
    model = keras.Model(inputs, L.Dense(2)(Spectrum(name="spectrum")(inputs)), name="fourier")
    with pytest.raises(ConversionError, match=r"refused are in layer 'spectrum' \(Spectrum\)"):
        export.to_tflite(model, tmp_path / "fft.tflite")

    # An attention mask [batch, length, length] given a head axis: the converter lowers
    # this StridedSlice only with a static length, and the error says how to get one.
    tokens = keras.Input((None,), dtype="int32", name="token_ids")
    h = L.Embedding(10, 4, name="embedding")(tokens)
    scores = L.Lambda(lambda t: tf.einsum("bid,bjd->bij", t, t)[:, None, :, :], name="mask")(h)
    model = keras.Model(tokens, L.Flatten()(scores[:, :, :1, :1]), name="masked")
    with pytest.raises(ConversionError, match=r"layer 'mask'.*sequence_length=N"):
        export.to_tflite(model, tmp_path / "dynamic.tflite")
    fixed = export.to_tflite(model, tmp_path / "static.tflite", sequence_length=5)
    ids = np.arange(10, dtype="int32").reshape(2, 5)
    assert export.verify(fixed.path, model, ids).cosine > 0.999


class BrokenConfig(L.Dense):
    def get_config(self):
        return {**super().get_config(), "factor": self.factor}  # never set


def test_layer_whose_get_config_fails():
    inputs = keras.Input((4,))
    h = BrokenConfig(4, name="broken")(L.Dense(4, name="first")(inputs))
    model = keras.Model(inputs, L.Dense(2, name="logits")(L.Dense(4, name="mid")(h)))
    with pytest.raises(TypeError, match=r"Layer 'broken' .*BrokenConfig.*Received: AttributeError"):
        prune.prune_low_magnitude(model)
    qat = quantize.quantize_model(model)
    shared = {name: why for name, _, why in qat.quantize_report.shared}
    assert "get_config failed" in shared["broken"] and "AttributeError" in shared["broken"]
    x = np.ones((2, 4), "float32")
    assert qat.predict(x, verbose=0).shape == (2, 2)


class Pooled(L.Layer):
    """Its get_config leaves out `extra`, which adds a Dense: a copy has fewer weights."""

    def __init__(self, extra=False, **kwargs):
        super().__init__(**kwargs)
        self.extra = L.Dense(4, name="extra_dense") if extra else None

    def call(self, inputs):
        return inputs if self.extra is None else self.extra(inputs)

    def get_config(self):
        config = super().get_config()
        config.pop("extra", None)  # as MiT's drops sr_ratio
        return config


def test_layer_whose_config_leaves_out_weights():
    inputs = keras.Input((4,))
    h = Pooled(extra=True, name="pooled")(L.Dense(4, name="first")(inputs))
    model = keras.Model(inputs, L.Dense(2, name="logits")(h))
    model.predict(np.ones((1, 4), "float32"), verbose=0)
    from tfcompress import cluster

    with pytest.raises(TypeError, match=r"Layer 'pooled' .*has 0 weights, the original 2"):
        quantize.quantize_model(model)
    # Pruning and clustering wrap the copy, which has no Dense left: named too.
    with pytest.raises(ValueError, match=r"Layer 'pooled' \(Pooled\) is not prunable"):
        prune.prune_low_magnitude(model)
    with pytest.raises(ValueError, match=r"Layer 'pooled' \(Pooled\) has no weight clustering"):
        cluster.cluster_weights(model, 4)


def test_tied_lm_head_whose_lookup_runs_inside_another_layer(tmp_path):
    # keras-hub OPT: tokens are looked up inside TokenAndPositionEmbedding, and only the
    # tied LM head (reverse=True) calls the ReversibleEmbedding as a layer of the graph.
    import keras_hub

    keras.utils.set_random_seed(3)
    tokens = keras.Input((6,), dtype="int32", name="token_ids")
    embed = keras_hub.layers.TokenAndPositionEmbedding(16, 6, 8, name="embeddings")
    h = L.Dense(8, activation="relu", name="mlp")(embed(tokens))
    model = keras.Model(tokens, embed.token_embedding(h, reverse=True), name="tied")
    x = np.random.default_rng(3).integers(1, 16, (16, 6)).astype("int32")
    qat = _fit(quantize.quantize_model(model), x, np.roll(x, -1, axis=1))
    path = export.to_tflite(qat, tmp_path / "tied.tflite", mode="int8").path
    assert export.verify(path, qat, x).cosine > 0.99


class PatchEmbed(L.Layer):
    """Its Conv2D and LayerNormalization are made in __init__ and built in call(), as in
    keras-hub MiT's OverlappingPatchingAndEmbedding (no build() of its own)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.proj = L.Conv2D(8, 3, strides=2, padding="same", name="proj")
        self.norm = L.LayerNormalization(name="norm")

    def call(self, inputs):
        return self.norm(self.proj(inputs))


def test_prunes_and_clusters_sublayers_built_in_call():
    from tfcompress import cluster

    keras.utils.set_random_seed(4)
    inputs = keras.Input((8, 8, 3))
    h = L.Conv2D(4, 3, padding="same", name="stem")(inputs)
    h = L.GlobalAveragePooling2D()(PatchEmbed(name="patch_embed")(h))
    model = keras.Model(inputs, L.Dense(3, name="logits")(h))
    x, y = _images(), np.arange(16) % 3
    pruned = prune.prune_low_magnitude(model, prune.ConstantSparsity(0.5, 0, frequency=1))
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[prune.UpdatePruningStep()])
    kernel = prune.strip_pruning(pruned).get_layer("patch_embed").proj.kernel.numpy()
    assert np.mean(kernel == 0) == pytest.approx(0.5, abs=0.02)
    clustered = cluster.cluster_weights(model, 4)
    assert len(clustered.predict(x, verbose=0)) == 16
