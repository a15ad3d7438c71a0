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

import dataclasses
import gzip
import hashlib
import json
import os
import shutil
import time

import numpy as np

from tfcompress import _io
from tfcompress.pipeline.recipe import RecipeError, load_recipe

SPARSITIES = (0.0, 0.5, 0.7, 0.8, 0.9)
CLUSTERS = (None, 32, 16, 8)
METHODS = ("ptq", "qat")  # PTQ first: same size, and it costs no training
BIT_WIDTHS = (8, 4, 2)
_WIDER = {2: "int4", 4: "int8"}  # the step up for a layer too sensitive at a width
_TRAINS = ("train", "distill")
_CALIBRATION = 256
_ESTIMATE_CHUNK = 200_000  # weights per layer gzipped for a size estimate


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
        return (f"tune: {verdict}: trial {b['trial']} ({describe(b)}), validation accuracy "
                f"{b['val_accuracy']:.4f} (budget {self.budget:.4f}), test "
                f"{b['test_accuracy']:.4f}, {b['gzip_bytes']:,} bytes gzipped -> {self.path}")


def check_arguments(max_accuracy_drop, trials):
    """Raise `ValueError` for a budget or trial count `tune` cannot use."""
    if isinstance(max_accuracy_drop, bool) or not isinstance(max_accuracy_drop, (int, float)) \
            or not 0 <= max_accuracy_drop < 1:
        raise ValueError("max_accuracy_drop is an absolute accuracy drop in [0, 1), e.g. 0.01 "
                         f"for one point. Received: max_accuracy_drop={max_accuracy_drop!r}")
    if isinstance(trials, bool) or not isinstance(trials, (int, np.integer)) or trials < 1:
        raise ValueError(f"trials must be a positive integer. Received: trials={trials!r}")


def describe(candidate):
    """`"sparsity 0.8, 16 clusters, float [logits], QAT"` for a candidate or trial record."""
    clusters = candidate["clusters"]
    floats = candidate["float_layers"]
    bits = candidate.get("bits", 8)
    if bits != 8:
        wider = candidate.get("wider_layers") or ()
        weights = f"int{bits} weights" + (f" ({_WIDER[bits]}: {list(wider)})" if wider else "")
        return (f"sparsity {candidate['sparsity']:g}, {weights}, "
                f"{candidate['method'].upper()}")
    return (f"sparsity {candidate['sparsity']:g}, "
            f"{f'{clusters} clusters' if clusters else 'no clustering'}, "
            f"{'float ' + str(list(floats)) if floats else 'all int8'}, "
            f"{candidate['method'].upper()}")


