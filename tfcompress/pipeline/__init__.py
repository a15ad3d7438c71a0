"""The pipeline: one recipe from a model to a verified `.tflite` file, with resume."""

from tfcompress.pipeline.recipe import (
    Recipe,
    RecipeError,
    StageSpec,
    TrainingStageSpec,
    load_recipe,
    register_stage_spec,
    stage_types,
)
from tfcompress.pipeline.runner import run
from tfcompress.pipeline.stages import StageContext, stage
from tfcompress.pipeline.tuning import tune

__all__ = [
    "Recipe",
    "RecipeError",
    "StageContext",
    "StageSpec",
    "TrainingStageSpec",
    "load_recipe",
    "register_stage_spec",
    "run",
    "stage",
    "stage_types",
    "tune",
]
