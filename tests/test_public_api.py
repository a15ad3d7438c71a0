"""The public surface, compared with a golden list so nothing leaks or vanishes."""

import dataclasses
import importlib
import inspect

import pytest

import tfcompress

GOLDEN = {
    "tfcompress": [
        "Entry",
        "Report",
        "__version__",
        "cluster",
        "data",
        "distill",
        "export",
        "pipeline",
        "prune",
        "quantize",
        "report_of",
        "testing",
        "train",
    ],
    "tfcompress.distill": [
        "AttentionDistillation",
        "CallableTeacher",
        "Distiller",
        "HiddenStateDistillation",
        "SoftTargetDistillation",
        "TeacherCache",
        "TeacherCacheMismatchError",
        "TransferReport",
        "as_teacher",
        "cache_teacher_outputs",
        "distiller",
        "init_student_from_teacher",
        "load_teacher_cache",
        "resolve_layer_map",
        "transfer_weights",
    ],
    "tfcompress.pipeline": [
        "Recipe",
        "RecipeError",
        "StageContext",
        "StageSpec",
        "TrainingStageSpec",
        "load_recipe",
        "register_stage_spec",
        "run",
        "stage",
        "stage_types",
        "tune",
    ],
    "tfcompress.train": [
        "ClusterConfigError",
        "ClusterUnreachableError",
        "NO_DECAY",
        "adamw",
        "check_model_in_scope",
        "global_batch_size",
        "read_tf_config",
        "scale_learning_rate",
        "share_layers",
        "strategy",
        "wait_for_cluster",
        "warmup_cosine",
        "with_accumulation",
    ],
    "tfcompress.export": [
        "COMPUTE_OPS",
        "DivergenceReport",
        "ExportMode",
        "ExportResult",
        "InputSpec",
        "LayerFidelity",
        "OpInfo",
        "TFLiteInfo",
        "TensorInfo",
        "VerifyResult",
        "available_modes",
        "benchmark",
        "first_divergence",
        "get_mode",
        "gzip_size",
        "input_specs",
        "inspect",
        "register_mode",
        "to_c_array",
        "to_tflite",
        "verify",
        "LowBitExportResult",
        "lowbit",
        "read_weights",
        "Candidate",
        "OpProfile",
        "OpTime",
        "profile",
    ],
    "tfcompress.data": [
        "DatasetSplits",
        "Splits",
        "TextSplits",
        "encode_for_bert",
        "load_digits",
        "load_sst2",
        "sst2_tokenizer",
    ],
}


@pytest.mark.parametrize("module_name", sorted(GOLDEN))
def test_public_names(module_name):
    module = importlib.import_module(module_name)
    assert sorted(module.__all__) == sorted(GOLDEN[module_name])
    for name in module.__all__:
        assert getattr(module, name) is not None


def test_subpackages_load_lazily():
    assert tfcompress.export.to_tflite is importlib.import_module("tfcompress.export").to_tflite
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        tfcompress.__getattr__("nope")


#: Every public module whose signatures carry type hints (mypy checks them in `make lint`).
TYPED_MODULES = [
    "tfcompress",
    "tfcompress.cluster",
    "tfcompress.data",
    "tfcompress.distill",
    "tfcompress.export",
    "tfcompress.export.lowbit",
    "tfcompress.pipeline",
    "tfcompress.prune",
    "tfcompress.quantize",
    "tfcompress.quantize.registry",
    "tfcompress.quantize.schemes",
    "tfcompress.testing",
    "tfcompress.train",
]

#: Keras framework hooks: their signatures are Keras's, not ours.
_HOOKS = {
    "call",
    "build",
    "get_config",
    "from_config",
    "compute_output_shape",
    "compute_output_spec",
    "compute_loss",
    "compute_metrics",
    "validate_model_compatibility",
    "trainable_layers",
    "__call__",
}


def _missing_hints(qualname, function):
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return []
    missing = [
        p.name
        for p in signature.parameters.values()
        if p.name not in ("self", "cls") and p.annotation is inspect.Parameter.empty
    ]
    if function.__name__ != "__init__" and signature.return_annotation is inspect.Signature.empty:
        missing.append("return")
    return [f"{qualname}: {', '.join(missing)}"] if missing else []


def test_every_public_signature_has_type_hints():
    missing = []
    for module_name in TYPED_MODULES:
        module = importlib.import_module(module_name)
        names = getattr(module, "__all__", None) or [
            n
            for n, v in vars(module).items()
            if not n.startswith("_") and getattr(v, "__module__", None) == module_name
        ]
        for name in names:
            value = getattr(module, name)
            qualname = f"{module_name}.{name}"
            if inspect.isfunction(value):
                missing += _missing_hints(qualname, value)
            elif inspect.isclass(value) and value.__module__.startswith("tfcompress"):
                if "__init__" in vars(value) and not dataclasses.is_dataclass(value):
                    missing += _missing_hints(f"{qualname}.__init__", value.__init__)
                for attr, member in vars(value).items():
                    if (
                        inspect.isfunction(member)
                        and not attr.startswith("_")
                        and attr not in _HOOKS
                        and not attr.startswith("on_")
                    ):
                        missing += _missing_hints(f"{qualname}.{attr}", member)
    assert missing == []
