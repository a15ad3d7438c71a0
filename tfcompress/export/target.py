"""`to_tflite(..., target=...)`: the file a device wants, chosen by measuring.

- `"cpu"` writes each candidate (full int8, dynamic range, float32), checks it
  against the Keras model, times it with LiteRT on this machine, and keeps the
  fastest one that agrees with the model. float32 is always a candidate, so
  the file is never slower than float32.
- `"npu"` and `"mcu"` write full int8 with int8 inputs and outputs: what
  accelerators and microcontrollers run (they have no float kernels).

Every target fixes the batch size to 1 unless shapes were given.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import statistics
import tempfile
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from tfcompress.errors import CalibrationDataError, ConversionError

if TYPE_CHECKING:
    import keras

    from tfcompress.export.convert import ExportResult

TARGETS = ("cpu", "npu", "mcu")

#: CPU candidates, most compressed first: a tie in latency keeps the smaller file.
CPU_CANDIDATES = ("int8", "dynamic", "float32")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One file `target="cpu"` tried.

    Attributes:
        mode: the export mode.
        latency_ms: median LiteRT latency on this machine (1 thread), or `None`
            when the candidate was not written.
        agreement: top-1 agreement with the Keras model on the check data.
        bytes: file size.
        note: why it was left out, or `""`.
    """

    mode: str
    latency_ms: object = None
    agreement: object = None
    bytes: object = None
    note: str = ""


def check_target(target: str | None, mode: str | None, int8_io: bool) -> None:
    """Validate `target=` against the other arguments of `to_tflite`."""
    if target is None:
        return
    if target not in TARGETS:
        raise ValueError(
            f"Unknown target {target!r}. Choose one of: {', '.join(TARGETS)}, or pass mode= "
            f"instead. Received: target={target!r}"
        )
    if mode is not None:
        raise ValueError(
            f"Pass either target= (which picks the mode) or mode=, not both. Received: "
            f"target={target!r}, mode={mode!r}"
        )
    if int8_io and target == "cpu":
        raise ValueError(
            "target='cpu' may choose a float file, which has no int8 inputs; use target='npu' "
            "or 'mcu' for int8 I/O. Received: target='cpu', int8_io=True"
        )


def export_for_target(
    to_tflite: Callable[..., ExportResult],
    model: keras.Model,
    path: str | os.PathLike,
    target: str,
    representative_data: Any,
    options: Mapping[str, Any],
    min_agreement: float = 0.95,
    repetitions: int = 5,
) -> ExportResult:
    """Write the file for `target`; returns an `ExportResult` with `target` and `candidates`.

    Args:
        to_tflite: the exporter (passed in so this module does not import it).
        model: the Keras model.
        path: the file to write.
        target: `"cpu"`, `"npu"` or `"mcu"`.
        representative_data: calibration inputs (also the check data on CPU).
        options: other `to_tflite` keyword arguments.
        min_agreement: least top-1 agreement with Keras for a CPU candidate.
        repetitions: alternating timing rounds on CPU.
    """
    options = dict(options)
    if not any(options.get(k) is not None for k in ("batch_size", "input_shape")):
        options["batch_size"] = 1
    if target in ("npu", "mcu"):
        result = to_tflite(
            model,
            path,
            mode="int8",
            representative_data=representative_data,
            int8_io=True,
            **options,
        )
        return dataclasses.replace(
            result,
            target=target,
            choice=f"full int8 with int8 inputs and outputs: a {target.upper()} has no float "
            "kernels",
        )
    return _fastest_for_cpu(
        to_tflite, model, path, representative_data, options, min_agreement, repetitions
    )


def _fastest_for_cpu(
    to_tflite, model, path, representative_data, options, min_agreement, repetitions
):
    from tfcompress.export.verification import verify

    folder = tempfile.mkdtemp(prefix="tfcompress-target-", dir=os.path.dirname(path) or ".")
    try:
        written, skipped = {}, {}
        for mode in CPU_CANDIDATES:
            try:
                written[mode] = to_tflite(
                    model,
                    os.path.join(folder, f"{mode}.tflite"),
                    mode=mode,
                    representative_data=representative_data,
                    **options,
                )
            except CalibrationDataError:
                skipped[mode] = "needs representative_data (calibration inputs)"
            except ConversionError as e:
                skipped[mode] = f"did not convert: {str(e)[:200]}"
        agreement = {}
        for mode, result in written.items():
            agreement[mode] = None
            if mode != "float32" and representative_data is not None:
                with warnings.catch_warnings():  # verify's doubts about the data, not the file
                    warnings.simplefilter("ignore")
                    agreement[mode] = verify(
                        result.path, model, representative_data, max_samples=200
                    ).top1_agreement
        latency = _alternate({m: r.path for m, r in written.items()}, repetitions)
        candidates, eligible = [], []
        for mode in CPU_CANDIDATES:
            if mode in skipped:
                candidates.append(Candidate(mode, note=skipped[mode]))
                continue
            note = ""
            if agreement[mode] is not None and agreement[mode] < min_agreement:
                note = f"top-1 agreement {agreement[mode]:.1%} < {min_agreement:.0%}"
            else:
                eligible.append(mode)
            candidates.append(
                Candidate(mode, latency[mode], agreement[mode], written[mode].bytes, note)
            )
        if not eligible:
            raise ConversionError(
                f"target='cpu' found no file to write for model '{model.name}': "
                + "; ".join(f"{c.mode}: {c.note}" for c in candidates)
            )
        best = min(eligible, key=lambda m: (latency[m], CPU_CANDIDATES.index(m)))
        measured = ", ".join(
            f"{c.mode} {c.latency_ms:.3f} ms"
            if c.latency_ms is not None
            else f"{c.mode} skipped ({c.note})"
            for c in candidates
        )
        why = f"{best}: the fastest candidate that agrees with the model ({measured})"
        from tfcompress import _io

        _io.atomic_write_bytes(path, open(written[best].path, "rb").read())
        return dataclasses.replace(
            written[best],
            path=os.fspath(path),
            target="cpu",
            choice=why,
            candidates=tuple(candidates),
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _alternate(paths, repetitions, seconds=0.1):
    """`{name: median ms}` with the files timed in turn (LiteRT, 1 thread, same inputs)."""
    from tfcompress.export._litert import load_runner

    runners = {name: load_runner(path) for name, path in paths.items()}
    feeds = {name: runner.example_inputs() for name, runner in runners.items()}
    runs = {}
    for name, runner in runners.items():
        once = runner.benchmark(runs=1, warmup=2, inputs=feeds[name]).median_ms / 1e3
        runs[name] = max(3, int(seconds / max(once, 1e-6)))
    times = {name: [] for name in paths}
    for _ in range(repetitions):
        for name, runner in runners.items():
            times[name].append(
                runner.benchmark(runs=runs[name], warmup=1, inputs=feeds[name]).median_ms
            )
    return {name: statistics.median(values) for name, values in times.items()}
