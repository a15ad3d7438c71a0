"""Hostile inputs beyond issue 15's list, each found by a fuzz run and fixed at its root.

Contract: one typed error naming the field, file or layer (CLI: one line, exit 2 for
bad input), and no input destroyed.
"""

import os

import keras
import numpy as np
import pytest

from tfcompress import cli, cluster, export, pipeline, prune
from tfcompress.pipeline import RecipeError


def one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def _mlp():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(6, name="d1"), keras.layers.Dense(3, name="out")],
        name="tiny",
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    model = _mlp()
    model.save(folder / "m.keras")
    export.to_tflite(model, str(folder / "m.tflite"), mode="float32")
    x = np.random.default_rng(0).normal(size=(12, 8)).astype("float32")
    np.savez(folder / "d.npz", x=x, y=np.arange(12) % 3)
    return folder, model, x


def test_c_header_onto_its_own_tflite_is_refused(files, tmp_path):
    folder, _, _ = files
    tflite = folder / "m.tflite"
    before = tflite.read_bytes()
    os.symlink(tflite, tmp_path / "alias.h")
    for header in (tflite, tmp_path / "alias.h"):
        with pytest.raises(ValueError, match="is the .tflite file itself"):
            export.to_c_array(str(tflite), str(header))
    assert tflite.read_bytes() == before  # was replaced by the header


@pytest.mark.parametrize("kind", ["npy", "scalar"])
def test_calibration_that_is_not_rows_of_samples_exits_2(files, tmp_path, capsys, kind):
    folder, _, x = files
    if kind == "npy":
        path = tmp_path / "c.npy"
        np.save(path, x)
    else:
        path = tmp_path / "c.npz"
        np.savez(path, x=np.float32(1.0))
    argv = ["export", str(folder / "m.keras"), "-o", str(tmp_path / "o.tflite")]
    assert cli.main([*argv, "--mode", "int8", "--calibration", str(path)]) == 2  # was 1
    assert path.name in one_error_line(capsys)
    assert not (tmp_path / "o.tflite").exists()


def test_labels_beyond_the_models_classes_are_refused(files, tmp_path, capsys):
    folder, model, x = files
    with pytest.raises(ValueError, match="below the model's 3 outputs. Received: max label 9"):
        export.verify(str(folder / "m.tflite"), model, (x, np.full(12, 9)))
    np.savez(tmp_path / "v.npz", x=x, y=np.full(12, 9))
    argv = ["export", str(folder / "m.keras"), "-o", str(tmp_path / "o.tflite")]
    assert cli.main([*argv, "--verify", str(tmp_path / "v.npz")]) == 2  # was 0, accuracy 0.0
    assert "--verify" in one_error_line(capsys)


HEAD = (
    "data: {embedded: digits}\n"
    "model: {factory: 'tfcompress.testing:digits_cnn', kwargs: {filters: [2, 4]}}\n"
)


@pytest.mark.parametrize(
    "body, message",
    [
        ("stages: [{type: train, epochs: true}]", "not the boolean True"),  # trained 1 epoch
        ("stages: [{type: train, learning_rate: .inf}]", "finite number"),  # NaN weights, exit 1
        ("seed: -1\nstages: [{type: train}]", "seed: Input should be greater than or equal"),
        ("stages: [{type: train}, {type: prune, final_sparsity: 0.5, pattern: 'x:y'}]", "N:M"),
        ("stages: [{type: train}, {type: prune, final_sparsity: 0.5, pattern: '0x4'}]", "block"),
    ],
    ids=["bool", "inf", "seed", "pattern", "block"],
)
def test_recipe_values_refused_at_load(tmp_path, body, message):
    (tmp_path / "r.yaml").write_text(HEAD + body + "\n")
    with pytest.raises(RecipeError, match=message):
        pipeline.load_recipe(tmp_path / "r.yaml")


def test_prune_stage_that_does_not_fit_the_model_is_a_recipe_error(files, tmp_path, capsys):
    folder, _, x = files
    np.savez(
        tmp_path / "d.npz", x_train=x, y_train=np.arange(12) % 3, x_test=x, y_test=np.arange(12) % 3
    )
    (tmp_path / "r.yaml").write_text(
        f"data: {{npz: {tmp_path / 'd.npz'}}}\nmodel: {{path: {folder / 'm.keras'}}}\n"
        "stages: [{type: prune, final_sparsity: 0.5, pattern: '3:7', epochs: 1}]\n"
    )
    code = cli.main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out")])
    assert code == 2  # was 1: the recipe's pattern does not tile this model's kernels
    assert "prune stage: Layer 'd1'" in one_error_line(capsys)


def test_cluster_weights_that_would_cluster_nothing_raises():
    flat = keras.Sequential([keras.Input((4, 4)), keras.layers.Flatten(), keras.layers.ReLU()])
    with pytest.raises(cluster.NothingToClusterError, match="has no layer whose weights"):
        cluster.cluster_weights(flat, 4)
    with pytest.raises(cluster.NothingToClusterError, match="d1: only 48 weights for 10000"):
        cluster.cluster_weights(_mlp(), 10_000)
    with pytest.raises(ValueError, match="Received: seed='a'"):
        cluster.cluster_weights(_mlp(), 4, seed="a")
    # One name is one layer (was split into letters: "does not have: ['1', 'd']").
    report = cluster.cluster_weights(_mlp(), 4, skip_layers="d1").cluster_report
    assert dict(report.skipped) == {"d1": "skip_layers"}


