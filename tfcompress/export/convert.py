"""`to_tflite`: convert a Keras model into a `.tflite` file, by the route that works."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tfcompress import _flavor, _io
from tfcompress import _inputs as calib
from tfcompress._io import gzip_size  # noqa: F401  (its old home: `export.convert.gzip_size`)
from tfcompress._report import Entry, Report
from tfcompress.errors import CalibrationDataError, ConversionError
from tfcompress.export import _isolated, shapes
from tfcompress.export.modes import get_mode
from tfcompress.export.shapes import static_specs
from tfcompress.export.target import check_target, export_for_target

if TYPE_CHECKING:
    import keras


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What `to_tflite` wrote.

    Attributes:
        path: the `.tflite` file.
        mode: the export mode.
        bytes: file size.
        gzip_bytes: size after `gzip -9`: what zeros and shared values buy you
            on the wire or in flash with compression.
        route: `"from_keras_model"` or `"saved_model"`: how it was converted.
        calibration_samples: samples used for calibration (`None` when the
            mode uses none).
        int8_io: whether inputs and outputs are integer.
        quantization_aware: the model was trained with fake-quant (QAT), so
            its int8 ranges came from training, not calibration.
        input_shapes: `{input name: shape}` fixed at export, or `None` when
            the file keeps the model's dynamic shapes.
        isolated: the converter ran in a child process.
        notes: what `to_tflite` decided on its own, and why.
        target: the `target=` asked for, or `None`.
        choice: with a target: which file was written, and why.
        candidates: with `target="cpu"`: each `Candidate` tried, with its
            measured latency and agreement.
        model_name: the name of the model that was exported.
    """

    path: str
    mode: str
    bytes: int
    gzip_bytes: int
    route: str
    calibration_samples: object = None
    int8_io: bool = False
    quantization_aware: bool = False
    input_shapes: object = None
    isolated: bool = False
    notes: tuple = ()
    target: object = None
    choice: str = ""
    candidates: tuple = ()
    model_name: str = ""

    @property
    def report(self) -> Report:
        """This export in the shape every tfcompress verb reports: `tfcompress.Report`."""
        return Report(
            "to_tflite",
            self.model_name,
            done=[Entry(os.path.basename(self.path), "", self.summary_line())],
            skipped=[Entry("", "", note) for note in self.notes],
            details=self,
        )

    def summary_line(self) -> str:
        """The mode, sizes and route in one line."""
        line = f"{self.mode}, {self.bytes:,} bytes ({self.gzip_bytes:,} gzipped), via {self.route}"
        if self.target:
            line += f"; target {self.target!r} chose {self.choice}"
        return line

    def __str__(self) -> str:
        calib_note = ", ranges from quantization-aware training" if self.quantization_aware else ""
        if self.calibration_samples is not None:
            calib_note = f", calibrated on {self.calibration_samples} samples"
        target_note = f"; target {self.target!r}: {self.choice}" if self.target else ""
        return (
            f"{self.path}: {self.mode}, {self.bytes:,} bytes ({self.gzip_bytes:,} gzipped)"
            f"{calib_note}, via {self.route}{target_note}"
        )


