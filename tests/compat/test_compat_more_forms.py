"""More tfmot 0.8 call forms, run unchanged on Keras 3 models (written from tfmot's API docs).

`pruning_policy=PruneForLatencyOnXNNPack()`, custom `PruningSchedule` subclasses,
`PrunableLayer` / `ClusterableLayer`, `PruningSummaries(**tensorboard_kwargs)`,
`cluster_scope`, `ClusteringSummaries`, the experimental clustering spelling,
`quantize_annotate_model` + `quantize_apply(model, scheme)` for PQAT / CQAT / PCQAT /
n-bit, `quantized_layer_name_prefix`, tfmot-style `QuantizeConfig` subclasses, and
`quantize_scope({...})`.
"""

import os
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from tfcompress import cluster, export, prune, quantize


def _mlp(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((16,)),
            keras.layers.Dense(32, activation="relu", name="d1"),
            keras.layers.Dense(32, activation="relu", name="d2"),
            keras.layers.Dense(2, name="out"),
        ]
    )


def _fit(model, data, callbacks=()):
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(*data, epochs=1, batch_size=16, verbose=0, callbacks=list(callbacks))
    return model


def _mobile_block():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.ZeroPadding2D(1)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, name="stem")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.Conv2D(16, 1, name="pw")(x)
    x = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(x))


@pytest.mark.parametrize(
    "policy",
    [prune.PruneForLatencyOnXNNPack(), tfmot.sparsity.keras.PruneForLatencyOnXNNPack()],
    ids=["ours", "tfmot's"],
)
def test_prune_for_latency_on_xnnpack_wraps_only_1x1_convolutions(policy):
    pruned = prune.prune_low_magnitude(
        _mobile_block(),
        pruning_schedule=prune.ConstantSparsity(0.75, 0, frequency=1),
        pruning_policy=policy,
    )
    wrapped = [w.layer.name for w in pruned.layers if isinstance(w, prune.PruneLowMagnitude)]
    assert wrapped == ["pw"]
    with pytest.raises(ValueError, match="prunes only 1x1 Conv2D layers, and model"):
        prune.prune_low_magnitude(_mlp(), pruning_policy=policy)


def test_custom_schedule_subclass_and_a_tfmot_schedule_object(data):
    class EveryStep(prune.PruningSchedule):
        """tfmot's documented way to write a schedule."""

        def __init__(self, sparsity):
            self.sparsity = sparsity

        def __call__(self, step):
            should = self._should_prune_in_step(step, 0, -1, 1)
            return should, tf.constant(self.sparsity, tf.float32)

        def get_config(self):
            return {"class_name": "EveryStep", "config": {"sparsity": self.sparsity}}

    custom = prune.strip_pruning(
        _fit(
            prune.prune_low_magnitude(_mlp(), pruning_schedule=EveryStep(0.7)),
            data,
            [prune.UpdatePruningStep()],
        )
    )
    assert np.mean(custom.get_layer("d2").kernel.numpy() == 0) == pytest.approx(0.7, abs=0.01)
    theirs = tfmot.sparsity.keras.ConstantSparsity(0.6, begin_step=0, frequency=1)
    wrapped = prune.prune_low_magnitude(_mlp(), pruning_schedule=theirs)
    assert wrapped.layers[0].pruning_schedule == prune.ConstantSparsity(0.6, 0, frequency=1)


def test_prunable_and_clusterable_layer_interfaces():
    class MyDense(keras.layers.Dense, prune.PrunableLayer, cluster.ClusterableLayer):
        def get_prunable_weights(self):
            return [self.kernel]

        def get_clusterable_weights(self):
            return [("kernel", self.kernel)]

    model = keras.Sequential([keras.Input((16,)), MyDense(8, name="my"), keras.layers.Dense(2)])
    pruned = prune.prune_low_magnitude(model, skip=None)
    assert [w.layer.name for w in pruned.layers[:1]] == ["my"]
    assert [n for n, _, _ in cluster.cluster_weights(model, 4).cluster_report.clustered][0] == "my"


def test_summaries_callbacks_take_tensorboard_arguments(data, tmp_path):
    pruned = prune.prune_low_magnitude(_mlp(), prune.ConstantSparsity(0.5, 0, frequency=1))
    summaries = prune.PruningSummaries(log_dir=tmp_path / "p", profile_batch=0)
    _fit(pruned, data, [prune.UpdatePruningStep(), summaries])
    assert os.listdir(tmp_path / "p")
    with pytest.raises(TypeError, match=r"Received: \['nope'\]"):
        prune.PruningSummaries(tmp_path, nope=1)
    clustered = cluster.cluster_weights(_mlp(), number_of_clusters=8)
    _fit(clustered, data, [cluster.ClusteringSummaries(str(tmp_path / "c"), update_freq="epoch")])
    assert os.listdir(tmp_path / "c")


