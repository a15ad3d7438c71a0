"""Real int4 and int2 weights in the `.tflite` file, through litert-quantizer.

`to_tflite(model, path, mode="int4_block32")` (or any mode below) converts the
model to float32 with the TFLite converter, then lets litert-quantizer 0.11
rewrite the weights of its FULLY_CONNECTED, CONV_2D, ... ops: packed 4- or
2-bit integers with one scale per output channel or per block of inputs,
int8 weight-only, or static int8 / int16-activation recipes.

`layers=` picks a format per Keras layer by name or glob pattern, so one file
mixes precisions: `{"logits": "int8", "encoder_*": "int4_block32",
"embedding": "float"}` (later entries win). A layer the quantizer cannot take
at the width asked for (a DEPTHWISE_CONV_2D at int4, a Dense whose input size
the block does not divide) gets the nearest format it can take, and the
result's `layers` say so.

Embedding tables go low-bit too: a layer's float32 weight that only GATHER
or SLICE ops read (a Keras `Embedding`'s table, keras-hub's token, segment and
position embeddings) is stored as int8, int4 or int2 with one scale per
column (the embedding dimension, the last axis) and a DEQUANTIZE op that
LiteRT runs once, when the file is loaded. litert-quantizer leaves these
tables float32 (it quantizes EMBEDDING_LOOKUP, which the converter does not
emit for Keras models), and in a small text model they are most of the file.

A model trained with the `"int4"`, `"int4_block32"`, ... QAT schemes
(`tfcompress.quantize`) is on litert-quantizer's grid already, so its weights
reach the file unchanged.

Example:

>>> result = to_lowbit_tflite(model, "model_int4.tflite", mode="int4_block32",
...                           layers={"logits": "int8"})
>>> [(choice.layer, choice.got) for choice in result.layers]
[('conv0', 'int4'), ('conv1', 'int4'), ('dense', 'int4_block32'), ('logits', 'int8')]
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
import tempfile
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from tfcompress import _io
from tfcompress._report import Entry, Report
from tfcompress.export.convert import ExportResult, to_tflite
from tfcompress.export.modes import ExportMode, register_mode

if TYPE_CHECKING:
    import keras

#: TFLite ops whose constant weights litert-quantizer can quantize.
WEIGHT_OPS = (
    "FULLY_CONNECTED",
    "CONV_2D",
    "DEPTHWISE_CONV_2D",
    "EMBEDDING_LOOKUP",
    "BATCH_MATMUL",
    "CONV_2D_TRANSPOSE",
)
#: TFLite ops whose input 0 may be a constant table (an embedding): stored
#: low-bit with a DEQUANTIZE in front, one scale per column.
TABLE_OPS = ("GATHER", "SLICE", "STRIDED_SLICE")
_INT4, _INT2 = 17, 19  # TensorType codes of the TFLite schema
_TYPE_CODES = {8: 9, 4: _INT4, 2: _INT2}  # bits -> TensorType
_FLOAT32, _DEQUANTIZE = 0, 6  # TensorType FLOAT32, BuiltinOperator DEQUANTIZE


@dataclasses.dataclass(frozen=True)
class WeightFormat:
    """How one op's weights are stored.

    Attributes:
        name: the `layers=` value (and mode name): `"int4"`, `"int4_block32"`,
            `"int2"`, `"int8"`, `"int8_weight_only"`, `"float"`, ...
        bits: weight bits (32 for float).
        block_size: inputs per scale (0: one scale per output channel).
        weight_only: weights are dequantized to float before the op
            (smaller file, float compute); else the kernel quantizes the
            activations on the fly (dynamic range).
        fallback: the format to try when the quantizer cannot take this one.
    """

    name: str
    bits: int
    block_size: int = 0
    weight_only: bool = False
    fallback: Optional[str] = None


_FORMATS: dict[str, WeightFormat] = {}


def _add(fmt):
    _FORMATS[fmt.name] = fmt


_add(WeightFormat("float", 32))
_add(WeightFormat("int8", 8, fallback="float"))
_add(WeightFormat("int8_weight_only", 8, weight_only=True, fallback="float"))
_add(WeightFormat("int4", 4, fallback="int8"))
_add(WeightFormat("int4_weight_only", 4, weight_only=True, fallback="int8_weight_only"))
# int2: channelwise, FULLY_CONNECTED only. Measured with ai-edge-litert 2.3: XNNPACK
# refuses blockwise int2 and LiteRT's built-in blockwise kernels return zeros; an int2
# CONV_2D returns NaN. Such layers get int4, on which int2 grid values are exact.
_add(WeightFormat("int2", 2, fallback="int4"))
for _block in (32, 64, 128):
    _add(WeightFormat(f"int4_block{_block}", 4, _block, fallback="int4"))


def available_formats() -> list[str]:
    """Names of the weight formats `layers=` accepts."""
    return list(_FORMATS)


def get_format(name: str, what: str = "format") -> WeightFormat:
    """The `WeightFormat` called `name`; an error lists the valid ones.

    Args:
        name: a format name such as `"int4_block32"`.
        what: how the error names the value (`"layers['logits']"`, ...).

    Returns:
        A `WeightFormat`.
    """
    try:
        return _FORMATS[name]
    except (KeyError, TypeError):
        bits = re.fullmatch(r"int(\d+)(?:_block(\d+))?", str(name))
        hint = ""
        if bits and bits.group(1) not in ("8", "4", "2"):
            hint = " Valid widths: 8, 4 and 2 bits (or 'float')."
        elif bits and bits.group(2):
            hint = " Valid block sizes: 32, 64 and 128, for int4 only."
        raise ValueError(
            f"Unknown low-bit weight format {name!r}.{hint} Choose one of: "
            f"{', '.join(available_formats())}. Received: {what}={name!r}"
        ) from None


@dataclasses.dataclass(frozen=True)
class LayerChoice:
    """What one weight op of the file got.

    Attributes:
        layer: the Keras layer(s) it came from (`"?"` when unknown).
        op: the TFLite op (`"FULLY_CONNECTED"`, ...).
        tensor: the weight tensor's name in the file.
        requested: the format asked for.
        got: the format written (differs when the quantizer could not take
            the requested one).
        reason: why `got` differs, or `""`.
    """

    layer: str
    op: str
    tensor: str
    requested: str
    got: str
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class LowBitExportResult(ExportResult):
    """An `ExportResult` plus what each weight op got.

    Attributes:
        layers: tuple of `LayerChoice`, one per weight op of the file.
    """

    layers: tuple = ()

    @property
    def report(self) -> Report:
        """Each weight op in the requested format (done) or what it got instead (skipped)."""
        return Report(
            "to_lowbit_tflite",
            self.model_name,
            done=[Entry(c.layer, c.op, c.got) for c in self.layers if c.got == c.requested],
            skipped=[
                Entry(c.layer, c.op, f"asked {c.requested}, got {c.got}: {c.reason}")
                for c in self.fallbacks
            ],
            details=self,
        )

    @property
    def fallbacks(self) -> list[LayerChoice]:
        """The `LayerChoice`s that did not get the format asked for."""
        return [c for c in self.layers if c.got != c.requested]

    def __str__(self) -> str:
        lines = [super().__str__()]
        for c in self.fallbacks:
            lines.append(f"  {c.layer} ({c.op}): asked {c.requested}, got {c.got}: {c.reason}")
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class _Recipe:
    """A low-bit export mode: the default weight format, or a static recipe."""

    weights: Optional[str] = None  # a format name
    activation_bits: Optional[int] = None  # static recipes: 8 or 16


_MODE_RECIPES: dict[str, _Recipe] = {}


def _register(name, description, recipe, calibration="unused"):
    _MODE_RECIPES[name] = recipe

    def write(model, path, **options):
        return to_lowbit_tflite(model, path, mode=name, **options)

    register_mode(ExportMode(name, description, calibration, _float32_converter, writer=write))


def _float32_converter(converter, tf, int8_io):
    pass


_register(
    "int4",
    "int4 weights, one scale per output channel, dynamic int8 activations (litert-quantizer)",
    _Recipe("int4"),
)
for _block in (32, 64, 128):
    _register(
        f"int4_block{_block}",
        f"int4 weights, one float16 scale per {_block} inputs, "
        "dynamic int8 activations (litert-quantizer; XNNPACK's fast int4 path)",
        _Recipe(f"int4_block{_block}"),
    )
_register(
    "int2",
    "int2 weights (ternary), one scale per output channel, dynamic int8 activations "
    "(litert-quantizer; FULLY_CONNECTED only, other ops get int4)",
    _Recipe("int2"),
)
_register(
    "int8_weight_only",
    "int8 weights dequantized to float before each op (litert-quantizer)",
    _Recipe("int8_weight_only"),
)
_register(
    "int4_weight_only",
    "int4 weights dequantized to float before each op (litert-quantizer; small but slow)",
    _Recipe("int4_weight_only"),
)
_register(
    "static_int8",
    "int8 weights and activations, calibrated (litert-quantizer's static recipe)",
    _Recipe(activation_bits=8),
    calibration="required",
)
_register(
    "static_int16x8",
    "int8 weights, int16 activations, calibrated (litert-quantizer's static recipe)",
    _Recipe(activation_bits=16),
    calibration="required",
)


def lowbit_modes() -> list[str]:
    """Names of the export modes this module registers."""
    return list(_MODE_RECIPES)


def to_lowbit_tflite(
    model: keras.Model,
    path: str | os.PathLike,
    mode: str = "int4_block32",
    layers: Mapping[str, str] | None = None,
    representative_data: Any = None,
    max_calibration_samples: int = 200,
    verbose: bool = False,
    int8_io: bool = False,
    **convert_options: Any,
) -> LowBitExportResult:
    """Write a `.tflite` file with low-bit weights through litert-quantizer.

    Usually reached as `tfcompress.export.to_tflite(model, path, mode=...)`.

    Args:
        model: a built Keras 3 / keras-hub / tf_keras model, QAT or float.
        path: the `.tflite` file to write (atomically).
        mode: one of `lowbit_modes()`.
        layers: `{layer name or glob pattern: format}` overrides, format one
            of `available_formats()` (`"float"` keeps a layer float). Later
            entries win. Not for the static modes.
        representative_data: calibration inputs for `"static_int8"` and
            `"static_int16x8"` (an array, a dict of arrays, or `(x, y)`).
        max_calibration_samples: most samples used for calibration.
        verbose: show the converter's messages.
        int8_io: not supported here (inputs and outputs stay float).
        **convert_options: passed to the float32 `to_tflite` (e.g. fixed
            `batch_size=1`, `sequence_length=`).

    Returns:
        A `LowBitExportResult` (an `ExportResult` with `layers`).

    Example:

    >>> result = to_lowbit_tflite(model, "m.tflite", mode="int4", layers={"dense*": "int2"})
    >>> {choice.layer: choice.got for choice in result.layers}["dense"]
    'int2'
    """
    if mode not in _MODE_RECIPES:
        raise ValueError(
            f"Unknown low-bit mode {mode!r}. Choose one of: "
            f"{', '.join(lowbit_modes())}. Received: mode={mode!r}"
        )
    if int8_io:
        raise ValueError(
            f"int8_io=True is not available for mode {mode!r}: its inputs and "
            "outputs stay float. Drop int8_io. Received: int8_io=True"
        )
    recipe = _MODE_RECIPES[mode]
    layers = dict(layers or {})
    if recipe.activation_bits and layers:
        raise ValueError(
            f"layers= is for the weight-format modes; mode {mode!r} is a static "
            f"recipe for the whole model. Received: layers={layers!r}"
        )
    for pattern, fmt in layers.items():
        get_format(fmt, what=f"layers[{pattern!r}]")
    path = _io.check_output_path(path, what="TFLite file")
    _io.refuse_overwriting(path, "TFLite file", allow=(_io.TFLITE_KIND,))
    if recipe.activation_bits and representative_data is None:
        from tfcompress.errors import CalibrationDataError

        raise CalibrationDataError(
            f"mode={mode!r} needs representative_data to measure activation ranges: pass a "
            "few hundred training inputs. Use mode='int4' or 'int8_weight_only' for low-bit "
            "weights without calibration data."
        )

    with tempfile.TemporaryDirectory(prefix="tfcompress-lowbit-") as tmp:
        float_path = os.path.join(tmp, "float32.tflite")
        float_result = to_tflite(
            model, float_path, mode="float32", verbose=verbose, **convert_options
        )
        with open(float_path, "rb") as f:
            float_bytes = f.read()
        if recipe.activation_bits:
            data, choices = _quantize_static(
                float_path, recipe.activation_bits, representative_data, max_calibration_samples
            )
        else:
            ops = _weight_ops(float_bytes, _layer_aliases(model), _weight_shapes(model))
            _check_patterns(layers, model, ops)
            float_bytes = _exact_qat_kernels(model, float_bytes, ops)
            plan = _plan(ops, recipe.weights, layers)
            data = _quantize(float_bytes, plan)
            choices = tuple(
                LayerChoice(", ".join(op.layers) or "?", op.op, op.tensor, requested, got, reason)
                for op, requested, got, reason in plan
            )
    _io.atomic_write_bytes(path, data)
    return LowBitExportResult(
        path=path,
        mode=mode,
        bytes=len(data),
        gzip_bytes=_io.gzip_size(data),
        route=f"{float_result.route} + litert-quantizer",
        calibration_samples=None,
        int8_io=False,
        quantization_aware=_is_quantization_aware(model),
        layers=choices,
        model_name=getattr(model, "name", ""),
    )


def _is_quantization_aware(model):
    from tfcompress.quantize import is_quantization_aware

    return bool(is_quantization_aware(model))


# --- Keras layers <-> TFLite ops -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _WeightOp:
    subgraph: int
    index: int
    op: str
    scope: str  # litert-quantizer's scope string (output names joined with ';')
    tensor: str  # the weight tensor's name
    shape: tuple  # the weight tensor's shape
    layers: tuple  # Keras layer names found in the op's tensor names
    table: bool = False  # a constant table read by TABLE_OPS (we quantize it, not litert)


def _layer_names(model):
    names = []
    for aliases in _layer_aliases(model).values():
        names += [a for a in aliases if a not in names]
    return names


def _layer_aliases(model):
    """`{layer name: names it answers to}`; a wrapper (QAT, pruning) also answers to its layer's."""
    import keras

    aliases = {}
    flatten = getattr(model, "_flatten_layers", None)
    found = flatten(include_self=False, recursive=True) if flatten else model.layers
    for layer in found:
        names = aliases.setdefault(layer.name, [layer.name])
        inner = layer
        while isinstance(inner, keras.layers.Wrapper):
            inner = inner.layer
            if inner.name not in names:
                names.insert(0, inner.name)  # the user's name first
    return aliases


