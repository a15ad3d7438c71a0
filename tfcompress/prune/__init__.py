"""Pruning: zero the least important weights during fit(), or remove whole units.

One API for both Kerases: Keras 3 models (keras-hub included) use our own
mask wrappers; tf_keras models go through tensorflow-model-optimization.

Example:

>>> from tfcompress import prune
>>> pruned = prune.prune_low_magnitude(model, schedule=prune.ConstantSparsity(0.8, 0))
>>> pruned.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
>>> pruned.fit(x, y, epochs=3, callbacks=[prune.UpdatePruningStep()])
>>> small = prune.strip_pruning(pruned)
>>> print(prune.sparsity_report(small))
>>> fewer_heads = prune.remove_heads(bert_classifier, 0.25)  # any keras-hub encoder
"""

from tfcompress.prune.api import prune_low_magnitude, prune_scope, strip_pruning
from tfcompress.prune.callbacks import PruningSummaries, UpdatePruningStep
from tfcompress.prune.errors import (
    MissingPruningStepError,
    NoPrunableLayersError,
    UnsupportedPruningModelError,
)
from tfcompress.prune.export import SparseExportResult, to_sparse_tflite
from tfcompress.prune.heads import HeadPrunedTransformerEncoder, HeadRemovalReport, remove_heads
from tfcompress.prune.plan import PruningPlan
from tfcompress.prune.policy import PrunableLayer, PruneForLatencyOnXNNPack, PruningPolicy
from tfcompress.prune.report import LayerSparsity, SparsityReport, sparsity_report
from tfcompress.prune.schedules import ConstantSparsity, PolynomialDecay, PruningSchedule
from tfcompress.prune.structured import count_macs, remove_units
from tfcompress.prune.wrapper import PruneLowMagnitude

__all__ = [
    "ConstantSparsity",
    "HeadPrunedTransformerEncoder",
    "HeadRemovalReport",
    "LayerSparsity",
    "MissingPruningStepError",
    "NoPrunableLayersError",
    "PolynomialDecay",
    "PrunableLayer",
    "PruneForLatencyOnXNNPack",
    "PruneLowMagnitude",
    "PruningPlan",
    "PruningPolicy",
    "PruningSchedule",
    "PruningSummaries",
    "SparseExportResult",
    "SparsityReport",
    "UnsupportedPruningModelError",
    "UpdatePruningStep",
    "count_macs",
    "prune_low_magnitude",
    "prune_scope",
    "remove_heads",
    "remove_units",
    "sparsity_report",
    "strip_pruning",
    "to_sparse_tflite",
]