def test_cluster_scope_and_the_experimental_spelling(data, tmp_path):
    clustered = cluster.experimental.cluster.cluster_weights(
        _mlp(),
        number_of_clusters=8,
        cluster_centroids_init=cluster.CentroidInitialization.KMEANS_PLUS_PLUS,
        preserve_sparsity=True,
    )
    clustered.save(tmp_path / "c.keras")
    with cluster.cluster_scope():
        loaded = keras.models.load_model(tmp_path / "c.keras")
    np.testing.assert_allclose(
        loaded.predict(data[0], verbose=0), clustered.predict(data[0], verbose=0), atol=1e-6
    )
    kernel = cluster.strip_clustering(loaded).get_layer("d2").kernel.numpy()
    assert len(np.unique(kernel)) <= 8


def test_pqat_through_annotate_model_and_tfmot_scheme(data, tmp_path):
    """The collaborative-optimization guide: prune, strip, quantize_annotate_model,
    quantize_apply(annotated, Default8BitPrunePreserveQuantizeScheme())."""
    pruned = prune.prune_low_magnitude(_mlp(), prune.ConstantSparsity(0.5, 0, frequency=1))
    sparse = prune.strip_pruning(_fit(pruned, data, [prune.UpdatePruningStep()]))
    annotated = quantize.quantize_annotate_model(sparse)
    scheme = tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
    pqat = _fit(quantize.quantize_apply(annotated, scheme), data)
    assert [n for n, _, _ in pqat.quantize_report.quantized] == ["d1", "d2", "out"]
    assert prune.sparsity_report(pqat).sparsity == pytest.approx(0.5, abs=0.02)
    path = str(tmp_path / "pqat.tflite")
    export.to_tflite(pqat, path, mode="int8")
    assert export.inspect(path).is_fully_integer()


def test_tfmot_schemes_map_to_quantize_configs():
    combine = tfmot.experimental.combine
    n_bit = tfmot.quantization.keras.experimental.default_n_bit
    config = quantize.annotate.config_from_scheme
    assert config(combine.Default8BitClusterPreserveQuantizeScheme()) == quantize.QuantizeConfig(
        preserve_clusters=True, preserve_sparsity=True
    )
    cqat = config(combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=False))
    assert cqat.preserve_clusters and not cqat.preserve_sparsity
    assert config(n_bit.DefaultNBitQuantizeScheme(num_bits_weight=4)).weight_scheme == "int4"
    with pytest.raises(ValueError, match="num_bits_activation=4"):
        config(n_bit.DefaultNBitQuantizeScheme(num_bits_weight=4, num_bits_activation=4))
    q4 = quantize.quantize_apply(
        quantize.quantize_annotate_model(_mlp()),
        scheme=n_bit.DefaultNBitQuantizeScheme(num_bits_weight=4),
        quantized_layer_name_prefix="q4_",
    )
    assert {s for _, _, s in q4.quantize_report.quantized} == {"int4"}
    assert q4.get_layer("q4_d1") is not None


def _config(weight_bits, activation_bits=8, quantizers=tfmot.quantization.keras.quantizers):
    """A tfmot-guide QuantizeConfig ("modify parts of a layer to quantize")."""

    class Config(tfmot.quantization.keras.QuantizeConfig):
        def get_weights_and_quantizers(self, layer):
            if weight_bits is None:
                return []
            q = quantizers.LastValueQuantizer(
                num_bits=weight_bits, symmetric=True, narrow_range=False, per_axis=False
            )
            return [(layer.kernel, q)]

        def get_activations_and_quantizers(self, layer):
            if weight_bits is None:
                return []
            q = quantizers.MovingAverageQuantizer(
                num_bits=activation_bits, symmetric=False, narrow_range=False, per_axis=False
            )
            return [(layer.activation, q)]

        def set_quantize_weights(self, layer, quantize_weights):
            pass

        def set_quantize_activations(self, layer, quantize_activations):
            pass

        def get_output_quantizers(self, layer):
            return []

        def get_config(self):
            return {}

    return Config()


def _annotated(config):
    layer = quantize.quantize_annotate_layer(
        keras.layers.Dense(8, activation="relu", name="custom"), quantize_config=config
    )
    model = keras.Sequential([keras.Input((16,)), layer, keras.layers.Dense(2, name="head")])
    return quantize.quantize_apply(model)


@pytest.mark.parametrize(
    "config, quantized",
    [
        (_config(8), [("custom", "int8")]),
        (_config(4), [("custom", "int4")]),
        (_config(4, quantizers=quantize.quantizers), [("custom", "int4")]),
        (_config(None), []),  # tfmot's NoOpQuantizeConfig: kept in float
    ],
    ids=["8bit", "4bit", "4bit-our-quantizers", "noop"],
)
def test_tfmot_style_quantize_config_on_a_keras3_layer(config, quantized):
    report = _annotated(config).quantize_report
    assert [(n, s) for n, _, s in report.quantized] == quantized


def test_tfmot_style_quantize_config_with_4bit_activations_is_refused():
    with pytest.raises(ValueError, match="quantizes activations to 4 bits"):
        _annotated(_config(8, activation_bits=4))


