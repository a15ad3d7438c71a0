"""`prune_low_magnitude` and `strip_pruning`: one API, dispatched on the model's flavour."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tfcompress import _flavor
from tfcompress._layers import build_like, rebuild
from tfcompress._report import Entry, Report, attach, wrapper_report
from tfcompress.prune import _registry, patterns
from tfcompress.prune import plan as plan_lib
from tfcompress.prune import schedules as schedules_lib
from tfcompress.prune.errors import UnsupportedPruningModelError
from tfcompress.prune.wrapper import IMPORTANCES, SCOPES, PruneLowMagnitude

if TYPE_CHECKING:
    import keras
    import tensorflow as tf
    from numpy.typing import ArrayLike

logger = logging.getLogger("tfcompress.prune")

_OVERRIDE_KEYS = ("schedule", "pattern", "importance")


def prune_low_magnitude(
    model: keras.Model | keras.layers.Layer | list[keras.layers.Layer],
    schedule: schedules_lib.ScheduleLike | None = None,
    *,
    pattern: patterns.PatternLike = "unstructured",
    importance: str = "magnitude",
    scope: str = "layer",
    skip: str | Sequence[str] | None = "auto",
    layers: Sequence[str] | None = None,
    overrides: dict[str, dict[str, Any] | None] | None = None,
    importance_data: tuple[ArrayLike, ArrayLike] | tf.data.Dataset | None = None,
    importance_loss: str | Callable[..., Any] | None = None,
    importance_batches: int = 8,
    verbose: bool = False,
    pruning_schedule: schedules_lib.ScheduleLike | None = None,
    block_size: tuple[int, int] | None = None,
    block_pooling_type: str | None = None,
    sparsity_m_by_n: tuple[int, int] | None = None,
    pruning_policy: Any = None,
    **kwargs: Any,
) -> keras.Model | keras.layers.Layer | list[keras.layers.Layer]:
    """Return a copy of `model` whose prunable layers are zeroed on a schedule.

    Keras 3 models (keras-hub included) get our `PruneLowMagnitude` wrappers;
    tf_keras models go through tensorflow-model-optimization with the same
    options where tfmot has them. The input model is never changed.
    Train the result with `fit(..., callbacks=[UpdatePruningStep()])`, then
    `strip_pruning` it. The result is not compiled.

    By default the first convolution and the last Dense layer (the
    classifier) are left dense: they hold few weights and cost the most
    accuracy. Pass `skip=None` to prune them too.

    Args:
        model: a built functional or Sequential model (Keras 3 or tf_keras).
        schedule: `ConstantSparsity`, `PolynomialDecay`, or a float target
            sparsity (pruned at the first training step, masks refreshed every
            100 steps). Steps count training batches from 1, as in tfmot.
            Defaults to `ConstantSparsity(0.5, begin_step=0)` (a new one per call).
        pattern: `"unstructured"`, an N:M string (`"2:4"`), or a block shape
            `(rows, cols)`.
        importance: `"magnitude"` or `"taylor"` (|w * dL/dw| summed over
            `importance_batches` batches of `importance_data`; Keras 3 only).
        scope: `"layer"` (each layer reaches the target) or `"global"` (one
            magnitude ranking across all pruned layers; Keras 3 only).
        skip: `"auto"` (first conv and classifier), a list of layer names,
            or `None` to skip nothing.
        layers: names of the layers to prune (default: every prunable one).
        overrides: per-layer options, `{name: {"schedule": ..., "pattern":
            ..., "importance": ...}}`, or `{name: None}` to leave a layer dense.
        importance_data: `(x, y)` arrays or a `tf.data.Dataset` of `(x, y)`
            batches, for `importance="taylor"`.
        importance_loss: a Keras loss (name or object) for `"taylor"`.
        importance_batches: how many batches the Taylor scores sum over.
        verbose: print the plan (which layers are pruned and why others are not).
        pruning_schedule: tfmot's name for `schedule`.
        block_size: tfmot's spelling of a block `pattern`: `(rows, cols)`;
            `(1, 1)` is unstructured.
        block_pooling_type: how a block's weights are pooled into its score:
            `"AVG"` (default) or `"MAX"` (tfmot's spelling).
        sparsity_m_by_n: tfmot's `(m, n)`: m zeros in every n consecutive
            weights, i.e. `pattern="{n-m}:{n}"`. As in tfmot it wins over
            `block_size`.
        pruning_policy: tfmot's policy: a `PruningPolicy` such as
            `PruneForLatencyOnXNNPack()` (tfmot's own object is accepted too)
            checks the model and picks the layers to prune; the default skips
            (`skip="auto"`) then do not apply.
        **kwargs: base layer arguments (`name`, ...) when `model` is a layer,
            as in tfmot.

    Returns:
        A new, uncompiled model of the same flavour; for a layer (tfmot's
        `prune_low_magnitude(layer)` inside a model definition), a
        `PruneLowMagnitude` layer; for a list of layers, a list of them.

    Example:

    >>> from tfcompress import prune
    >>> pruned = prune.prune_low_magnitude(
    ...     model, schedule=prune.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=200,
    ...                                           frequency=20))
    >>> pruned.compile("adam", "sparse_categorical_crossentropy")
    >>> pruned.fit(x, y, epochs=2, callbacks=[prune.UpdatePruningStep()])
    >>> small = prune.strip_pruning(pruned)
    """
    if pruning_schedule is not None:
        if schedule is not None:
            raise ValueError(
                "Pass the schedule once: `schedule` and its tfmot name "
                "`pruning_schedule` are the same argument. Received: both."
            )
        schedule = pruning_schedule
    pattern = _tfmot_pattern(pattern, block_size, block_pooling_type, sparsity_m_by_n)
    policy = pruning_policy
    if isinstance(model, (list, tuple)) or _is_single_layer(model):
        return _wrap_layers(model, schedule, pattern, importance, scope, kwargs)
    if kwargs:
        raise TypeError(
            f"Unexpected arguments for a model: {sorted(kwargs)} (layer arguments "
            f"apply when pruning a single layer). Received: {sorted(kwargs)}"
        )
    flavor = _flavor.flavor_of(model)
    if flavor != _flavor.TF_KERAS:
        _check_cloneable(model)
    _flavor.check_built(model, what="pruning")
    if policy is not None and flavor != _flavor.TF_KERAS:
        layers, skip = _apply_policy(model, policy, layers, skip)
    schedule = schedules_lib.ConstantSparsity(0.5, 0) if schedule is None else schedule
    schedule = schedules_lib.get(schedule)
    pattern = patterns.parse(pattern)
    if importance not in IMPORTANCES:
        raise ValueError(
            f"`importance` must be one of {IMPORTANCES}. Received: importance={importance!r}"
        )
    if scope not in SCOPES:
        raise ValueError(f"`scope` must be one of {SCOPES}. Received: scope={scope!r}")
    overrides = _check_overrides(overrides)
    if flavor == _flavor.TF_KERAS:
        from tfcompress.prune import _tfmot

        if policy is not None:  # tfmot applies its own policy to its own graphs
            pruned = _tfmot.prune_with_policy(model, policy, schedule, pattern)
            return attach(
                pruned, wrapper_report("prune_low_magnitude", model, pruned, "tfmot pruning")
            )
        if scope != "layer" or importance != "magnitude":
            raise NotImplementedError(
                f"Model '{model.name}' is a tf_keras model, pruned by tfmot, which only has "
                "scope='layer' and importance='magnitude'. Received: "
                f"scope={scope!r}, importance={importance!r}. Convert the model to Keras 3 "
                "for these options."
            )
        plan = plan_lib.make_plan(
            model,
            _tfmot.is_prunable,
            _tfmot.is_conv,
            _tfmot.is_dense,
            skip=skip,
            layers=layers,
            overrides=overrides,
        )
        _log_plan(plan, verbose)
        return attach(_tfmot.prune(model, plan, schedule, pattern, overrides), _report(model, plan))

    for layer in plan_lib.flat_layers(model):
        strip = getattr(layer, "_tfcompress_strip_with", None)
        if strip and not isinstance(layer, PruneLowMagnitude):
            raise ValueError(
                f"Layer '{layer.name}' of model '{model.name}' is still a "
                f"{type(layer).__name__} training wrapper: call {strip}(model) first, then "
                f"prune the plain model. Received: {type(layer).__name__}"
            )
    if any(isinstance(layer, PruneLowMagnitude) for layer in plan_lib.flat_layers(model)):
        raise ValueError(
            f"Model '{model.name}' is already wrapped for pruning. Call "
            "strip_pruning(model) first, or keep training it."
        )
    plan = plan_lib.make_plan(
        model,
        _registry.is_prunable,
        _registry.is_conv,
        _is_dense,
        skip=skip,
        layers=layers,
        overrides=overrides,
    )
    if importance == "taylor" or any(
        o and o.get("importance") == "taylor" for o in overrides.values()
    ):
        if importance_data is None or importance_loss is None:
            raise ValueError(
                "importance='taylor' ranks weights by |w * dL/dw|, so it needs data and a "
                "loss: pass importance_data=(x, y) and importance_loss=... (e.g. "
                "'sparse_categorical_crossentropy'). Received: "
                f"importance_data={type(importance_data).__name__}, "
                f"importance_loss={importance_loss!r}"
            )
    options = {}
    by_name = {layer.name: layer for layer in plan_lib.flat_layers(model)}
    for name in plan.pruned:
        opts: dict[str, Any] = {
            "schedule": schedule,
            "pattern": pattern,
            "importance": importance,
        }
        opts.update((k, v) for k, v in (overrides.get(name) or {}).items())
        opts["schedule"] = schedules_lib.get(opts["schedule"])
        opts["pattern"] = patterns.parse(opts["pattern"])
        for sub, spec in _registry.prunable_targets(by_name[name]):
            variable = spec.variable(sub)
            patterns.check_shape(opts["pattern"], tuple(variable.shape), spec.nm_axis, sub.name)
            _check_finite(name, variable)
        options[name] = opts
    _log_plan(plan, verbose)

    def wrap(layer, clone):
        opts = options.get(layer.name)
        if opts is None:
            return clone
        return PruneLowMagnitude(
            clone,
            pruning_schedule=opts["schedule"],
            pattern=opts["pattern"],
            importance=opts["importance"],
            scope=scope,
        )

    pruned = _clone(model, wrap)
    _copy_weights(model, pruned, mask=False)
    wrappers = {w.layer.name: w for w in _wrappers(pruned)}
    taylor_layers = [name for name, o in options.items() if o["importance"] == "taylor"]
    if taylor_layers:
        from tfcompress.prune.importance import taylor_scores

        scores = taylor_scores(
            model, taylor_layers, importance_data, importance_loss, importance_batches
        )
        for name in taylor_layers:
            for var, value in zip(wrappers[name].importance_scores, scores[name], strict=False):
                var.assign(value)
    return attach(pruned, _report(model, plan))


def prune_scope() -> keras.saving.CustomObjectScope:
    """tfmot's `prune_scope()`: a scope in which saved pruned models load.

    Our classes are registered with Keras, so `keras.saving.load_model` finds
    them without it; the scope is here so tfmot code runs unchanged.

    Returns:
        A `keras.saving.CustomObjectScope` naming the pruning wrapper and schedules.

    Example:

    >>> with prune_scope():
    ...     model = keras.saving.load_model("pruned.keras")
    """
    import keras

    return keras.saving.CustomObjectScope(
        {
            "PruneLowMagnitude": PruneLowMagnitude,
            "ConstantSparsity": schedules_lib.ConstantSparsity,
            "PolynomialDecay": schedules_lib.PolynomialDecay,
        }
    )


def _apply_policy(model, policy, layers, skip):
    """tfmot's `pruning_policy`: the policy checks the model and picks the layers."""
    from tfcompress.prune import policy as policy_lib

    policy = policy_lib.get(policy)
    policy.ensure_model_supports_pruning(model)
    allowed = [layer.name for layer in plan_lib.flat_layers(model) if policy.allow_pruning(layer)]
    if layers is not None:
        wanted = [layers] if isinstance(layers, str) else list(layers)
        allowed = [name for name in allowed if name in wanted]
    # As in tfmot, the policy alone decides: no default skips on top of it.
    return allowed, (None if skip == "auto" else skip)


def _is_single_layer(obj):
    import keras

    if isinstance(obj, keras.layers.Layer):
        return not isinstance(obj, keras.Model)
    return "tf_keras" in type(obj).__module__ and not _flavor.is_tf_keras_model(obj)


def _wrap_layers(to_prune, schedule, pattern, importance, scope, kwargs):
    """tfmot's layer forms: one layer -> a wrapper; a list -> a list of wrappers."""
    import keras

    schedule = schedules_lib.ConstantSparsity(0.5, 0) if schedule is None else schedule
    schedule = schedules_lib.get(schedule)
    pattern = patterns.parse(pattern)
    if isinstance(to_prune, (list, tuple)):
        out = []
        for layer in to_prune:
            if isinstance(layer, (PruneLowMagnitude, keras.layers.InputLayer)):
                out.append(layer)  # as tfmot: already wrapped, or nothing to prune
            else:
                out.append(_wrap_layers(layer, schedule, pattern, importance, scope, {}))
        return out
    if not isinstance(to_prune, keras.layers.Layer):
        from tfcompress.prune import _tfmot

        params = {"pruning_schedule": _tfmot.to_tfmot_schedule(schedule)}
        params.update(_tfmot._pattern_kwargs(pattern, to_prune.name))
        return _tfmot.sparsity().prune_low_magnitude(to_prune, **params, **kwargs)
    return PruneLowMagnitude(
        to_prune,
        pruning_schedule=schedule,
        pattern=pattern,
        importance=importance,
        scope=scope,
        **kwargs,
    )


def _tfmot_pattern(pattern, block_size, block_pooling_type, sparsity_m_by_n):
    """Our `pattern` from tfmot's block_size / block_pooling_type / sparsity_m_by_n."""
    if sparsity_m_by_n is not None:
        ok = (
            isinstance(sparsity_m_by_n, (tuple, list))
            and len(sparsity_m_by_n) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in sparsity_m_by_n)
            and 0 < sparsity_m_by_n[0] < sparsity_m_by_n[1]
        )
        if not ok:
            raise ValueError(
                "`sparsity_m_by_n` must be a pair (m, n) of ints with 0 < m < n: m "
                "zeros in every n consecutive weights, e.g. (2, 4). "
                f"Received: sparsity_m_by_n={sparsity_m_by_n!r}"
            )
        m, n = sparsity_m_by_n
        return f"{n - m}:{n}"
    if block_pooling_type is not None and block_pooling_type not in ("AVG", "MAX"):
        raise ValueError(
            "`block_pooling_type` must be 'AVG' or 'MAX'. "
            f"Received: block_pooling_type={block_pooling_type!r}"
        )
    if block_size is not None and tuple(block_size) != (1, 1):
        block = patterns.parse(tuple(block_size))
        return {"block": list(block.block), "pooling": (block_pooling_type or "AVG").lower()}
    return pattern


