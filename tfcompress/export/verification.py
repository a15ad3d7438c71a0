"""`verify`: run a `.tflite` file and the Keras model on the same inputs and compare.

Besides top-1 agreement, `verify` reports numbers that a collapsed or noisy
model cannot fake: relative error and cosine similarity of the outputs, and
how much the Keras outputs vary across samples at all. `first_divergence`
compares intermediate tensors layer by layer and names the first layer where
the file and the model part.
"""

import dataclasses
import os
import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from tfcompress import _flavor
from tfcompress import _inputs as calib
from tfcompress.errors import VerificationError
from tfcompress.export._litert import load_runner, tflite_errors

#: Below this relative spread across samples, outputs count as collapsed.
DEFAULT_MIN_SPREAD = 1e-3


@dataclasses.dataclass(frozen=True)
class LayerFidelity:
    """How one Keras layer's output compares with the matching tensor in the file.

    Attributes:
        layer: the Keras layer's name.
        class_name: its class.
        tensor: the name of the `.tflite` tensor matched to it.
        cosine: mean cosine similarity over the samples.
        relative_error: `||tflite - keras|| / ||keras||` over the samples.
    """

    layer: str
    class_name: str
    tensor: str
    cosine: float
    relative_error: float

    def __str__(self):
        return (
            f"{self.layer} ({self.class_name}): cosine {self.cosine:.4f}, relative error "
            f"{self.relative_error:.3g}"
        )


@dataclasses.dataclass(frozen=True)
class DivergenceReport:
    """Layer-by-layer comparison of a `.tflite` file with its Keras model.

    Attributes:
        layers: `LayerFidelity` per matched layer, in the model's layer order.
        first: the first `LayerFidelity` below the thresholds, or `None`.
        unmatched: names of layers with no tensor of the same shape in the file
            (fused away by the converter, or renamed).
        min_cosine: the threshold used.
    """

    layers: tuple
    first: object
    unmatched: tuple
    min_cosine: float

    def __str__(self):
        if self.first is None:
            head = f"all {len(self.layers)} matched layers keep cosine >= {self.min_cosine}"
        else:
            head = f"the file and the model part at layer {self.first}"
        return f"{head} ({len(self.unmatched)} layers unmatched)"


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    """How closely a `.tflite` file reproduces its Keras model.

    Attributes:
        path: the `.tflite` file.
        samples: how many inputs were compared.
        top1_agreement: fraction of samples where both predict the same class
            (or the file's class ties exactly for first in the Keras outputs).
        max_abs_diff: largest absolute difference between the outputs.
        mean_abs_diff: mean absolute difference between the outputs.
        tflite_accuracy: accuracy of the file, when labels were given.
        keras_accuracy: accuracy of the Keras model, when labels were given.
        relative_error: `||tflite - keras|| / ||keras||` over all outputs.
        cosine: mean over samples of the cosine similarity of the two outputs.
        min_cosine: the lowest per-sample cosine similarity.
        output_spread: how much the Keras outputs vary across samples: the
            mean standard deviation across samples over the outputs' RMS
            (`None` for a single sample). Near 0, agreement means nothing.
        collapsed: the Keras outputs barely vary across samples
            (`output_spread` below `min_spread`): the model has collapsed, and
            agreement numbers cannot show that the file is faithful.
        warnings: reasons to distrust the numbers (collapse, one class for
            every sample, accuracy at the majority-class baseline).
        divergence: a `DivergenceReport` when one was asked for or a check
            failed, else `None`.
    """

    path: str
    samples: int
    top1_agreement: float
    max_abs_diff: float
    mean_abs_diff: float
    tflite_accuracy: object = None
    keras_accuracy: object = None
    relative_error: float = float("nan")
    cosine: float = float("nan")
    min_cosine: float = float("nan")
    output_spread: object = None
    collapsed: bool = False
    warnings: tuple = ()
    divergence: DivergenceReport | None = None

    def __str__(self):
        text = (
            f"{os.path.basename(self.path)}: top-1 agreement {self.top1_agreement:.2%} on "
            f"{self.samples} samples, cosine {self.cosine:.4f}, relative error "
            f"{self.relative_error:.3g}, max |diff| {self.max_abs_diff:.4g}"
        )
        if self.tflite_accuracy is not None:
            text += f", accuracy {self.tflite_accuracy:.4f} (Keras {self.keras_accuracy:.4f})"
        for warning in self.warnings:
            text += f"\n  warning: {warning}"
        if self.divergence is not None:
            text += f"\n  {self.divergence}"
        return text


