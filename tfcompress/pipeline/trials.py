"""The trials of `tune`: compress a candidate, fine-tune, export, measure the file.

Float models after pruning / clustering are cached across trials (and on disk), so
candidates that share them only pay for their own quantization step.
"""

import dataclasses
import json
import os
import shutil
import time

from tfcompress import _io
from tfcompress.pipeline.search_space import WIDER, describe
from tfcompress.pipeline.sensitivity import CALIBRATION, accuracy, head


def digest(obj):
    """A short, stable hash of a JSON-able object: the key of a trial or a base model."""
    import hashlib

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Search:
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
        key = digest(
            [self.settings, {k: v for k, v in candidate.items() if k != "estimated_bytes"}]
        )
        folder = os.path.join(self.out_dir, "trials", f"{number:02d}")
        record_path = os.path.join(folder, "trial.json")
        self.progress(
            f"trial {number}: {describe(candidate)} "
            f"(estimated {candidate['estimated_bytes']:,} weight bytes gzipped)"
        )
        if not self.force and os.path.isfile(record_path):
            previous = json.load(open(record_path))
            if previous.get("key") == key and os.path.isfile(
                os.path.join(self.out_dir, previous.get("file") or "-")
            ):
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
            record.update(
                status="failed",
                error=f"{type(e).__name__}: {str(e)[:500]}",
                val_accuracy=None,
                test_accuracy=None,
                gzip_bytes=None,
                within_budget=False,
                seconds=round(time.perf_counter() - start, 1),
            )
            self.progress(f"trial {number}: failed: {record['error']}")
            _io.atomic_write_text(record_path, json.dumps(record, indent=2, default=str))
            return record
        record["seconds"] = round(time.perf_counter() - start, 1)
        record["status"] = "done"
        record["within_budget"] = record["val_accuracy"] >= budget - 1e-9
        _io.atomic_write_text(record_path, json.dumps(record, indent=2, default=str))
        verdict = "within" if record["within_budget"] else "outside"
        self.progress(
            f"trial {number}: int8 file validation accuracy "
            f"{record['val_accuracy']:.4f} ({verdict} budget {budget:.4f}), "
            f"{record['gzip_bytes']:,} bytes gzipped, "
            f"{record['seconds']:.0f} s"
        )
        return record

    def _run(self, candidate, folder):
        from tfcompress import export, quantize
        from tfcompress.pipeline.stages import compile_for_labels, fit

        model = self._compressed(candidate["sparsity"], candidate["clusters"])
        float_val = accuracy(model, self.data.x_val, self.data.y_val)
        if candidate.get("bits", 8) != 8:
            return self._run_low_bits(candidate, model, float_val, folder)
        config = quantize.QuantizeConfig(
            skip_layers=candidate["float_layers"],
            preserve_sparsity=candidate["sparsity"] > 0,
            preserve_clusters=bool(candidate["clusters"]),
            # Folding BatchNormalization would scale each channel's shared values apart.
            fold_batchnorm=not candidate["clusters"],
        )
        qmodel = quantize.quantize_model(
            model, config, representative_data=head(self.data.x_train, CALIBRATION)
        )
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
        test = export.verify(path, qmodel, (self.data.x_test, self.data.y_test), max_samples=10**9)
        info = export.inspect(path)
        return dict(
            val_accuracy=val.tflite_accuracy,
            test_accuracy=test.tflite_accuracy,
            keras_val_accuracy=val.keras_accuracy,
            float_val_accuracy=float_val,
            top1_agreement=val.top1_agreement,
            bytes=written.bytes,
            gzip_bytes=written.gzip_bytes,
            float_compute_ops=len(info.float_compute_ops()),
            file=os.path.relpath(path, self.out_dir),
        )

    def _run_low_bits(self, candidate, model, float_val, folder):
        """A litert-quantizer file: every layer at `bits`, the sensitive ones one step wider."""
        from tfcompress import export, quantize
        from tfcompress.export import lowbit
        from tfcompress.pipeline.stages import compile_for_labels, fit

        bits, wider = candidate["bits"], candidate.get("wider_layers") or ()
        if candidate["method"] == "qat":  # trained on the file's own grid
            config = quantize.QuantizeConfig(
                weight_scheme=f"int{bits}", preserve_sparsity=candidate["sparsity"] > 0
            )
            model = quantize.quantize_model(
                model, config, representative_data=head(self.data.x_train, CALIBRATION)
            )
            compile_for_labels(model, 3e-4)
            fit(self._context(folder, "qat"), model, _Training(self.epochs))
        path = os.path.join(folder, f"model_int{bits}.tflite")
        written = lowbit.to_lowbit_tflite(
            model, path, mode=f"int{bits}", layers={name: WIDER[bits] for name in wider}
        )
        val = export.verify(path, model, (self.data.x_val, self.data.y_val), max_samples=10**9)
        test = export.verify(path, model, (self.data.x_test, self.data.y_test), max_samples=10**9)
        return dict(
            val_accuracy=val.tflite_accuracy,
            test_accuracy=test.tflite_accuracy,
            keras_val_accuracy=val.keras_accuracy,
            float_val_accuracy=float_val,
            top1_agreement=val.top1_agreement,
            bytes=written.bytes,
            gzip_bytes=written.gzip_bytes,
            layer_widths={c.layer: c.got for c in written.layers},
            file=os.path.relpath(path, self.out_dir),
        )

    def _context(self, folder, name):
        from tfcompress.pipeline.stages import StageContext

        sub = os.path.join(folder, name)
        os.makedirs(sub, exist_ok=True)
        return StageContext(
            model=None, data=self.data, folder=sub, progress=self.progress, record={}
        )

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
            self.progress(f"  clustering to {clusters} values per kernel, {self.epochs} epoch(s)")
            spec = ClusterStage(
                type="cluster", number_of_clusters=clusters, epochs=self.epochs, learning_rate=3e-4
            )
            # After pruning, the cluster stage keeps the zeros (sparsity-preserving clustering).
            history = ("prune",) if sparsity > 0 else ()
            model = cluster_stage(self._stage_context(folder, pruned, history), spec)
        _io.atomic_save_keras(model, path)
        _io.atomic_write_text(stamp, json.dumps(self.settings))
        self._models[key] = model
        return model

    def _stage_context(self, folder, model, history=()):
        from tfcompress.pipeline.stages import StageContext

        return StageContext(
            model=model,
            data=self.data,
            folder=folder,
            progress=self.progress,
            record={},
            history=history,
        )


@dataclasses.dataclass(frozen=True)
class _Training:
    epochs: int
    batch_size: int = 32


def choose(records):
    done = [r for r in records if r.get("status") == "done"]
    within = [r for r in done if r["within_budget"]]
    if within:
        return min(within, key=lambda r: r["gzip_bytes"]), True
    if done:
        return max(done, key=lambda r: (r["val_accuracy"], -r["gzip_bytes"])), False
    return None, False
