import numpy as np
import pytest

from tfcompress import export, testing, train


def _blocks_model():
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,), name="features")
    x = keras.layers.Dense(16, name="proj")(inputs)
    for i in range(4):
        x = keras.layers.Dense(16, activation="relu", name=f"block{i}")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(x))


def test_repeated_blocks_store_one_set_of_weights(tmp_path):
    model = _blocks_model()
    shared = train.share_layers(model, [["block0", "block1", "block2", "block3"]])
    assert model.count_params() - shared.count_params() == 3 * (16 * 16 + 16)
    # The shared block starts from block0's weights, the rest are copied as they were.
    layers = {layer.name: layer for layer in shared.layers}
    for name in ("proj", "block0", "head"):
        for a, b in zip(layers[name].get_weights(), model.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
    assert shared.predict(x, verbose=0).shape == (4, 3)
    dense = export.to_tflite(model, tmp_path / "dense.tflite")
    small = export.to_tflite(shared, tmp_path / "shared.tflite")
    assert small.bytes < dense.bytes - 3 * (16 * 16 * 4)


def test_sharing_trains_with_fit():
    import keras

    shared = train.share_layers(_blocks_model(), [["block1", "block2"]])
    shared.compile(
        optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    before = shared.get_layer("block1").get_weights()[0].copy()
    shared.fit(x, y, epochs=2, verbose=0)
    assert not np.allclose(before, shared.get_layer("block1").get_weights()[0])


def test_keras_hub_bert_layers_share(bert_data):
    model = testing.tiny_bert_classifier(num_layers=3)
    groups = [["transformer_layer_0", "transformer_layer_1", "transformer_layer_2"]]
    shared = train.share_layers(model, groups)
    per_layer = model.backbone.get_layer("transformer_layer_0").count_params()
    assert model.count_params() - shared.count_params() == 2 * per_layer
    inputs, _ = bert_data
    batch = {k: v[:4] for k, v in inputs.items()}
    assert shared.predict(batch, verbose=0).shape == (4, 2)


@pytest.mark.parametrize(
    "groups, message",
    [
        ([["block0"]], "at least two layers"),
        ([["block0", "nope"]], "has no layer named \\['nope'\\]"),
        (
            [["proj", "head"]],
            "different weight shapes: 'proj' \\[\\(8, 16\\), \\(16,\\)\\] vs 'head'",
        ),
        ([["block0", "block1"], ["block1", "block2"]], "more than one sharing group"),
        ("block0", "must be a list of lists"),
    ],
)
def test_bad_groups(groups, message):
    with pytest.raises(ValueError, match=message):
        train.share_layers(_blocks_model(), groups)
