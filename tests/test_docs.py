"""The docs run: every python block in docs/*.md, every docstring example of the public API.

- Each page's ```python blocks run in order, in one namespace, in a temporary folder. A
  block may be left out only with `<!-- no-run: why -->` on the line before it, and only
  because it needs a network or a GPU (the reason must say which).
- Every `>>>` example in the docstrings of each public name (each subpackage's `__all__`,
  the public functions of `tfcompress.testing`, and the package docstrings) runs with
  doctest. The objects examples refer to (a trained digits CNN `model`, `x_train`, a
  pruned and a QAT model, a tiny BERT, files such as `model_int8.tflite`, ...) are built
  once, in `namespace` below. An example that writes its expected output is checked
  against it (ELLIPSIS, NORMALIZE_WHITESPACE); one that writes none must only run.
- The site builds with `mkdocs build --strict`: no warnings, no broken links.
"""

import doctest
import importlib
import importlib.util
import inspect
import os
import pathlib
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PACKAGES = (
    "cluster",
    "data",
    "distill",
    "export",
    "pipeline",
    "prune",
    "quantize",
    "testing",
    "train",
)
# The core layer: private modules, but their examples are documentation too.
CORE_MODULES = ("_flavor", "_graph", "_inputs", "_io", "_layers", "_report", "errors")
NO_RUN = re.compile(r"^<!--\s*no-run:\s*(?P<why>.*?)\s*-->\s*$")


# --------------------------------------------------------------------------- docs/*.md


def python_blocks(page):
    """(first line number, code, reason to skip or None) of each ```python block."""
    blocks, lines = [], page.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip().startswith("```python"):
            start, body = i + 1, []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                body.append(lines[i])
                i += 1
            before = lines[start - 2].strip() if start >= 2 else ""
            match = NO_RUN.match(before)
            blocks.append((start + 1, "\n".join(body) + "\n", match and match["why"]))
        i += 1
    return blocks


PAGES = sorted(p for p in DOCS.rglob("*.md") if python_blocks(p))


def test_pages_have_blocks_to_run():
    # The parametrized test below must not silently collect nothing.
    assert len(PAGES) >= 10, PAGES


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_docs_page_runs(page, tmp_path, monkeypatch):
    import keras

    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"docs_{page.stem}"}
    ran = 0
    try:
        for lineno, code, skip in python_blocks(page):
            if skip is not None:
                assert re.search(r"network|GPU", skip), (
                    f"{page.name}, line {lineno - 2}: a block may be left out only because it "
                    f"needs a network or a GPU; say which. Received: {skip!r}"
                )
                continue
            # Leading newlines keep the page's line numbers in tracebacks.
            source = "\n" * (lineno - 1) + code
            exec(compile(source, str(page), "exec"), namespace)
            ran += 1
    finally:
        keras.mixed_precision.set_global_policy("float32")
        keras.backend.clear_session()
    assert ran, f"{page.name}: every python block was left out"


def test_no_run_markers_sit_on_python_blocks():
    # A `no-run` comment that is not right above a python block would hide nothing and
    # mislead the reader.
    for page in DOCS.rglob("*.md"):
        lines = page.read_text().splitlines()
        for i, line in enumerate(lines):
            if NO_RUN.match(line.strip()):
                nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
                assert nxt.startswith("```python"), f"{page.name}, line {i + 1}"


# ----------------------------------------------------------------- docstring examples


def _public_objects():
    """(name, object, recurse) for each package docstring and each public name."""
    import tfcompress

    yield "tfcompress", tfcompress, False
    for name in tfcompress.__all__:  # the top level's own names (Report, report_of, ...)
        if name not in PACKAGES and not name.startswith("__"):
            yield f"tfcompress.{name}", getattr(tfcompress, name), True
    for core in CORE_MODULES:
        if importlib.util.find_spec(f"tfcompress.{core}") is not None:
            yield f"tfcompress.{core}", importlib.import_module(f"tfcompress.{core}"), True
    for package in PACKAGES:
        module = importlib.import_module(f"tfcompress.{package}")
        # A package's own docstring; its members are reached by name below.
        yield f"tfcompress.{package}", module, False
        names = getattr(module, "__all__", None)
        if names is None:  # tfcompress.testing is a module without __all__
            names = [
                n
                for n, v in vars(module).items()
                if not n.startswith("_")
                and (inspect.isfunction(v) or inspect.isclass(v))
                and v.__module__ == module.__name__
            ]
        for name in names:
            yield f"tfcompress.{package}.{name}", getattr(module, name), True


def _doctests():
    found, seen = {}, set()
    for name, obj, recurse in _public_objects():
        if not (inspect.ismodule(obj) or inspect.isclass(obj) or callable(obj)):
            continue  # constants (COMPUTE_OPS, NO_DECAY, ...) have no docstring of their own
        finder = doctest.DocTestFinder(recurse=recurse, exclude_empty=True)
        for test in finder.find(obj, name):
            key = (test.filename, test.lineno, test.docstring)
            if not test.examples or key in seen:
                continue
            seen.add(key)
            found[test.name] = test
    return found


DOCTESTS = _doctests()


def test_docstring_examples_found():
    # Guards the collection: the public API has dozens of examples.
    assert len(DOCTESTS) >= 40, sorted(DOCTESTS)


class _Checker(doctest.OutputChecker):
    """Checks written outputs; an example that writes none (`fit()`, ...) must only run."""

    def check_output(self, want, got, optionflags):
        if not want.strip():
            return True
        return super().check_output(want, got, optionflags)