def verify(
    tflite_path: str | os.PathLike,
    model: Any,
    data: Any,
    max_samples: int = 1000,
    batch_size: int = 32,
    min_agreement: float | None = None,
    min_cosine: float | None = None,
    min_spread: float = DEFAULT_MIN_SPREAD,
    locate_divergence: bool = False,
) -> VerifyResult:
    """Compare a `.tflite` file with the Keras model it came from.

    Runs the file in the LiteRT interpreter (ai-edge-litert) and the model in
    Keras on the same inputs. Float inputs are quantized for int8-input files
    and int8 outputs dequantized, using the scale and zero point in the file.

    Top-1 agreement alone passes falsely when the model's outputs do not
    depend on its inputs (a collapsed QAT model agrees 100% with a file that
    outputs the same constant). So the result also carries relative error,
    cosine similarity and the spread of the Keras outputs across samples; a
    spread below `min_spread` sets `collapsed`, warns, and makes any
    `min_agreement` / `min_cosine` check fail.

    Args:
        tflite_path: the `.tflite` file.
        model: the Keras (Keras 3, keras-hub or tf_keras) model.
        data: inputs, optionally with labels: an array, a dict of arrays,
            `(inputs, labels)`, a `tf.data.Dataset` or a generator.
        max_samples: most samples to compare.
        batch_size: samples per LiteRT invocation.
        min_agreement: if given, raise `VerificationError` when top-1
            agreement is below it (e.g. `0.99`).
        min_cosine: if given, raise `VerificationError` when the mean cosine
            similarity is below it (e.g. `0.99`).
        min_spread: relative spread of the Keras outputs across samples below
            which they count as collapsed.
        locate_divergence: also compare intermediate tensors and name the
            first layer where the file and the model part (`first_divergence`;
            done anyway when a check fails).

    Returns:
        A `VerifyResult`.

    Raises:
        VerificationError: a `min_agreement` or `min_cosine` check failed, or
            was asked for on collapsed outputs.

    Example:

    >>> result = verify("model_int8.tflite", qat_model, (x_test, y_test), min_cosine=0.99)
    >>> result.top1_agreement, result.cosine, result.collapsed
    """
    runner = load_runner(tflite_path)
    _flavor.check_built(model, what="verification")
    specs = calib.input_specs(model)
    inputs, labels = calib.collect(data, specs, what="verification data", max_samples=max_samples)

    expected = _first_output(
        model.predict(_keras_inputs(model, specs, inputs), batch_size=batch_size, verbose=0)
    )
    actual = runner.predict(_tflite_inputs(runner, specs, inputs), batch_size=batch_size)
    if isinstance(actual, dict):
        actual = actual[runner.output_names[0]]
    expected = np.asarray(expected, dtype=np.float32)
    actual = np.asarray(actual, dtype=np.float32)
    if actual.size != expected.size:
        raise ValueError(
            f"'{tflite_path}' outputs shape {tuple(actual.shape[1:])} per sample but model "
            f"'{model.name}' outputs {tuple(expected.shape[1:])}: the file was not exported "
            f"from this model. Received: {tuple(actual.shape)} vs {tuple(expected.shape)}"
        )
    actual = actual.reshape(expected.shape)

    from tfcompress_edge.runner import labels_to_classes, top1

    diff = np.abs(expected - actual)
    agreement = float(np.mean(_top1_agrees(expected, actual, top1)))
    cosines = _cosines(expected, actual)
    spread = output_spread(expected)
    collapsed = spread is not None and spread < min_spread
    notes = []
    if collapsed:
        notes.append(
            f"the outputs of model '{model.name}' barely vary across the {len(expected)} "
            f"samples (relative spread {spread:.2g} < {min_spread:g}): the model has "
            "collapsed, so agreement with the file proves nothing. Train with a lower "
            "learning rate or a BatchNorm freeze delay, or check the inputs."
        )
    classes = top1(expected)
    if (
        expected.ndim == 2
        and expected.shape[1] > 1
        and len(expected) >= 16
        and len(np.unique(classes)) == 1
    ):
        notes.append(
            f"model '{model.name}' predicts class {int(classes[0])} for every one "
            f"of the {len(expected)} samples: agreement measures little."
        )
    result = VerifyResult(
        path=os.fspath(tflite_path),
        samples=len(expected),
        top1_agreement=agreement,
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        relative_error=_relative_error(expected, actual),
        cosine=float(np.mean(cosines)),
        min_cosine=float(np.min(cosines)),
        output_spread=spread,
        collapsed=collapsed,
    )
    if labels is not None:
        label_classes = labels_to_classes(labels, actual)
        keras_accuracy = float(np.mean(classes == label_classes))
        result = dataclasses.replace(
            result,
            tflite_accuracy=float(np.mean(top1(actual) == label_classes)),
            keras_accuracy=keras_accuracy,
        )
        baseline = float(
            np.max(np.unique(label_classes, return_counts=True)[1]) / len(label_classes)
        )
        if keras_accuracy <= baseline and len(label_classes) >= 16:
            notes.append(
                f"model '{model.name}' is no more accurate ({keras_accuracy:.2%}) than always "
                f"predicting the most frequent label ({baseline:.2%}): its outputs carry no "
                "signal, and the file's agreement with it measures noise. Train it first."
            )
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    result = dataclasses.replace(result, warnings=tuple(notes))

    failed = []
    if min_agreement is not None and agreement < min_agreement:
        failed.append(
            f"agrees with model '{model.name}' on only {agreement:.2%} of "
            f"{result.samples} samples (required {min_agreement:.2%})"
        )
    if min_cosine is not None and result.cosine < min_cosine:
        failed.append(
            f"has cosine similarity {result.cosine:.4f} with model '{model.name}' "
            f"(required {min_cosine})"
        )
    if (min_agreement is not None or min_cosine is not None) and collapsed:
        failed.append(
            f"cannot be verified against model '{model.name}', whose outputs have "
            f"collapsed (relative spread {spread:.2g})"
        )
    if locate_divergence or (failed and not collapsed):
        try:
            divergence = first_divergence(tflite_path, model, data, min_cosine=min_cosine or 0.99)
        except Exception as e:  # best effort: the main numbers stand without it
            divergence = None
            if locate_divergence:
                warnings.warn(
                    f"could not compare intermediate tensors: {e}", UserWarning, stacklevel=2
                )
        result = dataclasses.replace(result, divergence=divergence)
    if failed:
        where = (
            f" The file and the model part at layer {result.divergence.first}."
            if result.divergence is not None and result.divergence.first is not None
            else ""
        )
        raise VerificationError(
            f"'{tflite_path}' " + "; ".join(failed) + f"; max |diff| {result.max_abs_diff:.4g}, "
            f"relative error {result.relative_error:.3g}.{where} Calibrate with more "
            "representative data, or keep sensitive layers in float."
        )
    return result