def test_tfmot_style_custom_quantizer_is_refused():
    """The guide's FixedRangeQuantizer: its algorithm would be ignored, so it is refused."""

    class FixedRangeQuantizer(tfmot.quantization.keras.quantizers.Quantizer):
        def build(self, tensor_shape, name, layer):
            return {}

        def __call__(self, inputs, training, weights, **kwargs):
            return inputs

        def get_config(self):
            return {}

    fixed = types.SimpleNamespace(
        LastValueQuantizer=lambda **kw: FixedRangeQuantizer(),
        MovingAverageQuantizer=lambda **kw: FixedRangeQuantizer(),
    )
    with pytest.raises(ValueError, match="uses the custom quantizer FixedRangeQuantizer"):
        _annotated(_config(8, quantizers=fixed))


def test_quantize_scope_with_custom_objects_loads_keras3(tmp_path):
    class Scaled(keras.layers.Dense):
        pass

    model = keras.Sequential([keras.Input((4,)), Scaled(2, name="scaled")])
    model.save(tmp_path / "s.keras")
    with quantize.quantize_scope({"Scaled": Scaled}):
        loaded = keras.models.load_model(tmp_path / "s.keras")
    assert isinstance(loaded.get_layer("scaled"), Scaled)


def test_tf_keras_model_with_a_pruning_policy_goes_to_tfmot():
    import tf_keras

    inputs = tf_keras.Input((16, 16, 3))
    x = tf_keras.layers.ZeroPadding2D(1)(inputs)
    x = tf_keras.layers.Conv2D(8, 3, strides=2)(x)
    x = tf_keras.layers.Conv2D(8, 1, name="pw")(x)
    x = tf_keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(2)(tf_keras.layers.Flatten()(x)))
    for policy in (
        prune.PruneForLatencyOnXNNPack(),
        tfmot.sparsity.keras.PruneForLatencyOnXNNPack(),
    ):
        pruned = prune.prune_low_magnitude(model, pruning_policy=policy)
        assert [la.name for la in pruned.layers if la.name.startswith("prune_low")] == [
            "prune_low_magnitude_pw"
        ]


def test_quantize_apply_without_annotations_is_refused():
    with pytest.raises(ValueError, match="has no annotated layer"):
        quantize.quantize_apply(_mlp())  # tfmot refuses it too: it would quantize nothing


@pytest.mark.parametrize(
    "package, name, advice",
    [
        (quantize, "fix_input_output_range", "int8_io=True"),
        (quantize, "QuantizeWrapperV2", "QuantizeWrapper"),
        (quantize, "QuantizeRegistry", "register_layer"),
        (cluster, "ClusteringAlgorithm", "get_clusterable_weights"),
    ],
)
def test_tfmot_names_without_a_counterpart_say_what_to_use(package, name, advice):
    with pytest.raises(AttributeError, match=rf"has no '{name}' \(a tfmot name\): .*{advice}"):
        getattr(package, name)
    assert not hasattr(package, "no_such_name")


def _subclassed(wrapped, with_training):
    class Model(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = wrapped
            self.head = keras.layers.Dense(2)

        if with_training:

            def call(self, inputs, training=None):
                return self.head(self.hidden(inputs))

        else:

            def call(self, inputs):
                return self.head(self.hidden(inputs))

    return Model()


def test_layer_forms_inside_a_subclassed_model(data):
    """tfmot's `self.dense = prune_low_magnitude(Dense(...))` / `cluster_weights(Dense(...))`
    in a subclassed model's __init__: the layers are built inside fit()'s traced step."""
    schedule = prune.ConstantSparsity(0.5, 0, frequency=1)
    model = _subclassed(prune.prune_low_magnitude(keras.layers.Dense(32), schedule), True)
    _fit(model, data, [prune.UpdatePruningStep()])
    assert prune.sparsity_report(model).layers[0].sparsity == pytest.approx(0.5)
    # Such a model cannot be copied layer by layer: its layers are stripped one by one.
    with pytest.raises(TypeError, match=r"self.dense = strip_pruning\(self.dense\)"):
        prune.strip_pruning(model)
    plain = prune.strip_pruning(model.hidden)
    assert type(plain) is keras.layers.Dense
    assert np.mean(plain.kernel.numpy() == 0) == pytest.approx(0.5)
    np.testing.assert_allclose(plain(data[0]).numpy(), model.hidden(data[0]).numpy(), atol=1e-6)
    clustered = _subclassed(cluster.cluster_weights(keras.layers.Dense(32), 4), False)
    _fit(clustered, data)  # every centroid stayed 0: the whole kernel was one value
    assert len(np.unique(clustered.hidden.clustered_kernel().numpy())) == 4
    with pytest.raises(TypeError, match=r"strip_clustering\(self.dense\)"):
        cluster.strip_clustering(clustered)


def test_subclassed_model_whose_call_drops_training_is_named(data):
    """Keras calls the inner layers with training=None then: nothing was pruned, silently."""
    schedule = prune.ConstantSparsity(0.5, 0, frequency=1)
    model = _subclassed(prune.prune_low_magnitude(keras.layers.Dense(32), schedule), False)
    with pytest.raises(prune.errors.PruningStepNotCountedError, match="training=None"):
        _fit(model, data, [prune.UpdatePruningStep()])
