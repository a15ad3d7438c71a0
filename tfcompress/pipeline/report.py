"""The run report: DIR/report.md and DIR/report.html with a table and PNG plots."""

import html
import os

import numpy as np

from tfcompress import _io


def _rows(records):
    rows = []
    for r in records:
        base = dict(
            stage=f"{r['stage']}. {r['type']}",
            parameters=r["parameters"],
            nonzero=r["nonzero_parameters"],
            bytes=r.get("float32_bytes"),
            gzip=r.get("float32_gzip_bytes"),
            accuracy=r["accuracy"],
            latency=None,
            file="float32 (measured)",
            label=f"{r['stage']} {r['type']}",
        )
        if r["type"] != "export":  # an export stage leaves the model as it was
            rows.append(base)
        for mode, e in r.get("exports", {}).items():
            rows.append(
                dict(
                    stage=f"{r['stage']}. export",
                    parameters=r["parameters"],
                    nonzero=r["nonzero_parameters"],
                    bytes=e["bytes"],
                    gzip=e["gzip_bytes"],
                    accuracy=e["tflite_accuracy"],
                    latency=e["latency_ms"],
                    file=e["path"],
                    label=f"{r['stage']} {mode} file",
                )
            )
    return rows


def _fmt(value, kind):
    if value is None:
        return "-"
    if kind == "int":
        return f"{value:,}"
    if kind == "acc":
        return f"{value:.4f}"
    return f"{value:.4f}"


HEADERS = [
    "stage",
    "file",
    "parameters",
    "non-zero parameters",
    "bytes",
    "gzip bytes",
    "accuracy",
    "LiteRT latency ms",
]


def _table_cells(rows):
    return [
        [
            r["stage"],
            r["file"],
            _fmt(r["parameters"], "int"),
            _fmt(r["nonzero"], "int"),
            _fmt(r["bytes"], "int"),
            _fmt(r["gzip"], "int"),
            _fmt(r["accuracy"], "acc"),
            _fmt(r["latency"], "ms"),
        ]
        for r in rows
    ]


def summary(records):
    """Each exported file against the first model's float32 file: one dict per file."""
    first = records[0]
    if not first.get("float32_gzip_bytes"):
        return []
    return [
        dict(
            file=e["path"],
            final_bytes=e["bytes"],
            final_gzip=e["gzip_bytes"],
            final_accuracy=e["tflite_accuracy"],
            reference_gzip=first["float32_gzip_bytes"],
            reference_accuracy=first["accuracy"],
            gzip_ratio=first["float32_gzip_bytes"] / e["gzip_bytes"],
            accuracy_change=e["tflite_accuracy"] - first["accuracy"],
        )
        for r in records
        for e in r.get("exports", {}).values()
    ]


def headline(item):
    """One sentence about one exported file."""
    return (
        f"**{item['file']}**: {item['final_bytes']:,} bytes ({item['final_gzip']:,} "
        f"gzipped), **{item['gzip_ratio']:.1f}x** smaller (gzip) than the first model's "
        f"float32 file; test accuracy {item['final_accuracy']:.4f} vs "
        f"{item['reference_accuracy']:.4f} (change {item['accuracy_change']:+.4f})."
    )