def to_tflite(
    model: keras.Model,
    path: str | os.PathLike,
    mode: str | None = None,
    representative_data: Any = None,
    int8_io: bool = False,
    max_calibration_samples: int = calib.DEFAULT_MAX_SAMPLES,
    verbose: bool = False,
    *,
    batch_size: int | None = None,
    sequence_length: int | None = None,
    input_shape: Sequence[int | None] | Mapping[str, Sequence[int | None]] | None = None,
    isolate: bool | None = None,
    target: str | None = None,
) -> ExportResult:
    """Convert a Keras model into a `.tflite` file.

    Works for Keras 3 models, tf_keras models and keras-hub models (dict
    inputs included). The file is written to a temporary name in the same
    folder and renamed into place, so `path` is never half-written.

    Args:
        model: a built Keras 3, keras-hub or tf_keras model.
        path: the `.tflite` file to write. Its folder must exist.
        mode: one of `tfcompress.export.available_modes()`: `"float32"`
            (the default), `"float16"`, `"dynamic"` (int8 weights), `"int8"`
            (full integer) or `"int16x8"`. Leave it out when passing `target=`.
        representative_data: calibration inputs, needed by `"int8"` and
            `"int16x8"`: a numpy array, a dict of arrays, `(inputs, labels)`, a
            `tf.data.Dataset` (batched or not, labels or not) or a generator.
        int8_io: make inputs and outputs integer too (int8 for `"int8"`,
            int16 for `"int16x8"`), as microcontrollers and NPUs want.
        max_calibration_samples: most samples taken from `representative_data`.
        verbose: show the converter's own messages.
        batch_size: fix the batch size of every input (1 for edge files).
            `None` keeps it dynamic.
        sequence_length: fix axis 1 (tokens, time steps) of every input of
            rank 2 or more. It must fit the model's position embedding.
        input_shape: fix shapes input by input: a shape (batch first) for a
            single-input model or a dict `{input name: shape}`; `None` sizes
            stay dynamic. Static shapes drop the shape-computing ops
            (`SHAPE`, `STRIDED_SLICE`, `PACK`, ...) from the file.
        isolate: run the converter in a child process, so that a crash in
            it (int8 calibration of LSTM/GRU loops segfaults) comes back as
            a `ConversionError` instead of killing this process. `None`
            (default) isolates the int8 / int16x8 export of models with
            recurrent layers only: the child costs a second TensorFlow import
            (about 20 s on a busy 2-core machine, against 1.4 s in-process
            for the digits CNN).
        target: pick the file for a device instead of a mode: `"cpu"`
            writes full int8, dynamic range and float32 candidates, checks
            each against the model on `representative_data` (top-1 agreement
            at least 95%), times them with LiteRT on this machine and keeps
            the fastest, so never a file slower than float32; `"npu"` and
            `"mcu"` write full int8 with int8 inputs and outputs. Each fixes
            the batch size to 1 unless shapes are given. The result says
            what was chosen and why (`choice`, `candidates`).

    Returns:
        An `ExportResult`.

    Example:

    >>> result = to_tflite(model, "model_int8.tflite", mode="int8",
    ...                    representative_data=x_train)
    >>> result.bytes, result.calibration_samples
    """
    if target is not None:
        check_target(target, mode, int8_io)
        options = dict(
            max_calibration_samples=max_calibration_samples,
            verbose=verbose,
            batch_size=batch_size,
            sequence_length=sequence_length,
            input_shape=input_shape,
            isolate=isolate,
        )
        return export_for_target(to_tflite, model, path, target, representative_data, options)
    mode = "float32" if mode is None else mode
    export_mode = get_mode(mode)
    if export_mode.writer is not None:  # e.g. the litert-quantizer low-bit modes
        shapes = dict(
            batch_size=batch_size, sequence_length=sequence_length, input_shape=input_shape
        )
        return export_mode.writer(
            model,
            path,
            representative_data=representative_data,
            int8_io=int8_io,
            verbose=verbose,
            max_calibration_samples=max_calibration_samples,
            **{k: v for k, v in shapes.items() if v is not None},
        )
    flavor = _flavor.flavor_of(model)
    _flavor.check_built(model, what="export to TFLite")
    path = _io.check_output_path(path, what="TFLite file")
    _io.refuse_overwriting(path, "TFLite file", allow=(_io.TFLITE_KIND,))
    if int8_io and export_mode.io_dtype is None:
        raise ValueError(
            f"int8_io=True needs a full-integer mode ('int8' or 'int16x8'); mode {mode!r} keeps "
            "float inputs and outputs. Use mode='int8' or drop int8_io."
        )

    _refuse_keras_quantized(model, flavor)
    specs = calib.input_specs(model)
    fixed = static_specs(model, specs, batch_size, sequence_length, input_shape)
    notes = []
    recurrent = _recurrent_layers(model, flavor)
    if recurrent and (fixed or specs)[0].shape[0] is None:
        # The converter lowers LSTM/GRU loops only with a static batch size.
        fixed = static_specs(model, fixed or specs, batch_size=1)
        notes.append(
            f"batch size fixed to 1: recurrent layer '{recurrent[0].name}' "
            f"({type(recurrent[0]).__name__}) converts only with a static batch"
        )
    if isolate is None:  # where the converter is known to crash: calibrating RNN loops
        isolate = bool(recurrent) and export_mode.calibration == "required"
    if recurrent and export_mode.calibration == "required":
        # Calibrating the converter's WHILE loops crashes it; the unrolled loop
        # (a fixed number of time steps) is plain FULLY_CONNECTED / elementwise ops.
        steps = (fixed or specs)[0].shape[1] if (fixed or specs)[0].rank > 1 else None
        unrolled = _unrolled(model, flavor) if steps is not None else None
        if unrolled is not None:
            model = unrolled
            notes.append(
                f"recurrent layers unrolled over {steps} time steps for int8 "
                "calibration (the converter crashes on their loops)"
            )
        else:
            notes.append(
                "recurrent layers kept as loops: pass sequence_length= to unroll them for int8"
            )
    if fixed is not None:
        specs = fixed
    quantization_aware = False
    if export_mode.name == "int8":
        from tfcompress.quantize import check_ranges_set, is_quantization_aware

        quantization_aware = is_quantization_aware(model)
        if quantization_aware:
            check_ranges_set(model)  # before any converter work: a clear error, not a graph
            representative_data = None  # the trained ranges are in the graph
    calibration = None
    if export_mode.calibration == "unused":
        representative_data = None
    elif (
        representative_data is None
        and export_mode.calibration == "required"
        and not quantization_aware
    ):
        raise CalibrationDataError(
            f"mode={mode!r} needs representative_data to measure activation ranges: pass a "
            "few hundred training inputs (an array, a tf.data.Dataset or a generator). "
            "Use mode='dynamic' for int8 weights without calibration data."
        )
    if representative_data is not None:
        calibration = calib.calibration_set(representative_data, specs, max_calibration_samples)

    from tfcompress._layers import float32_compute

    # Mixed precision layers trace in float32: TFLite has no float16 BiasAdd, Relu, ...
    with float32_compute(model) as half:
        data, route = _convert(
            model,
            flavor,
            export_mode,
            calibration,
            int8_io,
            verbose,
            quantization_aware,
            fixed,
            isolate,
        )
    if half:
        notes.append(f"{len(half)} mixed precision layers exported with float32 compute")
    _io.atomic_write_bytes(path, data)
    return ExportResult(
        path=path,
        mode=mode,
        bytes=len(data),
        gzip_bytes=_io.gzip_size(data),
        route=route,
        calibration_samples=None if calibration is None else len(calibration),
        int8_io=bool(int8_io),
        quantization_aware=quantization_aware,
        input_shapes=None if fixed is None else {s.name: s.shape for s in fixed},
        isolated=bool(isolate),
        notes=tuple(notes),
        model_name=getattr(model, "name", ""),
    )


