"""Shared helpers for benchmark scripts: tables, A/B timing, BENCHMARKS.md sections."""

import datetime
import os
import platform
import re
import statistics
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS_MD = os.path.join(ROOT, "BENCHMARKS.md")

_HEADER = """# Benchmarks

Written by the scripts in `benchmarks/` (`make bench`, or `python -m benchmarks.NAME`).
Each section says which script wrote it, on what machine, and when. Speed figures are
ratios measured in one run with alternating repetitions (this machine is shared and
noisy); the spread is shown beside each median.
"""


def environment():
    """One line: machine, Python and library versions, date."""
    import importlib.metadata as md

    versions = []
    for name in (
        "tensorflow",
        "keras",
        "tf-keras",
        "tensorflow-model-optimization",
        "keras-hub",
        "ai-edge-litert",
    ):
        try:
            versions.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            pass
    return (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, Python "
        f"{platform.python_version()}; "
        + ", ".join(versions)
        + "; "
        + datetime.date.today().isoformat()
    )


def markdown_table(headers, rows):
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def update_section(name, body, script):
    """Replace (or add) the section `name` of BENCHMARKS.md, atomically."""
    import fcntl

    # Benchmarks run side by side in several processes: the read-modify-write of the
    # shared file holds a lock so no section written meanwhile is lost.
    with open(BENCHMARKS_MD + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _replace_section(name, body, script)


def _replace_section(name, body, script):
    from tfcompress._io import atomic_write_text

    text = open(BENCHMARKS_MD).read() if os.path.exists(BENCHMARKS_MD) else _HEADER
    block = (
        f"<!-- section:{name} -->\n## {name}\n\n_Written by `{script}` on "
        f"{environment()}._\n\n{body.strip()}\n<!-- /section:{name} -->"
    )
    tag = re.escape(name)
    pattern = re.compile(rf"<!-- section:{tag} -->.*?<!-- /section:{tag} -->", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    atomic_write_text(BENCHMARKS_MD, text)


def alternating_times(functions, repetitions=5):
    """Time each function `repetitions` times, alternating A, B, A, B...

    Args:
        functions: dict of name -> zero-argument callable.
        repetitions: rounds.

    Returns:
        dict of name -> list of seconds.
    """
    times = {name: [] for name in functions}
    for _ in range(repetitions):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def median_spread(values, fmt="{:.3f}"):
    """'median (min-max)' as text."""
    return (
        fmt.format(statistics.median(values))
        + " ("
        + fmt.format(min(values))
        + "-"
        + fmt.format(max(values))
        + ")"
    )


def litert_runner(path, num_threads=1):
    """A LiteRT runner for timing a `.tflite` file (the edge kit's own code)."""
    from tfcompress_edge.runner import TFLiteRunner

    return TFLiteRunner(path, num_threads=num_threads)


def script_main(run, doc, argv=None):
    """The command line every benchmark script shares: `--quick`, `--no-write`."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs and repetitions")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args(argv)
    run(quick=args.quick, write=not args.no_write)
    return 0


def step_timer(engine="keras3"):
    """A callback (of the engine's Keras) recording the time between batch starts."""
    if engine == "keras3":
        import keras

        base = keras.callbacks.Callback
    else:
        import tf_keras

        base = tf_keras.callbacks.Callback

    class StepTimer(base):
        def __init__(self):
            super().__init__()
            self.times, self._last = [], None

        def on_train_batch_begin(self, batch, logs=None):
            now = time.perf_counter()
            if self._last is not None:
                self.times.append(now - self._last)
            self._last = now

    return StepTimer()
