"""Which layers get pruned: the default skips, user choices, and why others are left alone."""

import dataclasses

from tfcompress._graph import flat_layers
from tfcompress.prune.errors import NoPrunableLayersError


@dataclasses.dataclass(frozen=True)
class PruningPlan:
    """What `prune_low_magnitude` wraps and what it leaves alone.

    Attributes:
        model_name: the model's name.
        pruned: names of the layers that get masks.
        skipped: `(name, class_name, reason)` for every other layer with weights.
    """

    model_name: str
    pruned: tuple
    skipped: tuple

    def __str__(self):
        from tfcompress.prune._table import text_table

        rows = [(name, "pruned", "") for name in self.pruned]
        rows += [(name, f"left alone ({klass})", reason) for name, klass, reason in self.skipped]
        return f"Pruning plan for '{self.model_name}'\n" + text_table(
            ("layer", "decision", "why"), rows
        )


def make_plan(model, is_prunable, is_conv, is_dense, skip="auto", layers=None, overrides=None):
    """Decide which layers of `model` to prune.

    Args:
        model: the model.
        is_prunable: `layer -> bool` for the engine.
        is_conv: `layer -> bool` (the first conv is skipped by default).
        is_dense: `layer -> bool` (the last Dense, the classifier, is skipped by default).
        skip: `"auto"` (first conv, depthwise convs and last Dense), a list of layer names, or
            `()` / `None` to skip nothing.
        layers: names to prune (all prunable ones when `None`).
        overrides: dict of layer name -> options; names are checked.

    Returns:
        A `PruningPlan`.
    """
    all_layers = flat_layers(model)
    names = [layer.name for layer in all_layers]
    auto = skip == "auto"
    if isinstance(skip, str) and not auto:
        raise ValueError(
            f"`skip` must be 'auto', a list of layer names, or None. Received: skip={skip!r}"
        )
    skip_names = set() if auto or skip is None else _names("skip", skip)
    if isinstance(layers, str):
        layers = [layers]  # one layer name
    elif layers is not None:
        layers = sorted(_names("layers", layers))
    for what, given in (
        ("skip", skip_names),
        ("layers", set(layers or ())),
        ("overrides", set(overrides or ())),
    ):
        unknown = sorted(given - set(names))
        if unknown:
            raise ValueError(
                f"`{what}` names layers that model '{model.name}' does not have: "
                f"{unknown}. Its layers are: {names}"
            )
    auto_reasons = {}
    if auto:
        prunable = [layer for layer in all_layers if is_prunable(layer)]
        convs = [layer for layer in prunable if is_conv(layer)]
        denses = [layer for layer in prunable if is_dense(layer)]
        if convs:
            auto_reasons[convs[0].name] = (
                "first convolution: skipped by default (few weights, "
                "large accuracy cost); pass skip=None to prune it"
            )
        if denses:
            auto_reasons[denses[-1].name] = (
                "final classifier: skipped by default; pass skip=None to prune it"
            )
        for layer in prunable:
            if _is_depthwise(layer):
                # A 3x3 depthwise kernel holds 9 weights per channel: at 80% sparsity a
                # MobileNet-style CNN on digits fell from 0.96 to 0.71, against 0.89 with
                # the depthwise layers kept dense.
                auto_reasons.setdefault(
                    layer.name,
                    (
                        "depthwise convolution: skipped by default (few weights per channel, large "
                        "accuracy cost); pass skip=None to prune it"
                    ),
                )
    pruned, skipped = [], []
    for layer in all_layers:
        klass = type(layer).__name__
        if not layer.weights:
            continue
        if not is_prunable(layer):
            skipped.append((layer.name, klass, _not_prunable_reason(layer, is_prunable)))
        elif layer.name in skip_names:
            skipped.append((layer.name, klass, "named in skip="))
        elif layers is not None and layer.name not in layers:
            skipped.append((layer.name, klass, "not named in layers="))
        elif layer.name in auto_reasons:
            skipped.append((layer.name, klass, auto_reasons[layer.name]))
        elif overrides and layer.name in overrides and overrides[layer.name] is None:
            skipped.append((layer.name, klass, "overrides[name] is None"))
        else:
            pruned.append(layer.name)
    plan = PruningPlan(model.name, tuple(pruned), tuple(skipped))
    if not pruned:
        raise NoPrunableLayersError(
            f"Model '{model.name}' has no layer left to prune. {plan}\nPrunable layer types are "
            "Dense, EinsumDense, Conv1D/2D/3D, DepthwiseConv2D, SeparableConv1D/2D, Embedding "
            "and LSTM/GRU/SimpleRNN; pass "
            "skip=None to also prune the first convolution, depthwise convolutions and the "
            "classifier."
        )
    return plan


def _is_depthwise(layer):
    """`DepthwiseConv*D`, or a grouped conv with one input channel per group (ConvNeXt).

    Works for both Kerases (the plan serves tfmot too), hence the class names.
    """
    if any(
        klass.__name__ in ("DepthwiseConv1D", "DepthwiseConv2D") for klass in type(layer).__mro__
    ):
        return True
    kernel = getattr(layer, "kernel", None)
    return (
        getattr(layer, "groups", 1) > 1
        and kernel is not None
        and len(kernel.shape) >= 3
        and kernel.shape[-2] == 1
    )


def _not_prunable_reason(layer, is_prunable):
    flatten = getattr(layer, "_flatten_layers", None)
    inner = [sub for sub in flatten(include_self=False)] if flatten else []
    inner = [sub for sub in inner if is_prunable(sub)]
    if inner:
        kinds = sorted({type(sub).__name__ for sub in inner})
        return (
            f"composite layer: its {len(inner)} inner {'/'.join(kinds)} layers are created "
            "in its own code, and this engine cannot prune inside it"
        )
    return "not a prunable layer type"


def _names(what, given):
    """A set of layer names from a list (or any iterable) of strings, or a clear error."""
    try:
        names = set(given)
    except TypeError:
        names = None
    if names is None or not all(isinstance(n, str) for n in names):
        raise TypeError(
            f"`{what}` must be a list of layer names (strings). Received: {what}={given!r}"
        )
    return names
