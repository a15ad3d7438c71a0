"""Quantization-aware training and post-training calibration that export to int8 TFLite.

Keras 3 models use our fake-quant layers; tf_keras models go to tfmot. One
verb: `quantize_model(model, config)`; a `QuantizeConfig` picks the weight
scheme (int8, int4, int2, binary), layers kept in float and the calibration
method. Exported with `tfcompress.export.to_tflite(qat, path, mode="int8")`.

Example:

>>> from tfcompress import quantize
>>> qat = quantize.quantize_model(model, representative_data=x_train[:256])
>>> qat.compile("adam", "sparse_categorical_crossentropy"); qat.fit(x_train, y_train)
"""

from tfcompress.quantize import quantizers, registry, schemes
from tfcompress.quantize.annotate import (
    quantize_annotate_layer,
    quantize_annotate_model,
    quantize_scope,
)
from tfcompress.quantize.calibration import CalibrationReport, calibrate, compute_range
from tfcompress.quantize.checks import (
    CollapseWarning,
    check_collapse,
    check_ranges_set,
    collapse_monitor,
    configure_converter,
    is_quantization_aware,
    output_spread,
)
from tfcompress.quantize.config import CALIBRATION_METHODS, QuantizeConfig
from tfcompress.quantize.errors import (
    AlreadyQuantizedError,
    RangesNotSetError,
    UnsupportedLayerError,
)
from tfcompress.quantize.layers import ActivationQuantizer, QuantizeWrapper
from tfcompress.quantize.lowbit import storage_report
from tfcompress.quantize.registry import LayerHandler, register_layer
from tfcompress.quantize.schemes import WeightScheme, available_schemes, register_scheme
from tfcompress.quantize.transform import QuantizeReport, quantize_apply, quantize_model

__all__ = [
    "CALIBRATION_METHODS",
    "ActivationQuantizer",
    "AlreadyQuantizedError",
    "CalibrationReport",
    "CollapseWarning",
    "LayerHandler",
    "QuantizeConfig",
    "QuantizeReport",
    "QuantizeWrapper",
    "RangesNotSetError",
    "UnsupportedLayerError",
    "WeightScheme",
    "available_schemes",
    "calibrate",
    "check_collapse",
    "check_ranges_set",
    "collapse_monitor",
    "compute_range",
    "configure_converter",
    "is_quantization_aware",
    "output_spread",
    "quantize_annotate_layer",
    "quantize_annotate_model",
    "quantize_apply",
    "quantize_model",
    "quantize_scope",
    "quantizers",
    "register_layer",
    "register_scheme",
    "registry",
    "schemes",
    "storage_report",
]

#: tfmot names with no counterpart here, and what to use instead (see docs/tfmot.md).
_TFMOT_ONLY = {
    "fix_input_output_range": "integer inputs and outputs are an export option: "
    "tfcompress.export.to_tflite(qat, path, mode='int8', int8_io=True)",
    "remove_input_range": "the input's range is set at export: "
    "tfcompress.export.to_tflite(qat, path, mode='int8')",
    "QuantizeWrapperV2": "use tfcompress.quantize.QuantizeWrapper",
    "QuantizeScheme": "a scheme is a QuantizeConfig (weight_scheme=, preserve_sparsity=, "
    "preserve_clusters=); new weight grids plug in with register_scheme",
    "QuantizeRegistry": "teach a layer with register_layer(cls, LayerHandler(...))",
    "QuantizeLayoutTransform": "teach a layer with register_layer(cls, LayerHandler(...))",
    "default_8bit": "quantize_model(model) is the default 8-bit scheme; tfmot's scheme objects "
    "are accepted by quantize_apply(model, scheme)",
    "collab_opts": "use QuantizeConfig(preserve_sparsity=True) (PQAT) or "
    "QuantizeConfig(preserve_clusters=True) (CQAT); tfmot's scheme objects are accepted too",
    "experimental": "use QuantizeConfig(weight_scheme='int4') for n-bit weights; tfmot's "
    "DefaultNBitQuantizeScheme is accepted by quantize_apply(model, scheme)",
    "graph_transformations": "teach a layer with register_layer(cls, LayerHandler(...))",
}


def __getattr__(name: str) -> object:
    if name in _TFMOT_ONLY:
        raise AttributeError(
            f"tfcompress.quantize has no {name!r} (a tfmot name): {_TFMOT_ONLY[name]}."
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
