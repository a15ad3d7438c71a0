"""Distillation on the digits task: teacher vs distilled student vs labels-only student.

Also times one training epoch with the live teacher against one from the
teacher cache (alternating repetitions). Prints a table and updates the
"Distillation" section of BENCHMARKS.md.

Run: python -m benchmarks.distill [--quick]
"""

import os
import statistics
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from benchmarks import _common  # noqa: E402
from benchmarks._common import alternating_times, markdown_table, median_spread, update_section  # noqa: E402,E501

TEACHER = dict(filters=(16, 32), dense_units=64)
STUDENT = dict(filters=(4, 8), dense_units=12)
ALPHA, TEMPERATURE = 0.1, 4.0
EPOCH_REPEATS = 8


def _ce():
    import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _acc(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))


def measure(seeds=(0, 1, 2), epochs=20, teacher_epochs=20, timing_reps=5):
    import keras

    from tfcompress import distill, testing
    from tfcompress.data import load_digits

    d = load_digits()
    teacher = testing.digits_cnn(**TEACHER, seed=0, name="teacher")
    teacher.compile(optimizer=keras.optimizers.Adam(3e-3), loss=_ce())
    teacher.fit(d.x_train, d.y_train, epochs=teacher_epochs, batch_size=32, verbose=0)
    teacher_acc = _acc(teacher, d.x_test, d.y_test)
    tmp = tempfile.mkdtemp()
    cache = distill.cache_teacher_outputs(teacher, d.x_train, os.path.join(tmp, "teacher.npz"))

    labels_only, distilled = [], []
    for seed in seeds:
        plain = testing.digits_cnn(**STUDENT, seed=seed, name="student_labels")
        plain.compile(optimizer=keras.optimizers.Adam(5e-3), loss=_ce())
        plain.fit(d.x_train, d.y_train, epochs=epochs, batch_size=32, verbose=0)
        labels_only.append(_acc(plain, d.x_test, d.y_test))

        student = testing.digits_cnn(**STUDENT, seed=seed, name="student_kd")
        dist = distill.distiller(student, cache, alpha=ALPHA, temperature=TEMPERATURE)
        dist.compile(optimizer=keras.optimizers.Adam(5e-3), loss=_ce())
        dist.fit(
            cache.dataset(d.x_train, d.y_train, batch_size=32, seed=seed), epochs=epochs, verbose=0
        )
        distilled.append(_acc(student, d.x_test, d.y_test))
        print(f"seed {seed}: labels-only {labels_only[-1]:.4f}, distilled {distilled[-1]:.4f}")

    # Per-epoch time: live teacher vs cache (same student size, same batches).
    live = distill.distiller(
        testing.digits_cnn(**STUDENT, seed=9, name="s_live"),
        teacher,
        alpha=ALPHA,
        temperature=TEMPERATURE,
    )
    cached = distill.distiller(
        testing.digits_cnn(**STUDENT, seed=9, name="s_cache"),
        cache,
        alpha=ALPHA,
        temperature=TEMPERATURE,
    )
    for m in (live, cached):
        m.compile(optimizer="adam", loss=_ce())
    import tensorflow as tf

    # One "epoch" = the training set 8 times, so that per-call overhead of fit()
    # (~50 ms here) does not swamp the step time.
    live_ds = tf.data.Dataset.from_tensor_slices((d.x_train, d.y_train)).batch(32).cache()
    cached_ds = cache.dataset(d.x_train, d.y_train, batch_size=32, shuffle=False).cache()
    live_ds, cached_ds = live_ds.repeat(EPOCH_REPEATS), cached_ds.repeat(EPOCH_REPEATS)
    live.fit(live_ds, epochs=1, verbose=0)  # warm-up: tracing
    cached.fit(cached_ds, epochs=1, verbose=0)
    times = alternating_times(
        {
            "live": lambda: live.fit(live_ds, epochs=1, verbose=0),
            "cached": lambda: cached.fit(cached_ds, epochs=1, verbose=0),
        },
        repetitions=timing_reps,
    )
    ratios = [a / b for a, b in zip(times["live"], times["cached"], strict=False)]
    return dict(
        teacher_acc=teacher_acc,
        teacher_params=teacher.count_params(),
        student_params=student.count_params(),
        labels_only=labels_only,
        distilled=distilled,
        times=times,
        ratios=ratios,
        seeds=seeds,
        epochs=epochs,
        teacher_epochs=teacher_epochs,
        n_train=len(d.x_train),
        n_test=len(d.x_test),
    )


