"""`benchmark`: LiteRT latency of a `.tflite` file on this machine, per op on request."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from tfcompress.export._litert import load_runner, run_errors

if TYPE_CHECKING:
    from tfcompress_edge.runner import LatencyResult


def benchmark(
    path: str | os.PathLike,
    num_threads: int = 1,
    runs: int = 50,
    warmup: int = 5,
    *,
    profile: bool = False,
    sequence_length: int = 16,
) -> LatencyResult:
    """Time single-sample inference of a `.tflite` file with LiteRT.

    Args:
        path: the `.tflite` file.
        num_threads: CPU threads LiteRT may use.
        runs: timed invocations.
        warmup: untimed invocations before timing.
        profile: also time every op on its own and say which ops LiteRT's
            XNNPACK delegate runs (see `tfcompress.export.profile`); the
            result's `.profile` is then an `OpProfile`.
        sequence_length: size given to dynamic (`-1`) non-batch axes of the
            random inputs (files with static shapes have none).

    Returns:
        A `LatencyResult` with `median_ms`, `p90_ms`, `mean_ms`, `runs`, and
        `profile` (`None` unless `profile=True`).

    Raises:
        InvalidTFLiteFileError: the file is not TFLite, or LiteRT cannot run it.

    Example:

    >>> result = benchmark("model_int8.tflite", num_threads=1, profile=True)
    >>> result.median_ms
    >>> print(result.profile.summary())
    """
    for name, value, least in (
        ("num_threads", num_threads, 1),
        ("runs", runs, 1),
        ("warmup", warmup, 0),
        ("sequence_length", sequence_length, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(
                f"{name} must be an int of at least {least}. Received: {name}={value!r}"
            )
    runner = load_runner(path, num_threads=num_threads)
    inputs = runner.example_inputs(sequence_length=sequence_length)
    if profile:
        from tfcompress.export.profiling import profile as profile_ops

        ops = profile_ops(path, num_threads=num_threads, runs=max(5, min(runs, 50)), inputs=inputs)
    else:
        ops = None
    with run_errors(path):
        result = runner.benchmark(runs=runs, warmup=warmup, inputs=inputs)
    result.profile = ops
    return result