def test_prune_arguments_of_the_wrong_kind():
    model = _mlp()
    with pytest.raises(TypeError, match="Received: skip=3"):
        prune.prune_low_magnitude(model, skip=3)
    with pytest.raises(TypeError, match=r"Received: schedule=\{'a': 1\}"):
        prune.prune_low_magnitude(model, {"a": 1})  # was accepted
    with pytest.raises(ValueError, match="Received: power=nan"):
        prune.PolynomialDecay(0.0, 0.5, 0, 10, power=float("nan"))
    one = prune.prune_low_magnitude(model, layers="out", skip=None)  # one layer name
    assert [w.layer.name for w in one.layers if isinstance(w, prune.PruneLowMagnitude)] == ["out"]
    broken = _mlp()
    kernel = broken.get_layer("d1").kernel.numpy()
    kernel[0, 0] = np.nan
    broken.get_layer("d1").kernel.assign(kernel)
    with pytest.raises(ValueError, match="Layer 'd1' has 1 NaN or infinite weights"):
        prune.prune_low_magnitude(broken, skip=None)


def test_benchmark_counts_are_checked_by_name(files):
    folder, _, _ = files
    with pytest.raises(ValueError, match="Received: runs=0"):  # was blamed on the file
        export.benchmark(str(folder / "m.tflite"), runs=0)


def test_a_model_still_wrapped_for_training_is_refused_by_the_other_verbs():
    """Quantizing a pruned model before strip_pruning kept every layer in float, silently."""
    from tfcompress import quantize

    pruned = prune.prune_low_magnitude(_mlp(), skip=None)
    clustered = cluster.cluster_weights(_mlp(), 4)
    with pytest.raises(ValueError, match=r"call tfcompress.prune.strip_pruning\(model\) first"):
        quantize.quantize_model(pruned)
    with pytest.raises(ValueError, match=r"call tfcompress.prune.strip_pruning\(model\) first"):
        cluster.cluster_weights(pruned, 4)
    with pytest.raises(ValueError, match=r"tfcompress.cluster.strip_clustering\(model\) first"):
        prune.prune_low_magnitude(clustered)
    with pytest.raises(ValueError, match=r"tfcompress.cluster.strip_clustering\(model\) first"):
        quantize.quantize_model(clustered)


def test_export_onto_a_model_or_data_file_is_refused(files, tmp_path):
    """Python has no `-o` check: a .tflite or header written over a .keras / .npz / .tflite."""
    folder, model, _ = files
    for name in ("m.keras", "d.npz"):
        target = tmp_path / name
        target.write_bytes((folder / name).read_bytes())
        with pytest.raises(FileExistsError, match="would destroy it"):
            export.to_tflite(model, str(target), mode="float32")
        with pytest.raises(FileExistsError, match="would destroy it"):
            export.to_c_array(str(folder / "m.tflite"), str(target))
        assert target.read_bytes() == (folder / name).read_bytes()
    other = tmp_path / "other.tflite"
    other.write_bytes((folder / "m.tflite").read_bytes())
    with pytest.raises(FileExistsError, match="holds a TFLite model"):
        export.to_c_array(str(folder / "m.tflite"), str(other))
    export.to_tflite(model, str(other), mode="float32")  # a .tflite over a .tflite is fine


def test_cli_refuses_outputs_over_other_models_before_converting(files, tmp_path, capsys):
    folder, _, _ = files
    other = tmp_path / "other.keras"
    other.write_bytes((folder / "m.keras").read_bytes())
    out = tmp_path / "x.tflite"
    argv = ["export", str(folder / "m.keras"), "-o", str(out), "--c-header", str(other)]
    assert cli.main(argv) == 2
    assert "writing the C header there would destroy it" in one_error_line(capsys)
    assert not out.exists() and other.read_bytes() == (folder / "m.keras").read_bytes()


def test_sst2_tsv_that_is_not_utf8_names_the_file(tmp_path, monkeypatch):
    (tmp_path / "train.tsv").write_bytes("sentence\tlabel\ncaf\xe9 noir\t1\n".encode("latin-1"))
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\nok\t1\n")
    monkeypatch.setenv("TFCOMPRESS_SST2_DIR", str(tmp_path))
    recipe = {
        "data": {"embedded": "sst2"},
        "model": {"factory": "tfcompress.testing:digits_cnn"},
        "stages": [{"type": "train", "epochs": 1}],
    }
    with pytest.raises(pipeline.data.DataError, match=r"train.tsv is not UTF-8 text \(byte 18"):
        pipeline.run(recipe, str(tmp_path / "out"), progress=lambda m: None)


@pytest.mark.parametrize(
    "stage, message",
    [
        ("{type: train, epochs: 1}", "train stage: model 'frozen' has no trainable weights"),
        ("{type: remove_units, fraction: 0.5}", "remove_units stage: remove_units found no layer"),
        ("{type: cluster, number_of_clusters: 4}", "cluster stage: Model 'frozen' has no layer"),
    ],
    ids=["train", "remove_units", "cluster"],
)
def test_stages_that_cannot_act_on_the_model_are_recipe_errors(tmp_path, capsys, stage, message):
    """A model with no trainable weights trained 'successfully' (exit 0) and changed nothing;
    remove_units with nothing to shrink was exit 1."""
    frozen = keras.Sequential(
        [keras.Input((8,)), keras.layers.ReLU(), keras.layers.Activation("softmax")], name="frozen"
    )
    frozen.save(tmp_path / "frozen.keras")
    x = np.random.default_rng(0).normal(size=(12, 8)).astype("float32")
    y = np.arange(12) % 3
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    (tmp_path / "r.yaml").write_text(
        f"data: {{npz: {tmp_path / 'd.npz'}}}\nmodel: {{path: {tmp_path / 'frozen.keras'}}}\n"
        f"stages: [{stage}]\n"
    )
    assert cli.main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out")]) == 2
    assert message in one_error_line(capsys)