def _name_pattern(name):
    # Keras 3 scopes name layers "model/dense_1/MatMul" (a "_1" suffix in traced graphs).
    return re.compile(r"(^|/)" + re.escape(name) + r"(_\d+)?(/|;|:|$)")


def _weight_shapes(model):
    """`{layer name: shapes of its weights}`: a table must be one of its layer's weights."""
    flatten = getattr(model, "_flatten_layers", None)
    found = flatten(include_self=False, recursive=True) if flatten else model.layers
    return {layer.name: {tuple(int(d) for d in w.shape) for w in layer.weights} for layer in found}


def _weight_ops(float_bytes, aliases, weight_shapes=None):
    from litert_quantizer.utils import tfl_flatbuffer_utils as fu

    model = fu.read_model(float_bytes)
    patterns = [(name, _name_pattern(name)) for name in aliases]
    ops = []
    for s, subgraph in enumerate(model.subgraphs):
        tensors = subgraph.tensors
        names = [_op_name(model, op) for op in subgraph.operators]
        tables = _tables(subgraph, names, model.buffers)
        for i, op in enumerate(subgraph.operators):
            name = names[i]
            if name in WEIGHT_OPS:
                weight = _constant_input(op, tensors, model.buffers)
            elif name in TABLE_OPS and op.inputs[0] in tables:
                weight = int(op.inputs[0])
                if tables[weight] != i:
                    continue  # a table read by several ops: listed once, at its first reader
            else:
                continue
            if weight is None:
                continue
            texts = [fu.get_tensor_name(tensors[t]) for t in list(op.outputs) + [weight] if t >= 0]
            found = []
            for n, p in patterns:
                if any(p.search(t) for t in texts):
                    found += [a for a in aliases[n] if a not in found]
            shape = tuple(int(d) for d in tensors[weight].shape)
            if name in TABLE_OPS and not any(
                shape in (weight_shapes or {}).get(layer, ()) for layer in found
            ):
                continue  # a constant the converter derived (not a layer's weight): left as is
            ops.append(
                _WeightOp(
                    s,
                    i,
                    name,
                    fu.get_op_scope(op, tensors),
                    fu.get_tensor_name(tensors[weight]),
                    shape,
                    tuple(found),
                    table=name in TABLE_OPS,
                )
            )
    return ops


