"""Running a recipe stage by stage, with a record per stage and an honest resume.

A finished stage is reused only when everything upstream of it is unchanged:
its key hashes the tfcompress version, the model source, a fingerprint of the
data, the seed, the stage's own options and the previous stage's key and
output hash. Its outputs are reused only when their size and sha256 still
match `record.json`. Anything else reruns the stage, with a warning that
names the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from tfcompress import _io
from tfcompress.pipeline import data as data_lib
from tfcompress.pipeline import stages as stages_lib
from tfcompress.pipeline.recipe import Recipe, RecipeError, load_recipe

#: Bumped when the meaning of a record changes, so older records are not trusted.
RECORD_FORMAT = 2


def _sha(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _source_key(recipe, data):
    """What every stage depends on: version, model source, data, seed."""
    from tfcompress import __version__

    model = recipe.model.model_dump()
    if recipe.model.path is not None:
        model["sha256"] = _io.file_digest(recipe.model.path)[1]
    return _sha(
        dict(
            format=RECORD_FORMAT,
            version=__version__,
            model=model,
            data=data_lib.fingerprint(data),
            data_spec=recipe.data.model_dump(),
            seed=recipe.seed,
        )
    )


def _stage_key(upstream, stage):
    return _sha(dict(upstream=upstream, stage=stage.model_dump()))


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
    nonzero = int(
        sum(np.count_nonzero(keras.ops.convert_to_numpy(w)) for w in model.trainable_weights)
    )
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
    return dict(
        accuracy=float(np.mean(np.argmax(logits, -1) == y)),
        parameters=total,
        nonzero_parameters=nonzero,
        kernel_parameters=kernels,
        **sizes,
    )


def _outputs(folder, record):
    """The files a stage wrote, by name: model.keras and every exported file."""
    names = ["model.keras"] + [e["path"] for e in record.get("exports", {}).values()]
    result = {}
    for name in names:
        size, digest = _io.file_digest(os.path.join(folder, name))
        result[name] = {"bytes": size, "sha256": digest}
    return result


def check_finished(folder, key):
    """The stage's record when it can be trusted, else `(None, why)`.

    Trusted means: `record.json` parses, says "done", carries `key`, and
    every output it lists is present with the recorded size and sha256.

    Returns:
        `(record, None)`, or `(None, reason)` where reason is `None` when the
        stage simply never finished, else one line naming the file.
    """
    record_path = os.path.join(folder, "record.json")
    if not os.path.isfile(record_path):
        return None, None
    try:
        with open(record_path, encoding="utf-8") as f:
            record = json.load(f)
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        return None, f"{record_path} is corrupt ({type(e).__name__}: {str(e)[:80]})"
    if record.get("status") != "done":
        return None, None
    if record.get("key") != key:
        return None, (
            "its model, data, seed, options, an earlier stage or the tfcompress version changed"
        )
    outputs = record.get("outputs")
    if not isinstance(outputs, dict) or "model.keras" not in outputs:
        return None, f"{record_path} lists no outputs (written by an older version)"
    for name, expected in outputs.items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return None, f"{path} is missing"
        size, digest = _io.file_digest(path)
        if size != expected.get("bytes"):
            return None, (
                f"{path} is {size} bytes, not the {expected.get('bytes')} it was "
                "written with (truncated or replaced)"
            )
        if digest != expected.get("sha256"):
            return None, f"{path} changed since the stage wrote it (sha256 differs)"
    return record, None


def _clear_other_backups(folder, key):
    """Remove training backups of other stage keys (and the pre-key layout)."""
    root = os.path.join(folder, "backup")
    keep = os.path.basename(stages_lib.backup_folder(folder, key))
    if not os.path.isdir(root):
        return
    for name in os.listdir(root):
        if name != keep:
            path = os.path.join(root, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)


def run(
    recipe: Recipe | dict | str | os.PathLike,
    out_dir: str | os.PathLike,
    force: bool = False,
    progress: Callable[[str], Any] = print,
    trust_code: bool = False,
) -> list[dict]:
    """Run a recipe, resuming after the last stage that finished with the same inputs.

    Args:
        recipe: a `Recipe`, a dict, or a path to a YAML file.
        out_dir: output folder (created); each stage writes `NN_type/`.
        force: rerun every stage even if its record says it finished.
        progress: called with one line per step.
        trust_code: allow the recipe to run factories other than tfcompress's
            model builders (`data.TRUSTED_FACTORIES`), and to load `.h5` models and
            Lambda layers. Off by default, as
            Keras's `safe_mode`: the error says what would have run.

    Returns:
        The list of stage records (dicts), also written to `out_dir/run.json`.

    Raises:
        RecipeError: a recipe, model or data problem (`DataError` for the data).
        UntrustedCodeError: the recipe names code and `trust_code` is False.
        RunInProgressError: another run holds `out_dir`.

    Example:

    >>> records = tfcompress.pipeline.run("digits.yaml", "run_out", progress=lambda line: None)
    >>> records[0]["status"]
    'done'
    """
    if not hasattr(recipe, "stages"):
        recipe = load_recipe(recipe)
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise RecipeError(f"The output folder '{out_dir}' is a file. Pass another --out.")
    # False keeps what an enclosing `trusting()` block allows (the CLI's --trust-code).
    with data_lib.trusting(trust_code or None):
        # Imports first: a typo in a factory fails in a second, not after loading data.
        data_lib.check_recipe_code(recipe)
        os.makedirs(out_dir, exist_ok=True)
        with _io.folder_lock(out_dir):
            for path in _io.remove_stale_temp_files(out_dir):
                progress(f"removed a temporary file left by a killed run: {path}")
            _io.remove_stale_temp_dirs()
            return _run_locked(recipe, out_dir, force, progress)


def _run_locked(recipe, out_dir, force, progress):
    import keras

    keras.utils.set_random_seed(recipe.seed)
    progress(f"loading data ({recipe.data.embedded or recipe.data.npz or recipe.data.factory})")
    data = data_lib.load_data(recipe.data, seed=recipe.seed, cache_dir=out_dir)
    data = data_lib.validate_data(data)
    upstream = _source_key(recipe, data)
    model = None
    records = []
    resumable = not force
    checked = False
    for index, spec in enumerate(recipe.stages):
        folder = stage_folder(out_dir, index, spec)
        key = _stage_key(upstream, spec)
        label = f"stage {index + 1}/{len(recipe.stages)} {spec.type}"
        if resumable:
            previous, why = check_finished(folder, key)
            if previous is not None:
                progress(f"{label}: done before, skipping")
                records.append(previous)
                upstream = _sha([key, previous["outputs"]["model.keras"]["sha256"]])
                model = None  # loaded lazily, only if a later stage runs
                continue
            if why:
                progress(f"warning: {label} reruns: {why}")
        resumable = False  # everything after a rerun stage reruns too
        if model is None:
            model = _current_model(recipe, records, out_dir)
        if not checked:
            data_lib.check_data_fits(model, data)
            checked = True
        os.makedirs(folder, exist_ok=True)
        _clear_other_backups(folder, key)
        # A record that no longer describes the folder goes before the work starts.
        if os.path.exists(os.path.join(folder, "record.json")):
            os.remove(os.path.join(folder, "record.json"))
        progress(label)
        start = time.perf_counter()
        record = {"stage": index + 1, "type": spec.type, "spec": spec.model_dump(), "key": key}
        ctx = stages_lib.StageContext(
            model=model,
            data=data,
            folder=folder,
            progress=progress,
            record=record,
            history=tuple(s.type for s in recipe.stages[:index]),
            key=key,
        )
        model = stages_lib.get_stage(spec.type)(ctx, spec)
        record["seconds"] = round(time.perf_counter() - start, 2)
        record.update(measure(model, data, folder))
        _io.atomic_save_keras(model, os.path.join(folder, "model.keras"))
        record["outputs"] = _outputs(folder, record)
        record["status"] = "done"
        _io.atomic_write_text(
            os.path.join(folder, "record.json"), json.dumps(record, indent=2, default=str)
        )
        # Only now is the backup redundant: a kill before this line resumes from it.
        shutil.rmtree(os.path.join(folder, "backup"), ignore_errors=True)
        records.append(record)
        upstream = _sha([key, record["outputs"]["model.keras"]["sha256"]])
        progress(
            f"stage {index + 1} {spec.type}: accuracy {record['accuracy']:.4f}, "
            f"{record['nonzero_parameters']:,} non-zero parameters, "
            f"{record['seconds']:.0f} s"
        )
    _io.atomic_write_text(
        os.path.join(out_dir, "run.json"),
        json.dumps({"recipe": recipe.model_dump(), "stages": records}, indent=2, default=str),
    )
    from tfcompress.pipeline.report import write_report

    progress("writing the report")
    final = model if model is not None else _current_model(recipe, records, out_dir)
    first = _stage_model(recipe, records[0], out_dir)
    report = write_report(
        out_dir, records, f"tfcompress report: {recipe.name}", first_model=first, final_model=final
    )
    progress(f"wrote {report} and report.html")
    return records


def _stage_model(recipe, record, out_dir):
    folder = stage_folder(out_dir, record["stage"] - 1, recipe.stages[record["stage"] - 1])
    # Our own file, checked by hash: load with tfcompress's layers registered.
    return data_lib.load_model_file(os.path.join(folder, "model.keras"))


def _current_model(recipe, records, out_dir):
    if not records:
        return data_lib.load_model(recipe.model)
    return _stage_model(recipe, records[-1], out_dir)
