"""The pipeline: one recipe from a model to a verified `.tflite` file, with resume."""

from tfcompress.pipeline.recipe import Recipe, RecipeError, load_recipe
from tfcompress.pipeline.runner import run
from tfcompress.pipeline.stages import StageContext, stage
from tfcompress.pipeline.tuning import tune

__all__ = ["Recipe", "RecipeError", "StageContext", "load_recipe", "run", "stage", "tune"]