def strip_pruning(model: keras.Model | keras.layers.Layer) -> keras.Model | keras.layers.Layer:
    """Return a plain copy of a pruned model, with the zeros baked into the weights.

    Args:
        model: a model returned by `prune_low_magnitude` (and trained), of
            either flavour. A model without pruning wrappers is copied as is.
            One `PruneLowMagnitude` layer gives a plain copy of its layer with
            the zeros in its weights (for a subclassed model's layers).

    Returns:
        A new model of the same flavour, without wrappers, masks or step
        counters; ready for `tfcompress.export.to_tflite`.

    Example:

    >>> small = strip_pruning(pruned)
    >>> round(sparsity_report(small).sparsity, 2)
    0.8
    """
    if isinstance(model, PruneLowMagnitude):
        return _stripped_layer(model)
    flavor = _flavor.flavor_of(model)
    if flavor == _flavor.TF_KERAS:
        from tfcompress.prune import _tfmot

        return _tfmot.strip(model)
    _check_cloneable(model, strip=True)

    def unwrap(layer, clone):
        return clone.layer if isinstance(clone, PruneLowMagnitude) else clone

    stripped = _clone(model, unwrap)
    _copy_weights(model, stripped, mask=True)
    return stripped


def _check_finite(name, variable):
    # A NaN has no magnitude to rank: the mask would be arbitrary and training stays NaN.
    value = np.asarray(variable)
    bad = int(value.size - np.count_nonzero(np.isfinite(value)))
    if bad:
        raise ValueError(
            f"Layer '{name}' has {bad} NaN or infinite weights, which have no magnitude to "
            "prune by. Fix the training that produced them (lower learning rate, clip "
            f"gradients) first. Received: {bad} non-finite of {value.size} weights"
        )


