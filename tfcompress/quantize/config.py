"""`QuantizeConfig`: what `quantize_model` does, as one small frozen object."""

from __future__ import annotations

import dataclasses

from tfcompress.quantize.schemes import get_scheme

CALIBRATION_METHODS = ("minmax", "percentile", "mse")


@dataclasses.dataclass(frozen=True)
class QuantizeConfig:
    """Options of `tfcompress.quantize.quantize_model`.

    Attributes:
        weight_scheme: `"int8"` (default), `"int4"`, `"int2"` or `"binary"`
            (see `tfcompress.quantize.schemes`).
        skip_layers: names of layers to keep in float.
        fold_batchnorm: fold a BatchNormalization into the Conv/Dense before
            it (its moving statistics are frozen from then on).
        ema_decay: moving-average decay of activation ranges during `fit()`.
        calibration: how `representative_data` initialises activation
            ranges: `"minmax"`, `"percentile"` or `"mse"`.
        percentile: the upper percentile used by `"percentile"`.
        preserve_sparsity: PQAT: keep the zeros of a pruned model's kernels
            through QAT and into the int8 file.
        preserve_clusters: CQAT: keep the shared values of a clustered
            (stripped) model's kernels; needs `fold_batchnorm=False` when the
            model has BatchNormalization after a clustered conv.
        freeze_bn_delay: training steps during which BatchNormalization
            (folded or not) normalises with batch statistics and keeps
            updating its moving statistics; after it they are frozen, as at
            export. `None` never freezes; 0 freezes from the first step
            (can make an untrained deep network's outputs constant).
        strict: raise `UnsupportedLayerError` for a layer without a rule
            instead of keeping it in float (and naming it in the report).

    Example:

    >>> config = QuantizeConfig(weight_scheme="int4", skip_layers=("logits",),
    ...                         calibration="mse")
    """

    weight_scheme: str = "int8"
    skip_layers: tuple[str, ...] = ()
    fold_batchnorm: bool = True
    ema_decay: float = 0.99
    calibration: str = "minmax"
    percentile: float = 99.99
    preserve_sparsity: bool = False
    preserve_clusters: bool = False
    freeze_bn_delay: int | None = 1000
    strict: bool = False

    def __post_init__(self) -> None:
        get_scheme(self.weight_scheme)  # raises with the list of schemes
        if isinstance(self.skip_layers, str):
            object.__setattr__(self, "skip_layers", (self.skip_layers,))
        object.__setattr__(self, "skip_layers", tuple(self.skip_layers))
        if self.calibration not in CALIBRATION_METHODS:
            raise ValueError(
                f"calibration must be one of {CALIBRATION_METHODS}. "
                f"Received: calibration={self.calibration!r}"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1). Received: ema_decay={self.ema_decay!r}")
        if self.freeze_bn_delay is not None and (
            isinstance(self.freeze_bn_delay, bool)
            or not isinstance(self.freeze_bn_delay, int)
            or self.freeze_bn_delay < 0
        ):
            raise ValueError(
                "freeze_bn_delay must be a number of training steps >= 0, or None "
                f"(never freeze). Received: freeze_bn_delay={self.freeze_bn_delay!r}"
            )
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(
                f"percentile must be in (50, 100]. Received: percentile={self.percentile!r}"
            )
