"""Running a recipe stage by stage, with a record per stage and resume after a kill."""

import hashlib
import json
import os
import time

import numpy as np

from tfcompress import _io
from tfcompress.pipeline import data as data_lib
from tfcompress.pipeline import stages as stages_lib
from tfcompress.pipeline.recipe import RecipeError, load_recipe


def _stage_key(stage):
    return hashlib.sha256(json.dumps(stage.model_dump(), sort_keys=True).encode()).hexdigest()


def stage_folder(out_dir, index, stage):
    return os.path.join(out_dir, f"{index + 1:02d}_{stage.type}")


def measure(model, data, folder):
    """Accuracy, parameter counts and float32 TFLite size of a model."""
    import keras

    from tfcompress import export

    x, y = data.x_test, data.y_test
    logits = model.predict(x, verbose=0)
    weights = [w for w in model.weights if "kernel" in w.path or "embeddings" in w.path]
    total = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    nonzero = int(sum(np.count_nonzero(keras.ops.convert_to_numpy(w)) for w in
                      model.trainable_weights))
    kernels = int(sum(np.prod(w.shape) for w in weights))
    path = os.path.join(folder, ".size_probe.tflite")
    try:
        probe = export.to_tflite(model, path, mode="float32")
        sizes = dict(float32_bytes=probe.bytes, float32_gzip_bytes=probe.gzip_bytes)
    except Exception as e:  # a model that does not convert still gets its other numbers
        sizes = dict(float32_bytes=None, float32_gzip_bytes=None, size_error=str(e)[:300])
    finally:
        if os.path.exists(path):
            os.remove(path)
    return dict(accuracy=float(np.mean(np.argmax(logits, -1) == y)), parameters=total,
                nonzero_parameters=nonzero, kernel_parameters=kernels, **sizes)


def run(recipe, out_dir, force=False, progress=print):
    """Run a recipe, resuming after the last finished stage.

    Args:
        recipe: a `Recipe`, a dict, or a path to a YAML file.
        out_dir: output folder (created); each stage writes `NN_type/`.
        force: rerun every stage even if its record says it finished.
        progress: called with one line per step.

    Returns:
        The list of stage records (dicts), also written to `out_dir/run.json`.
    """
    import keras

    if not hasattr(recipe, "stages"):
        recipe = load_recipe(recipe)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise RecipeError(f"The output folder '{out_dir}' is a file. Pass another --out.")
    os.makedirs(out_dir, exist_ok=True)

    keras.utils.set_random_seed(recipe.seed)
    progress(f"loading data ({recipe.data.embedded or recipe.data.npz or recipe.data.factory})")
    data = data_lib.load_data(recipe.data, seed=recipe.seed, cache_dir=out_dir)
    model = None
    records = []
    resumable = not force
    for index, spec in enumerate(recipe.stages):
        folder = stage_folder(out_dir, index, spec)
        record_path = os.path.join(folder, "record.json")
        model_path = os.path.join(folder, "model.keras")
        key = _stage_key(spec)
        if resumable and os.path.isfile(record_path):
            previous = json.load(open(record_path))
            if previous.get("key") == key and previous.get("status") == "done" and (
                    os.path.isfile(model_path)):
                progress(f"stage {index + 1}/{len(recipe.stages)} {spec.type}: done before, "
                         "skipping")
                records.append(previous)
                model = None  # loaded lazily, only if a later stage runs
                continue
        resumable = False  # everything after a rerun stage reruns too
        if model is None:
            model = _current_model(recipe, records, out_dir)
        os.makedirs(folder, exist_ok=True)
        progress(f"stage {index + 1}/{len(recipe.stages)} {spec.type}")
        start = time.perf_counter()
        record = {"stage": index + 1, "type": spec.type, "spec": spec.model_dump(), "key": key}
        ctx = stages_lib.StageContext(model=model, data=data, folder=folder, progress=progress,
                                      record=record,
                                      history=tuple(s.type for s in recipe.stages[:index]))
        model = stages_lib.get_stage(spec.type)(ctx, spec)
        record["seconds"] = round(time.perf_counter() - start, 2)
        record.update(measure(model, data, folder))
        _io.atomic_save_keras(model, model_path)
        record["status"] = "done"
        _io.atomic_write_text(record_path, json.dumps(record, indent=2, default=str))
        records.append(record)
        progress(f"stage {index + 1} {spec.type}: accuracy {record['accuracy']:.4f}, "
                 f"{record['nonzero_parameters']:,} non-zero parameters, "
                 f"{record['seconds']:.0f} s")
    _io.atomic_write_text(os.path.join(out_dir, "run.json"),
                          json.dumps({"recipe": recipe.model_dump(), "stages": records},
                                     indent=2, default=str))
    from tfcompress.pipeline.report import write_report

    progress("writing the report")
    final = model if model is not None else _current_model(recipe, records, out_dir)
    first = _stage_model(recipe, records[0], out_dir)
    report = write_report(out_dir, records, f"tfcompress report: {recipe.name}",
                          first_model=first, final_model=final)
    progress(f"wrote {report} and report.html")
    return records


def _stage_model(recipe, record, out_dir):
    import keras

    stages_lib.register_custom_layers()
    folder = stage_folder(out_dir, record["stage"] - 1, recipe.stages[record["stage"] - 1])
    return keras.saving.load_model(os.path.join(folder, "model.keras"))


def _current_model(recipe, records, out_dir):

    if not records:
        return data_lib.load_model(recipe.model)
    return _stage_model(recipe, records[-1], out_dir)