def _is_dense(layer):
    import keras

    return isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense))


def _check_overrides(overrides):
    if overrides is None:
        return {}
    if not isinstance(overrides, dict):
        raise TypeError(
            "`overrides` must be a dict of layer name -> options dict (or None). "
            f"Received: overrides={overrides!r}"
        )
    for name, opts in overrides.items():
        if opts is None:
            continue
        if not isinstance(opts, dict) or set(opts) - set(_OVERRIDE_KEYS):
            raise ValueError(
                f"overrides[{name!r}] must be None or a dict with keys among {_OVERRIDE_KEYS}. "
                f"Received: {opts!r}"
            )
        if "importance" in opts and opts["importance"] not in IMPORTANCES:
            raise ValueError(
                f"overrides[{name!r}]['importance'] must be one of {IMPORTANCES}. "
                f"Received: {opts['importance']!r}"
            )
    return dict(overrides)


def _stripped_layer(wrapper):
    """A plain copy of a wrapper's layer, with the masks multiplied into its weights."""
    inner = wrapper.layer
    new = rebuild(inner)
    if inner.built and not new.built:
        new.build_from_config(inner.get_build_config())
    masked = {id(w): np.asarray(w) * np.asarray(m) for w, m in wrapper.pruned_weights}
    new.set_weights([masked.get(id(w), np.asarray(w)) for w in inner.weights])
    return new


