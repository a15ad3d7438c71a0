"""Run every benchmark and rewrite BENCHMARKS.md: `python -m benchmarks [--quick]`.

Each benchmark runs in a process of its own. A benchmark that fails, crashes or is
killed for memory shows up as a failed row in the run summary with its error; the
others still run.
"""

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import _common  # noqa: E402

#: name -> module; each module has run(quick, write) and its own BENCHMARKS.md section.
BENCHMARKS = {
    "export_modes": "benchmarks.export_modes",
    "int8_speed": "benchmarks.int8_speed",
    "keras_builtin": "benchmarks.keras_builtin",
    "prune": "benchmarks.prune",
    "prune_parity": "benchmarks.prune_parity",
    "heads": "benchmarks.heads",
    "quantize": "benchmarks.quantize",
    "lowbit": "benchmarks.lowbit",
    "distill": "benchmarks.distill",
    "distributed": "benchmarks.distributed",
    "summary": "benchmarks.summary",
    "zoo": "benchmarks.zoo",
}

#: What `python -m benchmarks` (`make bench`) runs without `--only`: everything but the
#: zoo. The zoo at real size takes 6-25 minutes a family on 2 cores (over 2 hours for
#: its 13 families), more than the rest together, so it has its own command,
#: `make bench-zoo` (`python -m benchmarks.zoo`), and its rows say which mode wrote them.
DEFAULT = [name for name in BENCHMARKS if name != "zoo"]


def run_all(names, quick=False, write=True, options=None, isolate=False):
    """Run the named benchmarks; returns rows of (name, status, seconds, error).

    `options` maps a benchmark name to extra keyword arguments of its run(),
    e.g. {"summary": {"tasks": [...], "methods": [...]}}. The run summary is
    rewritten after every benchmark, so a run cut short still says how far it got.
    With `isolate`, each benchmark runs in a process of its own: the memory one
    leaves behind is returned before the next, and a crash or an out-of-memory kill
    is a failed row instead of the end of the run.
    """
    rows = []
    started = time.perf_counter()
    for index, name in enumerate(names):
        start = time.perf_counter()
        print(f"== {name}", flush=True)
        kwargs = (options or {}).get(name, {})
        if isolate:
            status, error = _run_in_process(name, quick, write, kwargs)
        else:
            status, error = _run_here(name, quick, write, kwargs)
        rows.append([name, status, f"{time.perf_counter() - start:.0f}", error])
        if write:
            _write_summary(rows, names[index + 1 :], quick, time.perf_counter() - started)
    return rows


def _run_here(name, quick, write, kwargs):
    try:
        module = importlib.import_module(BENCHMARKS[name])
        module.run(quick=quick, write=write, **kwargs)
        return "ok", ""
    except Exception as e:  # a failed benchmark is a row, not the end of the run
        traceback.print_exc()
        return "**failed**", f"{type(e).__name__}: {e}".splitlines()[0][:300]


def _run_in_process(name, quick, write, kwargs):
    request = json.dumps(
        {"module": BENCHMARKS[name], "quick": quick, "write": write, "kwargs": kwargs}
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, *sys.path])))
    code = "from benchmarks.__main__ import _child; _child()"
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.run(
            [sys.executable, "-c", code, request], cwd=root, env=env, stderr=errors
        )
        errors.seek(0)
        tail = errors.read()[-20000:]
    sys.stderr.write(tail)
    if process.returncode == 0:
        return "ok", ""
    lines = [line for line in tail.splitlines() if line.strip()]
    error = lines[-1][:300] if lines else ""
    if process.returncode < 0:
        signal_name = signal.Signals(-process.returncode).name
        why = " (out of memory?)" if signal_name == "SIGKILL" else ""
        error = f"the process died of {signal_name}{why}"
    return "**failed**", error


def _child():
    """Entry point of an isolated benchmark process: run one, exit non-zero if it fails."""
    request = json.loads(sys.argv[1])
    module = importlib.import_module(request["module"])
    module.run(quick=request["quick"], write=request["write"], **request["kwargs"])


def _write_summary(rows, pending, quick, seconds):
    done = "finished" if not pending else "in progress (or cut short)"
    names = [row[0] for row in rows] + list(pending)
    zoo = (
        ""
        if "zoo" in names
        else " The Model zoo section is not part of this run: `make bench-zoo` "
        "(`python -m benchmarks.zoo`) writes it, and each of its rows names its mode and date."
    )
    body = (
        "Which benchmarks ran in the last `python -m benchmarks"
        + (" --quick" if quick else "")
        + f"` run ({'quick' if quick else 'full'} mode), how long each took, and why any "
        f"failed. The run is {done}: {seconds / 60:.0f} minutes{' so far' if pending else ''}."
        f"{zoo}\n\n"
        + _common.markdown_table(
            ["benchmark", "status", "seconds", "error"],
            rows
            + [[name, "not reached", "-", ""] for name in pending]
            + [["**total**", "", f"{seconds:.0f}", ""]],
        )
    )
    print(body, flush=True)
    _common.update_section("Run summary", body, "benchmarks/__main__.py")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small settings (< 10 minutes)")
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", help=f"run only these: {', '.join(BENCHMARKS)}"
    )
    parser.add_argument("--no-write", action="store_true", help="leave BENCHMARKS.md alone")
    parser.add_argument(
        "--tasks",
        nargs="+",
        metavar="TASK",
        help="Summary rows of these tasks only (see benchmarks/tasks.py)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        metavar="METHOD",
        help="Summary rows of these methods only (see benchmarks/summary.py)",
    )
    args = parser.parse_args(argv)
    names = args.only or list(DEFAULT)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    options = {}
    if args.tasks or args.methods:
        from benchmarks import summary

        try:
            summary.check_names(args.tasks, args.methods)
        except ValueError as e:
            parser.error(str(e))
        options["summary"] = {"tasks": args.tasks, "methods": args.methods}
    rows = run_all(names, quick=args.quick, write=not args.no_write, options=options, isolate=True)
    return 0 if all(r[1] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
