"""The public surface, compared with a golden list so nothing leaks or vanishes."""

import importlib

import pytest

import tfcompress

GOLDEN = {
    "tfcompress": ["Entry", "Report", "__version__", "cluster", "data", "distill", "export",
                   "pipeline", "prune", "quantize", "report_of", "testing", "train"],
    "tfcompress.distill": [
        "AttentionDistillation", "CallableTeacher", "Distiller", "HiddenStateDistillation",
        "SoftTargetDistillation", "TeacherCache", "TeacherCacheMismatchError", "TransferReport",
        "as_teacher", "cache_teacher_outputs", "distiller", "init_student_from_teacher",
        "load_teacher_cache", "resolve_layer_map", "transfer_weights",
    ],
    "tfcompress.pipeline": ["Recipe", "RecipeError", "StageContext", "StageSpec",
                            "TrainingStageSpec", "load_recipe", "register_stage_spec", "run",
                            "stage", "stage_types", "tune"],
    "tfcompress.train": [
        "ClusterConfigError", "ClusterUnreachableError", "NO_DECAY", "adamw",
        "check_model_in_scope", "global_batch_size", "read_tf_config", "scale_learning_rate",
        "share_layers",        "strategy", "wait_for_cluster", "warmup_cosine", "with_accumulation",
    ],
    "tfcompress.export": [
        "COMPUTE_OPS", "DivergenceReport", "ExportMode", "ExportResult", "InputSpec",
        "LayerFidelity", "OpInfo", "TFLiteInfo", "TensorInfo", "VerifyResult",
        "available_modes", "benchmark", "first_divergence", "get_mode", "gzip_size",
        "input_specs", "inspect", "register_mode", "to_c_array", "to_tflite", "verify",
        "LowBitExportResult", "lowbit", "read_weights",
        "Candidate", "OpProfile", "OpTime", "profile",
    ],
    "tfcompress.data": [
        "DatasetSplits", "Splits", "TextSplits", "encode_for_bert", "load_digits",
        "load_sst2", "sst2_tokenizer",
    ],
}


@pytest.mark.parametrize("module_name", sorted(GOLDEN))
def test_public_names(module_name):
    module = importlib.import_module(module_name)
    assert sorted(module.__all__) == sorted(GOLDEN[module_name])
    for name in module.__all__:
        assert getattr(module, name) is not None


def test_subpackages_load_lazily():
    assert tfcompress.export.to_tflite is importlib.import_module(
        "tfcompress.export").to_tflite
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        tfcompress.__getattr__("nope")