def _mean_spread(values):
    return (
        f"{statistics.mean(values):.4f} ± {statistics.pstdev(values):.4f} "
        f"(min {min(values):.4f}, max {max(values):.4f})"
    )


def report(r):
    ratio = r["teacher_params"] / r["student_params"]
    rows = [
        [
            "teacher Conv16-Pool-Conv32-Dense64",
            f"{r['teacher_params']:,}",
            "1.0x",
            f"{r['teacher_acc']:.4f} (1 run)",
            "1.000",
        ],
        [
            "student Conv4-Pool-Conv8-Dense12, labels only",
            f"{r['student_params']:,}",
            f"{ratio:.1f}x",
            _mean_spread(r["labels_only"]),
            f"{statistics.mean(r['labels_only']) / r['teacher_acc']:.3f}",
        ],
        [
            f"same student, distilled (alpha={ALPHA}, T={TEMPERATURE}, cached teacher)",
            f"{r['student_params']:,}",
            f"{ratio:.1f}x",
            _mean_spread(r["distilled"]),
            f"{statistics.mean(r['distilled']) / r['teacher_acc']:.3f}",
        ],
    ]
    table = markdown_table(
        [
            "model",
            "parameters",
            "teacher / model params",
            f"test accuracy, mean ± std over seeds {list(r['seeds'])}",
            "vs teacher",
        ],
        rows,
    )
    gain = statistics.mean(r["distilled"]) - statistics.mean(r["labels_only"])
    timing = markdown_table(
        ["teacher", "seconds per epoch, median (min-max)"],
        [
            ["live (teacher runs every step)", median_spread(r["times"]["live"])],
            ["cached (cache_teacher_outputs)", median_spread(r["times"]["cached"])],
        ],
    )
    verdict = (
        "distillation helped"
        if gain > 0.005
        else "distillation did not help measurably"
        if gain > -0.005
        else "distillation hurt"
    )
    body = (
        f"scikit-learn digits, {r['n_train']} training and {r['n_test']} held-out test "
        f"images. Teacher trained {r['teacher_epochs']} epochs; each student {r['epochs']} "
        f"epochs, batch 32, Adam 5e-3; the distilled student reads the teacher cache.\n\n"
        f"{table}\n\nDistilled minus labels-only mean accuracy: **{gain:+.4f}** ({verdict} on "
        f"this task at this size).\n\nPer-epoch training time, {len(r['ratios'])} alternating "
        f"repetitions (1 epoch = the {r['n_train']} training images x {EPOCH_REPEATS}, "
        f"batch 32):\n\n{timing}\n\nLive / cached epoch time: "
        f"**{median_spread(r['ratios'], '{:.2f}')}x**."
    )
    return body


def measure_sst2(quick=False, seeds=(0, 1, 2)):
    """SST-2: a 2-layer BERT teacher vs a >= 4x smaller student, distilled and labels-only."""
    import keras

    from tfcompress import distill, testing
    from tfcompress.data import encode_for_bert, load_sst2, sst2_tokenizer

    splits = load_sst2(max_train=2000 if quick else 8000, seed=0)
    tokenizer = sst2_tokenizer(splits.x_train, vocabulary_size=2000)
    vocab = tokenizer.vocabulary_size()
    x_train = encode_for_bert(tokenizer, splits.x_train, sequence_length=32)
    x_test = encode_for_bert(tokenizer, splits.x_test, sequence_length=32)
    epochs = 1 if quick else 3

    def bert(seed, **size):
        return testing.tiny_bert_classifier(
            vocabulary_size=vocab, sequence_length=32, num_heads=2, seed=seed, **size
        )

    teacher = bert(0, num_layers=2, hidden_dim=64, intermediate_dim=128)
    teacher.compile(optimizer=keras.optimizers.Adam(1e-3), loss=_ce())
    teacher.fit(x_train, splits.y_train, epochs=2, batch_size=32, verbose=0)
    student_size = dict(num_layers=1, hidden_dim=16, intermediate_dim=32)
    labels_only, distilled = [], []
    for seed in seeds:
        plain = bert(seed + 1, **student_size)
        plain.compile(optimizer=keras.optimizers.Adam(2e-3), loss=_ce())
        plain.fit(x_train, splits.y_train, epochs=epochs, batch_size=32, verbose=0)
        labels_only.append(_acc(plain, x_test, splits.y_test))
        student = bert(seed + 1, **student_size)
        trainer = distill.distiller(student, teacher, alpha=0.3, temperature=2.0)
        trainer.compile(optimizer=keras.optimizers.Adam(2e-3), loss=_ce())
        trainer.fit(x_train, splits.y_train, epochs=epochs, batch_size=32, verbose=0)
        distilled.append(_acc(student, x_test, splits.y_test))
    cache_ratios = _bert_cache_speed(
        distill, teacher, bert, student_size, x_train, splits.y_train, repetitions=2 if quick else 3
    )
    return dict(
        teacher_acc=_acc(teacher, x_test, splits.y_test),
        teacher_params=teacher.count_params(),
        student_params=student.count_params(),
        labels_only=labels_only,
        distilled=distilled,
        n_train=len(splits.x_train),
        n_test=len(splits.x_test),
        epochs=epochs,
        cache_ratios=cache_ratios,
    )


