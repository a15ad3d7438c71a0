"""Layer coverage of the Keras 3 pruning engine (issue 14): 3-D, separable and recurrent layers."""

import keras
import numpy as np
import pytest

from tfcompress import prune

SPARSITY = 0.75


def _prune_fit_strip(model, x, y):
    pruned = prune.prune_low_magnitude(
        model, prune.ConstantSparsity(SPARSITY, 0, frequency=1), skip=None
    )
    pruned.compile("adam", "mse")
    pruned.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[prune.UpdatePruningStep()])
    return prune.strip_pruning(pruned)


def _sparsity(variable):
    return float(np.mean(np.asarray(variable) == 0))


def test_recurrent_kernel_and_recurrent_kernel_are_pruned():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 6, 4)).astype("float32"), rng.normal(size=(32, 2))
    inp = keras.Input((6, 4))
    recurrent = [
        keras.layers.LSTM(8, name="lstm"),
        keras.layers.GRU(8, name="gru"),
        keras.layers.SimpleRNN(8, name="simple_rnn"),
        keras.layers.RNN(keras.layers.LSTMCell(8), name="rnn_cell"),
    ]
    merged = keras.layers.Concatenate()([layer(inp) for layer in recurrent])
    model = keras.Model(inp, keras.layers.Dense(2)(merged))
    stripped = _prune_fit_strip(model, x, y)
    for layer in recurrent:
        cell = stripped.get_layer(layer.name).cell
        assert _sparsity(cell.kernel) == pytest.approx(SPARSITY, abs=0.02), layer.name
        assert _sparsity(cell.recurrent_kernel) == pytest.approx(SPARSITY, abs=0.02), layer.name
        assert _sparsity(cell.bias) == 0.0, layer.name


def test_conv3d_and_separable_convs_are_pruned():
    rng = np.random.default_rng(0)
    inp = keras.Input((6, 6, 6, 2))
    a = keras.layers.Conv3D(8, 3, name="conv3d")(inp)
    a = keras.layers.Reshape((4 * 4, 4 * 8))(a)
    b = keras.layers.SeparableConv1D(8, 3, name="sep1d")(a)
    c = keras.layers.Reshape((14, 8, 1))(b)
    c = keras.layers.SeparableConv2D(8, 3, depth_multiplier=2, name="sep2d")(c)
    out = keras.layers.Dense(2)(keras.layers.Flatten()(c))
    model = keras.Model(inp, out)
    x, y = rng.normal(size=(32, 6, 6, 6, 2)).astype("float32"), rng.normal(size=(32, 2))
    stripped = _prune_fit_strip(model, x, y)
    assert _sparsity(stripped.get_layer("conv3d").kernel) == pytest.approx(SPARSITY, abs=0.01)
    for name in ("sep1d", "sep2d"):
        layer = stripped.get_layer(name)
        # As tfmot: the pointwise kernel is pruned, the small depthwise one stays dense.
        assert _sparsity(layer.pointwise_kernel) == pytest.approx(SPARSITY, abs=0.02), name
        assert _sparsity(layer.depthwise_kernel) == 0.0, name


def test_grouped_depthwise_conv2d_stays_dense_by_default():
    """ConvNeXt's 7x7 Conv2D(groups=C) is depthwise in all but its class."""
    model = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.Conv2D(8, 3, name="stem"),
            keras.layers.Conv2D(8, 7, groups=8, padding="same", name="grouped_dw"),
            keras.layers.Conv2D(16, 3, groups=2, name="grouped"),
            keras.layers.Conv2D(16, 1, name="pw"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2, name="logits"),
        ]
    )
    pruned = prune.prune_low_magnitude(model)
    wrapped = {
        layer.layer.name for layer in pruned.layers if isinstance(layer, prune.PruneLowMagnitude)
    }
    assert wrapped == {"grouped", "pw"}
    plan = dict((name, reason) for name, _, reason in _plan(model).skipped)
    assert "depthwise" in plan["grouped_dw"]


def _plan(model):
    from tfcompress.prune import _registry
    from tfcompress.prune import plan as plan_lib

    return plan_lib.make_plan(
        model,
        _registry.is_prunable,
        _registry.is_conv,
        lambda layer: isinstance(layer, keras.layers.Dense),
    )


def test_keras_hub_vit_whose_config_has_derived_fields():
    """ViTPatchingAndEmbedding.get_config() writes num_patches / num_positions, which its
    __init__ rejects (issue 17): the copy is rebuilt from the arguments __init__ takes."""
    import keras_hub

    from tfcompress import cluster

    backbone = keras_hub.models.ViTBackbone(
        image_shape=(16, 16, 3), patch_size=4, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32
    )
    inp = keras.Input((16, 16, 3))
    out = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(backbone(inp)))
    model = keras.Model(inp, out)
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype("float32")
    pruned = prune.prune_low_magnitude(model)
    np.testing.assert_allclose(pruned(x), model(x), atol=1e-5)
    clustered = cluster.cluster_weights(model, number_of_clusters=8)
    assert "vit_encoder/query/kernel" in {n for n, _, _ in clustered.cluster_report.clustered}
