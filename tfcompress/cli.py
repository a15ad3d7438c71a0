"""The `tfcompress` command.

Heavy libraries (TensorFlow, Keras, keras-hub) are imported inside each
command, so `tfcompress --help` answers at once.
"""

import argparse
import os
import sys

from tfcompress import __version__

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_MODES = ("float32", "float16", "dynamic", "int8", "int16x8")


class UsageError(Exception):
    """Bad command-line input: reported in one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: error: {message} (see '{self.prog} --help')")


def _progress(message):
    print(f"[tfcompress] {message}", flush=True)


def _cmd_demo(args):
    from tfcompress import demo

    demo.run_demo(out_dir=args.out, name="sst2" if args.text else "digits", quick=args.quick,
                  force=args.force, progress=_progress)
    return EXIT_OK


def _cmd_run(args):
    from tfcompress import pipeline
    from tfcompress.pipeline.recipe import RecipeError

    try:
        recipe = pipeline.load_recipe(args.recipe)
    except RecipeError as e:
        raise UsageError(f"tfcompress run: error: {e}") from None
    pipeline.run(recipe, args.out, force=args.force, progress=_progress)
    return EXIT_OK


def _cmd_tune(args):
    from tfcompress import pipeline
    from tfcompress.pipeline.recipe import RecipeError
    from tfcompress.pipeline.tuning import check_arguments

    try:
        check_arguments(args.max_accuracy_drop, args.trials)
        recipe = pipeline.load_recipe(args.recipe)
    except (ValueError, RecipeError) as e:
        raise UsageError(f"tfcompress tune: error: {e}") from None
    result = pipeline.tune(recipe, args.out, max_accuracy_drop=args.max_accuracy_drop,
                           trials=args.trials, epochs=args.epochs, force=args.force,
                           progress=_progress)
    print(result)
    # A file outside the budget is still written, but the job did not do what was asked.
    return EXIT_OK if result.within_budget else EXIT_FAILED


def _load_model(path):
    if not os.path.exists(path):
        raise UsageError(f"tfcompress export: error: no model at '{path}'.")
    if path.endswith(".keras"):
        import keras

        return keras.saving.load_model(path)
    if path.endswith((".h5", ".hdf5")):
        import tf_keras

        return tf_keras.models.load_model(path)
    raise UsageError(
        f"tfcompress export: error: '{path}' is not a .keras or .h5 model file. Save the model "
        "with model.save('model.keras') (Keras 3) or model.save('model.h5') (tf_keras) first."
    )


def _load_npz(path, option):
    import numpy as np

    if not os.path.isfile(path):
        raise UsageError(f"tfcompress export: error: {option} file '{path}' does not exist.")
    with np.load(path, allow_pickle=False) as data:
        if "x" in data:
            x = data["x"]
        else:
            x = {k[2:]: data[k] for k in data if k.startswith("x_")}
            if not x:
                raise UsageError(
                    f"tfcompress export: error: {option} file '{path}' needs an array 'x' "
                    f"(or 'x_<input name>' per input); it has {sorted(data)}."
                )
        return (x, data["y"]) if "y" in data else x


def _cmd_export(args):
    from tfcompress import export

    if args.int8_io and args.mode not in ("int8", "int16x8"):
        raise UsageError("tfcompress export: error: --int8-io needs --mode int8 or int16x8.")
    if args.mode in ("int8", "int16x8") and not args.calibration:
        raise UsageError(
            f"tfcompress export: error: --mode {args.mode} needs --calibration DATA.npz "
            "(a few hundred training inputs in an array 'x')."
        )
    calibration = _load_npz(args.calibration, "--calibration") if args.calibration else None
    checks = _load_npz(args.verify, "--verify") if args.verify else None
    _progress(f"loading {args.model}")
    model = _load_model(args.model)
    _progress(f"converting to {args.mode}")
    result = export.to_tflite(model, args.output, mode=args.mode,
                              representative_data=calibration, int8_io=args.int8_io,
                              max_calibration_samples=args.max_calibration_samples)
    print(result)
    if checks is not None:
        _progress("verifying against the Keras model")
        print(export.verify(result.path, model, checks))
    if args.c_header:
        print(f"wrote {export.to_c_array(result.path, args.c_header)}")
    return EXIT_OK


def _cmd_inspect(args):
    from tfcompress import export

    print(export.inspect(args.file).summary())
    return EXIT_OK


def _cmd_bench(args):
    from tfcompress import export

    for path in args.files:
        r = export.benchmark(path, num_threads=args.threads, runs=args.runs)
        print(f"{path}: median {r.median_ms:.3f} ms, p90 {r.p90_ms:.3f} ms "
              f"({r.runs} runs, {r.num_threads} thread(s))")
    return EXIT_OK


def build_parser():
    parser = _Parser(
        prog="tfcompress",
        description="Make trained Keras models small and fast for edge devices, and prove "
        "what the .tflite file does.",
    )
    parser.add_argument("--version", action="version", version=f"tfcompress {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    demo = sub.add_parser(
        "demo", help="run the default pipeline on embedded digits: train, prune, QAT, int8",
        description="Run the shipped recipe on scikit-learn's bundled digits (real data, no "
        "download): train a CNN teacher, prune it to 85%% sparsity, fine-tune it "
        "quantization-aware keeping the zeros, export int8 TFLite, verify the file in LiteRT "
        "against Keras, and write OUT/report.md and OUT/report.html with plots.",
    )
    demo.add_argument("--out", default="tfcompress_demo", help="output folder (created)")
    demo.add_argument("--quick", action="store_true", help="at most 2 epochs per stage")
    demo.add_argument("--text", action="store_true",
                      help="the text demo instead: a keras-hub BERT on SST-2 (needs the data, "
                      "see README 'Datasets'), distilled, pruned, int8")
    demo.add_argument("--force", action="store_true", help="rerun finished stages")
    demo.set_defaults(func=_cmd_demo)

    exp = sub.add_parser(
        "export", help="convert a saved .keras / .h5 model to .tflite",
        description="Convert a saved Keras model to TFLite, optionally verify the file "
        "against the model and write a C header for TFLite Micro.",
    )
    exp.add_argument("model", help="a .keras (Keras 3) or .h5 (tf_keras) model file")
    exp.add_argument("-o", "--output", required=True, help="the .tflite file to write")
    exp.add_argument("--mode", choices=_MODES, default="float32", help="export mode")
    exp.add_argument("--calibration", metavar="NPZ",
                     help="calibration inputs (.npz with 'x'); needed by int8 and int16x8")
    exp.add_argument("--max-calibration-samples", type=_positive_int, default=200)
    exp.add_argument("--int8-io", action="store_true", help="integer inputs and outputs")
    exp.add_argument("--verify", metavar="NPZ",
                     help="compare the file with the model on these inputs ('x', 'y')")
    exp.add_argument("--c-header", metavar="H", help="also write a C header for TFLite Micro")
    exp.set_defaults(func=_cmd_export)

    run = sub.add_parser(
        "run", help="run a recipe: stages from a model to verified .tflite files, with report",
        description="Run the stages of a YAML recipe (train, distill, prune, remove_units, "
        "cluster, qat, export) into OUT/NN_stage folders, then write OUT/report.md and "
        "OUT/report.html. A run that was stopped resumes after its last finished stage.",
    )
    run.add_argument("recipe", help="the recipe YAML file")
    run.add_argument("--out", required=True, help="output folder (created)")
    run.add_argument("--force", action="store_true", help="rerun every stage")
    run.set_defaults(func=_cmd_run)

    tune = sub.add_parser(
        "tune", help="search for the smallest int8 file within an accuracy budget",
        description="Train the recipe's base model (its leading train/distill stages), rank "
        "layers by int8 sensitivity, then try sparsity levels, cluster counts, layers kept in "
        "float and PTQ vs QAT, smallest estimated file first, until one keeps the validation "
        "accuracy within --max-accuracy-drop of the base model. Writes OUT/best_int8.tflite, "
        "OUT/tune.json and OUT/tune.md. Exit code 1 when no trial met the budget (the closest "
        "file is still written).",
    )
    tune.add_argument("recipe", help="the recipe YAML file (its compression stages are ignored)")
    tune.add_argument("--out", required=True, help="output folder (created)")
    tune.add_argument("--max-accuracy-drop", type=float, default=0.01,
                      help="largest absolute validation accuracy drop, in [0, 1) "
                      "(default 0.01)")
    tune.add_argument("--trials", type=int, default=12,
                      help="most candidates to train and verify (default 12)")
    tune.add_argument("--epochs", type=_positive_int, default=2,
                      help="fine-tuning epochs per prune / cluster / QAT step (default 2)")
    tune.add_argument("--force", action="store_true", help="rerun the base and every trial")
    tune.set_defaults(func=_cmd_tune)

    ins = sub.add_parser("inspect", help="list the ops and dtypes inside a .tflite file",
                         description="Print the ops of a .tflite file with the dtypes "
                         "they compute in, and its inputs and outputs.")
    ins.add_argument("file")
    ins.set_defaults(func=_cmd_inspect)

    bench = sub.add_parser("bench", help="time .tflite files with LiteRT",
                           description="Median and p90 single-sample latency with LiteRT.")
    bench.add_argument("files", nargs="+")
    bench.add_argument("--threads", type=_positive_int, default=1)
    bench.add_argument("--runs", type=_positive_int, default=100)
    bench.set_defaults(func=_cmd_bench)
    return parser


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def main(argv=None):
    """Run the `tfcompress` command; returns the exit code."""
    # TensorFlow's C++ start-up chatter is not for people running a command.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return EXIT_USAGE
        return args.func(args)
    except UsageError as e:
        print(str(e), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("tfcompress: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        from tfcompress.errors import TFCompressError

        if isinstance(e, (TFCompressError, OSError)):
            print(f"tfcompress: error: {e}", file=sys.stderr)
            return EXIT_FAILED
        raise


if __name__ == "__main__":
    sys.exit(main())
