"""`tfcompress demo`: the default pipeline on real embedded data, in under a minute.

Runs a shipped recipe from `tfcompress/pipeline/recipes/`:

- `digits.yaml` (default): train a CNN teacher on scikit-learn's digits,
  prune it to 85% sparsity, fine-tune it quantization-aware (keeping the
  zeros), export int8, verify the file in LiteRT, write a report with plots;
- `sst2.yaml` (`--text`): a keras-hub BERT teacher on SST-2, distilled into a
  one-layer student, pruned, exported with dynamic-range and full int8.
"""

import os

import yaml

RECIPES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pipeline", "recipes")


def demo_recipe(name="digits", quick=False):
    """The shipped recipe as a dict; `quick` caps stages at 2 epochs and text at 1,000
    training sentences (for tests)."""
    path = os.path.join(RECIPES, f"{name}.yaml")
    with open(path, encoding="utf-8") as f:
        recipe = yaml.safe_load(f)
    if quick:
        if recipe["data"].get("max_train"):
            recipe["data"]["max_train"] = min(recipe["data"]["max_train"], 1000)
        for stage in recipe["stages"]:
            if "epochs" in stage:
                stage["epochs"] = min(stage["epochs"], 2)
    return recipe


def run_demo(out_dir="tfcompress_demo", name="digits", quick=False, force=False, progress=print):
    """Run a shipped demo recipe into `out_dir`; returns the stage records.

    Args:
        out_dir: output folder: one subfolder per stage, report.md, report.html.
        name: `"digits"` (CNN on embedded digits) or `"sst2"` (BERT on SST-2).
        quick: cap every stage at 2 epochs.
        force: rerun stages that finished in an earlier run.
        progress: called with one line per step.
    """
    from tfcompress import pipeline
    from tfcompress.pipeline.report import summary

    records = pipeline.run(demo_recipe(name, quick=quick), out_dir, force=force, progress=progress)
    for item in summary(records):
        print(
            f"\n{item['file']}: {item['final_bytes']:,} bytes ({item['final_gzip']:,} "
            f"gzipped), {item['gzip_ratio']:.1f}x smaller (gzip) than the float32 teacher; "
            f"test accuracy {item['final_accuracy']:.4f} vs teacher "
            f"{item['reference_accuracy']:.4f}."
        )
    with open(os.path.join(out_dir, "report.md"), encoding="utf-8") as f:
        print("\n" + "".join(line for line in f if line.startswith("|")))
    return records