def _unrolled(model, flavor):
    """A copy of `model` whose recurrent layers run unrolled (same weights), or `None`."""
    k = _keras_of(flavor)

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, k.layers.Bidirectional):
            for key in ("layer", "backward_layer"):
                if isinstance(config.get(key), dict):
                    config[key]["config"]["unroll"] = True
        elif isinstance(layer, k.layers.RNN):
            config["unroll"] = True
        return layer.__class__.from_config(config)

    try:
        copy = k.models.clone_model(model, clone_function=clone)
        copy.set_weights(model.get_weights())
    except Exception:  # a subclassed or custom model: keep its loops (and the isolation)
        return None
    return copy


def _keras_of(flavor):
    if flavor == _flavor.TF_KERAS:
        import tf_keras

        return tf_keras
    import keras

    return keras


def _recurrent_layers(model, flavor):
    """The model's recurrent layers (LSTM, GRU, ... and their Bidirectional wrappers)."""
    k = _keras_of(flavor)
    kinds = (k.layers.RNN, k.layers.Bidirectional)
    flatten = getattr(model, "_flatten_layers", None)
    if flatten is None:
        return []
    return [
        layer for layer in flatten(include_self=False, recursive=True) if isinstance(layer, kinds)
    ]


def _routes(flavor, fixed=None, isolate=False):
    # keras-hub models only convert through a SavedModel (from_keras_model
    # fails on them); plain models take the direct route and fall back.
    # Static shapes go through a SavedModel exported with that input signature.
    # A converter in a child process reads a SavedModel too.
    if flavor == _flavor.KERAS_HUB or fixed is not None or isolate:
        return ("saved_model",)
    return ("from_keras_model", "saved_model")


