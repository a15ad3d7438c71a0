"""Per-op profile of a `.tflite` file: time per op, and which ops XNNPACK took.

ai-edge-litert ships no per-op profiler that Python can reach (its
`litert-benchmark` tool has no `--enable_op_profiling`), so this is the
nearest thing, built from the file itself:

1. the whole file runs once with LiteRT's default XNNPACK delegate; the
   delegate's partitions (each a `DELEGATE` node with its boundary tensors)
   tell which of the file's ops XNNPACK took;
2. the file runs once without delegates, keeping every intermediate tensor,
   which gives each op's real input values and shapes;
3. each op is cut out into a one-op `.tflite` model (its constant inputs kept,
   the others fed with the values from step 2, shapes static) and timed on
   its own, with XNNPACK where XNNPACK took it in the whole file, else with
   the builtin kernel. The cost of an empty invocation is subtracted.

Per-op times ignore what the delegate gains by fusing neighbours, so their
sum differs a little from the whole-file latency; both are reported.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import statistics
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from tfcompress.export._litert import load_runner, run_errors


@dataclasses.dataclass(frozen=True)
class OpTime:
    """One op of the file, timed on its own.

    Attributes:
        index: position in the file's execution order.
        name: builtin op name (`"FULLY_CONNECTED"`, ...).
        dtype: dtype of its first input (what it computes on).
        ms: median milliseconds per call, invocation overhead removed
            (`None` when the op could not be cut out and timed alone).
        xnnpack: whether LiteRT's XNNPACK delegate runs it in the whole file.
    """

    index: int
    name: str
    dtype: str | None
    ms: object
    xnnpack: bool


@dataclasses.dataclass(frozen=True)
class OpProfile:
    """Where the time of one `.tflite` file goes.

    Attributes:
        path: the file.
        latency_ms: median latency of the whole file (XNNPACK on).
        ops: one `OpTime` per op, in execution order.
        num_threads: CPU threads used.
    """

    path: str
    latency_ms: float
    ops: list
    num_threads: int

    @property
    def op_ms(self) -> float:
        """Sum of the per-op times."""
        return sum(op.ms or 0.0 for op in self.ops)

    @property
    def xnnpack_ops(self) -> int:
        """How many ops XNNPACK took."""
        return sum(op.xnnpack for op in self.ops)

    def by_op_type(self) -> list[tuple[str, str | None, int, float, int]]:
        """Rows `(name, dtype, count, ms, xnnpack count)`, most time first."""
        rows: collections.defaultdict[tuple[str, str | None], list[Any]]
        rows = collections.defaultdict(lambda: [0, 0.0, 0])
        for op in self.ops:
            row = rows[(op.name, op.dtype)]
            row[0] += 1
            row[1] += op.ms or 0.0
            row[2] += op.xnnpack
        return sorted(
            ((name, dtype, n, ms, x) for (name, dtype), (n, ms, x) in rows.items()),
            key=lambda r: -r[3],
        )

    def summary(self, top: int = 20) -> str:
        """A table for people: time per op type, and XNNPACK's share."""
        total = self.op_ms or 1.0
        lines = [
            f"{self.path}: {self.latency_ms:.3f} ms per call ({self.num_threads} thread(s)); "
            f"{len(self.ops)} ops, {self.xnnpack_ops} run by XNNPACK; ops timed alone sum "
            f"to {self.op_ms:.4f} ms",
            f"  {'op':<24} {'dtype':<8} {'count':>5} {'ms':>9} {'share':>6} {'XNNPACK':>8}",
        ]
        for name, dtype, n, ms, x in self.by_op_type()[:top]:
            lines.append(
                f"  {name:<24} {str(dtype):<8} {n:>5} {ms:>9.4f} {ms / total:>6.1%} {x:>4}/{n:<3}"
            )
        return "\n".join(lines)


def profile(
    path: str | os.PathLike,
    num_threads: int = 1,
    runs: int = 20,
    inputs: Mapping[str, np.ndarray] | None = None,
    sequence_length: int = 16,
) -> OpProfile:
    """Time every op of a `.tflite` file and say which ones XNNPACK runs.

    Args:
        path: the `.tflite` file.
        num_threads: CPU threads LiteRT may use.
        runs: timed calls per op (and for the whole file).
        inputs: raw input tensors keyed by signature input name; random ones
            of the right shape and type by default.
        sequence_length: the size given to dynamic (`-1`) axes other than the
            batch in random inputs (files exported with static shapes have none).

    Returns:
        An `OpProfile`.

    Raises:
        InvalidTFLiteFileError: the file is not TFLite, or LiteRT cannot run it.

    Example:

    >>> print(profile("model_int8.tflite").summary())
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    from ai_edge_litert.tools import flatbuffer_utils

    path = os.fspath(path)
    runner = load_runner(path, num_threads=num_threads)
    feed = inputs if inputs is not None else runner.example_inputs(sequence_length=sequence_length)
    with run_errors(path):
        latency = runner.benchmark(runs=runs, warmup=3, inputs=feed)
    delegated_ops = runner.interpreter._get_ops_details()

    data = open(path, "rb").read()
    plain = Interpreter(
        model_content=data,
        num_threads=num_threads,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        experimental_preserve_all_tensors=True,
    )
    with run_errors(path):
        plain.get_signature_runner(runner.signature_key)(**feed)
    ops = plain._get_ops_details()
    xnnpack = _delegated(ops, delegated_ops)

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    overhead = _empty_call_ms(model, num_threads, runs)
    times = []
    for op in ops:
        ms = _time_alone(model, op["index"], plain, num_threads, runs, xnnpack[op["index"]])
        dtype = op["operand_types"][0].__name__ if op["operand_types"] else None
        times.append(
            OpTime(
                index=op["index"],
                name=op["op_name"],
                dtype=dtype,
                ms=None if ms is None else max(ms - overhead, 0.0),
                xnnpack=xnnpack[op["index"]],
            )
        )
    return OpProfile(path=path, latency_ms=latency.median_ms, ops=times, num_threads=num_threads)


def _delegated(ops, delegated_ops):
    """`{op index: bool}`: which of the file's ops sit inside an XNNPACK partition."""
    producer = {}
    for op in ops:
        for t in op["outputs"]:
            producer[int(t)] = op["index"]
    taken = {op["index"]: False for op in ops}
    for node in delegated_ops:
        if node["op_name"] != "DELEGATE":
            continue
        boundary = {int(t) for t in node["inputs"]}
        stack = [int(t) for t in node["outputs"]]
        seen = set()
        while stack:
            tensor = stack.pop()
            if tensor in seen or tensor in boundary or tensor not in producer:
                continue
            seen.add(tensor)
            index = producer[tensor]
            if not taken[index]:
                taken[index] = True
                stack.extend(int(t) for t in ops[index]["inputs"] if int(t) >= 0)
    return taken


