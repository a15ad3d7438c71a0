"""What each recipe stage does: one registered function per stage type.

A stage function takes a `StageContext` and its spec and returns the new
current model (or the same one). New stage types register with `@stage`.
"""

import dataclasses
import functools
import hashlib
import json
import os
import shutil
from collections.abc import Callable

from tfcompress import _io

_STAGES: dict[str, Callable] = {}


def stage(name: str, spec: type | None = None) -> Callable[[Callable], Callable]:
    """Register `function(ctx, spec) -> model` as the implementation of stage `name`.

    Args:
        name: the stage type, as recipes name it (`type: name`).
        spec: for a new stage type, its spec model (a `StageSpec` subclass
            with `type: Literal[name]`), which validates the recipe entry;
            `None` to replace the function of an existing type.

    Returns:
        A decorator that registers the function and returns it unchanged.

    Example:

    >>> from typing import Literal
    >>> from tfcompress.pipeline import StageSpec, stage
    >>> class FreezeStage(StageSpec):
    ...     type: Literal["freeze"]
    >>> @stage("freeze", spec=FreezeStage)
    ... def freeze(ctx, spec):
    ...     ctx.model.trainable = False
    ...     return ctx.model
    """
    if spec is not None:
        from tfcompress.pipeline.recipe import register_stage_spec, spec_name

        if spec_name(spec) != name:
            raise ValueError(
                f"The spec's `type` field must be Literal[{name!r}], the stage's "
                f"name. Received: {spec.__name__}.type = {spec_name(spec)!r}"
            )
        register_stage_spec(spec)

    def register(function):
        _STAGES[name] = function
        return function

    return register


def get_stage(name):
    """The function registered for stage type `name`."""
    return _STAGES[name]


@dataclasses.dataclass
class StageContext:
    """What a stage works on.

    Attributes:
        model: the current model.
        data: `PipelineData`.
        folder: the stage's own output folder.
        progress: called with one line of progress text.
        record: dict the stage may add entries to (saved in record.json).
        history: the types of the stages that ran before this one.
        key: the stage's resume key; training backups live under it, so a
            changed recipe never restores another run's weights.
    """

    model: object
    data: object
    folder: str
    progress: object
    record: dict
    history: tuple = ()
    key: str = ""


