"""Optimizer set-ups for compression fine-tuning, built on Keras's own pieces."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras

#: Variable-name fragments that get no weight decay: biases and normalisation scales.
NO_DECAY = ("bias", "gamma", "beta", "LayerNorm", "layer_norm", "layernorm")


def warmup_cosine(
    peak_learning_rate: float, total_steps: int, warmup_steps: int = 0, alpha: float = 0.0
) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warmup to `peak_learning_rate`, then cosine decay to `alpha * peak`.

    This is Keras's own `CosineDecay` with its warmup arguments, started at 0.

    Args:
        peak_learning_rate: the rate reached at the end of warmup.
        total_steps: steps of warmup plus decay.
        warmup_steps: steps of linear warmup from 0.
        alpha: the final rate as a fraction of the peak.

    Returns:
        A `keras.optimizers.schedules.CosineDecay`.

    Example:

    >>> schedule = warmup_cosine(1e-3, total_steps=1000, warmup_steps=100)
    >>> optimizer = keras.optimizers.AdamW(schedule)
    """
    import keras

    if peak_learning_rate <= 0:
        raise ValueError(
            f"peak_learning_rate must be positive. Received: "
            f"peak_learning_rate={peak_learning_rate}"
        )
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(
            "warmup_steps must be at least 0 and below total_steps. Received: "
            f"warmup_steps={warmup_steps}, total_steps={total_steps}"
        )
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=total_steps - warmup_steps,
        alpha=alpha,
        warmup_target=peak_learning_rate,
        warmup_steps=warmup_steps,
    )


def adamw(
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = 1e-3,
    weight_decay: float = 0.01,
    accumulation_steps: int = 1,
    no_decay: tuple[str, ...] = NO_DECAY,
    **kwargs: Any,
) -> keras.optimizers.AdamW:
    """AdamW with no weight decay on biases and normalisation layers, and accumulation.

    Args:
        learning_rate: a float or a schedule (e.g. `warmup_cosine(...)`).
        weight_decay: decoupled weight decay for the other weights.
        accumulation_steps: apply the averaged gradients of this many batches
            at once, as one batch `accumulation_steps` times larger would
            (Keras's own `gradient_accumulation_steps`).
        no_decay: variable-name fragments excluded from weight decay.
        **kwargs: passed to `keras.optimizers.AdamW`.

    Returns:
        A `keras.optimizers.AdamW`.
    """
    import keras

    steps = check_accumulation_steps(accumulation_steps)
    optimizer = keras.optimizers.AdamW(
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        gradient_accumulation_steps=steps if steps > 1 else None,
        **kwargs,
    )
    optimizer.exclude_from_weight_decay(var_names=list(no_decay))
    return optimizer


def with_accumulation(
    optimizer: keras.optimizers.Optimizer, accumulation_steps: int
) -> keras.optimizers.Optimizer:
    """A copy of a Keras optimizer that accumulates `accumulation_steps` batches per update.

    Args:
        optimizer: a Keras 3 optimizer (not yet used for training).
        accumulation_steps: batches per update; 1 means none.

    Returns:
        A new optimizer of the same class and settings.
    """
    steps = check_accumulation_steps(accumulation_steps)
    config = optimizer.get_config()
    config["gradient_accumulation_steps"] = steps if steps > 1 else None
    return type(optimizer).from_config(config)


def check_accumulation_steps(accumulation_steps):
    if (
        isinstance(accumulation_steps, bool)
        or not isinstance(accumulation_steps, int)
        or (accumulation_steps < 1)
    ):
        raise ValueError(
            "accumulation_steps must be an integer of at least 1 (1 = update every batch). "
            f"Received: accumulation_steps={accumulation_steps!r}"
        )
    return accumulation_steps
