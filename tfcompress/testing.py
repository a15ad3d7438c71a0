"""Tiny models and assertions for tests: ours, and users' tests of their own models.

Example:

>>> from tfcompress import testing
>>> model = testing.digits_cnn()
>>> testing.assert_exports_int8(model, representative_data=x_train[:64])
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
import tempfile
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import keras
    import tf_keras


def _digits_cnn(k, filters, dense_units, num_classes, seed, name):
    # Built from a Keras module `k` (keras or tf_keras): the two twins share one recipe.
    k.utils.set_random_seed(seed)
    inputs = k.Input((8, 8, 1), name="image")
    x = inputs
    for i, f in enumerate(filters):
        x = k.layers.Conv2D(f, 3, padding="same", activation="relu", name=f"conv{i}")(x)
        if i == 0:
            x = k.layers.MaxPooling2D(2, name="pool0")(x)
    x = k.layers.Flatten(name="flatten")(x)
    if dense_units:
        x = k.layers.Dense(dense_units, activation="relu", name="dense")(x)
    outputs = k.layers.Dense(num_classes, name="logits")(x)
    return k.Model(inputs, outputs, name=name)


def digits_cnn(
    filters: Sequence[int] = (8, 16),
    dense_units: int = 32,
    num_classes: int = 10,
    seed: int = 0,
    name: str = "digits_cnn",
) -> keras.Model:
    """A small Keras 3 CNN for 8x8x1 digits images (logits out).

    Args:
        filters: Conv2D filters per block.
        dense_units: width of the hidden Dense layer (0 for none).
        num_classes: output units.
        seed: weight initialisation seed.
        name: model name.

    Returns:
        An uncompiled, built `keras.Model`.
    """
    import keras

    return _digits_cnn(keras, filters, dense_units, num_classes, seed, name)


def tf_keras_digits_cnn(
    filters: Sequence[int] = (8, 16),
    dense_units: int = 32,
    num_classes: int = 10,
    seed: int = 0,
    name: str = "digits_cnn_tf_keras",
) -> tf_keras.Model:
    """The tf_keras twin of `digits_cnn` (same layers, same names), for the tfmot engine."""
    import tf_keras

    return _digits_cnn(tf_keras, filters, dense_units, num_classes, seed, name)


def tiny_mlp(
    input_dim: int = 16,
    hidden: Sequence[int] = (32,),
    num_classes: int = 4,
    seed: int = 0,
    name: str = "tiny_mlp",
) -> keras.Model:
    """A Keras 3 MLP on flat features."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((input_dim,), name="features")
    x = inputs
    for i, units in enumerate(hidden):
        x = keras.layers.Dense(units, activation="relu", name=f"hidden{i}")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def tiny_bert_classifier(
    vocabulary_size: int = 100,
    num_layers: int = 1,
    hidden_dim: int = 16,
    num_heads: int = 2,
    intermediate_dim: int = 32,
    sequence_length: int = 16,
    num_classes: int = 2,
    seed: int = 0,
) -> keras.Model:
    """A keras-hub `BertTextClassifier` built from config (no download), dict inputs.

    Returns:
        A `keras_hub.models.BertTextClassifier` without preprocessor, taking
        `{"token_ids", "segment_ids", "padding_mask"}` int32 arrays of shape
        `(batch, sequence_length)`.
    """
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=vocabulary_size,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        intermediate_dim=intermediate_dim,
        max_sequence_length=sequence_length,
    )
    return keras_hub.models.BertTextClassifier(backbone, num_classes=num_classes, preprocessor=None)


