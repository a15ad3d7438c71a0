"""Session-wide fixtures: one Python process trains each tiny model once."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def digits():
    from tfcompress.data import load_digits

    return load_digits()


def _train_digits(model, k, digits):
    model.compile(
        optimizer=k.optimizers.Adam(3e-3),
        loss=k.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(digits.x_train, digits.y_train, epochs=8, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="session")
def trained_cnn(digits):
    """The Keras 3 digits CNN after a few epochs (~90% held-out accuracy)."""
    import keras

    from tfcompress import testing

    return _train_digits(testing.digits_cnn(), keras, digits)


@pytest.fixture(scope="session")
def trained_tf_keras_cnn(digits):
    """The tf_keras twin of the digits CNN, trained the same way."""
    import tf_keras

    from tfcompress import testing

    return _train_digits(testing.tf_keras_digits_cnn(), tf_keras, digits)


@pytest.fixture(scope="session")
def bert_data():
    """Random token sequences labelled by whether token 7 occurs: learnable in a few steps."""
    from tfcompress import testing

    inputs = testing.random_bert_inputs(256, seed=1)
    labels = (inputs["token_ids"] == 7).any(axis=1) | (inputs["token_ids"] < 20).sum(axis=1) > 2
    return inputs, labels.astype("int32")


@pytest.fixture(scope="session")
def trained_bert(bert_data):
    """A keras-hub BertTextClassifier (1 layer, hidden 16) trained briefly."""
    import keras

    from tfcompress import testing

    model = testing.tiny_bert_classifier()
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    inputs, labels = bert_data
    model.fit(inputs, labels, epochs=3, batch_size=32, verbose=0)
    return model


@pytest.fixture
def no_leftovers(tmp_path):
    """A folder; the test fails if anything but expected files ends up in it."""

    def check(*expected):
        found = sorted(p.name for p in tmp_path.iterdir())
        assert found == sorted(expected), f"unexpected files in {tmp_path}: {found}"

    return tmp_path, check


# The fast lane (`make test-fast`, `-m "not slow"`) must stay under two minutes: tests whose
# measured time would push it over are listed in slow_tests.txt and marked slow here, so
# `make test` still runs them. `make test` runs on two processes (pytest-xdist,
# `--dist loadgroup`): a module's tests stay together so its fixtures are built once, a
# module longer than _SPLIT_S is spread test by test, and the longest work starts first
# so no long module is left for the end. test_times.txt holds the measured seconds of
# each module, and of each test of a module that is spread. Regenerate both files with
# `python .ci/timings.py JUNIT.xml` after a full run.
_HERE = os.path.dirname(__file__)
_SLOW_LIST = os.path.join(_HERE, "slow_tests.txt")
_TIMES = os.path.join(_HERE, "test_times.txt")
_SPLIT_S = 240.0
_UNMEASURED_S = 10.0


def _lines(path):
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    listed = set() if os.environ.get("TFCOMPRESS_IGNORE_SLOW_LIST") else set(_lines(_SLOW_LIST))
    for item in items:
        if item.nodeid in listed:
            item.add_marker(pytest.mark.slow)
    if getattr(config.option, "dist", "no") != "loadgroup":
        return
    seconds = {}
    for line in _lines(_TIMES):
        value, name = line.split(maxsplit=1)
        seconds[name] = float(value)
    weight = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        measured = seconds.get(module, _UNMEASURED_S)
        if measured > _SPLIT_S:
            item.add_marker(pytest.mark.xdist_group(item.nodeid))
            weight[item.nodeid] = seconds.get(item.nodeid, _UNMEASURED_S)
        else:
            item.add_marker(pytest.mark.xdist_group(module))
            weight[item.nodeid] = measured
    items.sort(key=lambda item: -weight[item.nodeid])  # stable: file order kept within
