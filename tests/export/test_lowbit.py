"""Real int4/int2 weights in the .tflite file (litert-quantizer), and QAT on its exact grid."""

import gzip

import keras
import numpy as np
import pytest
from tfcompress_edge.runner import TFLiteRunner

from tfcompress import export, quantize
from tfcompress.errors import CalibrationDataError
from tfcompress.export import lowbit
from tfcompress.quantize import QuantizeConfig


def _flat(x):
    return x.reshape(len(x), -1).astype("float32")


def _mlp(widths=(64, 64), seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((64,), name="pixels")
    h = inp
    for i, w in enumerate(widths):
        h = keras.layers.Dense(w, activation="relu", name=f"fc{i}")(h)
    return keras.Model(inp, keras.layers.Dense(10, name="logits")(h), name="mlp")


def _compile(model, lr=3e-3):
    model.compile(
        keras.optimizers.Adam(lr), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return model


@pytest.fixture(scope="module")
def mlp(digits):
    model = _compile(_mlp())
    model.fit(_flat(digits.x_train), digits.y_train, epochs=6, batch_size=32, verbose=0)
    return model


def _formats(path):
    return {
        w.name.split("/")[-2].removesuffix("_1").removeprefix("quant_"): (w.dtype, w.block_size)
        for w in export.inspect(path).weights
    }


def _numpy_forward(model, path, x):
    """The MLP computed in numpy with the weights read back from the file."""
    weights = {
        w.name.split("/")[-2].removesuffix("_1"): w for w in export.read_weights(path).values()
    }
    for layer in model.layers[1:]:
        x = x @ weights[layer.name].dequantized().T + layer.bias.numpy()
        x = np.maximum(x, 0) if layer.name != "logits" else x
    return x


@pytest.mark.parametrize(
    "mode,want",
    [
        ("int4", ("int4", 0)),
        ("int4_block32", ("int4", 32)),
        ("int2", ("int2", 0)),
        ("int8_weight_only", ("int8", 0)),
    ],
)
def test_modes_write_packed_weights(mlp, digits, tmp_path, mode, want):
    float_file = export.to_tflite(mlp, tmp_path / "f32.tflite")
    result = export.to_tflite(mlp, tmp_path / f"{mode}.tflite", mode=mode)
    assert mode in export.available_modes()
    assert isinstance(result, export.LowBitExportResult) and result.fallbacks == []
    assert set(_formats(result.path).values()) == {want}  # every Dense, as asked
    assert result.bytes < float_file.bytes * (0.3 if want[0] != "int8" else 0.4)
    ops = export.inspect(result.path).op_histogram
    assert ops["FULLY_CONNECTED"] == 3 and "DEQUANTIZE" not in ops or "weight_only" in mode
    x = _flat(digits.x_test)
    in_file = TFLiteRunner(result.path).predict(x).argmax(1)
    assert np.mean(in_file == _numpy_forward(mlp, result.path, x).argmax(1)) >= 0.97
    if want[0] != "int2":  # ternary weights without QAT lose accuracy; the file is right
        assert export.verify(result.path, mlp, x).top1_agreement >= 0.97


def test_mixed_precision_by_name_and_pattern(mlp, tmp_path):
    result = export.to_tflite(mlp, tmp_path / "mixed.tflite", mode="int4_block32")
    mixed = lowbit.to_lowbit_tflite(
        mlp,
        tmp_path / "m.tflite",
        mode="int4_block32",
        layers={"fc*": "int2", "fc1": "float", "logits": "int8"},
    )
    assert _formats(mixed.path) == {"fc0": ("int2", 0), "logits": ("int8", 0)}  # fc1 float
    got = {c.layer: c.got for c in mixed.layers}
    assert got == {"fc0": "int2", "fc1": "float", "logits": "int8"}
    assert _formats(result.path)["fc1"] == ("int4", 32)


def test_fallbacks_are_named(trained_cnn, tmp_path):
    # The digits CNN: Conv2D (no blockwise kernel) and a Dense whose input the block divides.
    result = export.to_tflite(trained_cnn, tmp_path / "cnn.tflite", mode="int4_block64")
    by_layer = {c.layer: c for c in result.layers}
    assert by_layer["conv0"].got == "int4" and "no blockwise kernel" in by_layer["conv0"].reason
    assert by_layer["logits"].got == "int4"  # 32 inputs: not a multiple of 64
    assert "not a multiple of the block size 64" in by_layer["logits"].reason
    assert "conv0 (CONV_2D): asked int4_block64, got int4" in str(result)
    formats = _formats(result.path)
    assert formats["conv0"] == ("int4", 0)


def test_depthwise_falls_back_to_int8(tmp_path):
    inp = keras.Input((8, 8, 4))
    x = keras.layers.DepthwiseConv2D(3, name="dw")(inp)
    out = keras.layers.Dense(3, name="head")(keras.layers.Flatten()(x))
    model = keras.Model(inp, out)
    result = export.to_tflite(model, tmp_path / "dw.tflite", mode="int4")
    (fallback,) = result.fallbacks
    assert (fallback.layer, fallback.op, fallback.got) == ("dw", "DEPTHWISE_CONV_2D", "int8")
    assert "no dynamic 4-bit DEPTHWISE_CONV_2D" in fallback.reason
    weight = export.read_weights(result.path)[fallback.tensor]  # channels on axis 3
    kernel = model.get_layer("dw").kernel.numpy().reshape(1, 3, 3, 4)
    assert weight.dtype == "int8" and weight.axis == 3
    np.testing.assert_allclose(weight.dequantized(), kernel, atol=np.abs(kernel).max() / 100)


def test_bad_input(mlp, tmp_path):
    with pytest.raises(ValueError, match=r"Valid widths: 8, 4 and 2.*Received: layers\['fc0'\]"):
        lowbit.to_lowbit_tflite(mlp, tmp_path / "a.tflite", mode="int4", layers={"fc0": "int3"})
    with pytest.raises(ValueError, match="Valid block sizes: 32, 64 and 128"):
        lowbit.to_lowbit_tflite(mlp, tmp_path / "a.tflite", layers={"fc0": "int4_block48"})
    with pytest.raises(ValueError, match=r"'encoder\*', which matches no layer of model 'mlp'"):
        lowbit.to_lowbit_tflite(mlp, tmp_path / "a.tflite", layers={"encoder*": "int4"})
    with pytest.raises(ValueError, match="Unknown export mode 'int3'"):
        export.to_tflite(mlp, tmp_path / "a.tflite", mode="int3")
    with pytest.raises(CalibrationDataError, match="static_int8"):
        export.to_tflite(mlp, tmp_path / "a.tflite", mode="static_int8")
    assert not list(tmp_path.iterdir())


def test_static_int8_recipe(mlp, digits, tmp_path):
    x = _flat(digits.x_train[:64])
    result = export.to_tflite(
        mlp, tmp_path / "s8.tflite", mode="static_int8", representative_data=x
    )
    info = export.inspect(result.path)
    assert info.compute_dtypes()["FULLY_CONNECTED"] == {"int8"}
    assert export.verify(result.path, mlp, _flat(digits.x_test)).top1_agreement >= 0.95


@pytest.fixture(scope="module", params=["int4", "int4_block32"])
def qat(request, mlp, digits):
    x = _flat(digits.x_train)
    model = quantize.quantize_model(
        mlp, QuantizeConfig(weight_scheme=request.param), representative_data=x[:256]
    )
    _compile(model, lr=1e-3).fit(x, digits.y_train, epochs=2, batch_size=32, verbose=0)
    return request.param, model


def test_qat_weights_reach_the_file_bit_for_bit(qat, digits, tmp_path):
    scheme, model = qat
    result = export.to_tflite(model, tmp_path / "qat.tflite", mode=scheme)
    assert result.fallbacks == [] and result.quantization_aware
    weights = export.read_weights(result.path)
    assert len(result.layers) == 3
    for choice in result.layers:
        wrapper = model.get_layer("quant_" + choice.layer.split(", ")[0])
        keras_kernel = np.asarray(wrapper.quantized_kernel())
        in_file = weights[choice.tensor]
        assert in_file.dtype == "int4" and in_file.block_size == (32 if "block" in scheme else 0)
        np.testing.assert_array_equal(in_file.dequantized(), keras_kernel.T)
        # and the float kernel did move off the grid during training: the grid is not trivial
        assert not np.array_equal(np.asarray(wrapper.layer.kernel), keras_kernel)
    check = export.verify(result.path, model, _flat(digits.x_test))
    assert check.top1_agreement >= 0.99


def test_sparsity_survives_int4(mlp, digits, tmp_path):
    sparse = keras.models.clone_model(mlp)
    sparse.set_weights(mlp.get_weights())
    for layer in sparse.layers:
        if isinstance(layer, keras.layers.Dense):
            k = layer.kernel.numpy()
            k[np.abs(k) < np.quantile(np.abs(k), 0.8)] = 0.0  # 80% magnitude pruning
            layer.kernel.assign(k)
    dense = export.to_tflite(mlp, tmp_path / "dense.tflite", mode="int4")
    pruned = export.to_tflite(sparse, tmp_path / "sparse.tflite", mode="int4")
    weights = export.read_weights(pruned.path)
    for choice in pruned.layers:
        kernel = sparse.get_layer(choice.layer).kernel.numpy().T
        in_file = weights[choice.tensor]
        assert np.all(in_file.values[kernel == 0] == 0)  # zeros stay zeros
        assert np.mean(in_file.values == 0) >= 0.79
    assert pruned.bytes == dense.bytes  # same packed layout ...
    assert pruned.gzip_bytes < 0.75 * dense.gzip_bytes  # ... but the zeros compress
    with open(pruned.path, "rb") as f:
        assert len(gzip.compress(f.read(), 9, mtime=0)) == pruned.gzip_bytes


@pytest.mark.slow
def test_recipe_int4_qat_and_mixed_export(tmp_path):
    from tfcompress import pipeline

    recipe = {
        "name": "lowbit",
        "data": {"embedded": "digits"},
        "model": {
            "factory": "tfcompress.testing:digits_cnn",
            "kwargs": {"filters": [4, 8], "dense_units": 32},
        },
        "stages": [
            {"type": "train", "epochs": 3, "learning_rate": 0.005},
            {"type": "qat", "epochs": 1, "weight_scheme": "int4"},
            {"type": "export", "modes": ["int4_block32"], "layers": {"logits": "int8"}},
        ],
    }
    records = pipeline.run(recipe, str(tmp_path / "out"), progress=lambda m: None)
    exports = records[-1]["exports"]
    assert set(exports) == {"int4_block32"}
    folder = tmp_path / "out" / "03_export"
    for mode, block in (("int4_block32", 32),):
        formats = _formats(str(folder / exports[mode]["path"]))
        assert formats["logits"] == ("int8", 0) and formats["dense"] == ("int4", block)
        assert formats["conv1"] == ("int4", 0)  # CONV_2D: channelwise whatever the block
        assert exports[mode]["top1_agreement"] >= 0.97
    with pytest.raises(Exception, match="int3"):
        pipeline.recipe.load_recipe(
            {
                **recipe,
                "stages": [{"type": "export", "modes": ["int4"], "layers": {"logits": "int3"}}],
            }
        )
