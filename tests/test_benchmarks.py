"""The benchmark code runs (quick mode, one tiny task); the numbers are not checked here."""

import sys
import types

import pytest

from benchmarks import __main__ as runner
from benchmarks import _common


@pytest.fixture
def scratch_md(tmp_path, monkeypatch):
    path = tmp_path / "BENCHMARKS.md"
    monkeypatch.setattr(_common, "BENCHMARKS_MD", str(path))
    return path


def test_quick_run_writes_its_section_and_summary(scratch_md):
    rows = runner.run_all(["keras_builtin"], quick=True, write=True)
    assert rows[0][:2] == ["keras_builtin", "ok"]
    text = scratch_md.read_text()
    assert "## Keras built-in quantization" in text and "## Run summary" in text
    assert "converts to TFLite" in text


def test_a_failing_benchmark_is_a_row_and_the_rest_still_run(scratch_md, monkeypatch):
    broken = types.ModuleType("benchmarks._broken")

    def run(quick, write):
        raise RuntimeError("disk on fire")

    broken.run = run
    calls = []
    fine = types.ModuleType("benchmarks._fine")
    fine.run = lambda quick, write: calls.append(quick)
    monkeypatch.setitem(sys.modules, "benchmarks._broken", broken)
    monkeypatch.setitem(sys.modules, "benchmarks._fine", fine)
    monkeypatch.setattr(
        runner, "BENCHMARKS", {"broken": "benchmarks._broken", "fine": "benchmarks._fine"}
    )
    rows = runner.run_all(["broken", "fine"], quick=True, write=True)
    assert rows[0][1] == "**failed**" and "RuntimeError: disk on fire" in rows[0][3]
    assert rows[1][1] == "ok" and calls == [True]
    assert "disk on fire" in scratch_md.read_text()


def test_unknown_benchmark_name_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        runner.main(["--only", "nope", "--no-write"])
    assert info.value.code == 2
    assert "unknown benchmark nope" in capsys.readouterr().err


def test_update_section_replaces_in_place(scratch_md):
    _common.update_section("A", "first", "s.py")
    _common.update_section("B", "other", "s.py")
    _common.update_section("A", "second", "s.py")
    text = scratch_md.read_text()
    assert "second" in text and "first" not in text
    assert text.index("## A") < text.index("## B")


# --- the cross-task Summary (benchmarks/summary.py) -----------------------------------------


@pytest.fixture
def tiny_task(monkeypatch):
    """The digits CNN trained for one epoch, as task "tiny"."""
    import dataclasses

    from benchmarks import tasks

    task = dataclasses.replace(
        tasks.TASKS["digits_cnn"], name="tiny", epochs=(1, 1), tune_epochs=(1, 1)
    )
    monkeypatch.setitem(tasks.TASKS, "tiny", task)
    return task


def test_summary_quick_run_on_one_tiny_task_writes_its_rows(scratch_md, tiny_task):
    from benchmarks import summary

    rows = summary.run(quick=True, write=True, tasks=["tiny"], methods=["float", "prune"])
    assert [r[:3] for r in rows] == [
        ["tiny", "float baseline", "ok"],
        ["tiny", "pruning 80%, ours", "ok"],
    ]
    assert all(len(r) == len(summary.HEADERS) for r in rows)
    text = scratch_md.read_text()
    assert "## Summary" in text and "**quick mode**" in text
    assert "| tiny | float baseline | ok |" in text and "| tiny | pruning 80%, ours | ok |" in text


def test_summary_failed_method_and_failed_cell_are_shown_and_the_rest_still_run(
    scratch_md, tiny_task, monkeypatch
):
    from benchmarks import summary

    def broken(ctx):
        raise RuntimeError("disk on fire")

    def no_file(ctx):  # the method "works" but its file is missing: only those cells fail
        return summary.Result(ctx.model, str(scratch_md.parent / "missing.tflite"))

    monkeypatch.setattr(
        summary,
        "METHODS",
        {
            "broken": ("broken method", broken),
            "float": summary.METHODS["float"],
            "no_file": ("no file", no_file),
        },
    )
    rows = summary.run(quick=True, write=True, tasks=["tiny"])
    by_method = {r[1]: r for r in rows}
    assert by_method["broken method"][2] == "**failed**: RuntimeError: disk on fire"
    assert by_method["float baseline"][2] == "ok"
    assert by_method["float baseline"][3][0].isdigit()  # an accuracy, not an error
    assert by_method["no file"][2] == "ok" and by_method["no file"][5].startswith("error:")
    assert "disk on fire" in scratch_md.read_text()