def random_bert_inputs(
    n: int, vocabulary_size: int = 100, sequence_length: int = 16, seed: int = 0
) -> dict[str, np.ndarray]:
    """Random but valid inputs for `tiny_bert_classifier` (dict of int32 arrays)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, sequence_length + 1, size=n)
    mask = (np.arange(sequence_length)[None, :] < lengths[:, None]).astype("int32")
    token_ids = rng.integers(1, vocabulary_size, size=(n, sequence_length)).astype("int32") * mask
    return {
        "token_ids": token_ids,
        "segment_ids": np.zeros((n, sequence_length), "int32"),
        "padding_mask": mask,
    }


def accuracy(model: Any, x: Any, y: Any, batch_size: int = 256) -> float:
    """Top-1 accuracy of a Keras model (logits or probabilities out) on integer labels."""
    predictions = model.predict(x, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(predictions, axis=-1) == np.asarray(y)))


def assert_exports_int8(
    model: keras.Model,
    representative_data: Any = None,
    data: Any = None,
    min_agreement: float = 0.9,
    op_names: Sequence[str] | None = None,
) -> tuple:
    """Export `model` to full-int8 TFLite and assert every compute op runs in int8.

    Args:
        model: the model to export.
        representative_data: calibration data (not needed for QAT models).
        data: inputs to compare the file with the model on; the calibration
            data by default.
        min_agreement: least top-1 agreement with the Keras model.
        op_names: the ops that must compute in int8; `COMPUTE_OPS` by default.

    Returns:
        `(ExportResult, TFLiteInfo, VerifyResult)`.
    """
    from tfcompress import export

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{model.name}_int8.tflite")
        result = export.to_tflite(model, path, mode="int8", representative_data=representative_data)
        info = export.inspect(path)
        names = op_names or export.COMPUTE_OPS
        float_ops = info.float_compute_ops(names)
        if float_ops:
            from tfcompress.export.verification import locate_ops

            located = [
                op
                for op in locate_ops(path, model, names)
                if not str(op.compute_dtype).startswith("int")
            ]
            raise AssertionError(
                f"{len(float_ops)} compute ops of '{model.name}' still run in float: "
                + ", ".join(f"{op.op}({op.compute_dtype}) in layer {op.layer!r}" for op in located)
            )
        assert any(op.name in names for op in info.ops), "the file has no compute op at all"
        check = data if data is not None else representative_data
        verification = export.verify(path, model, check, min_agreement=min_agreement)
    return result, info, verification


def assert_round_trips(model: keras.Model, inputs: Any, atol: float = 1e-6) -> keras.Model:
    """Save `model` as `.keras`, load it back, and assert identical predictions."""
    import keras

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
    expected = model.predict(inputs, verbose=0)
    actual = loaded.predict(inputs, verbose=0)
    np.testing.assert_allclose(actual, expected, atol=atol)
    return loaded


def run_on_logical_cpus(code: str, num_devices: int = 2, timeout: float = 300) -> str:
    """Run Python `code` in a fresh process whose CPU is split into `num_devices` devices.

    Logical devices must be configured before TensorFlow starts, hence the
    subprocess. The code sees `/cpu:0` ... `/cpu:N-1`, enough to test
    `MirroredStrategy` code on a machine without GPUs.

    Args:
        code: Python source to run after the devices are configured.
        num_devices: logical CPU devices.
        timeout: seconds before the process is killed.

    Returns:
        The process's standard output.

    Raises:
        AssertionError: with the process's error output if it fails.
    """
    import subprocess
    import sys
    import textwrap

    prelude = textwrap.dedent(f"""
        import os
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tensorflow as tf
        _cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            _cpu, [tf.config.LogicalDeviceConfiguration()] * {num_devices})
    """)
    result = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, (
        f"the multi-device script failed (exit {result.returncode}):\n{result.stderr[-4000:]}"
    )
    return result.stdout


# --------------------------------------------------------------------------------------
# The model zoo: tiny versions of the architectures users bring.

#: Families `zoo_model` builds: keras.applications CNNs, a recurrent text
#: classifier and keras-hub transformers.
ZOO_FAMILIES = (
    "mobilenet_v2",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "resnet50",
    "densenet121",
    "nasnet_mobile",
    "convnext_tiny",
    "lstm",
    "bert",
    "roberta",
    "distilbert",
    "gpt2",
    "vit",
)

#: The keras.applications families of `ZOO_FAMILIES`; each has a tf_keras twin
#: (`zoo_model(family, flavor="tf_keras")`).
APPLICATION_FAMILIES = ZOO_FAMILIES[:7]

_IMAGE_FAMILIES = APPLICATION_FAMILIES + ("vit",)


def zoo_model(
    family: str,
    size: str = "tiny",
    num_classes: int | None = None,
    image_size: int | None = None,
    sequence_length: int = 16,
    vocabulary_size: int = 512,
    seed: int = 0,
    flavor: str = "keras",
) -> Any:
    """A model of one zoo family, with random weights (nothing is downloaded).

    `size="full"` builds the real architecture (keras.applications at 224x224,
    keras-hub BERT-small 4x256, GPT-2 small, ViT-B/16). `size="tiny"` keeps
    each family's blocks and cuts their number and width, for tests:

    - MobileNetV2 (alpha 0.35) and MobileNetV3Small (alpha 0.75) are the
      keras.applications models themselves at 32x32.
    - EfficientNetB0, ResNet50, DenseNet121, NASNetMobile and ConvNeXtTiny
      come from the same keras.applications builders (`keras.src`) with one
      block per stage and narrower layers: MBConv with squeeze-excite and
      swish; bottleneck residual blocks with BatchNorm; dense blocks with
      pre-activation BatchNorm after `Concatenate`; NASNet cells of
      separable convolutions; ConvNeXt blocks (grouped 7x7 convolution,
      LayerNorm, Dense on feature maps, `LayerScale`, nested `Sequential`).
    - `"lstm"` is Embedding -> LSTM -> Dense.
    - keras-hub BERT, RoBERTa, DistilBERT (text classifiers), GPT-2 (backbone
      with a classifier on the last position) and ViT (image classifier):
      two layers, hidden 32, 2 heads.

    Classifiers output logits (no softmax).

    Args:
        family: one of `ZOO_FAMILIES`.
        size: `"tiny"` or `"full"`.
        num_classes: output classes: 10 (digits) for image models, 2
            (SST-2) for text models by default.
        image_size: input height and width; 32 (tiny) or 224 (full) by default.
        sequence_length: tokens per text input.
        vocabulary_size: token vocabulary of the text models.
        seed: weight initialisation seed.
        flavor: `"keras"` (Keras 3), or `"tf_keras"` for the tf_keras twin of an
            image family (same builder, same sizes), to compare with tfmot, which
            runs on tf_keras only. The LSTM and keras-hub families have no twin.

    Returns:
        A built `keras.Model` (functional, or a keras-hub task); a `tf_keras.Model`
        with `flavor="tf_keras"`.

    Example:

    >>> model = zoo_model("mobilenet_v2")
    >>> model.input_shape
    (None, 32, 32, 3)
    >>> zoo_model("resnet50", flavor="tf_keras").count_params() == zoo_model(
    ...     "resnet50"
    ... ).count_params()
    True
    """
    import keras

    if family not in ZOO_FAMILIES:
        raise ValueError(
            f"Unknown zoo family {family!r}; expected one of {ZOO_FAMILIES}. "
            f"Received: family={family!r}"
        )
    if size not in ("tiny", "full"):
        raise ValueError(f"size must be 'tiny' or 'full'. Received: size={size!r}")
    if flavor not in ("keras", "tf_keras"):
        raise ValueError(f"flavor must be 'keras' or 'tf_keras'. Received: flavor={flavor!r}")
    if flavor == "tf_keras" and family not in APPLICATION_FAMILIES:
        raise ValueError(
            f"Zoo family {family!r} has no tf_keras twin; the image families "
            f"{APPLICATION_FAMILIES} have one. Received: flavor={flavor!r}"
        )
    keras.utils.set_random_seed(seed)
    tiny = size == "tiny"
    if num_classes is None:
        num_classes = 10 if family in _IMAGE_FAMILIES else 2
    side = image_size or (32 if tiny else 224)
    if family in APPLICATION_FAMILIES:
        return _application(family, tiny, (side, side, 3), num_classes, flavor)
    if family == "lstm":
        return _lstm_classifier(
            vocabulary_size if tiny else 20000, sequence_length, 32 if tiny else 128, num_classes
        )
    return _hub_model(family, tiny, side, sequence_length, vocabulary_size, num_classes)


def _application(family, tiny, input_shape, num_classes, flavor="keras"):
    if flavor == "tf_keras":
        import tf_keras as keras
        from tf_keras.src.applications import convnext, densenet, efficientnet, nasnet, resnet

        stack = resnet.stack1
        named = {}  # tf_keras's builders take no `name`
    else:
        import keras
        from keras.src.applications import convnext, densenet, efficientnet, nasnet, resnet

        stack = resnet.stack_residual_blocks_v1
        named = {"name": family.split("_")[0].rstrip("0123456789") + "_tiny"}

    common = dict(
        weights=None, input_shape=input_shape, classes=num_classes, classifier_activation=None
    )
    if not tiny:
        constructors = {
            "mobilenet_v2": keras.applications.MobileNetV2,
            "mobilenet_v3_small": keras.applications.MobileNetV3Small,
            "efficientnet_b0": keras.applications.EfficientNetB0,
            "resnet50": keras.applications.ResNet50,
            "densenet121": keras.applications.DenseNet121,
            "nasnet_mobile": keras.applications.NASNetMobile,
            "convnext_tiny": keras.applications.ConvNeXtTiny,
        }
        return constructors[family](**common)
    if family == "mobilenet_v2":
        return keras.applications.MobileNetV2(alpha=0.35, **common)
    if family == "mobilenet_v3_small":
        return keras.applications.MobileNetV3Small(alpha=0.75, dropout_rate=0.0, **common)
    # The same builders keras.applications uses, with fewer and narrower blocks.
    if family == "efficientnet_b0":
        return efficientnet.EfficientNet(
            0.25,
            0.1,
            input_shape[0],
            dropout_rate=0.0,
            drop_connect_rate=0.0,
            **named,
            **common,
        )
    if family == "resnet50":

        def stack_fn(x):
            x = stack(x, 16, 1, stride1=1, name="conv2")
            x = stack(x, 32, 1, name="conv3")
            return stack(x, 64, 1, name="conv4")

        return resnet.ResNet(stack_fn, False, True, **named, **common)
    if family == "densenet121":
        return densenet.DenseNet([1, 1, 1, 1], **named, **common)
    if family == "nasnet_mobile":
        return nasnet.NASNet(
            penultimate_filters=96,
            num_blocks=1,
            stem_block_filters=8,
            skip_reduction=False,
            **named,
            **common,
        )
    return convnext.ConvNeXt([1, 1, 1, 1], [16, 32, 64, 128], **named, **common)


def _lstm_classifier(vocabulary_size, sequence_length, units, num_classes):
    import keras

    inputs = keras.Input((sequence_length,), dtype="int32", name="token_ids")
    x = keras.layers.Embedding(vocabulary_size, units, name="embedding")(inputs)
    x = keras.layers.LSTM(units, name="lstm")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="lstm_classifier")


def _hub_model(family, tiny, side, sequence_length, vocabulary_size, num_classes):
    import keras
    import keras_hub

    if family == "vit":
        size = (
            dict(patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
            if tiny
            else dict(patch_size=16, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072)
        )
        backbone = keras_hub.models.ViTBackbone(image_shape=(side, side, 3), **size)
        return keras_hub.models.ViTImageClassifier(
            backbone, num_classes=num_classes, preprocessor=None
        )
    if tiny:
        size = dict(
            vocabulary_size=vocabulary_size,
            num_layers=2,
            num_heads=2,
            hidden_dim=32,
            intermediate_dim=64,
            max_sequence_length=sequence_length,
        )
    elif family == "gpt2":
        size = dict(
            vocabulary_size=50257,
            num_layers=12,
            num_heads=12,
            hidden_dim=768,
            intermediate_dim=3072,
            max_sequence_length=1024,
        )
    else:  # BERT-small and encoders of the same size
        size = dict(
            vocabulary_size=30522,
            num_layers=4,
            num_heads=4,
            hidden_dim=256,
            intermediate_dim=1024,
            max_sequence_length=512,
        )
    models = keras_hub.models
    if family == "bert":
        return models.BertTextClassifier(
            models.BertBackbone(**size), num_classes=num_classes, preprocessor=None
        )
    if family == "roberta":
        return models.RobertaTextClassifier(
            models.RobertaBackbone(**size), num_classes=num_classes, preprocessor=None
        )
    if family == "distilbert":
        return models.DistilBertTextClassifier(
            models.DistilBertBackbone(**size), num_classes=num_classes, preprocessor=None
        )
    backbone = models.GPT2Backbone(**size)
    hidden = backbone.output
    # The causal model's last position has seen every token of the sequence.
    logits = keras.layers.Dense(num_classes, name="logits")(hidden[:, -1, :])
    return keras.Model(backbone.input, logits, name="gpt2_classifier")


def zoo_inputs(model: Any, family: str, n: int, sequence_length: int = 16, seed: int = 0) -> Any:
    """Random but valid inputs for a `zoo_model` (for timing, not for fidelity).

    Args:
        model: the `zoo_model`.
        family: its family.
        n: samples.
        sequence_length: tokens per text input, where the model does not fix it.
        seed: random seed.

    Returns:
        An array, or a dict of int32 arrays for keras-hub text models.

    Example:

    >>> sorted(zoo_inputs(zoo_model("bert"), "bert", 4))
    ['padding_mask', 'segment_ids', 'token_ids']
    """
    rng = np.random.default_rng(seed)
    if family in _IMAGE_FAMILIES:
        shape = tuple(model.input_shape[1:])
        return rng.uniform(0, 1, size=(n,) + shape).astype("float32")
    length = _sequence_length(model, sequence_length)
    vocabulary = _vocabulary_size(model)
    lengths = rng.integers(3, length + 1, size=n)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype("int32")
    tokens = (rng.integers(1, vocabulary, size=(n, length)) * mask).astype("int32")
    return _text_inputs(model, tokens, mask)


def zoo_data(
    model: Any,
    family: str,
    n_train: int = 512,
    n_test: int = 256,
    sequence_length: int = 16,
    seed: int = 0,
) -> tuple:
    """Real data shaped for a `zoo_model`: digits for images, SST-2 for text.

    Images: scikit-learn's 8x8 digits, upsampled to the model's input size
    and repeated over 3 channels, in [0, 255] for models that rescale their
    input themselves (MobileNetV3, EfficientNet, ConvNeXt) else in [0, 1].
    Text: SST-2 sentences, tokenized with a word-piece vocabulary learned
    from them (`tfcompress.data.sst2_tokenizer`) and packed as the model
    expects (labels: 0 negative, 1 positive); the held-out sentences come
    from SST-2's dev set, half of each label.

    Args:
        model: the `zoo_model`.
        family: its family.
        n_train: training samples.
        n_test: held-out samples.
        sequence_length: tokens per sentence, where the model does not fix it.
        seed: which SST-2 subset.

    Returns:
        `((x_train, y_train), (x_test, y_test))`.

    Example:

    >>> (x, y), (x_test, y_test) = zoo_data(zoo_model("resnet50"), "resnet50", 64, 32)
    >>> x.shape, x_test.shape
    ((64, 32, 32, 3), (32, 32, 32, 3))
    """
    if family in _IMAGE_FAMILIES:
        return _digits_images(model, family, n_train, n_test)
    from tfcompress import data

    splits, tokenizer = _sst2(n_train, _vocabulary_size(model), seed)
    length = _sequence_length(model, sequence_length)

    def encode(sentences):
        packed = data.encode_for_bert(tokenizer, sentences, sequence_length=length)
        return _text_inputs(model, packed["token_ids"], packed["padding_mask"])

    # Held-out sentences balanced between the labels, so chance is 50%.
    picked = np.sort(
        np.concatenate([np.flatnonzero(splits.y_test == label)[: n_test // 2] for label in (0, 1)])
    )
    return (
        (encode(splits.x_train), splits.y_train),
        (encode(splits.x_test[picked]), splits.y_test[picked]),
    )


@functools.lru_cache(maxsize=4)
def _sst2(n_train, vocabulary_size, seed):
    from tfcompress import data

    splits = data.load_sst2(max_train=n_train, validation_fraction=0.0, seed=seed)
    return splits, data.sst2_tokenizer(splits.x_train, vocabulary_size=vocabulary_size)


def _digits_images(model, family, n_train, n_test):
    from tfcompress.data import load_digits

    digits = load_digits()
    side = int(model.input_shape[1])
    scale = 255.0 if family in ("mobilenet_v3_small", "efficientnet_b0", "convnext_tiny") else 1.0

    def images(x):
        x = np.asarray(x, np.float32)[..., 0]
        rows = np.arange(side) * 8 // side
        x = x[:, rows][:, :, rows]  # nearest-neighbour upsampling
        return np.repeat(x[..., None], 3, axis=-1) * scale

    x_train = np.concatenate([digits.x_train, digits.x_val])[:n_train]
    y_train = np.concatenate([digits.y_train, digits.y_val])[:n_train]
    return ((images(x_train), y_train), (images(digits.x_test[:n_test]), digits.y_test[:n_test]))


def _sequence_length(model, default):
    structure = model.input
    tensor = next(iter(structure.values())) if isinstance(structure, dict) else model.inputs[0]
    return int(tensor.shape[1]) if tensor.shape[1] is not None else default


def _vocabulary_size(model):
    import keras

    from tfcompress._graph import all_layers

    # The token embedding is the widest one (segment embeddings have 2 rows).
    sizes = [
        int(layer.input_dim)
        for layer in all_layers(model)
        if isinstance(layer, keras.layers.Embedding)
    ]
    if sizes:
        return max(sizes)
    raise ValueError(f"model '{model.name}' has no Embedding layer. Received: {model!r}")


def _text_inputs(model, tokens, mask):
    structure = model.input
    if not isinstance(structure, dict):
        return np.asarray(tokens, "int32")
    inputs = {}
    for name in structure:
        if name == "padding_mask":
            inputs[name] = np.asarray(mask, "int32")
        elif name == "segment_ids":
            inputs[name] = np.zeros_like(tokens, dtype="int32")
        else:
            inputs[name] = np.asarray(tokens, "int32")
    return inputs


def fit_briefly(
    model: Any,
    data: tuple,
    epochs: int = 3,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    loss: Any = None,
) -> Any:
    """Train a classifier for a few epochs so that its outputs carry signal.

    After training, BatchNormalization moving statistics are recomputed on up
    to 256 training samples: keras.applications use momentum 0.99-0.999, so
    after a few dozen steps the moving statistics are still the initial ones
    and the network predicts noise in inference mode.

    Args:
        model: a Keras 3 classifier with logits out.
        data: `(x, y)` with integer labels.
        epochs: training epochs.
        batch_size: batch size.
        learning_rate: Adam learning rate.
        loss: the loss; sparse categorical cross-entropy on logits by default.

    Returns:
        `model`, trained and compiled.

    Example:

    >>> trained = fit_briefly(digits_cnn(), (x_train, y_train), epochs=1)
    """
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    x, y = data
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0)
    recalibrate_batchnorm(model, _take(x, 256))
    return model


def recalibrate_batchnorm(model: Any, x: Any) -> int:
    """Set every BatchNormalization's moving statistics to those of `x`.

    One forward pass in training mode with momentum 0: each layer's moving
    mean and variance become the statistics of this batch, as seen through
    the layers before it. Nothing else changes (no optimizer step).

    Args:
        model: a Keras 3 model.
        x: one batch of inputs (a few hundred samples).

    Returns:
        The number of BatchNormalization layers recalibrated.

    Example:

    >>> recalibrate_batchnorm(zoo_model("resnet50"), np.zeros((8, 32, 32, 3), "float32"))
    13
    """
    import keras

    from tfcompress._graph import all_layers

    layers = [
        layer for layer in all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)
    ]
    momenta = [layer.momentum for layer in layers]
    try:
        for layer in layers:
            layer.momentum = 0.0
        if layers:
            model(x, training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return len(layers)


# --------------------------------------------------------------------------------------
# One-call model check, on the model of keras-hub's `run_backbone_test`.

#: The ops `check_model` requires in int8 unless the QAT report names their layer as float.
CHECKED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


@dataclasses.dataclass(frozen=True)
class ModelCheckReport:
    """What `check_model` found, step by step.

    Attributes:
        model_name: the model checked.
        steps: `(step, outcome)` pairs in order: `"ok"`, or the error text.
        sparsity: sparsity of the pruned layers after `strip_pruning`.
        pruned_accuracy: accuracy of the stripped model on the evaluation
            data (when it has labels).
        quantize_report: the `QuantizeReport` of `quantize_model`.
        op_counts: `{op name: {compute dtype: count}}` over the file's compute ops.
        float_ops: the checked compute ops not in int8, as
            `tfcompress.export.verification.OpLocation` (with the Keras layer named).
        unexplained_float_ops: those of `float_ops` whose layer the QAT
            report does not list as kept in float.
        int8_share: share of the file's compute ops (`export.COMPUTE_OPS`)
            that compute in int8.
        fidelity: the `VerifyResult` of the int8 file against the QAT model.
        round_trip_max_diff: largest output difference of the QAT model
            after a `.keras` save and load.
        tflite_bytes: size of the int8 file.
        failures: what did not meet the thresholds (empty when all passed).
    """

    model_name: str
    steps: tuple = ()
    sparsity: object = None
    pruned_accuracy: object = None
    quantize_report: object = None
    op_counts: dict = dataclasses.field(default_factory=dict)
    float_ops: tuple = ()
    unexplained_float_ops: tuple = ()
    int8_share: object = None
    fidelity: object = None
    round_trip_max_diff: object = None
    tflite_bytes: object = None
    failures: tuple = ()

    @property
    def ok(self):
        """True when every step ran and every threshold was met."""
        return not self.failures

    def __str__(self):
        lines = [
            f"check_model('{self.model_name}'): "
            + ("passed" if self.ok else f"{len(self.failures)} failures")
        ]
        lines += [f"  {step}: {outcome}" for step, outcome in self.steps]
        if self.sparsity is not None:
            lines.append(f"  sparsity of pruned layers: {self.sparsity:.2%}")
        if self.pruned_accuracy is not None:
            lines.append(f"  accuracy after pruning: {self.pruned_accuracy:.2%}")
        if self.int8_share is not None:
            counts = ", ".join(f"{op} {dict(d)}" for op, d in sorted(self.op_counts.items()))
            lines.append(
                f"  compute ops in int8: {self.int8_share:.1%} ({counts}); "
                f"{self.tflite_bytes:,} bytes"
            )
        grouped = collections.Counter(
            (op.op, op.compute_dtype, op.layer, op in self.unexplained_float_ops)
            for op in self.float_ops
        )
        for (name, dtype, layer, unexplained), n in grouped.items():
            why = "unexplained" if unexplained else "kept float by QAT"
            lines.append(f"  float {n} x {name} ({dtype}) in layer {layer!r}: {why}")
        if self.fidelity is not None:
            lines.append(f"  fidelity: {self.fidelity}")
        if self.round_trip_max_diff is not None:
            lines.append(f"  .keras round trip: max |diff| {self.round_trip_max_diff:.3g}")
        lines += [f"  FAILED: {failure}" for failure in self.failures]
        return "\n".join(lines)


def check_model(
    model: Any,
    data: tuple,
    *,
    eval_data: Any = None,
    loss: Any = None,
    sparsity: float = 0.5,
    prune_epochs: int = 1,
    qat_epochs: int = 1,
    batch_size: int = 32,
    learning_rate: float = 1e-4,
    prune_learning_rate: float | None = None,
    quantize_config: Any = None,
    checked_ops: tuple = CHECKED_OPS,
    min_cosine: float = 0.99,
    min_agreement: float = 0.99,
    max_eval_samples: int = 256,
    raise_on_failure: bool = True,
) -> ModelCheckReport:
    """Run a trained model through prune -> strip -> QAT -> int8 -> verify -> save/load.

    The check a model family needs, in one call: it prunes `model` to
    `sparsity` while fine-tuning, strips the pruning wrappers, makes a QAT
    copy and fine-tunes it, exports that to a full-integer `.tflite`, lists
    which compute ops run in int8 (naming the Keras layer of each that does
    not), compares the file with the QAT model (cosine, relative error, top-1
    agreement, and whether the outputs carry signal at all) and checks that
    the QAT model survives a `.keras` save and load.

    Train `model` first: on a random deep network int8 rounding is amplified
    into noise and agreement measures nothing (the report says so).

    Args:
        model: a trained, built Keras 3 model (functional, Sequential or
            keras-hub task) with a classification output.
        data: `(x, y)` training data for the pruning and QAT fine-tuning
            (`x` an array or a dict of arrays; integer labels).
        eval_data: `(x, y)` or `x` to verify on; `data` by default.
        loss: training loss; sparse categorical cross-entropy by default
            (on logits, unless the outputs are probabilities).
        sparsity: pruning target.
        prune_epochs: fine-tuning epochs while pruning.
        qat_epochs: QAT fine-tuning epochs.
        batch_size: training batch size.
        learning_rate: Adam learning rate of the QAT fine-tuning (and of the
            pruning one, unless `prune_learning_rate` is given).
        prune_learning_rate: Adam learning rate while pruning. A higher one
            with a few `prune_epochs` makes the pruning phase the model's
            training too (what the zoo test does, to trace one fit less).
        quantize_config: a `tfcompress.quantize.QuantizeConfig`, or `None`.
        checked_ops: the ops that must be int8 unless the QAT report names
            their layer as kept in float.
        min_cosine: least mean cosine similarity of file and QAT model.
        min_agreement: least top-1 agreement of file and QAT model.
        max_eval_samples: most samples verified.
        raise_on_failure: raise `AssertionError` (with the whole report)
            when a step fails or a threshold is missed.

    Returns:
        A `ModelCheckReport`.

    Example:

    >>> report = check_model(model, (x_train[:256], y_train[:256]),
    ...                      eval_data=(x_test, y_test), raise_on_failure=False)
    >>> [step for step, _ in report.steps][:3]
    ['prune', 'strip', 'quantize']
    >>> print(report)  # doctest: +SKIP
    """
    import keras

    from tfcompress import export, prune, quantize
    from tfcompress.export.verification import first_divergence, locate_ops

    x, y = data
    eval_x, eval_y = eval_data if isinstance(eval_data, tuple) else (eval_data, None)
    if eval_x is None:
        eval_x, eval_y = x, y
    eval_x, eval_y = _take(eval_x, max_eval_samples), _take(eval_y, max_eval_samples)
    loss = loss or keras.losses.SparseCategoricalCrossentropy(
        from_logits=not _outputs_are_probabilities(model, _take(eval_x, 8))
    )
    steps, failures, fields = [], [], {}

    def fine_tune(m, epochs, callbacks=(), rate=learning_rate):
        m.compile(optimizer=keras.optimizers.Adam(rate), loss=loss)
        m.fit(x, y, epochs=epochs, batch_size=batch_size, callbacks=list(callbacks), verbose=0)

    def run(step, fn):
        start = time.perf_counter()
        try:
            value = fn()
        except Exception as e:  # every failure becomes a line of the report
            steps.append((step, f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"))
            failures.append(f"{step} failed: {type(e).__name__}: {str(e)[:500]}")
            raise _StepFailed from e
        steps.append((step, f"ok ({time.perf_counter() - start:.1f} s)"))
        return value

    with tempfile.TemporaryDirectory() as tmp:
        try:

            def prune_step():
                # Masks from step 1 and refreshed every 10 steps: a short fine-tune
                # still reaches the target.
                pruned = prune.prune_low_magnitude(
                    model, prune.ConstantSparsity(sparsity, begin_step=0, frequency=10)
                )
                fine_tune(
                    pruned,
                    prune_epochs,
                    [prune.UpdatePruningStep()],
                    rate=prune_learning_rate or learning_rate,
                )
                return pruned

            pruned = run("prune", prune_step)
            stripped = run("strip", lambda: prune.strip_pruning(pruned))
            reached = prune.sparsity_report(stripped).sparsity
            fields["sparsity"] = reached
            # BatchNorm moving statistics lag the weights after a short fine-tune
            # (momentum 0.99-0.999): recompute them before they are folded.
            recalibrate_batchnorm(stripped, _take(x, 256))
            if eval_y is not None:
                fields["pruned_accuracy"] = accuracy(stripped, eval_x, eval_y)
            if reached < sparsity - 0.02:
                failures.append(f"pruning reached {reached:.2%} sparsity, target {sparsity:.0%}")

            def qat_step():
                qat = quantize.quantize_model(
                    stripped, quantize_config, representative_data=_take(x, 128)
                )
                fine_tune(qat, qat_epochs)
                return qat

            qat = run("quantize", qat_step)
            fields["quantize_report"] = getattr(qat, "quantize_report", None)
            path = os.path.join(tmp, f"{model.name}_int8.tflite")
            result = run("export int8", lambda: export.to_tflite(qat, path, mode="int8"))
            fields["tflite_bytes"] = result.bytes
            _check_ops(path, qat, checked_ops, fields, failures, export, locate_ops)

            check = run(
                "verify",
                lambda: export.verify(
                    path,
                    qat,
                    (eval_x, eval_y) if eval_y is not None else eval_x,
                    max_samples=max_eval_samples,
                ),
            )
            fields["fidelity"] = check
            wrong = []
            if check.cosine < min_cosine:
                wrong.append(f"cosine {check.cosine:.4f} < {min_cosine}")
            if check.top1_agreement < min_agreement:
                wrong.append(f"top-1 agreement {check.top1_agreement:.2%} < {min_agreement:.0%}")
            if check.collapsed:
                wrong.append(
                    f"the QAT model's outputs collapsed (spread {check.output_spread:.2g})"
                )
            if wrong:
                try:
                    divergence = first_divergence(path, qat, eval_x, min_cosine=min_cosine)
                except Exception as e:  # the numbers above stand without it
                    where = f"(no layer comparison: {type(e).__name__}: {e})"
                else:
                    fields["fidelity"] = dataclasses.replace(check, divergence=divergence)
                    where = str(divergence)
                failures.append("int8 file vs QAT model: " + ", ".join(wrong) + f"; {where}")
            failures.extend(f"verify warning: {w}" for w in check.warnings)

            def round_trip():
                saved = os.path.join(tmp, "qat.keras")
                qat.save(saved)
                loaded = keras.saving.load_model(saved)
                sample = _take(eval_x, 64)  # a load that changes anything changes these
                expected = _as_array(qat.predict(sample, verbose=0))
                actual = _as_array(loaded.predict(sample, verbose=0))
                return float(np.max(np.abs(expected - actual))), float(np.max(np.abs(expected)))

            diff, scale = run("save/load .keras", round_trip)
            fields["round_trip_max_diff"] = diff
            if diff > 1e-5 + 1e-4 * scale:
                failures.append(f".keras round trip changed the outputs by up to {diff:.3g}")
        except _StepFailed:
            pass
    report = ModelCheckReport(
        model_name=model.name, steps=tuple(steps), failures=tuple(failures), **fields
    )
    if raise_on_failure and failures:
        raise AssertionError(str(report))
    return report


class _StepFailed(Exception):
    pass


def _check_ops(path, qat, checked_ops, fields, failures, export, locate_ops):
    info = export.inspect(path)
    counts = collections.defaultdict(collections.Counter)
    for op in info.ops:
        if op.name in export.COMPUTE_OPS:
            counts[op.name][op.compute_dtype] += 1
    fields["op_counts"] = {name: dict(c) for name, c in counts.items()}
    compute = [op for op in info.ops if op.name in export.COMPUTE_OPS]
    fields["int8_share"] = (
        (sum(str(op.compute_dtype).startswith("int") for op in compute) / len(compute))
        if compute
        else 0.0
    )
    if not compute:
        failures.append("the int8 file has no compute op at all")
    located = locate_ops(path, qat, checked_ops)
    float_ops = tuple(op for op in located if not str(op.compute_dtype).startswith("int"))
    report = getattr(qat, "quantize_report", None)
    kept = {entry[0] for entry in getattr(report, "kept_float", ())}
    unexplained = tuple(op for op in float_ops if op.layer not in kept)
    fields["float_ops"], fields["unexplained_float_ops"] = float_ops, unexplained
    if unexplained:
        failures.append(
            f"{len(unexplained)} compute ops run in float without a reason in the QAT report: "
            + ", ".join(f"{op.op}({op.compute_dtype}) in {op.layer!r}" for op in unexplained[:8])
            + (" ..." if len(unexplained) > 8 else "")
        )


def _take(x, n):
    if x is None:
        return None
    if isinstance(x, dict):
        return {k: np.asarray(v)[:n] for k, v in x.items()}
    return np.asarray(x)[:n]


def _as_array(outputs):
    if isinstance(outputs, dict):
        outputs = outputs[sorted(outputs)[0]]
    if isinstance(outputs, (list, tuple)):
        outputs = outputs[0]
    return np.asarray(outputs, np.float32)


def _outputs_are_probabilities(model, x):
    out = _as_array(model.predict(x, verbose=0))
    return bool(
        out.ndim == 2
        and out.shape[1] > 1
        and np.all(out >= 0)
        and np.allclose(out.sum(axis=1), 1.0, atol=1e-3)
    )