def _op_name(model, op):
    from litert_quantizer.utils import tfl_flatbuffer_utils as fu

    name = fu.TFL_OP_CODE_TO_NAME.get(model.operatorCodes[op.opcodeIndex].builtinCode)
    return getattr(name, "value", name)


def _tables(subgraph, names, buffers):
    """`{tensor index: first reader}` of the float32 constants of rank >= 2 read only as tables.

    A table is input 0 of GATHER / SLICE / STRIDED_SLICE ops and of nothing
    else: storing it low-bit behind a DEQUANTIZE changes no other op.
    """
    readers = {}
    for i, op in enumerate(subgraph.operators):
        for position, t in enumerate(op.inputs):
            if t >= 0:
                readers.setdefault(int(t), []).append((i, names[i], position))
    tables = {}
    for t, uses in readers.items():
        tensor = subgraph.tensors[t]
        data = buffers[tensor.buffer].data if tensor.buffer < len(buffers) else None
        if tensor.type != _FLOAT32 or data is None or not len(data) or len(tensor.shape) < 2:
            continue
        if all(name in TABLE_OPS and position == 0 for _, name, position in uses):
            tables[t] = uses[0][0]
    return tables


def _constant_input(op, tensors, buffers):
    """Index of the op's weight: its constant input 1 (input 0 for EMBEDDING_LOOKUP's table)."""
    for position in (1, 0):
        if len(op.inputs) > position and op.inputs[position] >= 0:
            tensor = tensors[op.inputs[position]]
            data = buffers[tensor.buffer].data if tensor.buffer < len(buffers) else None
            if (data is not None and len(data)) or buffers[tensor.buffer].offset > 1:
                return int(op.inputs[position])
    return None


