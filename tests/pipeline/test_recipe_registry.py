"""A registered stage type, cluster init or export mode works from YAML: the schema is built
from the registries, not a copy of them."""

from typing import Literal

import numpy as np
import pytest

from tfcompress import cluster, pipeline
from tfcompress.pipeline import RecipeError, load_recipe, recipe, stages

RECIPE = """\
name: custom
data: {embedded: digits}
model:
  factory: tfcompress.testing:digits_cnn
  kwargs: {filters: [4, 8], dense_units: 16}
stages:
  - {type: train, epochs: 1}
  - {type: scale_kernels, factor: 0.5}
  - {type: export, modes: [float32]}
"""


class ScaleKernels(pipeline.StageSpec):
    type: Literal["scale_kernels"]
    factor: float


@pytest.fixture
def registered():
    specs, functions = dict(recipe._STAGE_SPECS), dict(stages._STAGES)
    seen = []

    @pipeline.stage("scale_kernels", spec=ScaleKernels)
    def scale_kernels(ctx, spec):
        seen.append(spec.factor)
        for layer in ctx.model.layers:
            if hasattr(layer, "kernel"):
                layer.kernel.assign(layer.kernel * spec.factor)
        return ctx.model

    yield seen
    recipe._STAGE_SPECS.clear()
    recipe._STAGE_SPECS.update(specs)
    stages._STAGES.clear()
    stages._STAGES.update(functions)
    pipeline.register_stage_spec(recipe.ExportStage)  # rebuilds the schema without it


def test_a_registered_stage_type_runs_from_yaml(tmp_path, registered):
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    parsed = load_recipe(path)
    assert [s.type for s in parsed.stages] == ["train", "scale_kernels", "export"]
    assert "scale_kernels" in pipeline.stage_types()
    pipeline.run(path, tmp_path / "out", progress=lambda line: None)
    assert registered == [0.5]
    assert (tmp_path / "out").is_dir()


def test_a_registered_stage_spec_validates_its_fields_with_the_line(tmp_path, registered):
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.replace("factor: 0.5", "factor: half"))
    with pytest.raises(RecipeError, match=r"line 8: stages\[1\]\.factor: Input should be a valid"):
        load_recipe(path)


def test_unregistered_stage_type_is_an_error_listing_the_registered_ones(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    with pytest.raises(
        RecipeError,
        match=r"line 8: stages\[1\]: Input tag 'scale_kernels'.*"
        r"'train'",
    ):
        load_recipe(path)


def test_stage_name_must_match_the_spec():
    with pytest.raises(
        ValueError,
        match=r"Literal\['other'\].*ScaleKernels.type = "
        r"'scale_kernels'",
    ):
        pipeline.stage("other", spec=ScaleKernels)


def test_a_spec_without_a_type_literal_is_refused():
    class NoType(pipeline.StageSpec):
        factor: float = 1.0

    with pytest.raises(TypeError, match="needs a field `type: Literal"):
        pipeline.register_stage_spec(NoType)


def test_a_registered_cluster_init_is_accepted_by_recipes(tmp_path):
    text = RECIPE.replace(
        "  - {type: scale_kernels, factor: 0.5}\n",
        "  - {type: cluster, number_of_clusters: 4, init: every_nth}\n",
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=r"stages\[1\]: .*init must be one of"):
        load_recipe(path)
    cluster.register_init(
        "every_nth",
        lambda w, k, seed=0: np.sort(np.asarray(w).ravel())[:: max(1, np.asarray(w).size // k)][:k],
    )
    try:
        assert load_recipe(path).stages[1].init == "every_nth"
    finally:
        from tfcompress.cluster import init as init_lib

        init_lib._INITS.pop("every_nth", None)


def test_an_export_mode_registered_after_import_is_accepted(tmp_path):
    from tfcompress.export import modes

    text = RECIPE.replace("  - {type: scale_kernels, factor: 0.5}\n", "").replace(
        "modes: [float32]", "modes: [float32, float32_plain]"
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=r"modes\[1\]: .*unknown export mode 'float32_plain'"):
        load_recipe(path)
    float32 = modes.get_mode("float32")
    modes.register_mode(
        modes.ExportMode("float32_plain", "float32 again", "unused", float32.configure)
    )
    try:
        assert load_recipe(path).stages[1].modes == ["float32", "float32_plain"]
    finally:
        modes._MODES.pop("float32_plain", None)


def test_export_stage_with_a_target_records_the_choice(tmp_path):
    text = RECIPE.replace("  - {type: scale_kernels, factor: 0.5}\n", "").replace(
        "{type: export, modes: [float32]}", "{type: export, target: cpu}"
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    assert load_recipe(path).stages[1].modes == []
    records = pipeline.run(path, tmp_path / "out", progress=lambda line: None)
    chosen = records[-1]["exports"]["target_cpu"]
    assert chosen["path"] == "model_cpu.tflite"
    assert chosen["mode"] in {c["mode"] for c in chosen["candidates"]}
    assert any(c["latency_ms"] for c in chosen["candidates"])
    assert chosen["top1_agreement"] >= 0.95
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"`model_cpu.tflite`: {chosen['mode']}" in report and "Candidates:" in report


def test_an_export_stage_needs_modes_or_a_target(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(
        RECIPE.replace("  - {type: scale_kernels, factor: 0.5}\n", "").replace(
            "modes: [float32]", "modes: []"
        )
    )
    with pytest.raises(RecipeError, match="at least one of 'modes'"):
        load_recipe(path)


MIXED = """\
name: mixed
data: {embedded: digits}
model:
  factory: tfcompress.testing:digits_cnn
  kwargs: {filters: [8, 16], dense_units: 32}
stages:
  - {type: train, epochs: 2, learning_rate: 0.003}
  - {type: prune, final_sparsity: 0.8, epochs: 1}
  - {type: qat, weight_scheme: int4, layers: {"dense*": int2}, epochs: 1}
  - {type: export, modes: [int4], layers: {"dense*": int2}}
"""


def test_a_recipe_trains_and_writes_per_layer_bit_widths(tmp_path):
    from tfcompress import export

    path = tmp_path / "recipe.yaml"
    path.write_text(MIXED)
    records = pipeline.run(path, tmp_path / "out", progress=lambda line: None)
    qat_report = records[2]["quantize_report"]
    assert "int2" in qat_report and "int4" in qat_report
    exported = records[3]["exports"]["int4"]
    assert exported["top1_agreement"] >= 0.95
    file = tmp_path / "out" / "04_export" / exported["path"]
    bits = sorted({w.bits for w in export.inspect(str(file)).weights})
    assert bits == [2, 4]


def test_qat_layers_naming_no_layer_is_an_error(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(
        MIXED.replace(
            'layers: {"dense*": int2}, epochs: 1', 'layers: {"classifier": int2}, epochs: 1'
        )
    )
    with pytest.raises(RecipeError, match="'classifier', which matches no layer"):
        pipeline.run(path, tmp_path / "out", progress=lambda line: None)


def test_qat_layers_with_an_unknown_scheme_is_an_error(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(
        MIXED.replace('layers: {"dense*": int2}, epochs: 1', 'layers: {"dense*": int3}, epochs: 1')
    )
    with pytest.raises(RecipeError, match="int3"):
        load_recipe(path)