def _one_op_model(model, op_index, shapes):
    """A copy of `model` whose main subgraph holds only operator `op_index`."""
    import copy

    from ai_edge_litert import schema_py_generated as schema

    graph = model.subgraphs[0]
    op = copy.copy(graph.operators[op_index])
    used = [t for t in list(op.inputs) + list(op.outputs) + list(op.intermediates or []) if t >= 0]
    used = list(dict.fromkeys(used))
    new_index = {old: i for i, old in enumerate(used)}
    buffers = [schema.BufferT()]
    tensors, inputs = [], []
    keep_all_buffers = len(model.subgraphs) > 1
    for old in used:
        t = copy.copy(graph.tensors[old])
        data = model.buffers[t.buffer].data if t.buffer < len(model.buffers) else None
        constant = data is not None and len(data) > 0
        if old in shapes and not constant:
            t.shape = list(shapes[old])
            t.shapeSignature = None
        if constant and not keep_all_buffers:
            buffer = schema.BufferT()
            buffer.data = np.frombuffer(bytes(data), np.uint8)
            buffers.append(buffer)
            t.buffer = len(buffers) - 1
        elif not keep_all_buffers:
            t.buffer = 0
        if not constant and old in op.inputs and not t.isVariable:
            inputs.append(new_index[old])
        tensors.append(t)
    op.inputs = [new_index.get(t, -1) if t >= 0 else -1 for t in op.inputs]
    op.outputs = [new_index[t] for t in op.outputs]
    op.intermediates = [new_index[t] for t in (op.intermediates or [])]
    sub = schema.SubGraphT()
    sub.tensors, sub.inputs, sub.outputs = tensors, inputs, list(op.outputs)
    sub.operators, sub.name = [op], "profile"
    new = copy.copy(model)
    new.subgraphs = [sub] + list(model.subgraphs[1:])
    new.signatureDefs = []
    new.metadata = []
    new.metadataBuffer = []
    if keep_all_buffers:
        new.buffers = [_numpy_buffer(b) for b in model.buffers]
    else:
        new.buffers = buffers
    return new, [used[i] for i in inputs]


def _numpy_buffer(buffer):
    if buffer.data is not None and not isinstance(buffer.data, np.ndarray):
        buffer.data = np.frombuffer(bytes(buffer.data), np.uint8)
    return buffer


def _timed_calls(interpreter, runs):
    interpreter.invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        interpreter.invoke()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _time_alone(model, op_index, plain, num_threads, runs, use_xnnpack):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    from ai_edge_litert.tools import flatbuffer_utils

    op = model.subgraphs[0].operators[op_index]
    shapes, values = {}, {}
    for t in op.inputs:
        if t < 0:
            continue
        try:
            value = plain.get_tensor(t)
        except ValueError:
            return None
        shapes[t], values[t] = value.shape, value
    try:
        one, feeds = _one_op_model(model, op_index, shapes)
        content = bytes(flatbuffer_utils.convert_object_to_bytearray(one))
        resolver = (
            OpResolverType.AUTO if use_xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
        interpreter = Interpreter(
            model_content=content, num_threads=num_threads, experimental_op_resolver_type=resolver
        )
        interpreter.allocate_tensors()
        for position, old in enumerate(feeds):
            interpreter.set_tensor(interpreter.get_input_details()[position]["index"], values[old])
        return _timed_calls(interpreter, runs)
    except (RuntimeError, ValueError, TypeError, IndexError):
        return None  # an op that cannot live alone (variables, ...): left untimed


def _empty_call_ms(model, num_threads, runs):
    """Milliseconds of a call that does no work: a one-op model copying one number."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    from ai_edge_litert.tools import flatbuffer_utils

    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.RELU
    code.version = 1
    tensors = []
    for name in ("x", "y"):
        t = schema.TensorT()
        t.shape, t.type, t.buffer, t.name = [1], schema.TensorType.FLOAT32, 0, name
        tensors.append(t)
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0], [1]
    sub = schema.SubGraphT()
    sub.tensors, sub.inputs, sub.outputs, sub.operators = tensors, [0], [1], [op]
    empty = schema.ModelT()
    empty.version, empty.operatorCodes, empty.subgraphs = 3, [code], [sub]
    empty.buffers = [schema.BufferT()]
    content = bytes(flatbuffer_utils.convert_object_to_bytearray(empty))
    interpreter = Interpreter(
        model_content=content,
        num_threads=num_threads,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    return min(_timed_calls(interpreter, runs) for _ in range(3))