def _check_patterns(layers, model, ops):
    names = _layer_names(model)
    for pattern in layers:
        if not fnmatch.filter(names, pattern):
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise ValueError(
                f"layers= names {pattern!r}, which matches no layer of model '{model.name}' "
                f"(layers: {shown}). Use a layer name or a glob pattern such as 'dense*'. "
                f"Received: layers[{pattern!r}]"
            )


def _requested(op, default, layers):
    choice = default
    for pattern, fmt in layers.items():
        if any(fnmatch.fnmatchcase(name, pattern) for name in op.layers):
            choice = fmt
    return choice


def _exact_qat_kernels(model, float_bytes, ops):
    """Put a QAT model's fake-quantized kernels into the float file bit for bit.

    The converter folds the grid arithmetic itself and may rewrite it (a
    division by 7 becomes a multiplication by 1/7), one float32 ulp away
    from what Keras computes. The eager values replace the folded ones, in
    place, where the two agree to rounding: litert-quantizer then finds them
    on its grid and writes them unchanged.
    """
    from tfcompress.quantize import QuantizeWrapper

    wrappers = {}
    flatten = getattr(model, "_flatten_layers", None)
    for layer in flatten(include_self=False, recursive=True) if flatten else []:
        if isinstance(layer, QuantizeWrapper) and layer.weight_scheme is not None:
            wrappers[layer.name] = layer
    if not wrappers:
        return float_bytes
    data = bytearray(float_bytes)
    from litert_quantizer.utils import tfl_flatbuffer_utils as fu

    flat = fu.read_model(float_bytes)
    for op in ops:
        layer = next((wrappers[n] for n in op.layers if n in wrappers), None)
        if layer is None or op.table:
            continue
        kernel = np.asarray(layer.quantized_kernel(), dtype=np.float32)
        exact = _tflite_layout(kernel, op.op, op.shape)
        tensor = flat.subgraphs[op.subgraph].tensors[
            flat.subgraphs[op.subgraph].operators[op.index].inputs[1]
        ]
        folded = _buffer_bytes(flat.buffers[tensor.buffer], float_bytes)
        if exact is None or folded is None or len(folded) != exact.nbytes:
            continue
        current = np.frombuffer(folded, dtype=np.float32).reshape(exact.shape)
        scale = float(np.abs(exact).max()) or 1.0
        if np.abs(current - exact).max() > 1e-5 * scale:
            continue  # not the same tensor (a folded BatchNorm, ...): leave it
        at = bytes(data).find(folded)
        if at >= 0 and bytes(data).find(folded, at + 1) < 0:
            data[at : at + len(folded)] = exact.tobytes()
    return bytes(data)


