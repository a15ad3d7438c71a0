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

# The converter's modes, for --help without importing TensorFlow; every mode registered
# in tfcompress.export (the low-bit ones of litert-quantizer too) is accepted.
_MODES = ("float32", "float16", "dynamic", "int8", "int16x8")
_CALIBRATED = ("int8", "int16x8")

_TRUST_HELP = (
    "allow code named by the input files to run: recipe factories other than "
    "tfcompress's model builders, .h5 models (tf_keras has no safe mode), Lambda layers in .keras "
    "files. Only for files you trust (see docs/safety.md)"
)


class UsageError(Exception):
    """Bad command-line input: reported in one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: error: {message} (see '{self.prog} --help')")


def _progress(message):
    print(f"[tfcompress] {message}", flush=True)


def _cmd_demo(args):
    from tfcompress import demo

    demo.run_demo(
        out_dir=args.out,
        name="sst2" if args.text else "digits",
        quick=args.quick,
        force=args.force,
        progress=_progress,
    )
    return EXIT_OK


def _cmd_run(args):
    from tfcompress import pipeline
    from tfcompress.pipeline.recipe import RecipeError

    try:
        recipe = pipeline.load_recipe(args.recipe)
    except RecipeError as e:
        raise UsageError(f"tfcompress run: error: {e}") from None
    pipeline.run(recipe, args.out, force=args.force, progress=_progress, trust_code=args.trust_code)
    return EXIT_OK


def _bit_widths(text):
    try:
        widths = tuple(int(part) for part in text.split(","))
    except ValueError:
        widths = None
    if not widths or any(w not in (8, 4, 2) for w in widths):
        raise argparse.ArgumentTypeError(f"a comma-separated subset of 8,4,2. Received: {text!r}")
    return widths


def _cmd_tune(args):
    from tfcompress import pipeline
    from tfcompress.pipeline.recipe import RecipeError
    from tfcompress.pipeline.tuning import check_arguments

    try:
        check_arguments(args.max_accuracy_drop, args.trials)
        recipe = pipeline.load_recipe(args.recipe)
    except (ValueError, RecipeError) as e:
        raise UsageError(f"tfcompress tune: error: {e}") from None
    from tfcompress.pipeline.data import check_recipe_code, trusting

    with trusting(args.trust_code):
        check_recipe_code(recipe)
        result = pipeline.tune(
            recipe,
            args.out,
            max_accuracy_drop=args.max_accuracy_drop,
            trials=args.trials,
            epochs=args.epochs,
            force=args.force,
            progress=_progress,
            bit_widths=args.bit_widths,
        )
    print(result)
    # A file outside the budget is still written, but the job did not do what was asked.
    return EXIT_OK if result.within_budget else EXIT_FAILED


def _check_model_path(path, trust_code):
    """Everything about the model file that can be checked without TensorFlow."""
    if not os.path.exists(path):
        raise UsageError(f"tfcompress export: error: no model at '{path}'.")
    if not path.endswith((".keras", ".h5", ".hdf5")):
        raise UsageError(
            f"tfcompress export: error: '{path}' is not a .keras or .h5 model file. Save the "
            "model with model.save('model.keras') (Keras 3) or model.save('model.h5') "
            "(tf_keras) first."
        )
    from tfcompress.pipeline.data import check_model_file

    check_model_file(path, trust_code)


def _load_model(path, trust_code=False):
    # The pipeline's loader registers tfcompress's layers (a 03_qat/model.keras holds
    # fake-quant layers), loads .keras in Keras's safe mode, and .h5 only when trusted.
    from tfcompress.pipeline.data import load_model_file

    return load_model_file(path, trust_code)


def _same_file(a, b):
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def check_distinct_paths(command, inputs, outputs):
    """Refuse an output path that is an input or another output, before anything is written.

    Args:
        command: the command, for the message.
        inputs: `{option: path}` read by the command (None values ignored).
        outputs: `{option: path}` written by the command (None values ignored).
    """
    outputs = [(o, p) for o, p in outputs.items() if p]
    inputs = [(o, p) for o, p in inputs.items() if p]
    for i, (option, path) in enumerate(outputs):
        for other, other_path in inputs + outputs[:i]:
            if _same_file(path, other_path):
                kind = "read" if (other, other_path) in inputs else "written"
                raise UsageError(
                    f"tfcompress {command}: error: {option} '{path}' is the same file as "
                    f"{other} '{other_path}', which is also {kind}; writing it would destroy "
                    "it. Choose another path."
                )


def _load_npz(path, option):
    import zipfile

    import numpy as np

    if not os.path.isfile(path):
        raise UsageError(f"tfcompress export: error: {option} file '{path}' does not exist.")
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single array, not named arrays")
        with data:
            if "x" in data:
                x = data["x"]
            else:
                x = {k[2:]: data[k] for k in data if k.startswith("x_")}
                if not x:
                    raise UsageError(
                        f"tfcompress export: error: {option} file '{path}' needs an array 'x' "
                        f"(or 'x_<input name>' per input); it has {sorted(data)}."
                    )
            y = data["y"] if "y" in data else None
    except UsageError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(
            f"tfcompress export: error: {option} file '{path}' is not an .npz archive of "
            f"arrays ({reason}). Write it with numpy.savez(path, x=...)."
        ) from None
    arrays = dict(x.items() if isinstance(x, dict) else [("x", x)])
    if y is not None:
        arrays["y"] = y
    scalars = sorted(k for k, v in arrays.items() if np.ndim(v) == 0)
    if scalars:
        raise UsageError(
            f"tfcompress export: error: {option} file '{path}' holds single values, not one "
            f"row per sample, in {scalars}. Write it with numpy.savez(path, x=array_of_samples)."
        )
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1 or 0 in lengths.values():
        raise UsageError(
            f"tfcompress export: error: {option} file '{path}' needs the same, non-zero "
            f"number of rows in every array. Received: {lengths}"
        )
    return (x, y) if y is not None else x


def _quantization_aware(model):
    from tfcompress.quantize import is_quantization_aware

    return bool(is_quantization_aware(model))


def _cmd_export(args):
    from tfcompress import export

    if args.mode not in export.available_modes():
        raise UsageError(
            f"tfcompress export: error: argument --mode: invalid choice: {args.mode!r} (choose "
            f"from {', '.join(export.available_modes())})"
        )
    if args.int8_io and args.mode not in _CALIBRATED:
        raise UsageError("tfcompress export: error: --int8-io needs --mode int8 or int16x8.")
    check_distinct_paths(
        "export",
        {"the model": args.model, "--calibration": args.calibration, "--verify": args.verify},
        {"-o/--output": args.output, "--c-header": args.c_header},
    )
    from tfcompress import _io

    # Every output is checked before the (minutes-long) conversion, not after it.
    _io.check_output_path(args.output, what="TFLite file")
    _io.refuse_overwriting(os.path.abspath(args.output), "TFLite file", allow=(_io.TFLITE_KIND,))
    if args.c_header:
        _io.check_output_path(args.c_header, what="C header")
        _io.refuse_overwriting(os.path.abspath(args.c_header), "C header")
    _check_model_path(args.model, args.trust_code)
    calibration = _load_npz(args.calibration, "--calibration") if args.calibration else None
    checks = _load_npz(args.verify, "--verify") if args.verify else None
    _io.remove_stale_temp_dirs()
    _progress(f"loading {args.model}")
    model = _load_model(args.model, args.trust_code)
    if args.mode in _CALIBRATED and calibration is None and not _quantization_aware(model):
        # A QAT model carries its ranges; any other model needs data to measure them.
        raise UsageError(
            f"tfcompress export: error: --mode {args.mode} needs --calibration DATA.npz "
            "(a few hundred training inputs in an array 'x'), unless the model was trained "
            "with quantization-aware training."
        )
    _progress(f"converting to {args.mode}")
    result = export.to_tflite(
        model,
        args.output,
        mode=args.mode,
        representative_data=calibration,
        int8_io=args.int8_io,
        max_calibration_samples=args.max_calibration_samples,
    )
    print(result)
    if checks is not None:
        _progress("verifying against the Keras model")
        try:
            print(export.verify(result.path, model, checks))
        except ValueError as e:  # data that does not fit the file is the caller's input
            raise UsageError(f"tfcompress export: error: --verify: {e}") from None
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
        r = export.benchmark(
            path,
            num_threads=args.threads,
            runs=args.runs,
            profile=args.profile,
            sequence_length=args.sequence_length,
        )
        print(
            f"{path}: median {r.median_ms:.3f} ms, p90 {r.p90_ms:.3f} ms "
            f"({r.runs} runs, {r.num_threads} thread(s))"
        )
        if r.profile is not None:
            print(r.profile.summary(top=args.top))
    return EXIT_OK


def build_parser():
    parser = _Parser(
        prog="tfcompress",
        description="Make trained Keras models small and fast for edge devices, and prove "
        "what the .tflite file does.",
    )
    parser.add_argument("--version", action="version", version=f"tfcompress {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="print the full traceback of an unexpected error"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    demo = sub.add_parser(
        "demo",
        help="run the default pipeline on embedded digits: train, prune, QAT, int8",
        description="Run the shipped recipe on scikit-learn's bundled digits (real data, no "
        "download): train a CNN teacher, prune it to 85%% sparsity, fine-tune it "
        "quantization-aware keeping the zeros, export int8 TFLite, verify the file in LiteRT "
        "against Keras, and write OUT/report.md and OUT/report.html with plots.",
    )
    demo.add_argument("--out", default="tfcompress_demo", help="output folder (created)")
    demo.add_argument("--quick", action="store_true", help="at most 2 epochs per stage")
    demo.add_argument(
        "--text",
        action="store_true",
        help="the text demo instead: a keras-hub BERT on SST-2 (needs the data, "
        "see README 'Datasets'), distilled, pruned, int8",
    )
    demo.add_argument("--force", action="store_true", help="rerun finished stages")
    demo.set_defaults(func=_cmd_demo)

    exp = sub.add_parser(
        "export",
        help="convert a saved .keras / .h5 model to .tflite",
        description="Convert a saved Keras model to TFLite, optionally verify the file "
        "against the model and write a C header for TFLite Micro.",
    )
    exp.add_argument("model", help="a .keras (Keras 3) or .h5 (tf_keras) model file")
    exp.add_argument("-o", "--output", required=True, help="the .tflite file to write")
    exp.add_argument(
        "--mode",
        default="float32",
        help=f"export mode: {', '.join(_MODES)}, or any registered mode (int4, int4_block32, "
        "int2, int8_weight_only, static_int8, ...: see `tfcompress.export.available_modes()`)",
    )
    exp.add_argument(
        "--calibration",
        metavar="NPZ",
        help="calibration inputs (.npz with 'x'); needed by int8 and int16x8",
    )
    exp.add_argument("--max-calibration-samples", type=_positive_int, default=200)
    exp.add_argument("--int8-io", action="store_true", help="integer inputs and outputs")
    exp.add_argument(
        "--verify", metavar="NPZ", help="compare the file with the model on these inputs ('x', 'y')"
    )
    exp.add_argument("--c-header", metavar="H", help="also write a C header for TFLite Micro")
    exp.add_argument("--trust-code", action="store_true", help=_TRUST_HELP)
    exp.set_defaults(func=_cmd_export)

    run = sub.add_parser(
        "run",
        help="run a recipe: stages from a model to verified .tflite files, with report",
        description="Run the stages of a YAML recipe (train, distill, prune, remove_units, "
        "cluster, qat, export) into OUT/NN_stage folders, then write OUT/report.md and "
        "OUT/report.html. A run that was stopped resumes after its last finished stage.",
    )
    run.add_argument("recipe", help="the recipe YAML file")
    run.add_argument("--out", required=True, help="output folder (created)")
    run.add_argument("--force", action="store_true", help="rerun every stage")
    run.add_argument("--trust-code", action="store_true", help=_TRUST_HELP)
    run.set_defaults(func=_cmd_run)

    tune = sub.add_parser(
        "tune",
        help="search for the smallest int8 file within an accuracy budget",
        description="Train the recipe's base model (its leading train/distill stages), rank "
        "layers by int8 sensitivity, then try sparsity levels, cluster counts, layers kept in "
        "float and PTQ vs QAT, smallest estimated file first, until one keeps the validation "
        "accuracy within --max-accuracy-drop of the base model. Writes OUT/best_int8.tflite, "
        "OUT/tune.json and OUT/tune.md. Exit code 1 when no trial met the budget (the closest "
        "file is still written).",
    )
    tune.add_argument("recipe", help="the recipe YAML file (its compression stages are ignored)")
    tune.add_argument("--out", required=True, help="output folder (created)")
    tune.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=0.01,
        help="largest absolute validation accuracy drop, in [0, 1) (default 0.01)",
    )
    tune.add_argument(
        "--trials", type=int, default=12, help="most candidates to train and verify (default 12)"
    )
    tune.add_argument(
        "--epochs",
        type=_positive_int,
        default=2,
        help="fine-tuning epochs per prune / cluster / QAT step (default 2)",
    )
    tune.add_argument(
        "--bit-widths",
        type=_bit_widths,
        default=(8,),
        help="weight widths to search, e.g. 8,4,2: 4 and 2 write real int4/int2 "
        "weights with per-layer widths by measured sensitivity (default 8)",
    )
    tune.add_argument("--force", action="store_true", help="rerun the base and every trial")
    tune.add_argument("--trust-code", action="store_true", help=_TRUST_HELP)
    tune.set_defaults(func=_cmd_tune)

    ins = sub.add_parser(
        "inspect",
        help="list the ops and dtypes inside a .tflite file",
        description="Print the ops of a .tflite file with the dtypes "
        "they compute in, and its inputs and outputs.",
    )
    ins.add_argument("file")
    ins.set_defaults(func=_cmd_inspect)

    bench = sub.add_parser(
        "bench",
        help="time .tflite files with LiteRT",
        description="Median and p90 single-sample latency with LiteRT.",
    )
    bench.add_argument("files", nargs="+")
    bench.add_argument("--threads", type=_positive_int, default=1)
    bench.add_argument("--runs", type=_positive_int, default=100)
    bench.add_argument(
        "--profile",
        action="store_true",
        help="time each op on its own and show which ops XNNPACK runs",
    )
    bench.add_argument(
        "--top",
        type=_positive_int,
        default=20,
        help="op types shown by --profile (most time first)",
    )
    bench.add_argument(
        "--sequence-length",
        type=_positive_int,
        default=16,
        help="size of dynamic (-1) non-batch axes in the random inputs",
    )
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


def _one_line(text):
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _bad_input(e):
    """Errors about what the user passed (exit 2), as opposed to a run that failed (exit 1)."""
    from tfcompress_edge.runner import InvalidModelFileError as EdgeFileError

    from tfcompress import errors
    from tfcompress.pipeline.recipe import RecipeError

    return isinstance(
        e,
        (
            RecipeError,
            errors.InvalidModelFileError,
            errors.UntrustedCodeError,
            errors.InvalidTFLiteFileError,
            errors.CalibrationDataError,
            EdgeFileError,
            FileNotFoundError,
            FileExistsError,
            IsADirectoryError,
            NotADirectoryError,
        ),
    )


def main(argv=None):
    """Run the `tfcompress` command; returns the exit code.

    Exit codes: 0 done, 1 the run failed, 2 bad input (one line on stderr),
    130 interrupted. A traceback is printed only with `--debug`.
    """
    # TensorFlow's C++ start-up chatter is not for people running a command.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug is accepted anywhere on the line, before or after the command.
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return EXIT_USAGE
        return args.func(args)
    except UsageError as e:
        print(_one_line(e), file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as e:  # --help and --version: argparse has printed them
        return e.code if isinstance(e.code, int) else EXIT_OK
    except KeyboardInterrupt:
        print("tfcompress: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        from tfcompress.errors import TFCompressError

        if debug:
            import traceback

            traceback.print_exc()
        if _bad_input(e):
            print(f"tfcompress: error: {_one_line(e)}", file=sys.stderr)
            return EXIT_USAGE
        if isinstance(e, (TFCompressError, OSError)):
            print(f"tfcompress: error: {_one_line(e)}", file=sys.stderr)
        else:
            hint = "" if debug else " (rerun with --debug for the traceback)"
            print(
                f"tfcompress: error: {type(e).__name__}: {_one_line(e)[:500]}{hint}",
                file=sys.stderr,
            )
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
