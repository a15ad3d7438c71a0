"""The README: its quick start runs as written, its links resolve, and it stays one page."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


def test_readme_example_runs(tmp_path, monkeypatch):
    text = open(README).read()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    assert (tmp_path / "digits_int8.tflite").exists()
    assert (tmp_path / "model_data.h").exists()


def test_readme_links_resolve_and_page_is_short():
    text = open(README).read()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if "://" not in t]
    assert len(local) >= 10, local  # the README points into docs/
    for target in local:
        assert os.path.exists(os.path.join(ROOT, target)), f"README links to missing {target}"
    # The quick start is the docs' Getting started page too (included, not copied).
    assert "--8<-- [start:quickstart]" in text
    assert '"README.md:quickstart"' in open(os.path.join(ROOT, "docs", "getting-started.md")).read()
    assert text.count("\n") <= 200, "README.md is one page; move the rest into docs/"