def _tflite_layout(kernel, op, shape):
    """A Keras kernel in the layout of the TFLite op's weight tensor, or `None`."""
    if op == "FULLY_CONNECTED" and kernel.ndim == 2:
        out = np.ascontiguousarray(kernel.T)
    elif op == "CONV_2D" and kernel.ndim == 4:
        out = np.ascontiguousarray(kernel.transpose(3, 0, 1, 2))
    elif op == "DEPTHWISE_CONV_2D" and kernel.ndim == 4:
        out = np.ascontiguousarray(kernel.reshape(1, *kernel.shape[:2], -1))
    else:
        return None
    return out if tuple(out.shape) == tuple(shape) else None


# --- planning and quantizing -----------------------------------------------------------------


def _op_config(fmt):
    from litert_quantizer import qtyping

    granularity = (
        qtyping.QuantGranularity(f"BLOCKWISE_{fmt.block_size}")
        if fmt.block_size
        else qtyping.QuantGranularity.CHANNELWISE
    )
    weights = qtyping.TensorQuantizationConfig(
        num_bits=fmt.bits, symmetric=True, granularity=granularity
    )
    if fmt.weight_only:
        return qtyping.OpQuantizationConfig(
            weight_tensor_config=weights,
            compute_precision=qtyping.ComputePrecision.FLOAT,
            explicit_dequantize=True,
        )
    return qtyping.OpQuantizationConfig(
        weight_tensor_config=weights,
        compute_precision=qtyping.ComputePrecision.INTEGER,
        explicit_dequantize=False,
    )


