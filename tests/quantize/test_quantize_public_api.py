"""The public surface of tfcompress.quantize and tfcompress.cluster, against a golden list."""

import tfcompress.cluster
import tfcompress.quantize

QUANTIZE = [
    "ActivationQuantizer",
    "AlreadyQuantizedError",
    "CALIBRATION_METHODS",
    "CalibrationReport",
    "CollapseWarning",
    "check_collapse",
    "collapse_monitor",
    "output_spread",
    "LayerHandler",
    "QuantizeConfig",
    "QuantizeReport",
    "QuantizeWrapper",
    "RangesNotSetError",
    "UnsupportedLayerError",
    "WeightScheme",
    "available_schemes",
    "calibrate",
    "check_ranges_set",
    "compute_range",
    "configure_converter",
    "is_quantization_aware",
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
CLUSTER = [
    "CentroidInitialization",
    "ClusterReport",
    "ClusterWeights",
    "ClusterableLayer",
    "ClusteringSummaries",
    "NothingToClusterError",
    "assign",
    "available_inits",
    "cluster_report",
    "cluster_scope",
    "cluster_weights",
    "experimental",
    "initial_centroids",
    "register_init",
    "strip_clustering",
]


def test_quantize_surface():
    assert sorted(tfcompress.quantize.__all__) == sorted(QUANTIZE)
    for name in QUANTIZE:
        assert hasattr(tfcompress.quantize, name), name


def test_cluster_surface():
    assert sorted(tfcompress.cluster.__all__) == sorted(CLUSTER)
    for name in CLUSTER:
        assert hasattr(tfcompress.cluster, name), name


def test_schemes_registry():
    assert tfcompress.quantize.available_schemes() == ["int8", "int4", "int2", "binary"] + [
        f"int4_block{n}" for n in (32, 64, 128)
    ]
    assert [tfcompress.quantize.schemes.scheme_for_bits(b).name for b in (8, 4, 2, 1)] == [
        "int8",
        "int4",
        "int2",
        "binary",
    ]