@pytest.mark.parametrize("flag,kind", [("--tasks", "task"), ("--methods", "method")])
def test_unknown_summary_task_or_method_exits_2(capsys, flag, kind):
    from benchmarks import summary

    for main in (runner.main, summary.main):
        with pytest.raises(SystemExit) as info:
            main([flag, "nope", "--no-write"])
        assert info.value.code == 2
        assert f"unknown {kind} nope" in capsys.readouterr().err


def test_summary_merge_replaces_only_the_rows_it_measures(scratch_md, tiny_task):
    from benchmarks import summary

    def row(task, method, status):
        return [task, method, status] + ["-"] * (len(summary.HEADERS) - 3)

    old = [
        row("other", "float baseline", "kept"),
        row("tiny", "float baseline", "stale"),
        row("tiny", "PTQ int8", "kept too"),
        row("later", "float baseline", "kept as well"),
    ]
    table = _common.markdown_table(summary.HEADERS, old)
    _common.update_section("Summary", f"Every row below was measured in this run.\n\n{table}", "s")
    with pytest.raises(ValueError, match="unknown method"):
        summary.run(quick=True, tasks=["tiny"], methods=["nope"], merge=True)

    summary.run(quick=True, write=True, tasks=["tiny"], methods=["float", "prune"], merge=True)
    text = scratch_md.read_text()
    rows = summary._table_rows(text)
    assert [r[:3] for r in rows] == [
        ["other", "float baseline", "kept"],
        ["tiny", "float baseline", "ok"],
        ["tiny", "PTQ int8", "kept too"],
        ["tiny", "pruning 80%, ours", "ok"],  # new: after the last row of its task
        ["later", "float baseline", "kept as well"],
    ]
    assert text.count("## Summary") == 1 and "Every row below was measured in this run." in text
    assert "Merged rows" in text and "--tasks tiny --methods float prune --merge" in text


def test_isolated_benchmarks_that_crash_or_raise_are_rows(scratch_md, tmp_path, monkeypatch):
    (tmp_path / "bench_dies.py").write_text(
        "import os, signal\n\ndef run(quick, write):\n    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    (tmp_path / "bench_raises.py").write_text(
        "def run(quick, write):\n    raise RuntimeError('disk on fire')\n"
    )
    (tmp_path / "bench_fine.py").write_text(
        "def run(quick, write):\n    open(__file__ + '.ran', 'w').write(str(quick))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(
        runner,
        "BENCHMARKS",
        {"dies": "bench_dies", "raises": "bench_raises", "fine": "bench_fine"},
    )
    rows = runner.run_all(["dies", "raises", "fine"], quick=True, write=True, isolate=True)
    assert rows[0][1] == "**failed**" and "SIGKILL" in rows[0][3]
    assert rows[1][1] == "**failed**" and rows[1][3] == "RuntimeError: disk on fire"
    assert rows[2][1] == "ok" and (tmp_path / "bench_fine.py.ran").read_text() == "True"
    assert "died of SIGKILL (out of memory?)" in scratch_md.read_text()


def test_default_run_leaves_the_zoo_to_its_own_command(scratch_md):
    # `make bench` runs every benchmark but the zoo (hours at real size): the Run
    # summary says so, and `--only zoo` still reaches it.
    assert "zoo" in runner.BENCHMARKS and "zoo" not in runner.DEFAULT
    assert set(runner.DEFAULT) == set(runner.BENCHMARKS) - {"zoo"}
    runner._write_summary([["prune", "ok", "3", ""]], [], False, 3.0)
    text = scratch_md.read_text()
    assert "(full mode)" in text and "`make bench-zoo`" in text
    runner._write_summary([["zoo", "ok", "3", ""]], [], True, 3.0)
    assert "(quick mode)" in scratch_md.read_text() and "bench-zoo" not in scratch_md.read_text()
