"""One cross-task table: every task x every method, all measured in this run.

Run: `python -m benchmarks.summary [--quick] [--tasks T ...] [--methods M ...]
[--merge]`, or as part of `python -m benchmarks`. Rewrites the "Summary" section
of BENCHMARKS.md; with `--merge`, only the rows measured now replace their
namesakes (same task and method) and every other row stays, with a note that
says which rows came from which run: e.g. `python -m benchmarks.summary --tasks
sst2_bert --methods float prune pipeline --merge` (include `float`: the latency
ratio of a row is to the float file of the same run).

Per row: LiteRT test accuracy of the file the method writes, parameters
(non-zero where pruning made zeros), TFLite bytes raw and gzip -9, LiteRT
latency on one thread (the task's files alternate within each repetition),
and the step time of the method's training over the step time of plain
fit() of the same architecture (A/B alternating repetitions). Each method is
wrapped: a failure becomes its row's status with the error, and each cell is
computed on its own, so one broken figure does not take the row with it.
"""

import argparse
import dataclasses
import os
import re
import statistics
import sys
import tempfile
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import _common  # noqa: E402
from benchmarks.tasks import TASKS, head, num_samples  # noqa: E402

SPARSITY = 0.8
CLUSTERS = 16
BATCH = 32


class NotApplicable(Exception):
    """The method does not apply to this task (the row says n/a and why)."""


@dataclasses.dataclass
class Result:
    model: object  # the Keras model the file came from (accuracy, parameters)
    path: str  # the .tflite file
    train: tuple = None  # (model, callbacks, plain model) timed against each other
    note: str = ""  # shown in the overhead cell when `train` is None
    detail: str = ""  # appended to the status, e.g. what clustering reached


@dataclasses.dataclass
class Settings:
    repetitions: int
    latency_runs: int
    timed_steps: int

    @classmethod
    def of(cls, quick):
        return cls(3, 100, 20) if quick else cls(7, 300, 40)


