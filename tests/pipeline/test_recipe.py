import pytest

from tfcompress.pipeline import RecipeError, load_recipe

GOOD = """\
name: ok
data: {embedded: digits}
model:
  factory: tfcompress.testing:digits_cnn
stages:
  - {type: train, epochs: 1}
  - type: prune
    final_sparsity: 0.5
  - {type: export, modes: [float32, int8]}
"""


def write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_a_good_recipe_loads(tmp_path):
    recipe = load_recipe(write(tmp_path, GOOD))
    assert [s.type for s in recipe.stages] == ["train", "prune", "export"]
    assert recipe.stages[1].schedule == "polynomial"
    assert recipe.stages[2].modes == ["float32", "int8"]


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            ("epochs: 1", "epochs: many"),
            "line 6: stages[0].epochs: Input should be a valid integer",
        ),
        (
            ("final_sparsity: 0.5", "final_sparsity: 1.5"),
            "line 8: stages[1].final_sparsity: Input should be less than 1 (received 1.5)",
        ),
        (
            ("final_sparsity: 0.5", "final_sparsity: 0.5\n    sparsty: 0.2"),
            "line 9: stages[1].sparsty: unknown key",
        ),
        (("int8]", "int3]"), "line 9: stages[2].modes[1]: Value error, unknown export mode 'int3'"),
        (("type: prune", "type: shrink"), "line 7: stages[1]: Input tag 'shrink'"),
        (("name: ok", "name: ok\ncolour: blue"), "line 2: colour: unknown key"),
    ],
)
def test_mistakes_name_line_and_field(tmp_path, edit, message):
    with pytest.raises(
        RecipeError,
        match=message.replace("[", "\\[")
        .replace("]", "\\]")
        .replace("(", "\\(")
        .replace(")", "\\)"),
    ):
        load_recipe(write(tmp_path, GOOD.replace(*edit)))


def test_export_before_any_training_is_refused(tmp_path):
    text = GOOD.replace("  - {type: train, epochs: 1}\n", "")
    with pytest.raises(RecipeError, match="stage 1 \\(prune\\) comes before any stage that trains"):
        load_recipe(write(tmp_path, text))


def test_qat_before_prune_is_allowed(tmp_path):
    text = GOOD.replace("  - type: prune\n", "  - {type: qat}\n  - type: prune\n")
    assert [s.type for s in load_recipe(write(tmp_path, text)).stages][:3] == [
        "train",
        "qat",
        "prune",
    ]


def test_two_model_sources(tmp_path):
    text = GOOD.replace("model:\n", "model:\n  path: m.keras\n")
    with pytest.raises(RecipeError, match="model: Value error, give exactly one of 'path'"):
        load_recipe(write(tmp_path, text))


def test_not_yaml_and_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="is not valid YAML"):
        load_recipe(write(tmp_path, "stages: [\n"))
    with pytest.raises(RecipeError, match="No recipe file at"):
        load_recipe(tmp_path / "absent.yaml")


@pytest.mark.parametrize("name", ["digits.yaml", "sst2.yaml"])
def test_shipped_recipes_validate(name):
    import os

    from tfcompress import pipeline

    path = os.path.join(os.path.dirname(pipeline.__file__), "recipes", name)
    recipe = load_recipe(path)
    assert recipe.stages[-1].type == "export"
    if name == "sst2.yaml":  # the text demo writes the int4 file docs/cli.md measures
        assert "int4" in recipe.stages[-1].modes
