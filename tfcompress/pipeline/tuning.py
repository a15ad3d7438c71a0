"""Accuracy-aware search: the smallest int8 file whose validation accuracy stays in budget.

`tune(recipe, out_dir, max_accuracy_drop=0.01, trials=12)` trains the base
model with the recipe's leading `train` / `distill` stages (through `run`,
so it resumes), ranks layers by how much int8 hurts them, then tries
candidates smallest first (by an estimate of their gzip size) until one
keeps `base validation accuracy - max_accuracy_drop`, or the trials run out.

A candidate is a sparsity level, a cluster count, the layers kept in float
(the most sensitive first) and PTQ or QAT. Each trial fine-tunes, exports
int8, and measures the *file* in LiteRT on the validation split. Test-split
numbers are reported, never used to choose.

With `bit_widths=(8, 4, 2)` the search also tries files with real int4 and
int2 weights (litert-quantizer, `tfcompress.export.lowbit`): every layer at
the width, except the layers most sensitive *at that width* (measured one
layer at a time, the others float), which get one step more (int2 -> int4,
int4 -> int8) or stay float. So each layer's width is float, int8, int4 or
int2, chosen by measured sensitivity.

The recipe's own compression stages (prune, cluster, qat, export, ...) are
ignored: the search space replaces them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tfcompress import _io
from tfcompress.pipeline import search_space
from tfcompress.pipeline import sensitivity as sensitivity_lib
from tfcompress.pipeline import trials as trials_lib
from tfcompress.pipeline.recipe import Recipe, RecipeError, load_recipe
from tfcompress.pipeline.report import tune_markdown
from tfcompress.pipeline.search_space import BIT_WIDTHS, describe

_TRAINS = ("train", "distill")


@dataclasses.dataclass(frozen=True)
class TuneResult:
    """What `tune` found (also written to `out_dir/tune.json`).

    Attributes:
        path: `out_dir/best_int8.tflite` (`best_int4.tflite` / `best_int2.tflite` for a
            low-bit winner), or `None` if no trial produced a file.
        within_budget: whether the chosen file meets the budget; when `False`
            it is the closest trial (highest validation accuracy).
        best: the chosen trial's record (dict), or `None`.
        trials: every trial's record, in the order tried.
        base_val_accuracy: the float base model on the validation split.
        base_test_accuracy: the float base model on the test split.
        budget: the validation accuracy a file must reach.
        sensitivity: `(layer, accuracy gain, output-error gain)` per
            quantizable layer, most sensitive first.
    """

    path: object
    within_budget: bool
    best: object
    trials: list
    base_val_accuracy: float
    base_test_accuracy: float
    budget: float
    sensitivity: list

    def __str__(self):
        if self.best is None:
            return "tune: no trial produced an int8 file"
        b = self.best
        verdict = "within budget" if self.within_budget else "NONE within budget; closest"
        return (
            f"tune: {verdict}: trial {b['trial']} ({describe(b)}), validation accuracy "
            f"{b['val_accuracy']:.4f} (budget {self.budget:.4f}), test "
            f"{b['test_accuracy']:.4f}, {b['gzip_bytes']:,} bytes gzipped -> {self.path}"
        )


def check_arguments(max_accuracy_drop, trials):
    """Raise `ValueError` for a budget or trial count `tune` cannot use."""
    if (
        isinstance(max_accuracy_drop, bool)
        or not isinstance(max_accuracy_drop, (int, float))
        or not 0 <= max_accuracy_drop < 1
    ):
        raise ValueError(
            "max_accuracy_drop is an absolute accuracy drop in [0, 1), e.g. 0.01 "
            f"for one point. Received: max_accuracy_drop={max_accuracy_drop!r}"
        )
    if isinstance(trials, bool) or not isinstance(trials, (int, np.integer)) or trials < 1:
        raise ValueError(f"trials must be a positive integer. Received: trials={trials!r}")


def tune(
    recipe: Recipe | dict | str | os.PathLike,
    out_dir: str | os.PathLike,
    max_accuracy_drop: float = 0.01,
    trials: int = 12,
    progress: Callable[[str], Any] = print,
    epochs: int = 2,
    max_float_layers: int = 2,
    force: bool = False,
    bit_widths: Sequence[int] | int = (8,),
) -> TuneResult:
    """Search for the smallest int8 file within an accuracy budget.

    Args:
        recipe: a `Recipe`, a dict, or a path to a YAML file. Its leading
            `train` / `distill` stages make the base model (in `out_dir/base`,
            resumed like `run`); its compression stages are ignored.
        out_dir: output folder (created).
        max_accuracy_drop: largest absolute drop of validation accuracy
            against the float base model, in [0, 1).
        trials: most candidates to train, export and verify.
        progress: called with one line per step.
        epochs: fine-tuning epochs per compression step (prune, cluster, QAT).
        max_float_layers: most layers kept in float (the most sensitive first).
        force: rerun the base stages and every trial.
        bit_widths: weight widths to search, a subset of `(8, 4, 2)`: 8 is the
            converter's int8 file; 4 and 2 are litert-quantizer files with
            per-layer widths (the most sensitive layers one step wider).

    Returns:
        A `TuneResult`. Writes `out_dir/best_int8.tflite`, `tune.json` and
        `tune.md` (the search table).

    Raises:
        ValueError: `max_accuracy_drop` outside [0, 1) or `trials` < 1.
        RecipeError: the recipe is invalid or has no leading train / distill
            stage and no trained model `path`.

    Example:

    >>> result = tune("digits.yaml", "tuned", max_accuracy_drop=0.02, trials=1, epochs=1)
    >>> result.within_budget, result.best["gzip_bytes"]
    """
    check_arguments(max_accuracy_drop, trials)
    widths = _check_bit_widths(bit_widths)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer. Received: epochs={epochs!r}")
    spec = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise RecipeError(f"The output folder '{out_dir}' is a file. Pass another --out.")
    os.makedirs(out_dir, exist_ok=True)

    import keras

    from tfcompress.pipeline import data as data_lib

    base, base_key = _base_model(spec, out_dir, force, progress)
    keras.utils.set_random_seed(spec.seed)
    data = data_lib.load_data(spec.data, seed=spec.seed, cache_dir=out_dir)
    base_val = sensitivity_lib.accuracy(base, data.x_val, data.y_val)
    base_test = sensitivity_lib.accuracy(base, data.x_test, data.y_test)
    budget = base_val - max_accuracy_drop
    progress(
        f"base model: validation accuracy {base_val:.4f}, test {base_test:.4f}; "
        f"budget: validation accuracy >= {budget:.4f}"
    )

    sensitivity = []  # the int8 ranking (layers kept float), for int8 files only
    if 8 in widths:
        sensitivity = sensitivity_lib.int8_sensitivity(
            base, data, out_dir, base_key, force, progress
        )
    ranked = [s["layer"] for s in sensitivity if s["stays_float"]]
    prunable = search_space.prunable_layers(base)
    low = [b for b in widths if b != 8]
    bit_ranking = sensitivity_lib.bit_sensitivity(
        base, data, out_dir, base_key, force, progress, low
    )
    candidates = search_space.candidates(
        base, ranked, prunable, max_float_layers, widths, bit_ranking
    )
    progress(f"{len(candidates)} candidates; trying at most {trials}, smallest first")

    settings = dict(base=base_key, epochs=epochs, seed=spec.seed)
    searcher = trials_lib.Search(base, data, out_dir, settings, force, progress)
    records: list[dict] = []
    for candidate in candidates[:trials]:
        record = searcher.trial(len(records) + 1, candidate, budget)
        records.append(record)
        if record.get("within_budget"):
            break

    return _finish(
        out_dir,
        spec,
        records,
        sensitivity,
        base_val,
        base_test,
        budget,
        max_accuracy_drop,
        trials,
        progress,
    )


def _base_model(recipe, out_dir, force, progress):
    """The float model made by the recipe's leading train / distill stages, and its key."""
    import keras

    from tfcompress.pipeline import runner
    from tfcompress.pipeline.data import register_custom_layers

    leading = []
    for spec in recipe.stages:
        if spec.type not in _TRAINS:
            break
        leading.append(spec)
    register_custom_layers()
    if not leading:
        if recipe.model.path is None:
            raise RecipeError(
                "tune needs a trained base model: start the recipe with a "
                "'train' (or 'distill') stage, or give a trained model 'path'."
            )
        progress(f"base model: {recipe.model.path} (no train stage in the recipe)")
        from tfcompress.pipeline.data import load_model

        return load_model(recipe.model), trials_lib.digest(recipe.model.model_dump())
    base_recipe = recipe.model_copy(update={"stages": leading})
    progress(
        f"base model: running the recipe's first {len(leading)} stage(s) into "
        f"{os.path.join(out_dir, 'base')}"
    )
    records = runner.run(base_recipe, os.path.join(out_dir, "base"), force=force, progress=progress)
    folder = runner.stage_folder(os.path.join(out_dir, "base"), len(leading) - 1, leading[-1])
    model = keras.saving.load_model(os.path.join(folder, "model.keras"))
    return model, trials_lib.digest([r["key"] for r in records] + [base_recipe.model_dump()])


