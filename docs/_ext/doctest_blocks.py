"""Griffe extension: show docstring examples (`>>>` lines) as Python code blocks.

Our docstrings write examples doctest-style under "Example:", unindented, so that
tests/test_docs.py runs them with doctest. Markdown would read `>>>` as nested quotes;
this wraps each run of example lines (prompts, `...` continuations and expected output,
up to a blank line) in a ```pycon fence before mkdocstrings renders the docstring.
"""

import griffe


def fence_examples(text: str) -> str:
    """Wrap each run of doctest lines in `text` in a ```pycon fence."""
    out, block = [], []

    def flush():
        if block:
            indent = block[0][: len(block[0]) - len(block[0].lstrip())]
            out.extend([f"{indent}```pycon", *block, f"{indent}```"])
            block.clear()

    for line in text.splitlines():
        if line.lstrip().startswith(">>>") or (block and line.strip()):
            block.append(line)
        else:
            flush()
            out.append(line)
    flush()
    return "\n".join(out)


class DoctestBlocks(griffe.Extension):
    """Fences the doctest examples of every docstring griffe loads."""

    def on_object(self, *, obj, loader, **kwargs) -> None:
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = fence_examples(obj.docstring.value)