def output_spread(outputs: Any) -> float | None:
    """How much outputs vary across samples, relative to their size.

    Args:
        outputs: an array with samples along the first axis.

    Returns:
        The mean (over output values) standard deviation across samples
        divided by the outputs' root mean square, or `None` for fewer than two
        samples. 0 means every sample gives the same output.
    """
    outputs = np.asarray(outputs, dtype=np.float64)
    if len(outputs) < 2:
        return None
    flat = outputs.reshape(len(outputs), -1)
    rms = float(np.sqrt(np.mean(flat**2)))
    if rms == 0.0:
        return 0.0
    return float(np.mean(np.std(flat, axis=0)) / rms)


def _top1_agrees(expected, actual, top1):
    """Per sample: the file's top-1 class is the model's, or ties exactly with it for first.

    A QAT model's logits sit on an int8 grid, so two classes can tie exactly;
    argmax then takes the lower index, and a file one step off either way is
    as right with the other one.
    """
    same = top1(expected) == top1(actual)
    if expected.ndim >= 2 and expected.shape[-1] > 1:
        picked = np.take_along_axis(expected, top1(actual)[..., None], axis=-1)[..., 0]
        same = same | (picked == expected.max(axis=-1))
    return same


def _cosines(expected, actual):
    a = np.asarray(expected, np.float64).reshape(len(expected), -1)
    b = np.asarray(actual, np.float64).reshape(len(actual), -1)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = np.sum(a * b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = dot / (na * nb)
    # Two all-zero vectors agree perfectly; one all-zero vector does not.
    both_zero = (na == 0) & (nb == 0)
    cos = np.where(both_zero, 1.0, np.where((na == 0) | (nb == 0), 0.0, cos))
    return cos


def _relative_error(expected, actual):
    norm = float(np.linalg.norm(np.asarray(expected, np.float64)))
    err = float(np.linalg.norm(np.asarray(actual, np.float64) - np.asarray(expected, np.float64)))
    if norm == 0.0:
        return 0.0 if err == 0.0 else float("inf")
    return err / norm


def first_divergence(
    tflite_path: str | os.PathLike,
    model: Any,
    data: Any,
    max_samples: int = 8,
    min_cosine: float = 0.99,
) -> DivergenceReport:
    """Compare intermediate tensors and name the first layer where file and model part.

    The file runs in LiteRT as `verify` runs it (XNNPACK), one sample at a
    time, with every op's output made an output of the graph, so each
    intermediate tensor can be read (integer ones dequantized with their scale
    and zero point). Each top-level Keras layer
    with one float output is matched to a tensor of the file by name and shape:

    - The converter names a tensor after the TensorFlow ops that produced it,
      `model/layer/op` paths joined by `;` when ops were fused. A path
      component names a layer when it equals the layer's name, or the name
      plus the `_N` suffix TensorFlow adds when it traces the model.
    - A tensor fused from several layers (a convolution with its folded
      BatchNorm and activation) belongs to the one latest in the model.
    - Of a layer's tensors, those with the same shape as the layer's output
      qualify, and the one computed last is taken.

    Layers the converter fused away entirely, nested models (counted as one
    layer) and multi-output layers may stay unmatched; they are listed.

    Args:
        tflite_path: the `.tflite` file.
        model: the Keras model it was converted from (functional or
            Sequential, Keras 3 or tf_keras).
        data: inputs, as for `verify`.
        max_samples: samples to compare (each runs the file once).
        min_cosine: a layer whose mean cosine similarity falls below this is
            where the two part.

    Returns:
        A `DivergenceReport`.

    Example:

    >>> report = first_divergence("model_int8.tflite", qat_model, x_test[:8])
    >>> report.first  # e.g. LayerFidelity(layer='quant_dense', cosine=0.71, ...)
    """
    _flavor.check_built(model, what="verification")
    keras = _keras_module(model)
    specs = calib.input_specs(model)
    inputs, _ = calib.collect(data, specs, what="verification data", max_samples=max_samples)
    probes = _probe_layers(model, keras)
    if not probes:
        return DivergenceReport(layers=(), first=None, unmatched=(), min_cosine=min_cosine)
    probe_model = keras.Model(model.input, [out for _, out in probes])
    keras_outputs = probe_model.predict(_keras_inputs(model, specs, inputs), verbose=0)
    if not isinstance(keras_outputs, (list, tuple)):
        keras_outputs = [keras_outputs]

    order = {layer.name: i for i, (layer, _) in enumerate(probes)}
    # The file's output tensor is named after the signature, not a layer: it
    # belongs to the layer that makes the model's (first) output.
    output_layer = probes[-1][0].name if len(model.outputs) == 1 else None
    tensors = _run_preserving_tensors(tflite_path, specs, inputs, order, model.name, output_layer)

    rows, unmatched = [], []
    for (layer, _), expected in zip(probes, keras_outputs):
        expected = np.asarray(expected, np.float32)
        best = None
        for name, (producer, values) in tensors.get(layer.name, {}).items():
            if all(v.shape == (1,) + expected.shape[1:] for v in values):
                if best is None or producer > best[0]:
                    best = (producer, name, values)
        if best is None:
            unmatched.append(layer.name)
            continue
        actual = np.concatenate(best[2]).reshape(expected.shape)
        rows.append(
            LayerFidelity(
                layer=layer.name,
                class_name=type(layer).__name__,
                tensor=best[1],
                cosine=float(np.mean(_cosines(expected, actual))),
                relative_error=_relative_error(expected, actual),
            )
        )
    first = next((row for row in rows if row.cosine < min_cosine), None)
    return DivergenceReport(
        layers=tuple(rows), first=first, unmatched=tuple(unmatched), min_cosine=min_cosine
    )


@dataclasses.dataclass(frozen=True)
class OpLocation:
    """One op of a `.tflite` file, and the Keras layer it was converted from.

    Attributes:
        index: the op's position in the file's execution order.
        op: the op's name (`"FULLY_CONNECTED"`).
        compute_dtype: the dtype of its first input (its activations).
        tensor: the name of its first output tensor.
        layer: the top-level Keras layer named in that tensor's name, or
            `None` when no layer matches (see `first_divergence`).
    """

    index: int
    op: str
    compute_dtype: str | None
    tensor: str
    layer: object


def locate_ops(
    tflite_path: str | os.PathLike, model: Any, op_names: Sequence[str] | None = None
) -> tuple:
    """Name the Keras layer each op of a `.tflite` file came from.

    Uses the tensor-name heuristic of `first_divergence`: an op belongs to
    the latest top-level layer named in its output tensor's name.

    Args:
        tflite_path: the `.tflite` file.
        model: the Keras model it was converted from.
        op_names: only these ops (e.g. `tfcompress.export.COMPUTE_OPS`); all
            by default.

    Returns:
        A tuple of `OpLocation`, in execution order.

    Example:

    >>> [(o.op, o.layer) for o in locate_ops("model_int8.tflite", qat_model)
    ...  if o.compute_dtype == "float32"]
    """
    from tfcompress_edge.runner import make_interpreter

    keras = _keras_module(model)
    probes = _probe_layers(model, keras)
    order = {layer.name: i for i, (layer, _) in enumerate(probes)}
    for layer in model.layers:  # layers without a float output can still own ops
        order.setdefault(layer.name, len(order))
    with tflite_errors():
        interpreter = make_interpreter(tflite_path, use_xnnpack=False)
    details = {int(t["index"]): t for t in interpreter.get_tensor_details()}
    resolve = _layer_resolver(order, model.name, [t["name"] for t in details.values()])
    # The file's output tensor is named after the signature: it belongs to the
    # layer that makes the model's (single) output.
    outputs_of = {}
    if probes and len(model.outputs) == 1:
        signature = interpreter.get_signature_runner(next(iter(interpreter.get_signature_list())))
        for detail in signature.get_output_details().values():
            outputs_of[int(detail["index"])] = probes[-1][0].name
    found = []
    for op in interpreter._get_ops_details():
        if op_names is not None and op["op_name"] not in op_names:
            continue
        inputs = [int(i) for i in op["inputs"] if int(i) >= 0]
        outputs = [int(i) for i in op["outputs"] if int(i) >= 0]
        dtype = np.dtype(details[inputs[0]]["dtype"]).name if inputs else None
        tensor = details[outputs[0]]["name"] if outputs else ""
        layer = resolve(tensor)
        if layer is None and outputs:
            layer = outputs_of.get(outputs[0])
        found.append(
            OpLocation(
                index=int(op["index"]),
                op=op["op_name"],
                compute_dtype=dtype,
                tensor=tensor,
                layer=layer,
            )
        )
    return tuple(found)


def _keras_module(model):
    if _flavor.flavor_of(model) == "tf_keras":
        import tf_keras

        return tf_keras
    import keras

    return keras


def _probe_layers(model, keras):
    """`(layer, output tensor)` of the model's own graph, from inputs to outputs.

    `layer.output` is the layer's first call, which for a layer shared with
    another model (a QAT copy reuses its source's stateless layers) belongs
    to that other graph; the model's nodes give the tensors of this one.
    """
    nodes_by_depth = getattr(model, "_nodes_by_depth", None)
    if nodes_by_depth:
        pairs = []
        for depth in sorted(nodes_by_depth, reverse=True):
            for node in nodes_by_depth[depth]:
                layer = getattr(node, "operation", None) or getattr(node, "layer", None)
                outputs = getattr(node, "outputs", None)
                if outputs is None:
                    outputs = getattr(node, "output_tensors", None)
                pairs.append((layer, outputs))
    else:
        pairs = []
        for layer in model.layers:
            try:
                pairs.append((layer, layer.output))
            except (AttributeError, ValueError, RuntimeError):
                continue  # never-called layers have no output
    probes, seen = [], set()
    for layer, out in pairs:
        if not isinstance(layer, keras.layers.Layer) or isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(out, (list, tuple)) and len(out) == 1:
            out = out[0]
        if isinstance(out, (list, tuple, dict)) or not hasattr(out, "dtype"):
            continue
        dtype = getattr(out.dtype, "name", out.dtype)
        if not str(dtype).startswith(("float", "bfloat")) or layer.name in seen:
            continue
        seen.add(layer.name)
        probes.append((layer, out))
    return probes


def _layer_resolver(layer_names, model_name, tensor_names):
    """A function from a tensor name to the latest layer it names (or None)."""
    suffixed = re.compile(r"^(.*)_\d+$")
    # When the converter traced the model, scopes carry TensorFlow's "_N"
    # suffix (model "m" appears as "m_1"); then "conv_1" most likely means
    # layer "conv", even if a layer "conv_1" exists.
    prefer_stripped = any(
        part.split("/")[0] != model_name
        and suffixed.match(part.split("/")[0])
        and suffixed.match(part.split("/")[0]).group(1) == model_name
        for name in tensor_names
        for part in name.split(";")
    )

    def layer_of_component(component):
        m = suffixed.match(component)
        stripped = m.group(1) if m else None
        exact = component if component in layer_names else None
        stripped = stripped if stripped in layer_names else None
        if exact and stripped:
            return stripped if prefer_stripped else exact
        return exact or stripped

    def resolve(tensor_name):
        found = None
        for part in tensor_name.split(";"):
            for component in part.split("/"):
                layer = layer_of_component(component)
                if layer is not None:
                    if found is None or layer_names[layer] > layer_names[found]:
                        found = layer
                    break  # the outermost layer scope of this part
        return found

    return resolve


def _run_preserving_tensors(tflite_path, specs, inputs, layer_order, model_name, output_layer=None):
    """Run the file sample by sample; `{layer: {tensor: (producer op, [arrays])}}`."""
    from tfcompress_edge.runner import dequantize_array, quantize_array, read_model_file

    with tflite_errors():
        content = read_model_file(tflite_path)
        interpreter, producer = _interpreter_keeping_tensors(content)
    details = {int(t["index"]): t for t in interpreter.get_tensor_details()}
    resolve = _layer_resolver(layer_order, model_name, [t["name"] for t in details.values()])
    watched = {}
    for index, detail in details.items():
        if index not in producer:
            continue
        dtype = np.dtype(detail["dtype"])
        if dtype.kind == "f" or (
            dtype.kind in "iu" and dtype.itemsize <= 2 and detail["quantization"][0]
        ):
            layer = resolve(detail["name"])
            if layer is not None:
                watched[index] = layer

    signature = interpreter.get_signature_runner(next(iter(interpreter.get_signature_list())))
    if output_layer is not None:
        for detail in signature.get_output_details().values():
            watched.setdefault(int(detail["index"]), output_layer)
    input_details = signature.get_input_details()
    names = list(input_details)
    found = {}
    n = len(inputs[0])
    for i in range(n):
        sample = [a[i : i + 1] for a in inputs]
        feed = _tflite_feed(names, specs, sample)
        signature(**{k: quantize_array(v, input_details[k]) for k, v in feed.items()})
        for index, layer in watched.items():
            detail = details[index]
            try:
                value = interpreter.get_tensor(index)
            except ValueError:
                continue  # not allocated (e.g. an op-internal scratch tensor)
            value = np.asarray(dequantize_array(value, detail), np.float32)
            entry = found.setdefault(layer, {}).setdefault(
                detail["name"] or f"#{index}", (producer[index], [])
            )
            entry[1].append(value)
    # Keep only tensors seen for every sample.
    return {
        layer: {name: v for name, v in ts.items() if len(v[1]) == n} for layer, ts in found.items()
    }


def _interpreter_keeping_tensors(content):
    """The file in LiteRT, run as `verify` runs it, with every op's output kept.

    `experimental_preserve_all_tensors` works only without delegates, and
    LiteRT's builtin int8 kernels round apart from XNNPACK's on near-ties (the
    QAT model follows XNNPACK). So every op output becomes an output of the
    main subgraph instead, which XNNPACK writes out as it computes.

    Returns:
        The interpreter, tensors allocated, and `{tensor index: position of the
        op that makes it}` in the file's execution order.
    """
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    graph = model.subgraphs[0]
    producer = {}
    for position, op in enumerate(graph.operators):
        for index in op.outputs:
            if index >= 0:
                producer[int(index)] = position
    graph.outputs = np.array(sorted(set(producer) | {int(i) for i in graph.outputs}), np.int32)
    interpreter = Interpreter(
        model_content=bytes(flatbuffer_utils.convert_object_to_bytearray(model)), num_threads=1
    )
    interpreter.allocate_tensors()
    return interpreter, producer


def _keras_inputs(model, specs, inputs):
    if calib.takes_dict(model):
        return {s.name: a for s, a in zip(specs, inputs)}
    return inputs[0] if len(inputs) == 1 else inputs


def _first_output(outputs):
    if isinstance(outputs, dict):
        return outputs[sorted(outputs)[0]]
    if isinstance(outputs, (list, tuple)):
        return outputs[0]
    return outputs


def _tflite_feed(names, specs, inputs):
    if len(names) == 1 and len(inputs) == 1:
        return {names[0]: inputs[0]}
    by_name = {s.name: a for s, a in zip(specs, inputs)}
    if set(by_name) == set(names):
        return by_name
    # Signature names can differ from Keras input names (e.g. "args_0"); the
    # converter keeps the model's input order, so fall back to position.
    return dict(zip(names, inputs))


def _tflite_inputs(runner, specs, inputs):
    return _tflite_feed(runner.input_names, specs, inputs)
