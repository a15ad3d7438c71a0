"""Public surface, options, plans and bad input."""

import keras
import numpy as np
import pytest

from tfcompress import prune, testing

PUBLIC = [
    "ConstantSparsity",
    "HeadPrunedTransformerEncoder",
    "HeadRemovalReport",
    "LayerSparsity",
    "MissingPruningStepError",
    "NoPrunableLayersError",
    "PolynomialDecay",
    "PrunableLayer",
    "PruneForLatencyOnXNNPack",
    "PruneLowMagnitude",
    "PruningPlan",
    "PruningPolicy",
    "PruningSchedule",
    "PruningSummaries",
    "SparseExportResult",
    "SparsityReport",
    "UnsupportedPruningModelError",
    "UpdatePruningStep",
    "count_macs",
    "prune_low_magnitude",
    "prune_scope",
    "remove_heads",
    "remove_units",
    "sparsity_report",
    "strip_pruning",
    "to_sparse_tflite",
]


def test_public_surface_is_the_golden_list():
    assert sorted(prune.__all__) == sorted(PUBLIC)
    for name in PUBLIC:
        assert getattr(prune, name) is not None


def test_default_plan_skips_first_conv_and_classifier(trained_cnn, capsys):
    pruned = prune.prune_low_magnitude(trained_cnn, verbose=True)
    printed = capsys.readouterr().out
    assert "first convolution" in printed and "final classifier" in printed
    wrapped = [w.layer.name for w in prune.callbacks.pruning_wrappers(pruned)]
    assert wrapped == ["conv1", "dense"]
    everything = prune.prune_low_magnitude(trained_cnn, skip=None)
    assert len(prune.callbacks.pruning_wrappers(everything)) == 4


def test_overrides_per_layer(trained_cnn):
    pruned = prune.prune_low_magnitude(
        trained_cnn,
        0.5,
        skip=None,
        overrides={
            "conv0": None,
            "dense": {"pattern": "2:4", "schedule": prune.ConstantSparsity(0.5, 3)},
        },
    )
    by_name = {w.layer.name: w for w in prune.callbacks.pruning_wrappers(pruned)}
    assert set(by_name) == {"conv1", "dense", "logits"}
    assert by_name["dense"].pattern.kind == "n:m"
    assert by_name["dense"].pruning_schedule.begin_step == 3
    assert by_name["conv1"].pattern.kind == "unstructured"


def test_two_of_four_training(digits, trained_cnn):
    pruned = prune.prune_low_magnitude(
        trained_cnn, prune.ConstantSparsity(0.5, 0, frequency=4), pattern="2:4"
    )
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(
        digits.x_train[:256],
        digits.y_train[:256],
        batch_size=32,
        verbose=0,
        callbacks=[prune.UpdatePruningStep()],
    )
    kernel = prune.strip_pruning(pruned).get_layer("dense").kernel.numpy()
    assert ((kernel.reshape(-1, 4, kernel.shape[1]) != 0).sum(axis=1) <= 2).all()
    conv = prune.strip_pruning(pruned).get_layer("conv1").kernel.numpy()  # (3, 3, 8, 16)
    assert ((conv.reshape(3, 3, 2, 4, 16) != 0).sum(axis=3) <= 2).all()


def test_global_scope_ranks_across_layers(mlp_data):
    x, y = mlp_data
    model = testing.tiny_mlp(hidden=(32, 32))
    # Make one layer's weights much smaller: global ranking must prune it harder.
    small = model.get_layer("hidden1")
    small.kernel.assign(small.kernel * 0.01)
    pruned = prune.prune_low_magnitude(
        model, prune.ConstantSparsity(0.6, 0, frequency=1), scope="global", skip=None
    )
    pruned.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[prune.UpdatePruningStep()])
    report = prune.sparsity_report(pruned)
    assert report.sparsity == pytest.approx(0.6, abs=0.01)
    assert report["hidden1"].sparsity > 0.9
    assert report["hidden0"].sparsity < 0.6


def test_taylor_importance(mlp_data):
    x, y = mlp_data
    model = testing.tiny_mlp()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    pruned = prune.prune_low_magnitude(
        model,
        prune.ConstantSparsity(0.5, 0, frequency=1),
        importance="taylor",
        importance_data=(x, y),
        importance_loss=loss,
        skip=None,
    )
    wrapper = prune.callbacks.pruning_wrappers(pruned)[0]
    scores = np.asarray(wrapper.importance_scores[0])
    assert scores.shape == (16, 32) and scores.max() > 0
    pruned.compile("adam", loss)
    pruned.fit(x, y, batch_size=64, verbose=0, callbacks=[prune.UpdatePruningStep()])
    mask = np.asarray(wrapper.masks[0])
    assert mask.mean() == pytest.approx(0.5, abs=0.01)
    assert scores[mask == 1].min() >= scores[mask == 0].max()
    with pytest.raises(ValueError, match="importance_data=.*importance_loss"):
        prune.prune_low_magnitude(model, importance="taylor")


# --- bad input: one clear error each -------------------------------------------------


def test_no_prunable_layer():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.BatchNormalization()(inputs), name="bn_only")
    with pytest.raises(prune.NoPrunableLayersError, match=r"(?s)'bn_only'.*BatchNormalization"):
        prune.prune_low_magnitude(model)


def test_only_skipped_layers():
    model = testing.tiny_mlp(hidden=())  # one Dense: the classifier, skipped by default
    with pytest.raises(prune.NoPrunableLayersError, match="skip=None"):
        prune.prune_low_magnitude(model)


def test_subclassed_model():
    class Net(keras.Model):
        def __init__(self):
            super().__init__(name="net")
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(x)

    model = Net()
    model(np.zeros((1, 4)))
    with pytest.raises(prune.UnsupportedPruningModelError, match=r"'net' \(Net\).*subclassed"):
        prune.prune_low_magnitude(model)


def test_n_m_on_layer_with_indivisible_input():
    model = testing.tiny_mlp(input_dim=10, hidden=(8,))
    with pytest.raises(ValueError, match=r"'hidden0'.*2:4.*10 entries"):
        prune.prune_low_magnitude(model, pattern="2:4")


def test_unknown_layer_names(trained_cnn):
    with pytest.raises(ValueError, match=r"`skip` names layers.*\['nope'\]"):
        prune.prune_low_magnitude(trained_cnn, skip=["nope"])


def test_not_a_model():
    with pytest.raises(TypeError, match="Expected a Keras model"):
        prune.prune_low_magnitude(object())


def test_already_pruned(trained_cnn):
    pruned = prune.prune_low_magnitude(trained_cnn)
    with pytest.raises(ValueError, match="already wrapped"):
        prune.prune_low_magnitude(pruned)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"scope": "model"}, "Received: scope='model'"),
        ({"importance": "random"}, "Received: importance='random'"),
        ({"schedule": "0.5"}, "Received: schedule='0.5'"),
        ({"overrides": {"dense": {"sparsity": 0.3}}}, r"overrides\['dense'\]"),
    ],
)
def test_bad_options(trained_cnn, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        prune.prune_low_magnitude(trained_cnn, **kwargs)


def test_pruning_summaries_write_events(tmp_path, mlp_data):
    x, y = mlp_data
    pruned = prune.prune_low_magnitude(testing.tiny_mlp(), 0.5, skip=None)
    pruned.compile("adam", "mse")
    pruned.fit(
        x,
        np.zeros((64, 4)),
        verbose=0,
        callbacks=[prune.UpdatePruningStep(), prune.PruningSummaries(tmp_path)],
    )
    assert any(p.name.startswith("events.out.tfevents") for p in tmp_path.iterdir())
