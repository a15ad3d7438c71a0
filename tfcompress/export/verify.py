"""`verify`: run a `.tflite` file and the Keras model on the same inputs and compare."""

import dataclasses
import os

import numpy as np

from tfcompress import _flavor
from tfcompress.errors import VerificationError
from tfcompress import _inputs as calib
from tfcompress.export._litert import load_runner


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    """How closely a `.tflite` file reproduces its Keras model.

    Attributes:
        path: the `.tflite` file.
        samples: how many inputs were compared.
        top1_agreement: fraction of samples where both predict the same class.
        max_abs_diff: largest absolute difference between the outputs.
        mean_abs_diff: mean absolute difference between the outputs.
        tflite_accuracy: accuracy of the file, when labels were given.
        keras_accuracy: accuracy of the Keras model, when labels were given.
    """

    path: str
    samples: int
    top1_agreement: float
    max_abs_diff: float
    mean_abs_diff: float
    tflite_accuracy: object = None
    keras_accuracy: object = None

    def __str__(self):
        text = (f"{os.path.basename(self.path)}: top-1 agreement {self.top1_agreement:.2%} on "
                f"{self.samples} samples, max |diff| {self.max_abs_diff:.4g}")
        if self.tflite_accuracy is not None:
            text += (f", accuracy {self.tflite_accuracy:.4f} (Keras "
                     f"{self.keras_accuracy:.4f})")
        return text


def verify(tflite_path, model, data, max_samples=1000, batch_size=32, min_agreement=None):
    """Compare a `.tflite` file with the Keras model it came from.

    Runs the file in the LiteRT interpreter (ai-edge-litert) and the model in
    Keras on the same inputs. Float inputs are quantized for int8-input files
    and int8 outputs dequantized, using the scale and zero point in the file.

    Args:
        tflite_path: the `.tflite` file.
        model: the Keras (Keras 3, keras-hub or tf_keras) model.
        data: inputs, optionally with labels: an array, a dict of arrays,
            `(inputs, labels)`, a `tf.data.Dataset` or a generator.
        max_samples: most samples to compare.
        batch_size: samples per LiteRT invocation.
        min_agreement: if given, raise `VerificationError` when top-1
            agreement is below it (e.g. `0.99`).

    Returns:
        A `VerifyResult`.

    Example:

    >>> result = verify("model_int8.tflite", model, (x_test, y_test))
    >>> result.top1_agreement, result.tflite_accuracy
    """
    runner = load_runner(tflite_path)
    _flavor.check_built(model, what="verification")
    specs = calib.input_specs(model)
    inputs, labels = calib.collect(data, specs, what="verification data",
                                   max_samples=max_samples)

    if calib.takes_dict(model):
        keras_inputs = {s.name: a for s, a in zip(specs, inputs)}
    else:
        keras_inputs = inputs[0] if len(inputs) == 1 else inputs
    expected = _first_output(model.predict(keras_inputs, batch_size=batch_size, verbose=0))
    actual = runner.predict(_tflite_inputs(runner, specs, inputs), batch_size=batch_size)
    if isinstance(actual, dict):
        actual = actual[runner.output_names[0]]
    expected = np.asarray(expected, dtype=np.float32)
    actual = np.asarray(actual, dtype=np.float32).reshape(expected.shape)

    from tfcompress_edge.runner import labels_to_classes, top1

    diff = np.abs(expected - actual)
    agreement = float(np.mean(top1(expected) == top1(actual)))
    result = VerifyResult(
        path=os.fspath(tflite_path),
        samples=len(expected),
        top1_agreement=agreement,
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
    )
    if labels is not None:
        classes = labels_to_classes(labels)
        result = dataclasses.replace(
            result,
            tflite_accuracy=float(np.mean(top1(actual) == classes)),
            keras_accuracy=float(np.mean(top1(expected) == classes)),
        )
    if min_agreement is not None and agreement < min_agreement:
        raise VerificationError(
            f"'{tflite_path}' agrees with model '{model.name}' on only {agreement:.2%} of "
            f"{result.samples} samples (required {min_agreement:.2%}); max |diff| "
            f"{result.max_abs_diff:.4g}. Calibrate with more representative data, or keep "
            "sensitive layers in float."
        )
    return result


def _first_output(outputs):
    if isinstance(outputs, dict):
        return outputs[sorted(outputs)[0]]
    if isinstance(outputs, (list, tuple)):
        return outputs[0]
    return outputs


def _tflite_inputs(runner, specs, inputs):
    names = runner.input_names
    if len(names) == 1 and len(inputs) == 1:
        return {names[0]: inputs[0]}
    by_name = {s.name: a for s, a in zip(specs, inputs)}
    if set(by_name) == set(names):
        return by_name
    # Signature names can differ from Keras input names (e.g. "args_0"); the
    # converter keeps the model's input order, so fall back to position.
    return dict(zip(names, inputs))
