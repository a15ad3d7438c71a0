"""Property-based checks (issue 15): any input gives a result or a typed error.

Never a traceback of another type, never a half-written file. Example counts are
small to keep the suite fast; hypothesis shrinks any failure to a minimal input.
"""

import os

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tfcompress import cli, pipeline
from tfcompress.errors import CalibrationDataError, InvalidTFLiteFileError
from tfcompress.pipeline import RecipeError

# derandomize: the same examples every run, so the suite never flakes on a new one.
QUICK = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

VALID = {
    "name": "p",
    "seed": 0,
    "data": {"embedded": "digits"},
    "model": {"factory": "tfcompress.testing:digits_cnn", "kwargs": {"filters": [2, 4]}},
    "stages": [
        {"type": "train", "epochs": 1},
        {"type": "prune", "final_sparsity": 0.5, "epochs": 1},
        {"type": "export", "modes": ["int8"]},
    ],
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(tree, prefix=()):
    yield prefix
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _paths(v, prefix + (i,))


PATHS = [p for p in _paths(VALID) if p]


def _replace(tree, path, value):
    import copy

    tree = copy.deepcopy(tree)
    node = tree
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return tree


@QUICK
@given(path=st.sampled_from(PATHS), value=values)
def test_any_mutated_recipe_is_a_recipe_or_a_recipe_error(path, value):
    try:
        recipe = pipeline.load_recipe(_replace(VALID, path, value))
    except RecipeError as e:
        assert str(e)
    else:
        assert recipe.stages


@QUICK
@given(text=st.one_of(st.text(max_size=300), st.builds(lambda v: yaml.safe_dump(v), values)))
def test_any_recipe_file_is_a_recipe_or_a_recipe_error(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        pipeline.load_recipe(path)
    except RecipeError as e:
        assert str(e)


@QUICK
@given(data=st.binary(max_size=200))
def test_any_recipe_bytes_are_one_line_exit_2(tmp_path, capsys, data):
    path = tmp_path / "r.yaml"
    path.write_bytes(data)
    code = cli.main(["run", str(path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0]
    assert not (tmp_path / "o").exists()


# calibration inputs --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dense_model():
    import keras

    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(4), keras.layers.Dense(3)])


arrays = st.builds(
    lambda shape, dtype, fill: np.full(shape, fill).astype(dtype),
    st.lists(st.integers(0, 7), min_size=0, max_size=3).map(tuple),
    st.sampled_from(["float32", "float64", "int32", "uint8", "bool", "U3"]),
    st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.integers(-3, 300)),
)
calibration_inputs = st.one_of(
    arrays,
    st.lists(arrays, max_size=3),
    st.dictionaries(st.text(max_size=4), arrays, max_size=2),
    st.tuples(arrays, arrays),
    st.none(),
    st.text(max_size=5),
)


@QUICK
@given(data=calibration_inputs)
def test_any_calibration_input_is_batches_or_a_calibration_error(dense_model, data):
    from tfcompress import _inputs

    specs = _inputs.input_specs(dense_model)
    try:
        inputs, _ = _inputs.collect(data, specs, what="calibration data", max_samples=50)
    except CalibrationDataError as e:
        assert str(e)
    else:
        assert inputs[0].shape[1:] == (6,) and len(inputs[0]) > 0


@settings(
    max_examples=4,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=calibration_inputs)
def test_int8_export_with_any_calibration_leaves_a_file_or_nothing(dense_model, tmp_path, data):
    from tfcompress import export

    out = tmp_path / "m.tflite"
    if out.exists():
        out.unlink()
    try:
        export.to_tflite(dense_model, str(out), mode="int8", representative_data=data)
    except CalibrationDataError:
        assert not out.exists()
    else:
        assert export.inspect(str(out)).ops
    assert [p for p in os.listdir(tmp_path) if p != "m.tflite"] == []


# mutated .tflite files -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tflite_bytes(dense_model, tmp_path_factory):
    from tfcompress import export

    path = tmp_path_factory.mktemp("prop") / "base.tflite"
    export.to_tflite(dense_model, str(path), mode="float32")
    return path.read_bytes()


mutations = st.lists(
    st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8
)


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(changes=mutations, cut=st.one_of(st.none(), st.floats(0, 1)))
def test_mutated_tflite_is_inspected_or_a_typed_error_and_headers_are_whole(
    tflite_bytes, tmp_path, changes, cut
):
    from tfcompress import export

    data = bytearray(tflite_bytes)
    for where, byte in changes:
        data[8 + int(where * (len(data) - 8))] = byte
    if cut is not None:
        data = data[: int(cut * len(data))]
    path = tmp_path / "m.tflite"
    path.write_bytes(bytes(data))
    header = tmp_path / "m.h"
    if header.exists():
        header.unlink()
    try:
        info = export.inspect(str(path))
        info.summary()
    except InvalidTFLiteFileError as e:
        assert str(e)
    try:
        export.to_c_array(str(path), str(header))
    except InvalidTFLiteFileError:
        assert not header.exists()
    else:
        assert header.read_text().rstrip().endswith("#endif  // TFCOMPRESS_G_M_H_")
    assert sorted(os.listdir(tmp_path)) in (["m.tflite"], ["m.h", "m.tflite"])
