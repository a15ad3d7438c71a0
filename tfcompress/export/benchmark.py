"""`benchmark`: LiteRT latency of a `.tflite` file on this machine."""

from tfcompress.export._litert import load_runner


def benchmark(path, num_threads=1, runs=50, warmup=5):
    """Time single-sample inference of a `.tflite` file with LiteRT.

    Args:
        path: the `.tflite` file.
        num_threads: CPU threads LiteRT may use.
        runs: timed invocations.
        warmup: untimed invocations before timing.

    Returns:
        A `LatencyResult` with `median_ms`, `p90_ms`, `mean_ms`, `runs`.

    Example:

    >>> benchmark("model_int8.tflite", num_threads=1).median_ms
    """
    if num_threads < 1:
        raise ValueError(f"num_threads must be at least 1. Received: num_threads={num_threads}")
    return load_runner(path, num_threads=num_threads).benchmark(runs=runs, warmup=warmup)
