"""Run a `.tflite` file with LiteRT alone: no TensorFlow, no Keras, no tfcompress.

This module is the edge kit's core. It needs only `numpy` and
`ai-edge-litert`, so it can be copied to a phone, a Raspberry Pi or any
board with Python, next to `evaluate.py`. tfcompress itself imports it (as
`tfcompress_edge.runner`) to verify and benchmark the files it writes, so the
device and the workstation run the very same input/output scaling code.

Example:

>>> runner = TFLiteRunner("model_int8.tflite", num_threads=1)
>>> probs = runner.predict(x_test)          # float in, float out, int8 inside
>>> runner.benchmark(runs=50).median_ms
"""

import os
import statistics
import struct
import time

import numpy as np

TFLITE_FILE_IDENTIFIER = b"TFL3"

_INTEGER_KINDS = ("i", "u")


class InvalidModelFileError(ValueError):
    """The file is missing, truncated, or not a TFLite flatbuffer."""


def read_model_file(path):
    """Read a `.tflite` file and check it is a TFLite flatbuffer.

    Args:
        path: path of the file.

    Returns:
        The file's bytes.

    Raises:
        InvalidModelFileError: if the file is missing, empty, or lacks the
            TFLite file identifier.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InvalidModelFileError(
            f"No TFLite file at '{path}'. Check the path; export one with "
            "tfcompress.export.to_tflite(model, path, mode=...)."
        )
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8 or data[4:8] != TFLITE_FILE_IDENTIFIER:
        raise InvalidModelFileError(
            f"'{path}' is not a TFLite model: it is {len(data)} bytes and does not carry "
            f"the TFLite file identifier {TFLITE_FILE_IDENTIFIER!r}. Pass a file written by "
            "the TFLite converter (for example tfcompress.export.to_tflite)."
        )
    problem = _structure_problem(data)
    if problem:
        raise InvalidModelFileError(
            f"'{path}' is a truncated or corrupt TFLite file ({len(data)} bytes): {problem}. "
            "Export it again."
        )
    return data


class _Table:
    """Bounds-checked reads of one flatbuffer table (no flatbuffers package needed)."""

    def __init__(self, data, pos):
        self.data, self.pos = data, pos
        self._need(pos, 4)
        self.vtable = pos - struct.unpack_from("<i", data, pos)[0]
        self._need(self.vtable, 4)
        self.vsize = struct.unpack_from("<H", data, self.vtable)[0]
        if self.vsize < 4 or self.vsize % 2:
            raise ValueError(f"a table at byte {pos} has a broken layout")
        self._need(self.vtable, self.vsize)

    def _need(self, pos, size):
        if pos < 0 or pos + size > len(self.data):
            raise ValueError(f"an offset points outside the file (byte {pos})")

    def vector(self, field):
        """`(start, length)` of a vector field, or None when the field is absent."""
        slot = 4 + 2 * field
        if slot + 2 > self.vsize:
            return None
        offset = struct.unpack_from("<H", self.data, self.vtable + slot)[0]
        if not offset:
            return None
        at = self.pos + offset
        self._need(at, 4)
        start = at + struct.unpack_from("<I", self.data, at)[0]
        self._need(start, 4)
        length = struct.unpack_from("<I", self.data, start)[0]
        self._need(start + 4, 4 * length)
        return start + 4, length

    def tables(self, field):
        found = self.vector(field)
        if found is None:
            return None
        start, length = found
        return [
            _Table(self.data, start + 4 * i + struct.unpack_from("<I", self.data, start + 4 * i)[0])
            for i in range(length)
        ]


def _structure_problem(data):
    """Why `data` cannot be a TFLite model, or None.

    LiteRT crashes (segfault) on some malformed files, e.g. a model without
    subgraphs, instead of raising: check the skeleton it dereferences first.
    Fields (schema.fbs): Model {1 operator_codes, 2 subgraphs, 4 buffers};
    SubGraph {0 tensors, 1 inputs, 2 outputs, 3 operators}.
    """
    try:
        root = _Table(data, struct.unpack_from("<I", data, 0)[0])
        subgraphs = root.tables(2)
        if not subgraphs:
            return "it has no subgraph"
        if root.vector(4) is None:
            return "it has no buffer table"
        for i, graph in enumerate(subgraphs):
            for field, name in ((0, "tensors"), (1, "inputs"), (2, "outputs")):
                if graph.vector(field) is None:
                    return f"subgraph {i} has no {name}"
            graph.tables(3)
    except (ValueError, struct.error) as e:
        return str(e)
    return None


def make_interpreter(path, num_threads=1, use_xnnpack=True):
    """Load a `.tflite` file into a LiteRT interpreter, with a clear error if it is bad.

    Args:
        path: the `.tflite` file.
        num_threads: CPU threads for inference.
        use_xnnpack: keep LiteRT's default XNNPACK delegate. `False` runs the
            builtin kernels, so `_get_ops_details()` lists the file's real ops.

    Returns:
        An `ai_edge_litert.interpreter.Interpreter` with tensors allocated.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(
            f"num_threads must be a whole number of at least 1. "
            f"Received: num_threads={num_threads!r}"
        )
    data = read_model_file(path)
    resolver = (
        OpResolverType.AUTO if use_xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    try:
        interpreter = Interpreter(
            model_content=data,
            num_threads=num_threads,
            experimental_op_resolver_type=resolver,
        )
        interpreter.allocate_tensors()
        _read_all_details(interpreter)
    except _CORRUPT_FILE_ERRORS as e:
        # A corrupt tensor name surfaces as UnicodeDecodeError, a corrupt index as
        # ValueError or TypeError, only when the details are read: read them all now.
        raise InvalidModelFileError(
            f"LiteRT could not load '{os.fspath(path)}' ({len(data)} bytes): "
            f"{type(e).__name__}: {str(e)[:200]}. The file is truncated or corrupt; export it "
            "again."
        ) from None
    return interpreter


_CORRUPT_FILE_ERRORS = (ValueError, RuntimeError, TypeError, KeyError, IndexError, OverflowError)


def _read_all_details(interpreter):
    interpreter.get_tensor_details()
    interpreter.get_input_details()
    interpreter.get_output_details()
    for key in interpreter.get_signature_list():
        runner = interpreter.get_signature_runner(key)
        runner.get_input_details()
        runner.get_output_details()


def quantize_array(x, detail):
    """Turn float data into the integer type of a quantized input tensor.

    Inputs that are already integer in the model's own sense (token ids,
    masks: tensors without a quantization scale) are only cast.
    """
    dtype = np.dtype(detail["dtype"])
    x = np.asarray(x)
    scale, zero_point = detail["quantization"]
    if dtype.kind in _INTEGER_KINDS and scale:
        info = np.iinfo(dtype)
        q = np.round(x.astype(np.float32) / scale + zero_point)
        return np.clip(q, info.min, info.max).astype(dtype)
    return x.astype(dtype)


def dequantize_array(y, detail):
    """Turn a quantized output tensor back into float values."""
    y = np.asarray(y)
    scale, zero_point = detail["quantization"]
    if y.dtype.kind in _INTEGER_KINDS and scale:
        return (y.astype(np.float32) - zero_point) * scale
    return y


class TFLiteRunner:
    """A `.tflite` model with float-in / float-out `predict`, whatever its I/O types.

    Args:
        path: the `.tflite` file.
        num_threads: CPU threads for inference.
        signature_key: which signature to run; the file's only (or first) one
            by default.
    """

    def __init__(self, path, num_threads=1, signature_key=None):
        self.path = os.fspath(path)
        self.num_threads = num_threads
        self.interpreter = make_interpreter(self.path, num_threads=num_threads)
        signatures = self.interpreter.get_signature_list()
        if not signatures:
            raise InvalidModelFileError(
                f"'{self.path}' has no signature; export it with a signature "
                "(tfcompress.export.to_tflite always writes one)."
            )
        self.signature_key = signature_key or next(iter(signatures))
        self._runner = self.interpreter.get_signature_runner(self.signature_key)
        self.input_details = self._runner.get_input_details()
        self.output_details = self._runner.get_output_details()

    @property
    def input_names(self):
        return list(self.input_details)

    @property
    def output_names(self):
        return list(self.output_details)

    def _as_named_inputs(self, inputs):
        names = self.input_names
        if isinstance(inputs, dict):
            missing = [n for n in names if n not in inputs]
            if missing:
                raise ValueError(
                    f"'{self.path}' needs inputs {names}; missing {missing}. "
                    f"Received keys: {sorted(inputs)}."
                )
            return {n: inputs[n] for n in names}
        if isinstance(inputs, (list, tuple)):
            if len(inputs) != len(names):
                raise ValueError(
                    f"'{self.path}' has {len(names)} inputs {names}, received {len(inputs)} "
                    "arrays. Pass a dict keyed by input name."
                )
            return dict(zip(names, inputs))
        if len(names) != 1:
            raise ValueError(
                f"'{self.path}' has {len(names)} inputs {names}; pass a dict keyed by name."
            )
        return {names[0]: inputs}

    def _check_shapes(self, named):
        for name, value in named.items():
            shape = np.shape(value)
            want = tuple(int(s) for s in self.input_details[name]["shape_signature"])
            sample = want[1:]
            ok = len(shape) == len(want) and all(
                w == -1 or w == g for w, g in zip(sample, shape[1:])
            )
            if not ok:
                raise ValueError(
                    f"'{self.path}' input '{name}' takes samples of shape "
                    f"{tuple(None if s == -1 else s for s in sample)} (batch first); the data's "
                    f"samples have shape {tuple(shape[1:])}. Reshape the data or use the file "
                    f"exported for it. Received: array of shape {tuple(shape)}"
                )

    def _invoke(self, feed):
        try:
            return self._runner(**feed)
        except RuntimeError as e:
            # Inputs were checked against the file's shapes: a failure here is the file's.
            raise InvalidModelFileError(
                f"LiteRT failed to run '{self.path}': {str(e)[:200]}. The file is corrupt or "
                "was written for another runtime; export it again."
            ) from None

    def run_batch(self, inputs):
        """Run one batch; returns a dict of float outputs keyed by output name."""
        named = self._as_named_inputs(inputs)
        self._check_shapes(named)
        feed = {n: quantize_array(v, self.input_details[n]) for n, v in named.items()}
        raw = self._invoke(feed)
        return {n: dequantize_array(raw[n], self.output_details[n]) for n in self.output_names}

    def predict(self, inputs, batch_size=32):
        """Run every sample, in batches when the file allows it, else one at a time.

        Args:
            inputs: an array (single-input model), a list of arrays, or a dict
                keyed by the file's input names.
            batch_size: samples per invocation when the batch dimension is dynamic.

        Returns:
            A float array for a single-output model, else a dict of arrays.
        """
        named = self._as_named_inputs(inputs)
        self._check_shapes(named)
        lengths = {k: len(v) for k, v in named.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(
                f"'{self.path}' inputs need the same number of samples. Received: {lengths}"
            )
        n = len(next(iter(named.values())))
        if not self._batch_is_dynamic():
            batch_size = 1
        chunks = []
        for start in range(0, n, batch_size):
            batch = {k: v[start : start + batch_size] for k, v in named.items()}
            chunks.append(self.run_batch(batch))
        out = {k: np.concatenate([c[k] for c in chunks]) for k in self.output_names}
        if len(out) == 1:
            return next(iter(out.values()))
        return out

    def _batch_is_dynamic(self):
        return all(
            len(d["shape_signature"]) > 0 and d["shape_signature"][0] == -1
            for d in self.input_details.values()
        )

    def example_inputs(self, seed=0, sequence_length=16):
        """Random inputs of the right shape and type, for timing."""
        rng = np.random.default_rng(seed)
        feed = {}
        for name, d in self.input_details.items():
            shape = [
                1 if i == 0 else (sequence_length if s == -1 else s)
                for i, s in enumerate(d["shape_signature"])
            ]
            dtype = np.dtype(d["dtype"])
            if dtype.kind in _INTEGER_KINDS and not d["quantization"][0]:
                # Token ids, segment ids and masks: small non-negative integers are valid.
                feed[name] = rng.integers(0, 2, size=shape).astype(dtype)
            elif dtype.kind in _INTEGER_KINDS:
                info = np.iinfo(dtype)
                feed[name] = rng.integers(info.min, info.max, size=shape).astype(dtype)
            elif dtype == np.bool_:
                feed[name] = np.ones(shape, dtype=bool)
            else:
                feed[name] = rng.random(shape).astype(dtype)
        return feed

    def benchmark(self, runs=50, warmup=5, inputs=None):
        """Time single-sample inference.

        Args:
            runs: timed invocations.
            warmup: untimed invocations first (caches, delegate set-up).
            inputs: a dict of raw input tensors; random ones by default.

        Returns:
            A `LatencyResult`.
        """
        if runs < 1:
            raise ValueError(f"runs must be at least 1. Received: runs={runs}")
        feed = inputs if inputs is not None else self.example_inputs()
        for _ in range(warmup):
            self._invoke(feed)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self._runner(**feed)
            times.append((time.perf_counter() - start) * 1e3)
        return LatencyResult.from_times(times, self.num_threads)


class LatencyResult:
    """Latency of one `.tflite` file, in milliseconds per single-sample inference."""

    def __init__(self, median_ms, p90_ms, mean_ms, runs, num_threads):
        self.median_ms = median_ms
        self.p90_ms = p90_ms
        self.mean_ms = mean_ms
        self.runs = runs
        self.num_threads = num_threads

    @classmethod
    def from_times(cls, times_ms, num_threads):
        ordered = sorted(times_ms)
        p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
        return cls(
            statistics.median(ordered), p90, statistics.fmean(ordered), len(ordered), num_threads
        )

    def __repr__(self):
        return (
            f"LatencyResult(median_ms={self.median_ms:.4f}, p90_ms={self.p90_ms:.4f}, "
            f"runs={self.runs}, num_threads={self.num_threads})"
        )


def top1(outputs):
    """Predicted class per row: argmax, or a 0.5 / 0.0 threshold for one-unit outputs."""
    outputs = np.asarray(outputs)
    if outputs.ndim >= 2 and outputs.shape[-1] > 1:
        return outputs.argmax(axis=-1)
    flat = outputs.reshape(len(outputs), -1)[:, 0]
    threshold = 0.5 if flat.min() >= 0.0 and flat.max() <= 1.0 else 0.0
    return (flat > threshold).astype(np.int64)


def labels_to_classes(labels, outputs=None):
    """Class ids from integer labels or one-hot rows.

    With the model's `outputs`, a label beyond its classes is an error (accuracy
    against it would be 0 without one).
    """
    labels = np.asarray(labels)
    if labels.ndim >= 2 and labels.shape[-1] > 1:
        return labels.argmax(axis=-1)
    flat = labels.reshape(len(labels))
    if flat.dtype.kind not in "iubf":
        raise ValueError(f"Labels must be integer class ids. Received: dtype {flat.dtype}")
    if flat.dtype.kind == "f":
        bad = flat[~np.isfinite(flat) | (flat != np.round(flat))]
        if bad.size:
            raise ValueError(
                f"Labels must be whole class ids; {bad.size} are fractional or NaN and would "
                f"be truncated. Received: labels such as {bad[:3].tolist()}"
            )
    if flat.size and flat.min() < 0:
        raise ValueError(f"Labels must be class ids from 0. Received: min label {flat.min()}")
    if outputs is not None and flat.size:
        outputs = np.asarray(outputs)
        classes = outputs.shape[-1] if outputs.ndim >= 2 and outputs.shape[-1] > 1 else 2
        if flat.max() >= classes:
            raise ValueError(
                f"Labels must be class ids below the model's {classes} outputs. "
                f"Received: max label {flat.max()}"
            )
    return flat.astype(np.int64)