class Context:
    """What the method functions share for one task: data, trained models, helpers."""

    def __init__(self, task, quick, folder):
        import keras

        self.task, self.quick, self.folder = task, quick, folder
        self.data = task.load(quick)
        self.epochs = task.epochs[0 if quick else 1]
        self.tune_epochs = task.tune_epochs[0 if quick else 1]
        self.steps_per_epoch = -(-num_samples(self.data.x_train) // BATCH)
        self.model = self.compile(task.build(keras, self.data), keras, task.learning_rate)
        self.model.fit(
            self.data.x_train, self.data.y_train, epochs=self.epochs, batch_size=BATCH, verbose=0
        )
        self._twin, self._plain = None, {}

    def twin(self):
        """The tf_keras twin holding the Keras 3 model's trained weights (for tfmot).

        Copied, not trained on its own: a separately trained twin differed from ours by
        up to 2 points of dense accuracy (MobileNet-style CNN: 0.985 against 0.967),
        which the tfmot rows then carried as if it were the engine's doing.
        """
        if not self.task.has_twin:
            raise NotApplicable("no tf_keras twin of this model")
        if self._twin is None:
            import tf_keras

            self._twin = self.compile(
                self.task.build(tf_keras, self.data), tf_keras, self.task.learning_rate
            )
            try:
                self._twin.set_weights(self.model.get_weights())
            except ValueError:  # a twin whose weights do not line up: train it instead
                self._twin.fit(
                    self.data.x_train,
                    self.data.y_train,
                    epochs=self.epochs,
                    batch_size=BATCH,
                    verbose=0,
                )
        return self._twin

    def plain(self, k):
        """A fresh compiled copy of the architecture, for the plain-fit() side of timings."""
        if k.__name__ not in self._plain:
            self._plain[k.__name__] = self.compile(self.task.build(k, self.data), k, 1e-3)
        return self._plain[k.__name__]

    @staticmethod
    def compile(model, k, learning_rate=1e-3):
        model.compile(
            optimizer=k.optimizers.Adam(learning_rate),
            loss=k.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        return model

    def fit(self, model, epochs=None, callbacks=()):
        model.fit(
            self.data.x_train,
            self.data.y_train,
            epochs=epochs or self.tune_epochs,
            batch_size=BATCH,
            verbose=0,
            callbacks=list(callbacks),
        )
        return model

    def export(self, model, name, mode="float32"):
        from tfcompress import export

        calibration = head(self.data.x_train, 200) if mode == "int8" else None
        return export.to_tflite(
            model,
            os.path.join(self.folder, f"{name}.tflite"),
            mode=mode,
            representative_data=calibration,
        ).path


# --- the methods: (ctx) -> Result --------------------------------------------------------


def _float(ctx):
    return Result(ctx.model, ctx.export(ctx.model, "float"), note="1.00 (reference)")


def _ptq(mode):
    def method(ctx):
        return Result(ctx.model, ctx.export(ctx.model, f"ptq_{mode}", mode), note="- (no training)")

    return method


def _engine(ctx, engine):
    import keras
    import tf_keras

    return (ctx.model, keras) if engine == "ours" else (ctx.twin(), tf_keras)


def _qat(engine):
    def method(ctx):
        from tfcompress import quantize

        base, k = _engine(ctx, engine)
        calibration = head(ctx.data.x_train, 256) if engine == "ours" else None
        qat = ctx.compile(quantize.quantize_model(base, representative_data=calibration), k)
        ctx.fit(qat)
        return Result(qat, ctx.export(qat, f"qat_{engine}", "int8"), (qat, [], ctx.plain(k)))

    return method


def _prune(engine):
    def method(ctx):
        from tfcompress import prune

        base, k = _engine(ctx, engine)
        steps = ctx.steps_per_epoch
        schedule = prune.PolynomialDecay(
            0.0,
            SPARSITY,
            begin_step=0,
            end_step=max(2, int(0.7 * steps * ctx.tune_epochs)),
            frequency=max(1, steps // 4),
        )
        pruned = ctx.compile(prune.prune_low_magnitude(base, schedule), k)
        ctx.fit(pruned, callbacks=[prune.UpdatePruningStep()])
        stripped = prune.strip_pruning(pruned)
        return Result(
            stripped,
            ctx.export(stripped, f"prune_{engine}"),
            (pruned, [prune.UpdatePruningStep()], ctx.plain(k)),
        )

    return method


def _cluster(ctx):
    import keras

    from tfcompress import cluster

    clustered = ctx.compile(cluster.cluster_weights(ctx.model, number_of_clusters=CLUSTERS), keras)
    ctx.fit(clustered)
    stripped = cluster.strip_clustering(clustered)
    report = str(getattr(clustered, "cluster_report", "")).splitlines()
    return Result(
        stripped,
        ctx.export(stripped, "cluster"),
        (clustered, [], ctx.plain(keras)),
        detail=report[0] if report else "",
    )


def _distill(ctx):
    import keras

    from tfcompress import distill

    # Keras's Distiller freezes its teacher: give it a copy, so later methods still train.
    teacher = keras.models.clone_model(ctx.model)
    teacher.set_weights(ctx.model.get_weights())
    student = ctx.task.student(ctx.model, ctx.data)
    trainer = distill.distiller(student, teacher, alpha=0.1, temperature=4.0)
    trainer.compile(
        optimizer=keras.optimizers.Adam(ctx.task.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    ctx.fit(trainer, epochs=ctx.epochs)
    plain_student = ctx.compile(ctx.task.student(ctx.model, ctx.data), keras)
    return Result(student, ctx.export(student, "distill"), (trainer, [], plain_student))


def _pipeline(ctx):
    """The library's own pipeline stages, in the default recipe's order: prune, QAT, int8."""
    from tfcompress.pipeline import recipe, stages

    model, history = ctx.model, ("train",)
    for spec in (
        recipe.PruneStage(
            type="prune", final_sparsity=SPARSITY, epochs=ctx.tune_epochs, learning_rate=1e-3
        ),
        recipe.QATStage(type="qat", epochs=ctx.tune_epochs, learning_rate=3e-4),
    ):
        folder = os.path.join(ctx.folder, f"pipeline_{spec.type}")
        stage_ctx = stages.StageContext(
            model=model,
            data=ctx.data,
            folder=folder,
            progress=lambda line: None,
            record={},
            history=history,
        )
        model, history = stages.get_stage(spec.type)(stage_ctx, spec), history + (spec.type,)
    return Result(model, ctx.export(model, "pipeline", "int8"), note="- (prune + QAT stages)")


#: name -> (row label, method). Every method runs on every task it applies to.
METHODS = {
    "float": ("float baseline", _float),
    "ptq_dynamic": ("PTQ dynamic range", _ptq("dynamic")),
    "ptq_int8": ("PTQ int8", _ptq("int8")),
    "tfmot_qat": ("QAT int8, tfmot (tf_keras twin)", _qat("tfmot")),
    "qat": ("QAT int8, ours", _qat("ours")),
    "tfmot_prune": (f"pruning {SPARSITY:.0%}, tfmot (tf_keras twin)", _prune("tfmot")),
    "prune": (f"pruning {SPARSITY:.0%}, ours", _prune("ours")),
    "cluster": (f"clustering {CLUSTERS}, ours", _cluster),
    "distill": ("distillation into the student", _distill),
    "pipeline": (f"pipeline: prune {SPARSITY:.0%} + QAT + int8", _pipeline),
}

HEADERS = [
    "task",
    "method",
    "status",
    "accuracy (LiteRT)",
    "parameters",
    "TFLite bytes",
    "gzip bytes",
    "latency us, median (min-max)",
    "latency / float",
    "train step / plain fit()",
    "method s",
]


# --- measuring ----------------------------------------------------------------------------


def _error(e):
    text = f"{type(e).__name__}: {e}".replace("|", "\\|").replace("\n", " ")
    return text[:240] + ("..." if len(text) > 240 else "")


def _cell(function, *args):
    """A table cell: the text function(*args) returns, or the error it raised."""
    try:
        return function(*args)
    except Exception as e:
        return f"error: {_error(e)}"


def _parameters(model):
    import numpy as np

    weights = [np.asarray(w) for w in model.trainable_weights]
    total = sum(w.size for w in weights)
    nonzero = sum(int(np.count_nonzero(w)) for w in weights)
    return f"{total:,}" + (f" ({nonzero:,} non-zero)" if nonzero < 0.99 * total else "")


def _accuracy(result, data):
    from tfcompress import export

    check = export.verify(result.path, result.model, (data.x_test, data.y_test))
    return f"{check.tflite_accuracy:.4f}"


def _latencies(results, settings, sequence_length):
    """Per method: LiteRT median ms per repetition, the files alternating (or an exception)."""
    from tfcompress_edge.runner import TFLiteRunner

    runners, feeds, out = {}, {}, {}
    for name, result in results.items():
        try:
            runners[name] = TFLiteRunner(result.path, num_threads=1)
            feeds[name] = runners[name].example_inputs(sequence_length=sequence_length)
            out[name] = []
        except Exception as e:
            out[name] = e
    for _ in range(settings.repetitions):
        for name, runner in runners.items():
            if isinstance(out[name], list):
                try:
                    out[name].append(
                        runner.benchmark(
                            runs=settings.latency_runs, warmup=20, inputs=feeds[name]
                        ).median_ms
                    )
                except Exception as e:
                    out[name] = e
    return out


def _step_overheads(results, ctx, settings):
    """Per method: step time of its training / plain fit(), one ratio per A/B repetition."""

    x, y = (
        head(ctx.data.x_train, settings.timed_steps * BATCH),
        ctx.data.y_train[: settings.timed_steps * BATCH],
    )

    def step_time(model, callbacks):
        engine = "tf_keras" if type(model).__module__.startswith("tf_keras") else "keras3"
        timer = _common.step_timer(engine)
        model.fit(x, y, epochs=1, batch_size=BATCH, verbose=0, callbacks=[*callbacks, timer])
        return statistics.quantiles(timer.times[1:], n=4)[0]  # bursts land above it

    pairs = {name: r.train for name, r in results.items() if r.train is not None}
    ratios = {name: [] for name in pairs}
    for repetition in range(settings.repetitions + 1):  # round 0 traces the train functions
        for name, (model, callbacks, plain) in pairs.items():
            if not isinstance(ratios[name], list):
                continue
            try:
                a, b = step_time(model, callbacks), step_time(plain, [])
                if repetition:
                    ratios[name].append(a / b)
            except Exception as e:
                ratios[name] = e
    return ratios


def _spread(values, fmt, scale=1.0):
    if isinstance(values, Exception):
        return f"error: {_error(values)}"
    return _common.median_spread([v * scale for v in values], fmt)


def run_task(task, methods, quick, settings):
    """Rows of one task (every method wrapped; each cell computed on its own)."""
    with tempfile.TemporaryDirectory(prefix=f"tfcompress-bench-{task.name}-") as folder:
        return _run_task(task, methods, quick, settings, folder)


def _run_task(task, methods, quick, settings, folder):
    rows = {name: [task.name, METHODS[name][0]] for name in methods}
    try:
        ctx = Context(task, quick, folder)
    except Exception as e:  # no data or no model: every row of the task says so
        traceback.print_exc()
        return [
            row + [f"**failed** (task setup): {_error(e)}"] + ["-"] * 8 for row in rows.values()
        ]
    results, status, seconds, parameters = {}, {}, {}, {}
    for name in methods:
        print(f"   {task.name} / {name}", flush=True)
        start = time.perf_counter()
        try:
            results[name] = METHODS[name][1](ctx)
            status[name] = "ok" + (f" ({results[name].detail})" if results[name].detail else "")
            # Counted now: a later method may freeze or change the model.
            parameters[name] = _cell(_parameters, results[name].model)
        except NotApplicable as e:
            status[name] = f"n/a: {e}"
        except Exception as e:  # a failed method is a row with its error; the rest still run
            traceback.print_exc()
            status[name] = f"**failed**: {_error(e)}"
        seconds[name] = f"{time.perf_counter() - start:.0f}"
    latency = _latencies(results, settings, task.sequence_length)
    overhead = _step_overheads(results, ctx, settings)
    base = latency.get("float")
    for name, row in rows.items():
        if name not in results:
            row += [status[name]] + ["-"] * 7 + [seconds[name]]
            continue
        r, lat = results[name], latency[name]
        if isinstance(base, list) and isinstance(lat, list):
            ratio = _common.median_spread([a / b for a, b in zip(lat, base)], "{:.2f}")
        else:
            ratio = "-" if base is None else "error: no float latency"
        row += [
            status[name],
            _cell(_accuracy, r, ctx.data),
            parameters[name],
            _cell(lambda path: f"{os.path.getsize(path):,}", r.path),
            _cell(lambda path: f"{_gzip(path):,}", r.path),
            _spread(lat, "{:.1f}", 1000),
            ratio,
            _spread(overhead[name], "{:.2f}") if name in overhead else r.note,
            seconds[name],
        ]
    return list(rows.values())


def _gzip(path):
    from tfcompress import export

    with open(path, "rb") as f:
        return export.gzip_size(f.read())


def check_names(tasks, methods):
    """Raise ValueError naming any unknown task or method."""
    problems = []
    for kind, given, known in (("task", tasks, TASKS), ("method", methods, METHODS)):
        unknown = [n for n in given or () if n not in known]
        if unknown:
            problems.append(f"unknown {kind} {', '.join(unknown)}; choose from {', '.join(known)}")
    if problems:
        raise ValueError("; ".join(problems))


_ROW_SPLIT = re.compile(r"(?<!\\)\|")


def _table_rows(section):
    """The data rows of the Markdown table in `section`, as lists of cells."""
    rows = []
    for line in section.splitlines():
        line = line.strip()
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        cells = [c.strip() for c in _ROW_SPLIT.split(line)[1:-1]]
        if cells and cells != HEADERS:
            rows.append(cells)
    return rows


def merge_rows(old_rows, new_rows):
    """`old_rows` with each row of the same (task, method) replaced by the new one.

    A new row with no namesake goes after the last old row of its task (or at the end).
    """
    new = {(r[0], r[1]): r for r in new_rows}
    merged = [new.pop((r[0], r[1]), r) for r in old_rows]
    for key, row in new.items():
        last = max((i for i, r in enumerate(merged) if r[0] == key[0]), default=len(merged) - 1)
        merged.insert(last + 1, row)
    return merged


def _merge_into_summary(rows, note):
    """Replace the measured rows in the Summary section of BENCHMARKS.md, keep the rest."""
    import fcntl

    with open(_common.BENCHMARKS_MD + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = open(_common.BENCHMARKS_MD).read() if os.path.exists(_common.BENCHMARKS_MD) else ""
        found = re.search(r"<!-- section:Summary -->(.*?)<!-- /section:Summary -->", text, re.S)
        if found is None:
            raise ValueError(
                "--merge needs a Summary section in BENCHMARKS.md to merge into; run "
                "`python -m benchmarks.summary` once without --merge. Received: no section"
            )
        old = found.group(1)
        intro = old.split("\n| ", 1)[0]
        intro = re.sub(r"^\s*## Summary\s*\n\s*_Written by[^\n]*\n", "", intro).strip()
        merged = merge_rows(_table_rows(old), rows)
        body = f"{intro}\n\n{note}\n\n{_common.markdown_table(HEADERS, merged)}"
        _common._replace_section("Summary", body, "benchmarks/summary.py")
    return body


def run(quick=False, write=True, tasks=None, methods=None, merge=False):
    """Measure every (task, method) row and (with `write`) rewrite the Summary section.

    With `merge`, the rows measured now replace their namesakes in the existing
    Summary and the other rows stay (a note says which rows are new).
    """
    check_names(tasks, methods)
    tasks, methods = list(tasks or TASKS), list(methods or METHODS)
    settings = Settings.of(quick)
    rows, seconds, start = [], {}, time.perf_counter()
    for name in tasks:
        print(f"== summary: {name}", flush=True)
        task_start = time.perf_counter()
        rows += run_task(TASKS[name], methods, quick, settings)
        seconds[name] = time.perf_counter() - task_start
    described = "\n".join(
        f"- `{n}`: {TASKS[n].description}; trained "
        f"{TASKS[n].epochs[0 if quick else 1]} epochs, methods fine-tune "
        f"{TASKS[n].tune_epochs[0 if quick else 1]} ({seconds[n]:.0f} s)."
        for n in tasks
    )
    body = (
        f"Every row below was measured in this run ({'**quick mode**' if quick else 'full mode'}"
        f", {time.perf_counter() - start:.0f} s). Tasks:\n\n{described}\n\n"
        "Accuracy: the method's TFLite file in LiteRT on the held-out test set. Parameters: "
        "trainable weights of the Keras model the file came from. Sizes: the .tflite file, "
        f"raw and gzip -9. Latency: LiteRT, 1 thread, one sample per call, median of "
        f"{settings.latency_runs} calls; the task's files alternate within each of "
        f"{settings.repetitions} repetitions; median (min-max) over repetitions, and the "
        "per-repetition ratio to the float file. Train step / plain fit(): lower quartile of the "
        "times of the training steps of the method (QAT / pruning wrappers + UpdatePruningStep / "
        "clustering / distiller with the live teacher) over the same for plain fit() of the "
        f"same architecture and Keras (the student for distillation), {settings.timed_steps} "
        f"steps of batch {BATCH} each, {settings.repetitions} A/B alternating repetitions "
        "after one warm-up round. n/a: the method does not apply; **failed**: the method "
        "raised, with its error; `method s`: wall time of the method's training and export."
        f"\n\n{_common.markdown_table(HEADERS, rows)}"
    )
    if merge:
        measured = "; ".join(
            f"`{n}`: " + ", ".join(METHODS[m][0] for m in methods) + f" ({seconds[n]:.0f} s)"
            for n in tasks
        )
        note = (
            f"Merged rows, measured {time.strftime('%Y-%m-%d')} in "
            f"{'**quick mode**' if quick else 'full mode'} by `python -m benchmarks.summary "
            f"--tasks {' '.join(tasks)} --methods {' '.join(methods)} --merge`: {measured}. "
            "The other rows are from the run described above."
        )
        print(note + "\n\n" + _common.markdown_table(HEADERS, rows))
        if write:
            _merge_into_summary(rows, note)
        return rows
    print(body)
    if write:
        _common.update_section("Summary", body, "benchmarks/summary.py")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs and repetitions")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    parser.add_argument("--tasks", nargs="+", metavar="TASK", help=", ".join(TASKS))
    parser.add_argument("--methods", nargs="+", metavar="METHOD", help=", ".join(METHODS))
    parser.add_argument(
        "--merge",
        action="store_true",
        help="replace only the rows measured now in the existing Summary, keep the others",
    )
    args = parser.parse_args(argv)
    try:
        check_names(args.tasks, args.methods)
    except ValueError as e:
        parser.error(str(e))
    run(
        quick=args.quick,
        write=not args.no_write,
        tasks=args.tasks,
        methods=args.methods,
        merge=args.merge,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
