"""Per-op profiles (`benchmark(profile=True)`) and static shapes at export."""

import numpy as np
import pytest

from tfcompress import export
from tfcompress.errors import InvalidTFLiteFileError

SHAPE_OPS = {"SHAPE", "PACK", "REDUCE_PROD", "UNSORTED_SEGMENT_PROD"}


@pytest.fixture(scope="module")
def int8_cnn(trained_cnn, digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("profile") / "cnn_int8.tflite"
    return export.to_tflite(
        trained_cnn,
        path,
        mode="int8",
        representative_data=digits.x_train,
        max_calibration_samples=64,
    )


def test_profile_times_every_op_and_names_xnnpack_ops(int8_cnn):
    result = export.benchmark(int8_cnn.path, runs=10, profile=True)
    prof = result.profile
    info = export.inspect(int8_cnn.path)
    assert [op.name for op in prof.ops] == [op.name for op in info.ops]
    assert all(op.ms is not None and op.ms >= 0 for op in prof.ops)
    convs = [op for op in prof.ops if op.name == "CONV_2D"]
    assert convs and all(op.xnnpack and op.dtype == "int8" for op in convs)
    assert prof.latency_ms > 0 and prof.op_ms > 0
    rows = {(name, dtype): (n, x) for name, dtype, n, _, x in prof.by_op_type()}
    assert rows[("CONV_2D", "int8")] == (2, 2)
    assert "CONV_2D" in prof.summary() and "XNNPACK" in prof.summary()


def test_benchmark_without_profile_has_none(int8_cnn):
    assert export.benchmark(int8_cnn.path, runs=3).profile is None


def test_profile_of_a_file_litert_cannot_run(tmp_path):
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    code.customCode, code.version = "NoSuchKernel", 1
    tensors = []
    for name in ("x", "y"):
        t = schema.TensorT()
        t.shape, t.type, t.buffer, t.name = [1, 4], schema.TensorType.FLOAT32, 0, name
        tensors.append(t)
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0], [1]
    sub = schema.SubGraphT()
    sub.tensors, sub.inputs, sub.outputs, sub.operators = tensors, [0], [1], [op]
    model = schema.ModelT()
    model.version, model.operatorCodes, model.subgraphs = 3, [code], [sub]
    model.buffers = [schema.BufferT()]
    path = tmp_path / "custom.tflite"
    path.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    with pytest.raises(InvalidTFLiteFileError, match="custom.tflite") as info:
        export.benchmark(path, profile=True)
    assert "\n" not in str(info.value)


def test_cli_bench_profile(int8_cnn, capsys):
    from tfcompress import cli

    assert cli.main(["bench", "--profile", "--runs", "5", "--top", "3", int8_cnn.path]) == 0
    out = capsys.readouterr().out
    assert "XNNPACK" in out and "CONV_2D" in out


def test_static_batch_drops_nothing_and_matches_keras(trained_cnn, digits, tmp_path):
    result = export.to_tflite(
        trained_cnn,
        tmp_path / "b1.tflite",
        mode="int8",
        representative_data=digits.x_train,
        batch_size=1,
        max_calibration_samples=64,
    )
    assert result.input_shapes == {trained_cnn.inputs[0].name: (1, 8, 8, 1)}
    info = export.inspect(result.path)
    assert info.inputs[0].shape == (1, 8, 8, 1)
    check = export.verify(result.path, trained_cnn, (digits.x_test[:100], digits.y_test[:100]))
    assert check.top1_agreement >= 0.95


def test_static_sequence_removes_shape_ops_on_bert(trained_bert, bert_data, tmp_path):
    dynamic = export.inspect(export.to_tflite(trained_bert, tmp_path / "d.tflite").path)
    result = export.to_tflite(trained_bert, tmp_path / "s.tflite", batch_size=1, sequence_length=16)
    static = export.inspect(result.path)
    assert SHAPE_OPS & set(dynamic.op_histogram)
    assert not SHAPE_OPS & set(static.op_histogram)
    assert {t.name: t.shape for t in static.inputs} == {
        "token_ids": (1, 16),
        "segment_ids": (1, 16),
        "padding_mask": (1, 16),
    }
    from tfcompress_edge.runner import TFLiteRunner

    inputs, _ = bert_data
    sample = {k: v[:8] for k, v in inputs.items()}
    want = np.asarray(trained_bert.predict(sample, verbose=0))
    got = TFLiteRunner(result.path).predict(sample)
    np.testing.assert_allclose(got, want, atol=1e-3 * max(1.0, float(np.abs(want).max())))


def test_sequence_longer_than_the_position_embedding(trained_bert, tmp_path):
    with pytest.raises(ValueError, match=r"'token_ids'.*position embedding.*only 16 positions"):
        export.to_tflite(trained_bert, tmp_path / "x.tflite", sequence_length=32)
    assert not (tmp_path / "x.tflite").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"input_shape": {"pixels": (1, 8, 8, 1)}}, "input_shape names an input 'pixels'"),
        ({"input_shape": (1, 8, 8)}, "must have 4 positive sizes"),
        ({"input_shape": (1, 9, 8, 1)}, "fixed size 8 on axis 1"),
        ({"sequence_length": 4}, "fixed size 8 on axis 1"),
    ],
)
def test_bad_static_shapes(trained_cnn, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        export.to_tflite(trained_cnn, tmp_path / "x.tflite", **kwargs)
