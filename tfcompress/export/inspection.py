"""`inspect`: what is inside a `.tflite` file: ops, and the dtypes they compute in."""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Collection

import numpy as np

from tfcompress.errors import InvalidTFLiteFileError
from tfcompress.export._litert import tflite_errors

#: Ops that do the multiply-accumulate work; "runs in int8" is asked of these.
COMPUTE_OPS = (
    "CONV_2D",
    "DEPTHWISE_CONV_2D",
    "FULLY_CONNECTED",
    "BATCH_MATMUL",
    "TRANSPOSE_CONV",
    "CONV_3D",
)


@dataclasses.dataclass(frozen=True)
class OpInfo:
    """One op of the graph, with the dtypes of its input and output tensors."""

    name: str
    input_dtypes: tuple
    output_dtypes: tuple

    @property
    def compute_dtype(self) -> str | None:
        """The dtype of the first input: the activations the op computes on."""
        return self.input_dtypes[0] if self.input_dtypes else None


@dataclasses.dataclass(frozen=True)
class WeightInfo:
    """A quantized constant tensor: its bit width and block size (0: per channel/tensor)."""

    name: str
    dtype: str
    bits: int
    block_size: int
    shape: tuple


def _weights(path):
    from tfcompress.export.lowbit import read_weights

    return tuple(
        WeightInfo(w.name, w.dtype, w.bits, w.block_size, w.shape)
        for w in read_weights(path).values()
    )


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """A graph input or output."""

    name: str
    dtype: str
    shape: tuple
    scale: float
    zero_point: int


@dataclasses.dataclass(frozen=True)
class TFLiteInfo:
    """The contents of a `.tflite` file.

    Attributes:
        path: the file.
        bytes: its size.
        ops: list of `OpInfo`, in execution order (builtin kernels, no delegate).
        inputs: the signature's inputs as `TensorInfo`.
        outputs: the signature's outputs as `TensorInfo`.
        weights: the quantized constant tensors as `WeightInfo` (bit width and
            block size: int8, int4, int2), in file order.
    """

    path: str
    bytes: int
    ops: list
    inputs: list
    outputs: list
    weights: tuple = ()

    @property
    def op_histogram(self) -> collections.Counter[str]:
        """`collections.Counter` of op name -> count."""
        return collections.Counter(op.name for op in self.ops)

    def compute_dtypes(self, op_names: Collection[str] = COMPUTE_OPS) -> dict[str, set[str | None]]:
        """`{op name: set of compute dtypes}` for the ops named."""
        found = collections.defaultdict(set)
        for op in self.ops:
            if op.name in op_names:
                found[op.name].add(op.compute_dtype)
        return dict(found)

    def float_compute_ops(self, op_names: Collection[str] = COMPUTE_OPS) -> list[OpInfo]:
        """The ops named whose activations are not integer (empty when fully int8)."""
        return [
            op
            for op in self.ops
            if op.name in op_names and not str(op.compute_dtype).startswith("int")
        ]

    def is_fully_integer(self, op_names: Collection[str] = COMPUTE_OPS) -> bool:
        """True when every compute op runs on integer activations and weights."""
        compute = [op for op in self.ops if op.name in op_names]
        return bool(compute) and all(
            all(d is None or d.startswith("int") for d in op.input_dtypes[:2]) for op in compute
        )

    def summary(self) -> str:
        """A few lines for people: ops with their compute dtypes, and the I/O."""
        counts = collections.Counter((op.name, op.compute_dtype) for op in self.ops)
        lines = [f"{self.path} ({self.bytes:,} bytes)"]
        for t in self.inputs:
            lines.append(f"  input  {t.name}: {t.dtype} {list(t.shape)}")
        for t in self.outputs:
            lines.append(f"  output {t.name}: {t.dtype} {list(t.shape)}")
        for (name, dtype), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {n:4d} x {name} ({dtype})")
        for w in self.weights:
            block = f", blocks of {w.block_size}" if w.block_size else ""
            lines.append(f"  weight {w.name}: {w.dtype} {list(w.shape)}{block}")
        return "\n".join(lines)


def inspect(path: str | os.PathLike) -> TFLiteInfo:
    """List the ops of a `.tflite` file and the dtypes they compute in.

    Args:
        path: the `.tflite` file.

    Returns:
        A `TFLiteInfo`.

    Raises:
        InvalidTFLiteFileError: the file is missing, truncated or not TFLite.

    Example:

    >>> info = inspect("model_int8.tflite")
    >>> info.op_histogram["FULLY_CONNECTED"], info.float_compute_ops()
    """
    from tfcompress_edge.runner import make_interpreter

    with tflite_errors():
        # Without delegates, so the ops listed are the file's own, not "DELEGATE".
        interpreter = make_interpreter(path, use_xnnpack=False)
    dtypes = {t["index"]: np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}

    def names(indices):
        return tuple(dtypes.get(int(i)) for i in indices if int(i) >= 0)

    ops = [
        OpInfo(op["op_name"], names(op["inputs"]), names(op["outputs"]))
        for op in _ops_details(interpreter, path)
    ]

    signatures = interpreter.get_signature_list()
    if not signatures:
        raise InvalidTFLiteFileError(
            f"'{path}' has no signature; export it again with tfcompress.export.to_tflite."
        )
    runner = interpreter.get_signature_runner(next(iter(signatures)))

    def tensors(details):
        return [
            TensorInfo(
                name,
                np.dtype(d["dtype"]).name,
                tuple(int(s) for s in d["shape_signature"]),
                float(d["quantization"][0]),
                int(d["quantization"][1]),
            )
            for name, d in details.items()
        ]

    return TFLiteInfo(
        path=os.fspath(path),
        bytes=os.path.getsize(path),
        ops=ops,
        inputs=tensors(runner.get_input_details()),
        outputs=tensors(runner.get_output_details()),
        weights=_weights(path),
    )


def _ops_details(interpreter, path):
    # A corrupt op (tensor index out of range, bad name) shows only when listed.
    try:
        return interpreter._get_ops_details()
    except (ValueError, TypeError, RuntimeError, KeyError, IndexError) as e:
        raise InvalidTFLiteFileError(
            f"'{path}' has a corrupt op table ({type(e).__name__}: {str(e)[:200]}); export it "
            "again."
        ) from None