def _check_cloneable(model, strip=False):
    import keras
    from keras.src.models.functional import Functional

    if strip and not isinstance(model, (Functional, keras.Sequential)):
        raise UnsupportedPruningModelError(
            f"Model '{model.name}' ({type(model).__name__}) is a subclassed model, which cannot "
            "be copied layer by layer. Strip each pruned layer instead: "
            "self.dense = strip_pruning(self.dense) gives the plain layer with its zeros. "
            f"Received: a {type(model).__name__}"
        )
    if not isinstance(model, (Functional, keras.Sequential)):
        raise UnsupportedPruningModelError(
            f"Model '{model.name}' ({type(model).__name__}) is a subclassed model: its layers "
            "are created in Python code, so they cannot be wrapped from outside. Build it "
            "with the functional API or keras.Sequential, or wrap the layers yourself in its "
            "__init__ with tfcompress.prune.PruneLowMagnitude(layer, pruning_schedule=...)."
        )


def _clone(model, transform):
    """clone_model with fresh layers from config, passed through `transform(orig, clone)`."""
    import keras

    def fresh(layer):
        if isinstance(layer, PruneLowMagnitude):
            # Rebuild the wrapper around a fresh inner layer rather than from the
            # wrapper's config, which would need the inner class to be registered.
            return PruneLowMagnitude(
                fresh(layer.layer),
                pruning_schedule=layer.pruning_schedule,
                pattern=layer.pattern,
                importance=layer.importance,
                scope=layer.scope,
                name=layer.name,
                dtype=layer.dtype_policy,
            )
        return rebuild(layer)

    def clone_function(layer):
        return transform(layer, fresh(layer))

    # clone_model compiles the copy when the source is compiled; the result is
    # documented (and, in tfmot, is) uncompiled: the optimizer state of the
    # source does not belong to the new weights anyway.
    compiled = getattr(model, "compiled", False)
    model.compiled = False
    try:
        return keras.models.clone_model(model, clone_function=clone_function, recursive=True)
    finally:
        model.compiled = compiled