def _bert_cache_speed(distill, teacher, bert, student_size, x, y, repetitions):
    """Live / cached time of one distillation epoch with the BERT teacher (alternating)."""
    import keras

    path = os.path.join(tempfile.mkdtemp(), "bert_teacher.npz")
    cache = distill.cache_teacher_outputs(teacher, x, path)

    def trainer(source):
        d = distill.distiller(bert(1, **student_size), source, alpha=0.3, temperature=2.0)
        d.compile(optimizer=keras.optimizers.Adam(2e-3), loss=_ce())
        return d

    live, cached = trainer(teacher), trainer(cache)
    cached_data = cache.dataset(x, y, batch_size=32)
    epochs = {
        "live": lambda: live.fit(x, y, epochs=1, batch_size=32, verbose=0),
        "cached": lambda: cached.fit(cached_data, epochs=1, verbose=0),
    }
    for run_epoch in epochs.values():
        run_epoch()  # trace once before timing
    times = alternating_times(epochs, repetitions=repetitions)
    return [lv / c for lv, c in zip(times["live"], times["cached"])]


def report_sst2(r):
    def stats(values):
        return f"{np.mean(values):.4f} ± {np.std(values):.4f}"

    ratio = r["teacher_params"] / r["student_params"]
    rows = [
        [
            "teacher (2 layers, hidden 64)",
            f"{r['teacher_params']:,}",
            f"{r['teacher_acc']:.4f}",
            "100%",
        ],
        [
            "student (1 layer, hidden 16), labels only",
            f"{r['student_params']:,}",
            stats(r["labels_only"]),
            f"{np.mean(r['labels_only']) / r['teacher_acc']:.1%}",
        ],
        [
            "same student, distilled (alpha 0.3, T 2)",
            f"{r['student_params']:,}",
            stats(r["distilled"]),
            f"{np.mean(r['distilled']) / r['teacher_acc']:.1%}",
        ],
    ]
    table = markdown_table(
        [
            "model",
            "parameters",
            f"SST-2 dev accuracy (mean ± std, {len(r['distilled'])} seeds)",
            "of teacher",
        ],
        rows,
    )
    gain = np.mean(r["distilled"]) - np.mean(r["labels_only"])
    return (
        f"### SST-2, keras-hub BERT built from config\n\n{r['n_train']:,} training "
        f"sentences, the {r['n_test']} dev sentences as test set, sequence length 32, "
        f"WordPiece vocabulary of 2,000; teacher 2 epochs, students {r['epochs']} "
        f"epoch(s). The student has **{ratio:.1f}x** fewer parameters.\n\n{table}\n\n"
        f"Distilled minus labels-only mean accuracy: **{gain:+.4f}**.\n\nWith this BERT "
        "teacher, one distillation epoch from `cache_teacher_outputs` against the live "
        f"teacher (alternating repetitions): live / cached **"
        f"{median_spread(r['cache_ratios'], '{:.2f}')}x**.\n\nNo pretrained "
        "weights can be downloaded here, so these from-scratch models are far from "
        "published fine-tuned BERT numbers (91-93%)."
    )


def main(argv=None):
    return _common.script_main(run, __doc__, argv)


def run(quick=False, write=True):
    """Measure, print the table, and (with `write`) update BENCHMARKS.md."""
    kwargs = dict(epochs=8, teacher_epochs=10, timing_reps=3) if quick else {}
    body = report(measure(**kwargs)) + "\n\n" + report_sst2(measure_sst2(quick=quick))
    print(body)
    if write:
        update_section("Distillation", body, "benchmarks/distill.py")
    return body


if __name__ == "__main__":
    raise SystemExit(main())
