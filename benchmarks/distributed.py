"""Step time under MirroredStrategy on two logical CPUs: plain fit() vs pruning vs QAT.

Run: `python -m benchmarks.distributed [--quick]`. Two logical CPU devices must
be configured before TensorFlow starts, so `run()` measures in a fresh
subprocess (`python -m benchmarks.distributed --measure`), then prints a table
and rewrites the "Distributed training" section of BENCHMARKS.md.

What it reports: per-step time of plain fit(), of a pruned model (our
wrappers + UpdatePruningStep) and of a QAT model (our fake-quant layers), each
on one device and under `MirroredStrategy(["/cpu:0", "/cpu:1"])` at the same
global batch; and the ratio that matters, the wrappers' overhead over plain
fit() under MirroredStrategy divided by the same overhead on one device. The two
logical devices share this machine's cores, so MirroredStrategy vs one device
is not a scaling figure.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ARCH = {"filters": (16, 32), "dense_units": 64}
GLOBAL_BATCH = 64
KINDS = ("plain", "pruned", "QAT")
STRATEGIES = ("one device", "MirroredStrategy")


def _measure(repetitions):
    """Runs in the subprocess: the logical devices first, then the timings."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras

    from benchmarks import _common
    from tfcompress import prune, quantize, testing, train
    from tfcompress.data import load_digits

    data = load_digits()
    dataset = (
        tf.data.Dataset.from_tensor_slices((data.x_train, data.y_train))
        .batch(GLOBAL_BATCH, drop_remainder=True)
        .cache()
    )
    steps = len(data.x_train) // GLOBAL_BATCH
    strategies = {
        "one device": tf.distribute.OneDeviceStrategy("/cpu:0"),
        "MirroredStrategy": train.strategy(devices=["/cpu:0", "/cpu:1"], log=False),
    }

    def build(kind, strategy):
        with strategy.scope():
            model = testing.digits_cnn(**ARCH)
            callbacks = []
            if kind == "pruned":
                model = prune.prune_low_magnitude(
                    model, prune.ConstantSparsity(0.8, 0, frequency=10)
                )
                callbacks = [prune.UpdatePruningStep()]
            elif kind == "QAT":
                model = quantize.quantize_model(model)
            model.compile(
                keras.optimizers.Adam(1e-3),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"],
            )
        return model, callbacks

    runs = {(k, s): build(k, strategies[s]) for s in STRATEGIES for k in KINDS}
    # Lower quartile of the step times of one epoch, per repetition; the six runs
    # alternate, and the first round (tracing) is not counted.
    quartiles = {f"{k}|{s}": [] for k, s in runs}
    for repetition in range(repetitions + 1):
        for (kind, name), (model, callbacks) in runs.items():
            timer = _common.step_timer()
            model.fit(dataset, epochs=1, verbose=0, callbacks=callbacks + [timer])
            if repetition:
                quartiles[f"{kind}|{name}"].append(statistics.quantiles(timer.times[1:], n=4)[0])
    return {"steps": steps, "quartiles": quartiles, "replicas": 2}


def run(quick=False, write=True):
    from benchmarks import _common

    repetitions = 3 if quick else 9
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [_common.ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]
        ),
    )
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.distributed", "--measure", str(repetitions)],
        cwd=_common.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the measuring subprocess failed:\n{done.stderr[-3000:]}")
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    q = measured["quartiles"]

    def times(kind, strategy):
        return q[f"{kind}|{strategy}"]

    def ratios(a, b):
        return [x / y for x, y in zip(a, b, strict=True)]

    rows = []
    overhead = {}
    for kind in KINDS:
        one, mirrored = times(kind, "one device"), times(kind, "MirroredStrategy")
        over_one = ratios(one, times("plain", "one device"))
        over_mirrored = ratios(mirrored, times("plain", "MirroredStrategy"))
        overhead[kind] = ratios(over_mirrored, over_one)
        rows.append(
            [
                kind,
                _common.median_spread([t * 1000 for t in one], "{:.2f}"),
                _common.median_spread([t * 1000 for t in mirrored], "{:.2f}"),
                _common.median_spread(ratios(mirrored, one), "{:.2f}"),
                _common.median_spread(over_one, "{:.2f}"),
                _common.median_spread(over_mirrored, "{:.2f}"),
                "" if kind == "plain" else f"**{statistics.median(overhead[kind]):.2f}**",
            ]
        )
    table = _common.markdown_table(
        [
            "model",
            "one device ms/step",
            "MirroredStrategy ms/step",
            "Mirrored / one device",
            "/ plain, one device",
            "/ plain, Mirrored",
            "wrapper overhead, Mirrored / one device",
        ],
        rows,
    )
    body = (
        f"Digits CNN (Conv16-Pool-Conv32-Dense64-Dense10), global batch {GLOBAL_BATCH} "
        f'({measured["steps"]} steps per epoch), Adam. `MirroredStrategy(["/cpu:0", '
        '"/cpu:1"])` over two logical devices that share this machine\'s cores, against '
        '`OneDeviceStrategy("/cpu:0")`. pruned: `prune_low_magnitude(ConstantSparsity(0.8, '
        "frequency=10))` + `UpdatePruningStep`; QAT: `quantize_model`. Step time: lower "
        "quartile of one epoch's step times inside fit(), "
        f"{repetitions} alternating repetitions of the six runs, median (min-max). The last "
        "column is the ratio this section is for: how much more (>1) or less our wrappers "
        "cost relative to plain fit() under MirroredStrategy than on one device. "
        "MirroredStrategy / one device is not a scaling figure here (same cores)."
        f"\n\n{table}" + ("\n\n(quick mode)" if quick else "")
    )
    print(body)
    if write:
        _common.update_section("Distributed training", body, "benchmarks/distributed.py")
    return {
        "body": body,
        "overhead": {k: statistics.median(v) for k, v in overhead.items()},
        "measured": measured,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    parser.add_argument("--measure", type=int, metavar="REPETITIONS", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure is not None:  # the subprocess: print the timings as one JSON line
        print(json.dumps(_measure(args.measure)))
        return 0
    run(quick=args.quick, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
