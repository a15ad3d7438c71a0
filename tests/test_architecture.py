"""The package's shape: one-way imports, no cycles, no private reach-ins, formatted code."""

import ast
import importlib
import os
import pathlib
import shutil
import subprocess
import sys
import types

import grimp
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tfcompress"
BIN = pathlib.Path(sys.executable).parent


def _tool(name):
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run `make test`, which installs the dev extras.")
    return found


def test_import_contract_holds():
    result = subprocess.run(
        [_tool("lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def _module_cycles(graph):
    """Strongly connected groups of modules (parent -> child edges of a package ignored)."""
    modules = sorted(graph.modules)
    edges = {
        m: [
            n
            for n in graph.find_modules_directly_imported_by(m)
            if not n.startswith(m + ".") and not m.startswith(n + ".")
        ]
        for m in modules
    }
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for m in modules:
        if m not in index:
            visit(m)
    return cycles


def test_no_import_cycles():
    # Lazy imports inside functions count: a cycle hidden that way is still a cycle.
    # Imports under `if TYPE_CHECKING:` never run, so they are left out.
    graph = grimp.build_graph("tfcompress", exclude_type_checking_imports=True)
    assert _module_cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for name in ("pkg", "pkg.a", "pkg.b", "pkg.c"):
        graph.add_module(name)
    graph.add_import(importer="pkg.a", imported="pkg.b")
    graph.add_import(importer="pkg.b", imported="pkg.a")
    graph.add_import(importer="pkg.c", imported="pkg.a")
    assert _module_cycles(graph) == [["pkg.a", "pkg.b"]]


def _subpackage(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _private_reach_ins():
    """`(importer, imported name)` where a subpackage takes another's private name."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(ROOT).with_suffix("")
        importer = ".".join(relative.parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith(
                "tfcompress."
            ):
                continue
            target = _subpackage(node.module)
            if target.startswith("_") or target == _subpackage(importer):
                continue  # the core layer (_graph, _io, ...) is there to be shared
            private_module = any(p.startswith("_") for p in node.module.split(".")[2:])
            for alias in node.names:
                if private_module or alias.name.startswith("_"):
                    found.append((importer, f"{node.module}.{alias.name}"))
    return found


def test_no_private_imports_across_subpackages():
    assert _private_reach_ins() == []


def test_public_names_do_not_shadow_modules():
    # `export.inspect` being both a function and a submodule makes
    # `import tfcompress.export.inspect` return something else than the attribute.
    shadowed = []
    for sub in sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()):
        package = importlib.import_module(f"tfcompress.{sub}")
        modules = {p.stem for p in (PACKAGE / sub).glob("*.py")}
        for name in getattr(package, "__all__", []):
            value = getattr(package, name)
            if name in modules and not isinstance(value, types.ModuleType):
                shadowed.append(f"tfcompress.{sub}.{name}")
    assert shadowed == []


def test_code_is_ruff_formatted():
    result = subprocess.run(
        [_tool("ruff"), "format", "--check", "tfcompress", "export", "tests", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:]
