"""Plain-text tables for reports printed to a terminal."""


def text_table(headers, rows):
    """Left-aligned columns separated by two spaces, with a rule under the header."""
    rows = [tuple(str(c) for c in row) for row in rows]
    widths = [
        max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h))
        for i, h in enumerate(headers)
    ]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])
