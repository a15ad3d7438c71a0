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
    monkeypatch.setattr(runner, "BENCHMARKS", {"broken": "benchmarks._broken",
                                               "fine": "benchmarks._fine"})
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