def compile_for_labels(model, learning_rate, optimizer=None):
    import keras

    model.compile(
        optimizer=optimizer or keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def backup_folder(folder, key):
    """Where a stage's training backup lives: one subfolder per stage key."""
    return os.path.join(folder, "backup", key[:16] or "nokey")


def _digest(path):
    return _io.file_digest(path)[1]


def _weights_bytes(model):
    """The model's `.weights.h5` content, built in memory.

    Keras's `save_weights` writes through HDF5 straight to disk; when the disk
    fills up, HDF5 is left with a half-written open file and the process
    crashes later (exit 139). Building the file in memory and writing the
    bytes with plain Python I/O turns a full disk into an ordinary `OSError`.
    """
    import io

    from keras.src.saving import saving_lib

    buffer = io.BytesIO()
    store = saving_lib.H5IOStore(buffer, mode="w")
    saving_lib._save_state(
        model, weights_store=store, assets_store=None, inner_path="", visited_saveables=set()
    )
    store.close()
    return buffer.getvalue()


def _make_backup_callback(folder, progress, keep):
    import keras

    class SafeBackupAndRestore(keras.callbacks.BackupAndRestore):
        """BackupAndRestore whose backup is written atomically and checked before use.

        The weights file is written to a temporary name and renamed; the
        metadata records its sha256. A backup whose weights do not match, or
        that fails to load, is discarded with a warning and training starts over.
        """

        def __init__(self):
            super().__init__(folder, delete_checkpoint=not keep)

        def _backup_problem(self):
            weights, meta = self._weights_path, self._training_metadata_path
            if not (os.path.exists(weights) or os.path.exists(meta)):
                return None
            try:
                with open(meta, encoding="utf-8") as f:
                    metadata = json.load(f)
                if not isinstance(metadata, dict) or not isinstance(metadata.get("epoch"), int):
                    return f"{meta} holds no epoch"
            except (OSError, ValueError) as e:
                return f"{meta} is unreadable ({type(e).__name__})"
            if not os.path.isfile(weights):
                return f"{weights} is missing"
            if metadata.get("weights_sha256") != _digest(weights):
                return f"{weights} is partial or corrupt (its sha256 differs from the record)"
            return None

        def _discard(self, problem):
            progress(
                f"warning: discarding the training backup: {problem}; the stage "
                "trains from the start"
            )
            shutil.rmtree(self.backup_dir, ignore_errors=True)

        def on_train_begin(self, logs=None):
            problem = self._backup_problem()
            if problem:
                self._discard(problem)
                return
            if not os.path.exists(self._weights_path):
                return
            before = [v.numpy() for v in self.model.variables]
            try:
                self._load_model()
            except Exception as e:  # noqa: BLE001 - any unloadable backup is discarded
                for v, value in zip(self.model.variables, before):
                    v.assign(value)
                self.model._initial_epoch = 0
                self._discard(
                    f"{self._weights_path} does not load ({type(e).__name__}: {str(e)[:120]})"
                )

        def _save_model(self):
            os.makedirs(self.backup_dir, exist_ok=True)
            data = _weights_bytes(self.model)
            # Weights first, then the metadata naming their hash: a kill between the two
            # leaves a mismatch, which on_train_begin discards.
            _io.atomic_write_bytes(self._weights_path, data)
            _io.atomic_write_text(
                self._training_metadata_path,
                json.dumps(
                    {
                        "epoch": self._current_epoch,
                        "batch": self._last_batch_seen,
                        "weights_sha256": hashlib.sha256(data).hexdigest(),
                    }
                ),
            )

    return SafeBackupAndRestore()


def fit(ctx, model, spec, callbacks=()):
    """`model.fit` on the recipe's data with a checked backup inside the stage folder.

    The backup is kept after `fit()` (the runner removes it once the stage's
    model is saved), so a kill between the end of training and the save
    loses nothing.
    """
    if not model.built:
        # BackupAndRestore needs built weights (a Distiller is built on first call).
        model(_head(ctx.data.x_train))
    # Without a stage key (callers outside the runner) the backup cannot be told apart
    # from another run's, so it goes when fit() ends, as Keras's own does.
    backup = _make_backup_callback(
        backup_folder(ctx.folder, ctx.key), ctx.progress, keep=bool(ctx.key)
    )
    history = model.fit(
        ctx.data.x_train,
        ctx.data.y_train,
        validation_data=(ctx.data.x_val, ctx.data.y_val),
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        callbacks=[backup, *callbacks],
        verbose=2,
    )
    ctx.record["history"] = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    return model


def _head(x, n=2):
    return {k: v[:n] for k, v in x.items()} if isinstance(x, dict) else x[:n]


@stage("train")
def train_stage(ctx, spec):
    if not ctx.model.trainable_weights:
        from tfcompress.pipeline.recipe import RecipeError

        raise RecipeError(
            f"train stage: model '{ctx.model.name}' has no trainable weights (its layers are "
            "frozen or hold no weights), so training would change nothing. Set "
            "layer.trainable = True on the layers to train, or remove the stage. "
            "Received: 0 trainable weights"
        )
    model = compile_for_labels(ctx.model, spec.learning_rate)
    return fit(ctx, model, spec)


@stage("export")
def export_stage(ctx, spec):
    from tfcompress import export

    results = {}
    for mode in spec.modes:
        ctx.progress(f"exporting {mode} and verifying it in LiteRT")
        path = os.path.join(ctx.folder, f"model_{mode}.tflite")
        export_mode = export.get_mode(mode)
        calibration = ctx.data.x_train if export_mode.calibration != "unused" else None
        write = export.to_tflite
        if spec.layers and mode in export.lowbit.lowbit_modes():  # per-layer formats
            write = functools.partial(export.lowbit.to_lowbit_tflite, layers=spec.layers)
        written = write(
            ctx.model,
            path,
            mode=mode,
            representative_data=calibration,
            int8_io=spec.int8_io and export_mode.io_dtype is not None,
            max_calibration_samples=spec.calibration_samples,
        )
        check = export.verify(path, ctx.model, (ctx.data.x_test, ctx.data.y_test))
        latency = export.benchmark(path, num_threads=1, runs=100)
        results[mode] = dict(
            path=os.path.basename(path),
            bytes=written.bytes,
            gzip_bytes=written.gzip_bytes,
            calibration_samples=written.calibration_samples,
            tflite_accuracy=check.tflite_accuracy,
            keras_accuracy=check.keras_accuracy,
            top1_agreement=check.top1_agreement,
            latency_ms=latency.median_ms,
        )
    if spec.target:
        ctx.progress(f"exporting for target {spec.target}: timing the candidates in LiteRT")
        path = os.path.join(ctx.folder, f"model_{spec.target}.tflite")
        written = export.to_tflite(
            ctx.model,
            path,
            target=spec.target,
            representative_data=ctx.data.x_train,
            max_calibration_samples=spec.calibration_samples,
        )
        check = export.verify(path, ctx.model, (ctx.data.x_test, ctx.data.y_test))
        results[f"target_{spec.target}"] = dict(
            path=os.path.basename(path),
            bytes=written.bytes,
            gzip_bytes=written.gzip_bytes,
            calibration_samples=written.calibration_samples,
            tflite_accuracy=check.tflite_accuracy,
            keras_accuracy=check.keras_accuracy,
            top1_agreement=check.top1_agreement,
            latency_ms=min(
                (
                    c.latency_ms
                    for c in written.candidates or ()
                    if c.mode == written.mode and c.latency_ms is not None
                ),
                default=None,
            ),
            mode=written.mode,
            choice=written.choice,
            candidates=[dataclasses.asdict(c) for c in written.candidates or ()],
        )
    ctx.record["exports"] = results
    return ctx.model


@stage("distill")
def distill_stage(ctx, spec):
    import keras

    from tfcompress import distill
    from tfcompress.pipeline.data import build_from_factory

    teacher = ctx.model
    student = build_from_factory(spec.student.factory, dict(spec.student.kwargs), "student")
    ctx.record["teacher_parameters"] = int(teacher.count_params())
    ctx.record["teacher_accuracy"] = float(
        (teacher.predict(ctx.data.x_test, verbose=0).argmax(-1) == ctx.data.y_test).mean()
    )
    try:
        trainer = distill.distiller(
            student, teacher, alpha=spec.alpha, temperature=spec.temperature
        )
    except ValueError as e:  # the student does not fit the teacher (inputs, logits)
        from tfcompress.pipeline.recipe import RecipeError

        raise RecipeError(f"distill stage: {e}") from None
    trainer.compile(
        optimizer=keras.optimizers.Adam(spec.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    fit(ctx, trainer, spec)
    return trainer.student


@stage("qat")
def qat_stage(ctx, spec):
    from tfcompress import quantize

    # Keep what earlier stages bought: zeros from pruning, shared values from clustering.
    config = quantize.QuantizeConfig(
        weight_scheme=spec.weight_scheme,
        preserve_sparsity="prune" in ctx.history,
        preserve_clusters="cluster" in ctx.history,
    )
    ctx.record["preserve"] = {
        "sparsity": config.preserve_sparsity,
        "clusters": config.preserve_clusters,
    }
    model = _annotate_schemes(ctx.model, spec.layers) if spec.layers else ctx.model
    # Ranges start from a calibration pass, then training moves them.
    qat = quantize.quantize_model(model, config, representative_data=_head(ctx.data.x_train, 256))
    report = getattr(qat, "quantize_report", None)
    if report is not None:
        ctx.record["quantize_report"] = str(report)
    compile_for_labels(qat, spec.learning_rate)
    return fit(ctx, qat, spec)


def _annotate_schemes(model, layers):
    """A copy of `model` whose layers matching `layers` (name or glob) carry their own scheme."""
    import fnmatch

    import keras

    from tfcompress import quantize
    from tfcompress._layers import rebuild
    from tfcompress.pipeline.recipe import RecipeError

    names = [layer.name for layer in model.layers]
    for pattern in layers:
        if not fnmatch.filter(names, pattern):
            raise RecipeError(
                f"qat stage: layers names {pattern!r}, which matches no layer of "
                f"'{model.name}' ({', '.join(names)}). Received: layers={dict(layers)!r}"
            )

    def annotate(layer):
        clone = rebuild(layer)
        schemes = [s for pattern, s in layers.items() if fnmatch.fnmatchcase(layer.name, pattern)]
        if schemes:  # later entries win, as in the export stage's layers
            return quantize.quantize_annotate_layer(clone, weight_scheme=schemes[-1])
        return clone

    annotated = keras.models.clone_model(model, clone_function=annotate)
    annotated.set_weights(model.get_weights())
    return annotated


@stage("cluster")
def cluster_stage(ctx, spec):
    from tfcompress import cluster
    from tfcompress.pipeline.recipe import RecipeError

    # After pruning, the zeros stay zeros (tfmot's sparsity-preserving clustering).
    try:
        clustered = cluster.cluster_weights(
            ctx.model,
            number_of_clusters=spec.number_of_clusters,
            init=spec.init,
            preserve_sparsity="prune" in ctx.history,
        )
    except cluster.NothingToClusterError as e:  # e.g. number_of_clusters above every kernel
        raise RecipeError(f"cluster stage: {e}") from None
    report = getattr(clustered, "cluster_report", None)
    if report is not None:
        ctx.record["cluster_report"] = str(report)
    compile_for_labels(clustered, spec.learning_rate)
    fit(ctx, clustered, spec)
    return cluster.strip_clustering(clustered)


def _steps_per_epoch(ctx, spec):
    x = ctx.data.x_train
    n = len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
    return max(1, -(-n // spec.batch_size))


def _pattern(text):
    # "1x4" in YAML means a (1, 4) block; "2:4" and "unstructured" pass through.
    if "x" in text and all(p.isdigit() for p in text.split("x")):
        return tuple(int(p) for p in text.split("x"))
    return text


@stage("prune")
def prune_stage(ctx, spec):
    from tfcompress import prune

    steps = _steps_per_epoch(ctx, spec)
    # Reach the target by 70% of the steps, then fine-tune at full sparsity.
    end_step = max(2, int(0.7 * steps * spec.epochs))
    frequency = max(1, steps // 4)
    if spec.schedule == "constant":
        schedule = prune.ConstantSparsity(spec.final_sparsity, begin_step=0, frequency=frequency)
    else:
        schedule = prune.PolynomialDecay(
            spec.initial_sparsity,
            spec.final_sparsity,
            begin_step=0,
            end_step=end_step,
            frequency=frequency,
        )
    try:
        pruned = prune.prune_low_magnitude(
            ctx.model, schedule, pattern=_pattern(spec.pattern), scope=spec.scope
        )
    except ValueError as e:  # the stage's options do not fit this model (pattern, layers)
        from tfcompress.pipeline.recipe import RecipeError

        raise RecipeError(f"prune stage: {e}") from None
    compile_for_labels(pruned, spec.learning_rate)
    fit(ctx, pruned, spec, callbacks=[prune.UpdatePruningStep()])
    stripped = prune.strip_pruning(pruned)
    ctx.record["sparsity_report"] = str(prune.sparsity_report(stripped))
    return stripped


@stage("remove_units")
def remove_units_stage(ctx, spec):
    from tfcompress import prune

    try:
        smaller = prune.remove_units(ctx.model, spec.fraction)
    except ValueError as e:  # no layer of this model can shrink
        from tfcompress.pipeline.recipe import RecipeError

        raise RecipeError(f"remove_units stage: {e}") from None
    ctx.record["parameters_before"] = int(ctx.model.count_params())
    compile_for_labels(smaller, spec.learning_rate)
    return fit(ctx, smaller, spec)