def _wrappers(model):
    return [layer for layer in plan_lib.flat_layers(model) if isinstance(layer, PruneLowMagnitude)]


def _copy_weights(source, target, mask):
    """Copy weights layer by layer (matched by name); wrappers on either side are seen through."""

    def leaf(layer):
        return layer.layer if isinstance(layer, PruneLowMagnitude) else layer

    sources = {leaf(layer).name: layer for layer in plan_lib.flat_layers(source)}
    for layer in plan_lib.flat_layers(target):
        inner = leaf(layer)
        if not inner.weights:
            continue
        src = sources[inner.name]
        values = [np.asarray(v) for v in leaf(src).get_weights()]
        if mask and isinstance(src, PruneLowMagnitude):
            masked = {id(w): np.asarray(w) * np.asarray(m) for w, m in src.pruned_weights}
            values = [masked.get(id(w), v) for w, v in zip(leaf(src).weights, values, strict=False)]
        build_like(inner, leaf(src))
        inner.set_weights(values)
        if isinstance(src, PruneLowMagnitude) and isinstance(layer, PruneLowMagnitude):
            layer.set_weights(src.get_weights())


def _report(model, plan):
    classes = {layer.name: type(layer).__name__ for layer in plan_lib.flat_layers(model)}
    return Report(
        "prune_low_magnitude",
        model.name,
        done=[Entry(name, classes.get(name, ""), "pruned") for name in plan.pruned],
        skipped=plan.skipped,
        details=plan,
    )


def _log_plan(plan, verbose):
    if verbose:
        print(plan)
    else:
        logger.info("%s", plan)