def _why_not(op, fmt):
    """Why the quantizer cannot write `op` in `fmt`, or `None` when it can."""
    from litert_quantizer import algorithm_manager, qtyping

    if fmt.name == "float":
        return None
    if op.table:
        if fmt.block_size:
            return "a table gets one scale per column, not per block"
        return None
    if fmt.bits == 2 and op.op != "FULLY_CONNECTED":
        return f"LiteRT computes int2 {op.op} wrongly (measured: NaN)"
    if fmt.block_size:
        inputs = op.shape[1] if len(op.shape) == 2 else None
        if op.op not in ("FULLY_CONNECTED", "EMBEDDING_LOOKUP"):
            return f"{op.op} has no blockwise kernel"
        if inputs is None or inputs % fmt.block_size:
            return f"input size {inputs} is not a multiple of the block size {fmt.block_size}"
    try:
        algorithm_manager.check_op_quantization_config(
            algorithm_manager.AlgorithmName.MIN_MAX_UNIFORM_QUANT,
            qtyping.TFLOperationName(op.op),
            _op_config(fmt),
        )
    except ValueError:
        kind = "weight-only" if fmt.weight_only else "dynamic"
        return f"litert-quantizer has no {kind} {fmt.bits}-bit {op.op}"
    return None


def _plan(ops, default, layers):
    plan = []
    for op in ops:
        requested = _requested(op, default, layers)
        fmt, reasons = get_format(requested), []
        while True:
            reason = _why_not(op, fmt)
            if reason is None:
                break
            reasons.append(reason)
            fmt = get_format(fmt.fallback)
        plan.append((op, requested, fmt.name, "; ".join(reasons)))
    return plan


def _quantize(float_bytes, plan):
    from litert_quantizer import Quantizer, algorithm_manager, qtyping

    tables = {op.tensor: get_format(got) for op, _, got, _ in plan if op.table and got != "float"}
    quantizer = Quantizer(bytearray(float_bytes))
    entries = 0
    for op, _, got, _ in plan:
        if got == "float" or op.table:
            continue
        quantizer.update_quantization_recipe(
            regex="^" + re.escape(op.scope) + "$",
            operation_name=qtyping.TFLOperationName(op.op),
            op_config=_op_config(get_format(got)),
            algorithm_key=algorithm_manager.AlgorithmName.MIN_MAX_UNIFORM_QUANT,
        )
        entries += 1
    data = float_bytes
    if entries:
        with _quiet_warnings():
            data = bytes(quantizer.quantize(enable_progress_report=False).quantized_model)
    return _quantize_tables(data, tables) if tables else data


