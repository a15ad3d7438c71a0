"""Sparsity patterns: which weights a mask keeps, given their importance scores.

All functions work on tensors inside the training graph (`keras.ops`).

- `"unstructured"`: keep the highest-scoring weights anywhere in the tensor.
- N:M (`"2:4"`): in every group of M consecutive weights along the input
  axis keep the N highest (what sparse tensor cores run). Its sparsity is
  fixed at `1 - N/M`; the schedule only says when masks are updated.
- block (`(1, 4)`): score blocks of the 2-D view `(prod(shape[:-1]),
  shape[-1])` by their mean score and keep whole blocks.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, TypeAlias

from keras import ops

POOLINGS = ("avg", "max")


@dataclasses.dataclass(frozen=True)
class Pattern:
    """A parsed sparsity pattern.

    Attributes:
        kind: `"unstructured"`, `"n:m"` or `"block"`.
        n: weights kept per group (N:M).
        m: group size (N:M).
        block: `(rows, cols)` of a block.
        pooling: how a block's score pools its weights' scores: `"avg"` or `"max"`.
    """

    kind: str
    n: int = 0
    m: int = 0
    block: tuple = ()
    pooling: str = "avg"

    def to_config(self):
        """The value `parse` turns back into this pattern."""
        if self.kind == "n:m":
            return f"{self.n}:{self.m}"
        if self.kind == "block":
            if self.pooling != "avg":
                return {"block": list(self.block), "pooling": self.pooling}
            return list(self.block)
        return "unstructured"

    def fixed_sparsity(self):
        """The sparsity the pattern imposes by itself (N:M), else `None`."""
        return 1.0 - self.n / self.m if self.kind == "n:m" else None


#: What `pattern=` takes: `"unstructured"`, `"N:M"`, a block `(rows, cols)`,
#: `{"block": [rows, cols], "pooling": "max"}`, or a parsed `Pattern`.
PatternLike: TypeAlias = str | tuple[int, int] | list[int] | dict[str, Any] | Pattern


def parse(pattern):
    """Parse `"unstructured"`, `"N:M"` / `(N, M)`-as-string, or a block `(rows, cols)`.

    Args:
        pattern: `"unstructured"`, a string `"N:M"` with `0 < N < M`, or a
            tuple/list `(rows, cols)` of positive ints for block sparsity.

    Returns:
        A `Pattern`.
    """
    if isinstance(pattern, Pattern):
        return pattern
    if isinstance(pattern, dict) and set(pattern) == {"block", "pooling"}:
        block = parse(tuple(pattern["block"]))
        pooling = pattern["pooling"]
        if pooling not in POOLINGS:
            raise ValueError(
                f"A block pattern's pooling must be one of {POOLINGS}. "
                f"Received: pooling={pooling!r}"
            )
        if block.kind != "block":
            return block
        return Pattern("block", block=block.block, pooling=pooling)
    if pattern is None or pattern == "unstructured":
        return Pattern("unstructured")
    if isinstance(pattern, str) and ":" in pattern:
        try:
            n, m = (int(part) for part in pattern.split(":"))
        except ValueError:
            n = m = -1
        if not 0 < n < m:
            raise ValueError(
                "An N:M pattern must be a string 'N:M' of ints with 0 < N < M, e.g. '2:4' "
                f"(keep 2 of every 4 weights). Received: pattern={pattern!r}"
            )
        return Pattern("n:m", n=n, m=m)
    if (
        isinstance(pattern, (tuple, list))
        and len(pattern) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pattern)
    ):
        if tuple(pattern) == (1, 1):
            return Pattern("unstructured")
        return Pattern("block", block=tuple(pattern))
    raise ValueError(
        "`pattern` must be 'unstructured', an N:M string such as '2:4', or a block shape "
        f"(rows, cols) such as (1, 4). Received: pattern={pattern!r}"
    )


def check_shape(pattern, shape, nm_axis, layer_name):
    """Raise a clear error if `pattern` cannot tile a weight of `shape`."""
    if pattern.kind == "n:m":
        dim = shape[nm_axis]
        if dim % pattern.m:
            raise ValueError(
                f"Layer '{layer_name}': the N:M pattern {pattern.n}:{pattern.m} groups weights "
                f"along axis {nm_axis} in groups of {pattern.m}, but that axis has {dim} "
                f"entries (weight shape {tuple(shape)}), not a multiple of {pattern.m}. "
                "Skip this layer (skip=[...]) or give it another pattern through "
                "overrides={name: {'pattern': 'unstructured'}}."
            )
    elif pattern.kind == "block":
        rows, cols = math.prod(shape[:-1]), shape[-1]
        if rows % pattern.block[0] or cols % pattern.block[1]:
            raise ValueError(
                f"Layer '{layer_name}': block {pattern.block} does not tile its weight, seen as a "
                f"{rows}x{cols} matrix (shape {tuple(shape)}). Pick a block that divides both, "
                "or give this layer another pattern through overrides."
            )


def _keep_top(flat_scores, sparsity):
    """0/1 mask keeping the round((1 - sparsity) * n) highest of a 1-D score tensor.

    At least one is always kept, as tfmot does: a small layer at high sparsity
    would otherwise be cut off entirely.
    """
    n = flat_scores.shape[0]
    keep = n - ops.cast(ops.round(ops.cast(sparsity, "float32") * n), "int32")
    keep = ops.clip(keep, 1, n)
    _, idx = ops.top_k(flat_scores, k=keep, sorted=False)
    updates = ops.ones_like(idx, dtype="float32")
    return ops.scatter(ops.expand_dims(idx, -1), updates, (n,))


def compute_mask(scores, sparsity, pattern, nm_axis):
    """The mask (float32, shape of `scores`) for `pattern` at `sparsity`.

    Args:
        scores: importance of each weight (e.g. `|w|`), a tensor.
        sparsity: target fraction of zeros (scalar tensor); unused for N:M.
        pattern: a `Pattern`.
        nm_axis: the axis N:M groups run along.

    Returns:
        A float32 tensor of 0s and 1s.
    """
    shape = tuple(scores.shape)
    scores = ops.cast(scores, "float32")
    if pattern.kind == "unstructured":
        return ops.reshape(_keep_top(ops.reshape(scores, (-1,)), sparsity), shape)
    if pattern.kind == "n:m":
        moved = ops.moveaxis(scores, nm_axis, -1)
        moved_shape = tuple(moved.shape)
        groups = ops.reshape(moved, (-1, pattern.m))
        _, idx = ops.top_k(groups, k=pattern.n, sorted=False)
        mask = ops.sum(ops.one_hot(idx, pattern.m, dtype="float32"), axis=-2)
        return ops.moveaxis(ops.reshape(mask, moved_shape), -1, nm_axis)
    rows, cols = math.prod(shape[:-1]), shape[-1]
    br, bc = pattern.block
    blocks = ops.reshape(scores, (rows // br, br, cols // bc, bc))
    pool = ops.max if pattern.pooling == "max" else ops.mean
    block_scores = pool(blocks, axis=(1, 3))
    block_mask = ops.reshape(
        _keep_top(ops.reshape(block_scores, (-1,)), sparsity), (rows // br, 1, cols // bc, 1)
    )
    mask = ops.broadcast_to(block_mask, (rows // br, br, cols // bc, bc))
    return ops.reshape(mask, shape)
