"""tf_keras models: tfmot's quantize_model behind our function."""

from tfcompress.quantize.config import QuantizeConfig


def tfmot_quantize():
    """`tfmot.quantization.keras`, imported lazily."""
    import tensorflow_model_optimization as tfmot

    return tfmot.quantization.keras


def quantize_model(model, config=None):
    """tfmot QAT of a tf_keras model; `skip_layers` keeps layers in float."""
    config = config or QuantizeConfig()
    default = QuantizeConfig(skip_layers=config.skip_layers)
    if config != default:
        raise ValueError(
            "tf_keras models are quantized by tfmot, which supports 8-bit weights and "
            "skip_layers only. Convert the model to Keras 3 for weight_scheme / calibration "
            f"options. Received: config={config!r}"
        )
    q = tfmot_quantize()
    if not config.skip_layers:
        return q.quantize_model(model)
    import tf_keras

    skip = set(config.skip_layers)

    def annotate(layer):
        clone = layer.__class__.from_config(layer.get_config())
        if layer.name in skip or isinstance(layer, tf_keras.layers.InputLayer):
            return clone
        return q.quantize_annotate_layer(clone)

    annotated = tf_keras.models.clone_model(model, clone_function=annotate)
    annotated.set_weights(model.get_weights())
    return q.quantize_apply(annotated)