# The recipe files examples name: quick, but a real train -> prune -> int8 chain.
RECIPE = """\
name: digits, doctest
seed: 0
data: {embedded: digits}
model: {factory: "tfcompress.testing:digits_cnn"}
stages:
  - {type: train, epochs: 2, learning_rate: 0.003}
  - {type: prune, final_sparsity: 0.5, epochs: 1}
  - {type: export, modes: [int8]}
"""


@pytest.fixture(scope="module")
def namespace(tmp_path_factory):
    """The objects docstring examples use, built once, and the folder they run in."""
    import keras
    import keras_hub
    import numpy as np
    import tensorflow as tf

    import tfcompress
    from tfcompress import export, prune, quantize, testing
    from tfcompress.data import load_digits

    work = tmp_path_factory.mktemp("doctest")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        data = load_digits()
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model = testing.digits_cnn()
        model.compile("adam", loss, metrics=["accuracy"])
        model.fit(data.x_train, data.y_train, epochs=4, verbose=0)

        pruned = prune.prune_low_magnitude(model, prune.ConstantSparsity(0.8, 0, frequency=1))
        pruned.compile("adam", loss)
        pruned.fit(
            data.x_train, data.y_train, epochs=1, verbose=0, callbacks=[prune.UpdatePruningStep()]
        )
        stripped = prune.strip_pruning(pruned)
        pruned.save("pruned.keras")

        # The distiller freezes its teacher: give it a copy, not the shared `model`.
        teacher = keras.models.clone_model(model)
        teacher.set_weights(model.get_weights())
        student = testing.digits_cnn(filters=(4, 8), dense_units=16, name="student")

        qat_model = quantize.quantize_model(model)
        qat_model.compile("adam", loss)
        qat_model.fit(data.x_train, data.y_train, epochs=1, verbose=0)
        export.to_tflite(qat_model, "model_int8.tflite", mode="int8")
        export.lowbit.to_lowbit_tflite(model, "model_int4.tflite", mode="int4_block32")

        with open("recipe.yaml", "w") as f:
            f.write(RECIPE)
        with open("digits.yaml", "w") as f:
            f.write(RECIPE.split("  - {type: prune")[0])

        bert_classifier = testing.tiny_bert_classifier(num_layers=2, num_heads=4)
        backbone = testing.tiny_bert_classifier(num_layers=4).backbone
        gpt2_backbone = keras_hub.models.GPT2Backbone(
            vocabulary_size=100,
            num_layers=2,
            num_heads=4,
            hidden_dim=16,
            intermediate_dim=32,
            max_sequence_length=16,
        )
    finally:
        os.chdir(cwd)
    objects = {
        "keras": keras,
        "keras_hub": keras_hub,
        "np": np,
        "tf": tf,
        "tfcompress": tfcompress,
        **{name: getattr(tfcompress, name) for name in PACKAGES},
        "x_train": data.x_train,
        "y_train": data.y_train,
        "x_test": data.x_test,
        "y_test": data.y_test,
        "x": data.x_train,
        "y": data.y_train,
        "loss": loss,
        "model": model,
        "pruned": pruned,
        "stripped": stripped,
        "teacher": teacher,
        "student": student,
        "qat_model": qat_model,
        "qat": qat_model,
        "bert_classifier": bert_classifier,
        "backbone": backbone,
        "gpt2_backbone": gpt2_backbone,
        "data": bytes(16),  # what `atomic_path` examples write
        "build_model": testing.digits_cnn,
        "dataset": tf.data.Dataset.from_tensor_slices((data.x_train, data.y_train)),
    }
    return work, objects


def _package_names(test_name):
    # `tfcompress.prune.strip_pruning...` -> the public names of tfcompress.prune.
    parts = test_name.split(".")
    if len(parts) < 2 or parts[1] not in PACKAGES:
        return {}
    module = importlib.import_module(f"tfcompress.{parts[1]}")
    return {n: getattr(module, n) for n in getattr(module, "__all__", ())}


@pytest.mark.parametrize("name", sorted(DOCTESTS))
def test_docstring_example_runs(name, namespace, monkeypatch):
    work, objects = namespace
    monkeypatch.chdir(work)
    test = DOCTESTS[name]
    test.globs = {**test.globs, **_package_names(name), **objects}
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    runner = doctest.DocTestRunner(checker=_Checker(), optionflags=flags, verbose=False)
    report = []
    runner.run(test, out=report.append, clear_globs=False)
    assert runner.failures == 0, "".join(report)


# -------------------------------------------------------------------------- the site


def test_site_builds_without_warnings(tmp_path):
    mkdocs = pathlib.Path(sys.executable).with_name("mkdocs")
    if not mkdocs.exists():
        pytest.fail("mkdocs is not installed: pip install -e '.[dev]'")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    # The API reference came from the docstrings, and has an entry for every public
    # function and public submodule (a function that shadows its module would be hidden).
    missing = []
    for package in PACKAGES:
        module = importlib.import_module(f"tfcompress.{package}")
        html = (tmp_path / "site" / "api" / f"{package}.html").read_text()
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if inspect.isfunction(obj) or inspect.ismodule(obj):
                if f'id="tfcompress.{package}.{name}"' not in html:
                    missing.append(f"{package}.{name}")
    assert not missing, f"the API reference (docs/api/) renders no entry for {missing}"
    for page in (tmp_path / "site").rglob("*.html"):
        text = page.read_text()
        for host in ("fonts.googleapis", "unpkg.com", "cdn.jsdelivr", "googletagmanager"):
            assert host not in text, f"{page.name} loads from {host}"