@contextlib.contextmanager
def _quiet(enabled):
    """Silence Python and C++ output (the converter prints from both) while converting."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _convert(
    model,
    flavor,
    export_mode,
    calibration,
    int8_io,
    verbose,
    quantization_aware=False,
    fixed=None,
    isolate=False,
):
    import tensorflow as tf

    configure = export_mode.configure
    if quantization_aware:
        # Restricting ops to TFLITE_BUILTINS_INT8 would make the converter demand a
        # representative dataset and refuse layers kept in float on purpose.
        from tfcompress.quantize import configure_converter as configure

    failures, culprits = [], []
    for route in _routes(flavor, fixed, isolate):
        with tempfile.TemporaryDirectory(prefix=f"tfcompress-export-{os.getpid()}-") as tmp:
            as_dict = calib.takes_dict(model) or (
                route == "saved_model" and calibration is not None and len(calibration.specs) > 1
            )
            try:
                if isolate:
                    with _quiet(not verbose):
                        saved = _save_model(model, flavor, tmp, tf, fixed)
                    return _isolated.convert(
                        saved,
                        tmp,
                        export_mode.name,
                        quantization_aware,
                        int8_io,
                        calibration,
                        as_dict,
                        verbose,
                    ), route
                with _quiet(not verbose):
                    converter = _make_converter(route, model, flavor, tmp, tf, fixed)
                    configure(converter, tf, int8_io)
                    if calibration is not None:
                        converter.representative_dataset = calibration.representative_dataset(
                            as_dict=as_dict
                        )
                    return converter.convert(), route
            except Exception as e:  # the converter raises many unrelated types
                failures.append(f"{route}: {type(e).__name__}: {_last_lines(str(e))}")
                culprits += [c for c in _failing_layers(str(e), model) if c not in culprits]
            finally:
                shutil.rmtree(os.path.join(tmp, "saved_model"), ignore_errors=True)
    where = ", ".join(f"'{layer.name}' ({type(layer).__name__})" for layer in culprits[:3])
    dynamic = fixed is None and any(None in s.shape[1:] for s in calib.input_specs(model))
    # Measured: the attention of keras-hub Llama, Mistral, Gemma, Qwen2, Phi-3, RoFormerV2
    # (a StridedSlice adding an axis to the mask) and DeBERTaV3 (Abs/Sign of relative
    # positions) converts only with a static sequence length.
    hint = (
        " Ops refused with dynamic shapes often convert with static ones: pass "
        "sequence_length=N (the batch may stay dynamic), or input_shape=."
        if dynamic and any("op is neither a custom op nor a flex op" in f for f in failures)
        else ""
    )
    raise ConversionError(
        f"The TFLite converter could not convert model '{model.name}' in mode "
        f"{export_mode.name!r}"
        + (f": the ops it refused are in layer {where}" if culprits else "")
        + ". Tried: "
        + " | ".join(failures)
        + ". If a layer is named "
        "above, keep it out of the quantized part or try mode='float32' to see whether "
        "the model converts at all." + hint
    )


def _make_converter(route, model, flavor, tmp, tf, fixed=None):
    if route == "from_keras_model":
        return tf.lite.TFLiteConverter.from_keras_model(model)
    return tf.lite.TFLiteConverter.from_saved_model(_save_model(model, flavor, tmp, tf, fixed))


def _save_model(model, flavor, tmp, tf, fixed=None):
    """Write `model` as a SavedModel under `tmp` (with a fixed input signature if asked)."""
    saved = os.path.join(tmp, "saved_model")
    signature = None
    if fixed is not None:
        tensor_specs = shapes.tensor_specs(fixed, tf)
        if calib.takes_dict(model):
            signature = [{s.name: t for s, t in zip(fixed, tensor_specs)}]
        elif len(tensor_specs) == 1:
            signature = tensor_specs
        else:
            signature = [tensor_specs]
    if flavor == _flavor.TF_KERAS:
        if signature is None:
            tf.saved_model.save(model, saved)
        else:
            function = tf.function(lambda inputs: model(inputs, training=False))
            tf.saved_model.save(model, saved, signatures=function.get_concrete_function(*signature))
    else:
        model.export(saved, format="tf_saved_model", verbose=False, input_signature=signature)
    return saved


def _failing_layers(text, model):
    """The layers of `model` whose ops the converter's errors point at, in order.

    Each error carries the TensorFlow op's name scope (`model/backbone_1/
    layer_0_1/FFT2D`); its deepest part that names a layer of the model (with
    or without the `_1` TensorFlow appends) is the layer to report.
    """
    from tfcompress._graph import all_layers

    layers = {layer.name: layer for layer in all_layers(model)}
    found = []
    for line in text.splitlines():
        if "error:" not in line:
            continue
        for scope in re.findall(r'"([^"@]+/[^"@]+)(?:@[^"]*)?"', line):
            hit = None
            for part in scope.split("/"):
                for name in (part, re.sub(r"_\d+$", "", part)):
                    if name in layers:
                        hit = layers[name]
                        break
            if hit is not None and hit not in found:
                found.append(hit)
    return found


def _last_lines(text, n=3):
    """The converter's own words, without MLIR location noise."""
    errors = []
    for line in text.strip().splitlines():
        if "error:" in line:
            message = re.sub(r"^.*?error: (loc\(.*?\)\)*: )?", "", line).strip()
            message = re.sub(r"^loc\(.*\)+: ", "", message)
            if message and message not in errors:
                errors.append(message)
    lines = errors or [line for line in text.strip().splitlines() if line.strip()]
    return " / ".join(lines[-n:])[:600]


def _refuse_keras_quantized(model, flavor):
    """Keras's own `model.quantize("int8")` output cannot be converted: say so up front."""
    if flavor == _flavor.TF_KERAS:
        return
    for layer in model._flatten_layers(include_self=False, recursive=True):
        mode = getattr(layer, "quantization_mode", None)
        if mode:
            raise ConversionError(
                f"Layer '{layer.name}' ({type(layer).__name__}) of model '{model.name}' was "
                f"quantized by Keras's model.quantize({mode!r}); the TFLite converter cannot "
                "convert such layers (it rejects their int8 matmul operands). Export the float "
                "model instead with mode='int8' (or 'dynamic'), or train it with "
                "tfcompress.quantize.quantize_model for quantization-aware int8."
            )