def _check_bit_widths(bit_widths):
    widths = tuple(bit_widths) if isinstance(bit_widths, (list, tuple)) else (bit_widths,)
    if not widths or any(isinstance(b, bool) or b not in BIT_WIDTHS for b in widths):
        raise ValueError(
            f"bit_widths is a non-empty subset of {BIT_WIDTHS} (8: int8 file; 4, 2: "
            f"int4 / int2 weights). Received: bit_widths={bit_widths!r}"
        )
    return tuple(dict.fromkeys(widths))


def _finish(
    out_dir, recipe, records, sensitivity, base_val, base_test, budget, max_drop, trials, progress
):
    best, within = trials_lib.choose(records)
    path = None
    if best is not None:
        path = os.path.join(out_dir, f"best_int{best.get('bits', 8)}.tflite")
        with _io.atomic_path(path) as tmp:
            shutil.copyfile(os.path.join(out_dir, best["file"]), tmp)
    base_gzip = _base_float_gzip(out_dir)
    result = TuneResult(
        path=path,
        within_budget=within,
        best=best,
        trials=records,
        base_val_accuracy=base_val,
        base_test_accuracy=base_test,
        budget=budget,
        sensitivity=sensitivity,
    )
    summary = dict(
        recipe=recipe.name,
        max_accuracy_drop=max_drop,
        trials_allowed=trials,
        base_val_accuracy=base_val,
        base_test_accuracy=base_test,
        budget=budget,
        base_float32_gzip_bytes=base_gzip,
        within_budget=within,
        best=best,
        best_file=path,
        sensitivity=sensitivity,
        trials=records,
    )
    _io.atomic_write_text(
        os.path.join(out_dir, "tune.json"), json.dumps(summary, indent=2, default=str)
    )

    _io.atomic_write_text(
        os.path.join(out_dir, "tune.md"),
        tune_markdown(
            records,
            best,
            within,
            path,
            sensitivity,
            base_val,
            base_test,
            budget,
            max_drop,
            trials,
            base_gzip,
        ),
    )
    return result


def _base_float_gzip(out_dir):
    path = os.path.join(out_dir, "base", "run.json")
    if not os.path.isfile(path):
        return None
    stages = json.load(open(path)).get("stages") or []
    return stages[-1].get("float32_gzip_bytes") if stages else None