def tune(recipe, out_dir, max_accuracy_drop=0.01, trials=12, progress=print, epochs=2,
         max_float_layers=2, force=False, bit_widths=(8,)):
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

    >>> result = tune("digits.yaml", "tuned", max_accuracy_drop=0.02, trials=2, epochs=1)
    >>> result.within_budget, result.best["gzip_bytes"]
    """
    check_arguments(max_accuracy_drop, trials)
    bit_widths = _check_bit_widths(bit_widths)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer. Received: epochs={epochs!r}")
    if not hasattr(recipe, "stages"):
        recipe = load_recipe(recipe)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise RecipeError(f"The output folder '{out_dir}' is a file. Pass another --out.")
    os.makedirs(out_dir, exist_ok=True)

    import keras

    from tfcompress.pipeline import data as data_lib

    base, base_key = _base_model(recipe, out_dir, force, progress)
    keras.utils.set_random_seed(recipe.seed)
    data = data_lib.load_data(recipe.data, seed=recipe.seed, cache_dir=out_dir)
    base_val = _accuracy(base, data.x_val, data.y_val)
    base_test = _accuracy(base, data.x_test, data.y_test)
    budget = base_val - max_accuracy_drop
    progress(f"base model: validation accuracy {base_val:.4f}, test {base_test:.4f}; "
             f"budget: validation accuracy >= {budget:.4f}")

    sensitivity = []  # the int8 ranking (layers kept float), for int8 files only
    if 8 in bit_widths:
        sensitivity = _sensitivity(base, data, out_dir, base_key, force, progress)
    ranked = [s["layer"] for s in sensitivity if s["stays_float"]]
    prunable = _prunable_layers(base)
    low = [b for b in bit_widths if b != 8]
    bit_ranking = _bit_sensitivity(base, data, out_dir, base_key, force, progress, low)
    candidates = _candidates(base, ranked, prunable, max_float_layers, bit_widths, bit_ranking)
    progress(f"{len(candidates)} candidates; trying at most {trials}, smallest first")

    settings = dict(base=base_key, epochs=epochs, seed=recipe.seed)
    searcher = _Search(base, data, out_dir, settings, force, progress)
    records = []
    for candidate in candidates[:trials]:
        record = searcher.trial(len(records) + 1, candidate, budget)
        records.append(record)
        if record.get("within_budget"):
            break

    return _finish(out_dir, recipe, records, sensitivity, base_val, base_test, budget,
                   max_accuracy_drop, trials, progress)


# --- the base model ------------------------------------------------------------------------


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
            raise RecipeError("tune needs a trained base model: start the recipe with a "
                              "'train' (or 'distill') stage, or give a trained model 'path'.")
        progress(f"base model: {recipe.model.path} (no train stage in the recipe)")
        from tfcompress.pipeline.data import load_model

        return load_model(recipe.model), _digest(recipe.model.model_dump())
    base_recipe = recipe.model_copy(update={"stages": leading})
    progress(f"base model: running the recipe's first {len(leading)} stage(s) into "
             f"{os.path.join(out_dir, 'base')}")
    records = runner.run(base_recipe, os.path.join(out_dir, "base"), force=force,
                         progress=progress)
    folder = runner.stage_folder(os.path.join(out_dir, "base"), len(leading) - 1, leading[-1])
    model = keras.saving.load_model(os.path.join(folder, "model.keras"))
    return model, _digest([r["key"] for r in records] + [base_recipe.model_dump()])


def _check_bit_widths(bit_widths):
    widths = tuple(bit_widths) if isinstance(bit_widths, (list, tuple)) else (bit_widths,)
    if not widths or any(isinstance(b, bool) or b not in BIT_WIDTHS for b in widths):
        raise ValueError(f"bit_widths is a non-empty subset of {BIT_WIDTHS} (8: int8 file; 4, 2: "
                         f"int4 / int2 weights). Received: bit_widths={bit_widths!r}")
    return tuple(dict.fromkeys(widths))


def _digest(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _predict(model, x):
    return np.asarray(model.predict(x, batch_size=256, verbose=0), dtype=np.float32)


def _accuracy(model, x, y):
    return float(np.mean(np.argmax(_predict(model, x), -1) == y))


def _head(x, n):
    return {k: v[:n] for k, v in x.items()} if isinstance(x, dict) else x[:n]


# --- per-layer sensitivity -----------------------------------------------------------------


def _sensitivity(base, data, out_dir, base_key, force, progress):
    """Rank the quantizable layers by what keeping each one float buys in the int8 file.

    For each layer, the base model is quantized (PTQ ranges) with that layer
    kept float, exported, and the *file* is compared with the float model on
    the validation split. Layers are ranked by how much the mean absolute
    output error shrinks against the all-int8 file (on a few hundred samples
    accuracy moves by single samples, as likely to fall as to rise); the
    accuracy change is recorded too. A layer the converter quantizes anyway
    (a float layer between two quantized tensors is turned int8 by it) is
    marked `stays_float: false` and never offered as a float layer.
    """
    from tfcompress import export, quantize

    path = os.path.join(out_dir, "sensitivity.json")
    if not force and os.path.isfile(path):
        saved = json.load(open(path))
        if saved.get("base") == base_key:
            progress("per-layer sensitivity: measured before, reusing")
            return saved["layers"]
    progress("per-layer sensitivity: int8 files with one layer kept float at a time")
    folder = os.path.join(out_dir, "sensitivity")
    os.makedirs(folder, exist_ok=True)
    calibration = _head(data.x_train, _CALIBRATION)

    def score(skip, name):
        q = quantize.quantize_model(base, quantize.QuantizeConfig(skip_layers=skip),
                                    representative_data=calibration)
        file = os.path.join(folder, f"{name}.tflite")
        export.to_tflite(q, file, mode="int8")
        check = export.verify(file, base, (data.x_val, data.y_val), max_samples=10**9)
        floats = len(export.inspect(file).float_compute_ops())
        return check.tflite_accuracy, check.mean_abs_diff, floats, q.quantize_report

    all_acc, all_err, _, report = score((), "all_int8")
    layers = [name for name, _, scheme in report.quantized if scheme is not None]
    rows = []
    for name in layers:
        acc, err, floats, _ = score((name,), name)
        rows.append(dict(layer=name, accuracy_gain=acc - all_acc, error_gain=all_err - err,
                         stays_float=floats > 0))
        progress(f"  {name} kept float: validation accuracy {acc:.4f} ({acc - all_acc:+.4f}), "
                 f"mean |output error| {err:.4g} (all int8 {all_err:.4g})"
                 + ("" if floats else "; the converter made it int8 anyway"))
    rows.sort(key=lambda r: (not r["stays_float"], -r["error_gain"], -r["accuracy_gain"]))
    _io.atomic_write_text(path, json.dumps(dict(base=base_key, all_int8_accuracy=all_acc,
                                                all_int8_error=all_err, layers=rows), indent=2))
    return rows


def _bit_sensitivity(base, data, out_dir, base_key, force, progress, widths):
    """`{width: [layer, ...]}`, most sensitive first: one layer at the width, the rest float.

    Each file is litert-quantizer's (`tfcompress.export.lowbit`), measured
    against the float model on the validation split (mean |output error|).
    """
    if not widths:
        return {}
    from tfcompress import export
    from tfcompress.export import lowbit

    path = os.path.join(out_dir, "bit_sensitivity.json")
    if not force and os.path.isfile(path):
        saved = json.load(open(path))
        if saved.get("base") == base_key and all(str(w) in saved["errors"] for w in widths):
            progress("per-layer bit-width sensitivity: measured before, reusing")
            return _rank_bits(saved["errors"], widths)
    progress(f"per-layer bit-width sensitivity: one layer at int{'/int'.join(map(str, widths))}"
             ", the others float")
    folder = os.path.join(out_dir, "bit_sensitivity")
    os.makedirs(folder, exist_ok=True)
    errors = {}
    for width in widths:
        errors[str(width)] = {}
        for name in _kernels(base):
            file = os.path.join(folder, f"{name}_int{width}.tflite")
            written = lowbit.to_lowbit_tflite(base, file, mode=f"int{width}",
                                              layers={"*": "float", name: f"int{width}"})
            if not any(c.got == f"int{width}" for c in written.layers):
                continue  # the quantizer cannot take this layer at this width
            check = export.verify(file, base, (data.x_val, data.y_val), max_samples=10**9)
            errors[str(width)][name] = check.mean_abs_diff
            progress(f"  {name} at int{width}: mean |output error| {check.mean_abs_diff:.4g}")
    _io.atomic_write_text(path, json.dumps(dict(base=base_key, errors=errors), indent=2))
    return _rank_bits(errors, widths)


def _rank_bits(errors, widths):
    return {w: sorted(errors[str(w)], key=lambda n: -errors[str(w)][n]) for w in widths}


# --- candidates, smallest first ------------------------------------------------------------


def _prunable_layers(base):
    """Names of the layers the prune stage would prune (its default skips some)."""
    from tfcompress import prune
    from tfcompress.prune.wrapper import PruneLowMagnitude

    try:
        wrapped = prune.prune_low_magnitude(base, 0.5)
    except Exception:  # a model that cannot be pruned: the search keeps sparsity 0
        return set()
    return {layer.layer.name for layer in wrapped.layers
            if isinstance(layer, PruneLowMagnitude)}


def _kernels(model):
    found = {}
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is not None and len(kernel.shape) >= 2:
            found[layer.name] = np.asarray(kernel.numpy(), dtype=np.float32).ravel()
    return found


def _gzip(array):
    return len(gzip.compress(array.tobytes(), compresslevel=6))


class _SizeEstimator:
    """gzip bytes of each kernel after magnitude pruning, clustering and int8 (or float32).

    Computed on the base model's real weights, so it knows how each layer's
    values compress; the file's fixed overhead (biases, graph) is the same for
    every candidate and left out. It only orders the candidates.
    """

    def __init__(self, base, prunable):
        self.prunable = prunable
        self.kernels = {}
        self.scale = {}
        for name, w in _kernels(base).items():
            if len(w) > _ESTIMATE_CHUNK:
                self.scale[name] = len(w) / _ESTIMATE_CHUNK
                w = w[:_ESTIMATE_CHUNK]
            self.kernels[name] = w
        self._cache = {}

    def layer_bytes(self, name, sparsity, clusters, is_float, bits=8):
        bits = 32 if is_float else bits
        key = (name, sparsity if name in self.prunable else 0.0, clusters, bits)
        if key not in self._cache:
            w = self.kernels[name].copy()
            if key[1] > 0:
                w[np.abs(w) <= np.quantile(np.abs(w), key[1])] = 0.0
            if clusters and len(w) > clusters:
                w = _cluster_values(w, clusters)
            if bits != 32:
                peak = float(np.max(np.abs(w))) or 1.0
                w = np.round(w / peak * (2 ** (bits - 1) - 1)).astype(np.int8)
                if bits < 8:  # packed as in the file: 8 // bits weights per byte
                    per_byte = 8 // bits
                    w = np.pad(w, (0, -len(w) % per_byte)).reshape(-1, per_byte)
                    w = sum((w[:, i].astype(np.uint8) & (2**bits - 1)) << (bits * i)
                            for i in range(per_byte)).astype(np.uint8)
            self._cache[key] = _gzip(w) * self.scale.get(name, 1.0)
        return self._cache[key]

    def __call__(self, sparsity, clusters, float_layers, bits=8, wider=()):
        def width(n):
            if n in wider:
                return int(_WIDER[bits].removeprefix("int"))
            return bits

        return int(sum(self.layer_bytes(n, sparsity, clusters, n in float_layers, width(n))
                       for n in self.kernels))


def _cluster_values(w, k):
    """Each non-zero weight replaced by the nearest of `k` density-spaced values; zeros kept."""
    nonzero = w != 0
    if nonzero.sum() <= k:
        return w
    centroids = np.quantile(w[nonzero], (np.arange(k) + 0.5) / k)
    edges = (centroids[1:] + centroids[:-1]) / 2
    out = w.copy()
    out[nonzero] = centroids[np.searchsorted(edges, w[nonzero])]
    return out


def _candidates(base, ranked, prunable, max_float_layers, bit_widths=(8,), bit_ranking=None):
    estimate = _SizeEstimator(base, prunable)
    sparsities = SPARSITIES if prunable else (0.0,)
    float_counts = range(0, min(max_float_layers, len(ranked)) + 1)
    found = []
    for s in sparsities:
        if 8 in bit_widths:
            for k in CLUSTERS:
                for n in float_counts:
                    floats = tuple(ranked[:n])
                    size = estimate(s, k, set(floats))
                    for method in METHODS:
                        found.append(dict(sparsity=s, clusters=k, float_layers=floats,
                                          method=method, estimated_bytes=size))
        for bits in (b for b in bit_widths if b != 8):
            sensitive = (bit_ranking or {}).get(bits, [])
            for n in range(0, min(max_float_layers, len(sensitive)) + 1):
                wider = tuple(sensitive[:n])
                size = estimate(s, None, set(), bits, set(wider))
                for method in METHODS:
                    found.append(dict(sparsity=s, clusters=None, float_layers=(),
                                      method=method, estimated_bytes=size, bits=bits,
                                      wider_layers=wider))
    # Ties (same size): PTQ before QAT, fewer float layers first.
    found.sort(key=lambda c: (c["estimated_bytes"], METHODS.index(c["method"]),
                              len(c["float_layers"]), -c["sparsity"]))
    return found


# --- trials --------------------------------------------------------------------------------


class _Search:
    """Runs trials; float models after pruning / clustering are cached across trials."""

    def __init__(self, base, data, out_dir, settings, force, progress):
        self.base = base
        self.data = data
        self.out_dir = out_dir
        self.settings = settings
        self.force = force
        self.progress = progress
        self.epochs = settings["epochs"]
        self._models = {(0.0, None): base}

    def trial(self, number, candidate, budget):
        key = _digest([self.settings, {k: v for k, v in candidate.items()
                                       if k != "estimated_bytes"}])
        folder = os.path.join(self.out_dir, "trials", f"{number:02d}")
        record_path = os.path.join(folder, "trial.json")
        self.progress(f"trial {number}: {describe(candidate)} "
                      f"(estimated {candidate['estimated_bytes']:,} weight bytes gzipped)")
        if not self.force and os.path.isfile(record_path):
            previous = json.load(open(record_path))
            if previous.get("key") == key and os.path.isfile(
                    os.path.join(self.out_dir, previous.get("file") or "-")):
                self.progress(f"trial {number}: done before, reusing")
                previous["within_budget"] = previous["val_accuracy"] >= budget - 1e-9
                return previous
        if os.path.isdir(folder):
            shutil.rmtree(folder)  # another candidate's leftovers, or a killed trial
        os.makedirs(folder)
        record = dict(trial=number, key=key, **candidate)
        start = time.perf_counter()
        try:
            record.update(self._run(candidate, folder))
        except Exception as e:  # one candidate that fails must not end the search
            record.update(status="failed", error=f"{type(e).__name__}: {str(e)[:500]}",
                          val_accuracy=None, test_accuracy=None, gzip_bytes=None,
                          within_budget=False, seconds=round(time.perf_counter() - start, 1))
            self.progress(f"trial {number}: failed: {record['error']}")
            _io.atomic_write_text(record_path, json.dumps(record, indent=2, default=str))
            return record
        record["seconds"] = round(time.perf_counter() - start, 1)
        record["status"] = "done"
        record["within_budget"] = record["val_accuracy"] >= budget - 1e-9
        _io.atomic_write_text(record_path, json.dumps(record, indent=2, default=str))
        verdict = "within" if record["within_budget"] else "outside"
        self.progress(f"trial {number}: int8 file validation accuracy "
                      f"{record['val_accuracy']:.4f} ({verdict} budget {budget:.4f}), "
                      f"{record['gzip_bytes']:,} bytes gzipped, "
                      f"{record['seconds']:.0f} s")
        return record

    def _run(self, candidate, folder):
        from tfcompress import export, quantize
        from tfcompress.pipeline.stages import compile_for_labels, fit

        model = self._compressed(candidate["sparsity"], candidate["clusters"])
        float_val = _accuracy(model, self.data.x_val, self.data.y_val)
        if candidate.get("bits", 8) != 8:
            return self._run_low_bits(candidate, model, float_val, folder)
        config = quantize.QuantizeConfig(
            skip_layers=candidate["float_layers"],
            preserve_sparsity=candidate["sparsity"] > 0,
            preserve_clusters=bool(candidate["clusters"]),
            # Folding BatchNormalization would scale each channel's shared values apart.
            fold_batchnorm=not candidate["clusters"])
        qmodel = quantize.quantize_model(model, config,
                                         representative_data=_head(self.data.x_train,
                                                                   _CALIBRATION))
        if candidate["method"] == "qat":
            # Float layers have no sparsity or cluster preservation: training them would
            # undo their zeros and shared values, so only the int8 layers learn.
            for layer in qmodel.layers:
                if layer.name in candidate["float_layers"]:
                    layer.trainable = False
            compile_for_labels(qmodel, 3e-4)
            fit(self._context(folder, "qat"), qmodel, _Training(self.epochs))
        path = os.path.join(folder, "model_int8.tflite")
        written = export.to_tflite(qmodel, path, mode="int8")
        val = export.verify(path, qmodel, (self.data.x_val, self.data.y_val), max_samples=10**9)
        test = export.verify(path, qmodel, (self.data.x_test, self.data.y_test),
                             max_samples=10**9)
        info = export.inspect(path)
        return dict(val_accuracy=val.tflite_accuracy, test_accuracy=test.tflite_accuracy,
                    keras_val_accuracy=val.keras_accuracy, float_val_accuracy=float_val,
                    top1_agreement=val.top1_agreement, bytes=written.bytes,
                    gzip_bytes=written.gzip_bytes,
                    float_compute_ops=len(info.float_compute_ops()),
                    file=os.path.relpath(path, self.out_dir))

    def _run_low_bits(self, candidate, model, float_val, folder):
        """A litert-quantizer file: every layer at `bits`, the sensitive ones one step wider."""
        from tfcompress import export, quantize
        from tfcompress.export import lowbit
        from tfcompress.pipeline.stages import compile_for_labels, fit

        bits, wider = candidate["bits"], candidate.get("wider_layers") or ()
        if candidate["method"] == "qat":  # trained on the file's own grid
            config = quantize.QuantizeConfig(weight_scheme=f"int{bits}",
                                             preserve_sparsity=candidate["sparsity"] > 0)
            model = quantize.quantize_model(model, config, representative_data=_head(
                self.data.x_train, _CALIBRATION))
            compile_for_labels(model, 3e-4)
            fit(self._context(folder, "qat"), model, _Training(self.epochs))
        path = os.path.join(folder, f"model_int{bits}.tflite")
        written = lowbit.to_lowbit_tflite(model, path, mode=f"int{bits}",
                                          layers={name: _WIDER[bits] for name in wider})
        val = export.verify(path, model, (self.data.x_val, self.data.y_val), max_samples=10**9)
        test = export.verify(path, model, (self.data.x_test, self.data.y_test),
                             max_samples=10**9)
        return dict(val_accuracy=val.tflite_accuracy, test_accuracy=test.tflite_accuracy,
                    keras_val_accuracy=val.keras_accuracy, float_val_accuracy=float_val,
                    top1_agreement=val.top1_agreement, bytes=written.bytes,
                    gzip_bytes=written.gzip_bytes,
                    layer_widths={c.layer: c.got for c in written.layers},
                    file=os.path.relpath(path, self.out_dir))

    def _context(self, folder, name):
        from tfcompress.pipeline.stages import StageContext

        sub = os.path.join(folder, name)
        os.makedirs(sub, exist_ok=True)
        return StageContext(model=None, data=self.data, folder=sub, progress=self.progress,
                            record={})

    def _compressed(self, sparsity, clusters):
        """The float model pruned to `sparsity` then clustered to `clusters`, fine-tuned."""
        import keras

        from tfcompress.pipeline.data import register_custom_layers
        from tfcompress.pipeline.recipe import ClusterStage, PruneStage
        from tfcompress.pipeline.stages import cluster_stage, prune_stage

        key = (sparsity, clusters)
        if key in self._models:
            return self._models[key]
        name = f"sparsity{sparsity:g}_clusters{clusters or 0}"
        folder = os.path.join(self.out_dir, "models", name)
        path = os.path.join(folder, "model.keras")
        stamp = os.path.join(folder, "done.json")
        if not self.force and os.path.isfile(stamp) and json.load(open(stamp)) == self.settings:
            register_custom_layers()
            self._models[key] = keras.saving.load_model(path)
            return self._models[key]
        os.makedirs(folder, exist_ok=True)
        if clusters is None:
            self.progress(f"  pruning to sparsity {sparsity:g}, {self.epochs} epoch(s)")
            spec = PruneStage(type="prune", final_sparsity=sparsity, epochs=self.epochs)
            model = prune_stage(self._stage_context(folder, self.base), spec)
        else:
            pruned = self._compressed(sparsity, None)
            self.progress(f"  clustering to {clusters} values per kernel, {self.epochs} "
                          "epoch(s)")
            spec = ClusterStage(type="cluster", number_of_clusters=clusters,
                                epochs=self.epochs, learning_rate=3e-4)
            model = cluster_stage(self._stage_context(folder, pruned), spec)
            if sparsity > 0:
                _restore_zeros(model, pruned)
        _io.atomic_save_keras(model, path)
        _io.atomic_write_text(stamp, json.dumps(self.settings))
        self._models[key] = model
        return model

    def _stage_context(self, folder, model):
        from tfcompress.pipeline.stages import StageContext

        return StageContext(model=model, data=self.data, folder=folder, progress=self.progress,
                            record={}, history=())


@dataclasses.dataclass(frozen=True)
class _Training:
    epochs: int
    batch_size: int = 32


def _restore_zeros(clustered, pruned):
    """Clustering moves pruned zeros to the nearest centroid: put them back (one more value)."""
    by_name = {layer.name: layer for layer in pruned.layers}
    for layer in clustered.layers:
        source = by_name.get(layer.name)
        kernel = getattr(layer, "kernel", None)
        if source is None or kernel is None or getattr(source, "kernel", None) is None:
            continue
        mask = np.asarray(source.kernel.numpy()) != 0
        kernel.assign(np.where(mask, kernel.numpy(), 0.0).astype("float32"))


# --- results -------------------------------------------------------------------------------


def _choose(records):
    done = [r for r in records if r.get("status") == "done"]
    within = [r for r in done if r["within_budget"]]
    if within:
        return min(within, key=lambda r: r["gzip_bytes"]), True
    if done:
        return max(done, key=lambda r: (r["val_accuracy"], -r["gzip_bytes"])), False
    return None, False


TABLE_HEADERS = ["trial", "sparsity", "clusters", "float layers", "method", "val accuracy",
                 "test accuracy", "gzip bytes", "within budget", "weights"]


def _table(records, best):
    lines = ["| " + " | ".join(TABLE_HEADERS) + " |", "|" + "---|" * len(TABLE_HEADERS)]
    for r in records:
        chosen = " (chosen)" if best is not None and r["trial"] == best["trial"] else ""
        done = r.get("status") == "done"
        cells = [f"{r['trial']}{chosen}", f"{r['sparsity']:g}", str(r["clusters"] or "-"),
                 ", ".join(r["float_layers"]) or "-", r["method"].upper(),
                 f"{r['val_accuracy']:.4f}" if done else "failed",
                 f"{r['test_accuracy']:.4f}" if done else "-",
                 f"{r['gzip_bytes']:,}" if done else "-",
                 "yes" if r.get("within_budget") else "no", _weights(r)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _weights(record):
    bits = record.get("bits", 8)
    if bits == 8:
        return "int8"
    wider = record.get("wider_layers") or ()
    return f"int{bits}" + (f" ({_WIDER[bits]}: {', '.join(wider)})" if wider else "")


def _finish(out_dir, recipe, records, sensitivity, base_val, base_test, budget, max_drop,
            trials, progress):
    best, within = _choose(records)
    path = None
    if best is not None:
        path = os.path.join(out_dir, f"best_int{best.get('bits', 8)}.tflite")
        with _io.atomic_path(path) as tmp:
            shutil.copyfile(os.path.join(out_dir, best["file"]), tmp)
    base_gzip = _base_float_gzip(out_dir)
    result = TuneResult(path=path, within_budget=within, best=best, trials=records,
                        base_val_accuracy=base_val, base_test_accuracy=base_test,
                        budget=budget, sensitivity=sensitivity)
    summary = dict(recipe=recipe.name, max_accuracy_drop=max_drop, trials_allowed=trials,
                   base_val_accuracy=base_val, base_test_accuracy=base_test, budget=budget,
                   base_float32_gzip_bytes=base_gzip, within_budget=within,
                   best=best, best_file=path, sensitivity=sensitivity, trials=records)
    _io.atomic_write_text(os.path.join(out_dir, "tune.json"),
                          json.dumps(summary, indent=2, default=str))

    md = ["## Accuracy-aware search", "",
          f"Base model (float): validation accuracy {base_val:.4f}, test {base_test:.4f}. "
          f"Budget: validation accuracy >= {budget:.4f} (max drop {max_drop:g}); "
          f"{len(records)} of at most {trials} trial(s) run, smallest estimated size first.", ""]
    if best is None:
        md += ["**No trial produced an int8 file.**", ""]
    else:
        ratio = (f", {base_gzip / best['gzip_bytes']:.1f}x smaller (gzip) than the base "
                 f"model's float32 file ({base_gzip:,} bytes)") if base_gzip else ""
        if within:
            md += [f"Chosen: trial {best['trial']} ({describe(best)}): "
                   f"**{best['gzip_bytes']:,} bytes gzipped**{ratio}; validation accuracy "
                   f"{best['val_accuracy']:.4f}, test {best['test_accuracy']:.4f}. "
                   f"Written to `{os.path.basename(path)}`.", ""]
        else:
            md += [f"**No trial met the budget.** Kept the closest, trial {best['trial']} "
                   f"({describe(best)}): validation accuracy {best['val_accuracy']:.4f} "
                   f"(budget {budget:.4f}), {best['gzip_bytes']:,} bytes gzipped{ratio}, in "
                   f"`{os.path.basename(path)}`. Allow more trials, more epochs, or a larger "
                   "--max-accuracy-drop.", ""]
    md += _table(records, best) + ["", "Per-layer sensitivity (what keeping one layer float, "
                                    "all others int8, buys the int8 file on the validation "
                                    "split):", "",
                                    "| layer | accuracy gain | output error reduction | "
                                    "stays float in the file |", "|---|---|---|---|"]
    md += [f"| {s['layer']} | {s['accuracy_gain']:+.4f} | {s['error_gain']:.4g} | "
           f"{'yes' if s['stays_float'] else 'no (the converter quantizes it)'} |"
           for s in sensitivity]
    _io.atomic_write_text(os.path.join(out_dir, "tune.md"), "\n".join(md) + "\n")
    return result


def _base_float_gzip(out_dir):
    path = os.path.join(out_dir, "base", "run.json")
    if not os.path.isfile(path):
        return None
    stages = json.load(open(path)).get("stages") or []
    return stages[-1].get("float32_gzip_bytes") if stages else None