def table_grid(table: np.ndarray, num_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Integers and scales of a table on the symmetric grid, one scale per column.

    The grid of `tfcompress.quantize.grid.litert_grid` (channels last) and of
    the int8 QAT scheme: `scale = max(max|w|, 1e-9) / (2**(bits-1) - 1)` per
    last-axis index, `q = clip(rint(w / scale))`, zero point 0. A table
    trained on this grid is stored unchanged.

    Args:
        table: the float table, columns (the embedding dimension) last.
        num_bits: 8, 4 or 2.

    Returns:
        `(q, scales)`: int8 integers of `table`'s shape and float32 scales,
        one per column; `q * scales` is what the file computes with.

    Example:

    >>> q, scales = table_grid(np.random.randn(100, 16).astype("float32"), 4)
    >>> int(abs(q).max()), scales.shape
    (7, (16,))
    """
    table = np.asarray(table, dtype=np.float32)
    qmax = np.float32(2 ** (num_bits - 1) - 1)
    bound = np.abs(table.reshape(-1, table.shape[-1])).max(axis=0)
    scales = (np.maximum(bound, np.float32(1e-9)) / qmax).astype(np.float32)
    q = np.clip(np.rint(table / scales), -qmax - 1, qmax).astype(np.int8)
    return q, scales


def _pack(q, bits):
    """Signed integers packed low bits first (2 per byte for int4, 4 for int2), as TFLite reads."""
    if bits == 8:
        return q.astype(np.int8).reshape(-1).view(np.uint8)
    per_byte = 8 // bits
    flat = q.astype(np.int8).reshape(-1)
    flat = np.concatenate([flat, np.zeros((-len(flat)) % per_byte, np.int8)])
    parts = (flat.view(np.uint8) & ((1 << bits) - 1)).reshape(-1, per_byte)
    packed = np.zeros(len(parts), np.uint8)
    for k in range(per_byte):
        packed |= (parts[:, k] << (bits * k)).astype(np.uint8)
    return packed


def _text(name):
    return name.decode("utf-8") if isinstance(name, (bytes, bytearray)) else str(name or "")


def _quantize_tables(data, tables):
    """Store each named float32 table low-bit: a new quantized constant and a DEQUANTIZE.

    The table's tensor becomes the DEQUANTIZE's output (its readers are
    unchanged); LiteRT evaluates a DEQUANTIZE of a constant once, when the
    interpreter is prepared.
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    model = fbu.read_model_from_bytearray(bytearray(data))
    codes = [fbu.get_builtin_code_from_operator_code(c) for c in model.operatorCodes]
    if _DEQUANTIZE not in codes:
        model.operatorCodes.append(
            schema.OperatorCodeT(deprecatedBuiltinCode=_DEQUANTIZE, builtinCode=_DEQUANTIZE)
        )
        codes.append(_DEQUANTIZE)
    users = {}  # buffer -> tensors holding it (the converter shares equal constants)
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            users[tensor.buffer] = users.get(tensor.buffer, 0) + 1
    for subgraph in model.subgraphs:
        first_reader = {}
        for i, op in enumerate(subgraph.operators):
            for t in op.inputs:
                first_reader.setdefault(int(t), i)
        inserts = []
        for t, tensor in enumerate(subgraph.tensors):
            fmt = tables.get(_text(tensor.name))
            if fmt is None or tensor.type != _FLOAT32 or t not in first_reader:
                continue
            buffer = model.buffers[tensor.buffer]
            table = np.frombuffer(_buffer_bytes(buffer, data), np.float32)
            q, scales = table_grid(table.reshape(tensor.shape), fmt.bits)
            stored = schema.BufferT()
            stored.data = _pack(q, fmt.bits)
            model.buffers.append(stored)
            quantized = schema.TensorT()
            quantized.shape = list(tensor.shape)
            quantized.type = _TYPE_CODES[fmt.bits]
            quantized.buffer = len(model.buffers) - 1
            quantized.name = _text(tensor.name) + f"_int{fmt.bits}"
            quantized.quantization = schema.QuantizationParametersT(
                scale=[float(x) for x in scales],
                zeroPoint=[0] * len(scales),
                quantizedDimension=len(tensor.shape) - 1,
            )
            subgraph.tensors.append(quantized)
            if users[tensor.buffer] == 1:
                buffer.data = None  # the float table leaves the file
            tensor.buffer = 0  # buffer 0 is the empty one
            dequantize = schema.OperatorT()
            dequantize.opcodeIndex = codes.index(_DEQUANTIZE)
            dequantize.inputs = [len(subgraph.tensors) - 1]
            dequantize.outputs = [t]
            dequantize.builtinOptionsType = schema.BuiltinOptions.DequantizeOptions
            dequantize.builtinOptions = schema.DequantizeOptionsT()
            inserts.append((first_reader[t], dequantize))
        for at, dequantize in sorted(inserts, key=lambda x: -x[0]):
            subgraph.operators.insert(at, dequantize)
    for buffer in model.buffers:
        if buffer.data is not None and not isinstance(buffer.data, np.ndarray):
            # numpy arrays pack in one copy; other sequences byte by byte, in Python
            buffer.data = np.frombuffer(bytes(buffer.data), dtype=np.uint8)
    return bytes(fbu.convert_object_to_bytearray(model))


def _quantize_static(float_path, activation_bits, representative_data, max_samples):
    from litert_quantizer import Quantizer, recipe

    from tfcompress.export._litert import load_runner

    runner = load_runner(float_path)
    samples = _samples(representative_data, runner.input_names, max_samples)
    make = recipe.static_wi8_ai8 if activation_bits == 8 else recipe.static_wi8_ai16
    quantizer = Quantizer(float_path, make())
    signature = next(iter(runner.interpreter.get_signature_list()))
    with _quiet_warnings():
        calibration = quantizer.calibrate({signature: samples}, num_threads=1)
        result = quantizer.quantize(calibration, enable_progress_report=False)
    data = bytes(result.quantized_model)
    return data, ()


def _samples(data, input_names, max_samples):
    """`[{input name: one-sample batch}]` from an array, a dict of arrays or `(x, y)`."""
    if isinstance(data, tuple) and len(data) == 2 and not isinstance(data[0], (str, bytes)):
        data = data[0]
    if isinstance(data, Mapping):
        arrays = {k: np.asarray(v) for k, v in data.items()}
    else:
        if len(input_names) != 1:
            raise ValueError(
                f"The model has inputs {input_names}: pass representative_data as a dict of "
                f"arrays keyed by these names. Received: {type(data).__name__}"
            )
        arrays = {input_names[0]: np.asarray(data)}
    n = min(min(len(v) for v in arrays.values()), max_samples)
    return [
        {
            k: v[i : i + 1].astype(np.float32) if v.dtype.kind == "f" else v[i : i + 1]
            for k, v in arrays.items()
        }
        for i in range(n)
    ]


class _quiet_warnings:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


# --- reading low-bit weights back --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FileWeight:
    """One quantized constant tensor of a `.tflite` file.

    Attributes:
        name: the tensor's name.
        dtype: `"int4"`, `"int2"`, `"int8"`, ...
        bits: weight bits.
        block_size: inputs per scale (0: per channel or per tensor).
        shape: the tensor's shape (TFLite layout: outputs first).
        values: the integers, unpacked, as int8 numpy array of `shape`.
        scales: the scales as float32 (per channel, or `[out, in / block]`).
        axis: the channel axis of per-channel scales.
    """

    name: str
    dtype: str
    bits: int
    block_size: int
    shape: tuple
    values: np.ndarray
    scales: np.ndarray
    axis: int = 0

    def dequantized(self) -> np.ndarray:
        """The float32 weights the runtime computes with: `values * scales`."""
        q = self.values.astype(np.float32)
        if self.block_size:
            scale = np.repeat(self.scales.reshape(self.shape[0], -1), self.block_size, axis=1)
            return (q * scale.reshape(q.shape)).astype(np.float32)
        if self.scales.size == 1:
            return (q * self.scales.reshape(())).astype(np.float32)
        shape = [1] * q.ndim
        shape[self.axis] = -1
        return (q * self.scales.reshape(shape)).astype(np.float32)


def _unpack(raw, bits, count):
    packed = np.frombuffer(raw, dtype=np.uint8)
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    parts = [(packed >> (bits * k)) & mask for k in range(per_byte)]
    values = np.stack(parts, axis=1).reshape(-1)[:count].astype(np.int8)
    sign = 1 << (bits - 1)
    return np.where(values >= sign, values - (1 << bits), values).astype(np.int8)


def read_weights(path: str | os.PathLike) -> dict[str, FileWeight]:
    """The quantized constant tensors of a `.tflite` file, unpacked.

    Args:
        path: a `.tflite` file (from any exporter).

    Returns:
        `{tensor name: FileWeight}` for every int8/int4/int2 constant with scales.

    Example:

    >>> weights = read_weights("model_int4.tflite")  # keyed by tensor name
    >>> w = next(w for name, w in weights.items() if "/dense" in name)
    >>> w.bits, w.block_size, w.dequantized().shape
    """
    from litert_quantizer.utils import tfl_flatbuffer_utils as fu

    from tfcompress.export._litert import tflite_errors

    with open(path, "rb") as f:
        content = f.read()
    with tflite_errors():
        try:
            model = fu.read_model(content)
        except Exception as e:  # the flatbuffer reader raises many types
            from tfcompress.errors import InvalidTFLiteFileError

            raise InvalidTFLiteFileError(
                f"{os.fspath(path)} is not a readable .tflite file ({type(e).__name__}). "
                f"Re-export it. Received: path={os.fspath(path)!r}"
            ) from None
    found = {}
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            quant = tensor.quantization
            buffer = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers) else None
            raw = _buffer_bytes(buffer, content)
            if quant is None or raw is None or not len(raw):
                continue
            # A scalar constant (int16x8 files hold some) has no shape at all.
            shape = tuple(int(d) for d in tensor.shape) if tensor.shape is not None else ()
            count = int(np.prod(shape)) if shape else 1
            block = 0
            if quant.details is not None and hasattr(quant.details, "blockSize"):
                block = int(quant.details.blockSize)
                scale_tensor = subgraph.tensors[quant.details.scales]
                scales = np.frombuffer(
                    _buffer_bytes(model.buffers[scale_tensor.buffer], content), dtype=np.float16
                )
                scales = scales.astype(np.float32)
            elif quant.scale is not None and len(quant.scale):
                scales = np.asarray(quant.scale, dtype=np.float32)
            else:
                continue
            if tensor.type == _INT4:
                dtype, bits, values = "int4", 4, _unpack(raw, 4, count)
            elif tensor.type == _INT2:
                dtype, bits, values = "int2", 2, _unpack(raw, 2, count)
            elif tensor.type == 9:  # INT8
                dtype, bits, values = "int8", 8, np.frombuffer(raw, dtype=np.int8)[:count]
            else:
                continue
            name = fu.get_tensor_name(tensor)
            axis = int(quant.quantizedDimension or 0) if not block else 0
            found[name] = FileWeight(
                name, dtype, bits, block, shape, np.asarray(values).reshape(shape), scales, axis
            )
    return found


def _buffer_bytes(buffer, content):
    if buffer is None:
        return None
    if isinstance(buffer.data, (bytes, bytearray, memoryview)):
        return bytes(buffer.data)  # a buffer stored after the flatbuffer, resolved by the reader
    if buffer.data is not None:
        return bytes(np.asarray(buffer.data, dtype=np.uint8))
    if buffer.offset > 1:  # large models keep buffers after the flatbuffer
        return content[buffer.offset : buffer.offset + buffer.size]
    return None
