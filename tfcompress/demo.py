"""`tfcompress demo`: the default pipeline on real embedded data, in about a minute.

Runs the shipped recipe `tfcompress/pipeline/recipes/digits.yaml`: train a CNN
teacher on scikit-learn's digits, prune it to 85% sparsity, fine-tune it
quantization-aware (keeping the zeros), export int8, verify the file in
LiteRT, and write a report with a table and plots.
"""

import os

import yaml

RECIPES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pipeline", "recipes")


def demo_recipe(name="digits", quick=False):
    """The shipped recipe as a dict; `quick` caps every stage at 2 epochs (for tests)."""
    path = os.path.join(RECIPES, f"{name}.yaml")
    with open(path, encoding="utf-8") as f:
        recipe = yaml.safe_load(f)
    if quick:
        for stage in recipe["stages"]:
            if "epochs" in stage:
                stage["epochs"] = min(stage["epochs"], 2)
    return recipe


def run_demo(out_dir="tfcompress_demo", quick=False, force=False, progress=print):
    """Run the demo recipe into `out_dir`; returns the stage records.

    Args:
        out_dir: output folder: one subfolder per stage, report.md, report.html.
        quick: cap every stage at 2 epochs.
        force: rerun stages that finished in an earlier run.
        progress: called with one line per step.
    """
    from tfcompress import pipeline
    from tfcompress.pipeline.report import summary

    records = pipeline.run(demo_recipe(quick=quick), out_dir, force=force, progress=progress)
    head = summary(records)
    if head:
        print(f"\nint8 file {head['file']}: {head['final_bytes']:,} bytes "
              f"({head['final_gzip']:,} gzipped), {head['gzip_ratio']:.1f}x smaller (gzip) "
              f"than the float32 teacher; test accuracy {head['final_accuracy']:.4f} vs "
              f"teacher {head['reference_accuracy']:.4f}.")
    with open(os.path.join(out_dir, "report.md"), encoding="utf-8") as f:
        print("\n" + "\n".join(line for line in f if line.startswith("|")))
    return records