def _plot_accuracy_vs_size(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        if r["gzip"]:
            ax.scatter(r["gzip"] / 1024, r["accuracy"])
            ax.annotate(
                r["label"],
                (r["gzip"] / 1024, r["accuracy"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.set_xscale("log")
    ax.set_xlabel("file size after gzip (KiB, log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Accuracy vs size across stages")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save_figure(fig, path)


def _kernels(model):
    import keras

    found = []
    for w in model.weights:
        if w.path.endswith(("kernel", "embeddings", "depthwise_kernel")) and len(w.shape) >= 2:
            found.append((w.path.rsplit("/", 1)[0], keras.ops.convert_to_numpy(w)))
    return found


def _plot_sparsity(model, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kernels = _kernels(model)
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(kernels) + 1.2))
    names = [n for n, _ in kernels]
    values = [float(np.mean(k == 0)) for _, k in kernels]
    ax.barh(names, values, color="tab:blue")
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of weights that are exactly zero")
    ax.set_title("Per-layer sparsity of the final model")
    ax.invert_yaxis()
    fig.tight_layout()
    _save_figure(fig, path)


def _plot_histograms(before, after, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def largest(model):
        kernels = _kernels(model)
        return max(kernels, key=lambda nk: nk[1].size) if kernels else (None, np.zeros(1))

    (name_b, kb), (name_a, ka) = largest(before), largest(after)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=False)
    axes[0].hist(kb.ravel(), bins=80, color="tab:gray")
    axes[0].set_title(f"before: {name_b}", fontsize=9)
    axes[1].hist(ka.ravel(), bins=80, color="tab:green")
    axes[1].set_title(f"after: {name_a}", fontsize=9)
    for ax in axes:
        ax.set_xlabel("weight value")
    axes[0].set_ylabel("count")
    fig.tight_layout()
    _save_figure(fig, path)


def _save_figure(fig, path):
    import matplotlib.pyplot as plt

    with _io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_report(out_dir, records, title, first_model=None, final_model=None):
    """Write report.md, report.html and plots into `out_dir`; return the Markdown path."""
    rows = _rows(records)
    plots = [("accuracy_vs_size.png", "Accuracy vs size")]
    _plot_accuracy_vs_size(rows, os.path.join(out_dir, "accuracy_vs_size.png"))
    if final_model is not None:
        _plot_sparsity(final_model, os.path.join(out_dir, "sparsity.png"))
        plots.append(("sparsity.png", "Per-layer sparsity"))
        if first_model is not None:
            _plot_histograms(
                first_model, final_model, os.path.join(out_dir, "weight_histograms.png")
            )
            plots.append(("weight_histograms.png", "Weight histogram, first vs final model"))
    cells = _table_cells(rows)
    heads = summary(records)

    md = [f"# {title}", ""]
    md += [f"- {headline(item)}" for item in heads] + ([""] if heads else [])
    md += ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    md += ["| " + " | ".join(c) + " |" for c in cells]
    choices = _target_choices(records)
    md += [""] + choices
    md += [""] + [f"![{alt}]({name})" for name, alt in plots] + [""]
    md_path = os.path.join(out_dir, "report.md")
    _io.atomic_write_text(md_path, "\n".join(md))

    table = "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in HEADERS) + "</tr>"
    table += (
        "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells
        )
        + "</table>"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
        "</title><style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        + "".join(f"<p>{html.escape(headline(item)).replace('**', '')}</p>" for item in heads)
        + table
        + "".join(f"<p>{html.escape(line.lstrip('- '))}</p>" for line in choices if line)
        + "".join(
            f"<h2>{html.escape(alt)}</h2><img src='{name}' alt='{alt}'>" for name, alt in plots
        )
        + "</body></html>"
    )
    _io.atomic_write_text(os.path.join(out_dir, "report.html"), page)
    return md_path


def _target_choices(records):
    """Lines saying which file each `target` export chose, why, and each candidate's latency."""
    lines = []
    for r in records:
        for e in r.get("exports", {}).values():
            if "choice" not in e:
                continue
            timed = ", ".join(
                f"{c['mode']} {c['latency_ms']:.3f} ms"
                if c.get("latency_ms") is not None
                else f"{c['mode']} ({c.get('note') or 'not timed'})"
                for c in e.get("candidates", [])
            )
            lines.append(
                f"- `{e['path']}`: {e['mode']}: {e['choice']}"
                + (f" Candidates: {timed}." if timed else "")
            )
    return lines


TUNE_TABLE_HEADERS = [
    "trial",
    "sparsity",
    "clusters",
    "float layers",
    "method",
    "val accuracy",
    "test accuracy",
    "gzip bytes",
    "within budget",
    "weights",
]


def tune_markdown(
    records,
    best,
    within,
    path,
    sensitivity,
    base_val,
    base_test,
    budget,
    max_drop,
    trials,
    base_gzip,
):
    """The Markdown of `tune.md`: the verdict, the search table and the sensitivity table."""
    from tfcompress.pipeline.search_space import describe

    md = [
        "## Accuracy-aware search",
        "",
        f"Base model (float): validation accuracy {base_val:.4f}, test {base_test:.4f}. "
        f"Budget: validation accuracy >= {budget:.4f} (max drop {max_drop:g}); "
        f"{len(records)} of at most {trials} trial(s) run, smallest estimated size first.",
        "",
    ]
    if best is None:
        md += ["**No trial produced an int8 file.**", ""]
    else:
        ratio = (
            (
                f", {base_gzip / best['gzip_bytes']:.1f}x smaller (gzip) than the base "
                f"model's float32 file ({base_gzip:,} bytes)"
            )
            if base_gzip
            else ""
        )
        if within:
            md += [
                f"Chosen: trial {best['trial']} ({describe(best)}): "
                f"**{best['gzip_bytes']:,} bytes gzipped**{ratio}; validation accuracy "
                f"{best['val_accuracy']:.4f}, test {best['test_accuracy']:.4f}. "
                f"Written to `{os.path.basename(path)}`.",
                "",
            ]
        else:
            md += [
                f"**No trial met the budget.** Kept the closest, trial {best['trial']} "
                f"({describe(best)}): validation accuracy {best['val_accuracy']:.4f} "
                f"(budget {budget:.4f}), {best['gzip_bytes']:,} bytes gzipped{ratio}, in "
                f"`{os.path.basename(path)}`. Allow more trials, more epochs, or a larger "
                "--max-accuracy-drop.",
                "",
            ]
    md += _tune_table(records, best) + [
        "",
        "Per-layer sensitivity (what keeping one layer float, "
        "all others int8, buys the int8 file on the validation "
        "split):",
        "",
        "| layer | accuracy gain | output error reduction | stays float in the file |",
        "|---|---|---|---|",
    ]
    md += [
        f"| {s['layer']} | {s['accuracy_gain']:+.4f} | {s['error_gain']:.4g} | "
        f"{'yes' if s['stays_float'] else 'no (the converter quantizes it)'} |"
        for s in sensitivity
    ]
    return "\n".join(md) + "\n"


def _tune_table(records, best):
    lines = ["| " + " | ".join(TUNE_TABLE_HEADERS) + " |", "|" + "---|" * len(TUNE_TABLE_HEADERS)]
    for r in records:
        chosen = " (chosen)" if best is not None and r["trial"] == best["trial"] else ""
        done = r.get("status") == "done"
        cells = [
            f"{r['trial']}{chosen}",
            f"{r['sparsity']:g}",
            str(r["clusters"] or "-"),
            ", ".join(r["float_layers"]) or "-",
            r["method"].upper(),
            f"{r['val_accuracy']:.4f}" if done else "failed",
            f"{r['test_accuracy']:.4f}" if done else "-",
            f"{r['gzip_bytes']:,}" if done else "-",
            "yes" if r.get("within_budget") else "no",
            _tune_weights(r),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _tune_weights(record):
    from tfcompress.pipeline.search_space import WIDER

    bits = record.get("bits", 8)
    if bits == 8:
        return "int8"
    wider = record.get("wider_layers") or ()
    return f"int{bits}" + (f" ({WIDER[bits]}: {', '.join(wider)})" if wider else "")
