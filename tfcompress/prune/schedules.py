"""Pruning schedules: when to update the masks and to what sparsity.

Same names and meanings as tensorflow-model-optimization's schedules, in the
style of `keras.optimizers.schedules.LearningRateSchedule`: a schedule is a
small serializable object whose `__call__(step)` returns
`(should_prune, sparsity)`. It works on Python ints (for callbacks and tests)
and on tensors (inside the training graph).
"""

from __future__ import annotations

from typing import Any, Self, TypeAlias

import keras
from keras import ops


class PruningSchedule:
    """Base class of pruning schedules.

    Subclasses implement `__call__(step)` -> `(should_prune, sparsity)` and
    `get_config()`. `step` is the number of training batches seen so far
    (the `UpdatePruningStep` callback counts them).

    `get_config()` has tfmot's shape, `{"class_name": ..., "config": {...}}`;
    `from_config` takes that, or the inner `config` dict alone (what tfmot's
    `from_config` takes), so configs written by tfmot code load unchanged.
    """

    def __call__(self, step):
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(step).")

    def get_config(self) -> dict[str, Any]:
        """`{"class_name": <class>, "config": <constructor arguments>}` (tfmot's form)."""
        return {"class_name": type(self).__name__, "config": self._arguments()}

    def _arguments(self):
        raise NotImplementedError(f"{type(self).__name__} must implement get_config().")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        """Create a schedule from its `get_config()` dict, or from the inner `config` dict.

        Args:
            config: `{"class_name": ..., "config": {...}}`, or the argument dict.

        Returns:
            A schedule of class `cls`.
        """
        return cls(**_arguments_of(config, cls.__name__))

    def target(self) -> float:
        """The sparsity the schedule ends at."""
        raise NotImplementedError

    def _flat(self):
        return _arguments_of(self.get_config(), type(self).__name__)

    def __eq__(self, other):
        return type(self) is type(other) and self._flat() == other._flat()

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(self._flat().items()))))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._flat().items())
        return f"{type(self).__name__}({args})"

    def _should_prune(self, step, begin_step, end_step, frequency):
        # tfmot's rule: inside [begin_step, end_step] (end_step=-1: no end), every
        # `frequency` steps counted from begin_step.
        step = ops.convert_to_tensor(step, "int64")
        in_range = ops.greater_equal(step, begin_step)
        if end_step != -1:
            in_range = ops.logical_and(in_range, ops.less_equal(step, end_step))
        on_turn = ops.equal(ops.mod(step - begin_step, frequency), 0)
        return ops.logical_and(in_range, on_turn)

    # tfmot's name, which custom schedules written for tfmot call.
    _should_prune_in_step = _should_prune


def _arguments_of(config, class_name):
    """The constructor arguments in a schedule config, nested (tfmot) or flat."""
    if not isinstance(config, dict):
        raise TypeError(f"A {class_name} config must be a dict. Received: config={config!r}")
    if set(config) == {"class_name", "config"}:
        if config["class_name"] != class_name:
            raise ValueError(
                f"This config is for a {config['class_name']}, not a {class_name}. "
                f"Received: class_name={config['class_name']!r}"
            )
        return dict(config["config"])
    return dict(config)


def _check_sparsity(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(
            f"`{name}` must be a number in [0, 1): the fraction of weights set to zero "
            f"(1.0 would remove every weight). Received: {name}={value!r}"
        )


def _check_step(name, value, allow_minus_one=False):
    ok = isinstance(value, int) and not isinstance(value, bool)
    ok = ok and (value >= 0 or (allow_minus_one and value == -1))
    if not ok:
        expected = "a non-negative int" + (", or -1 for no end" if allow_minus_one else "")
        raise ValueError(f"`{name}` must be {expected}. Received: {name}={value!r}")


def _check_frequency(value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            "`frequency` must be a positive int (update the masks every `frequency` steps). "
            f"Received: frequency={value!r}"
        )


@keras.saving.register_keras_serializable(package="tfcompress")
class ConstantSparsity(PruningSchedule):
    """Prune to a constant sparsity every `frequency` steps from `begin_step`.

    Args:
        target_sparsity: fraction of weights set to zero, in [0, 1).
        begin_step: first step at which the masks are updated.
        end_step: last step at which the masks may be updated; -1 (default)
            keeps updating until training ends.
        frequency: update the masks every `frequency` steps.

    Example:

    >>> schedule = ConstantSparsity(0.8, begin_step=0, frequency=10)
    >>> should_prune, sparsity = schedule(20)
    >>> bool(should_prune), round(float(sparsity), 4)
    (True, 0.8)
    """

    def __init__(
        self, target_sparsity: float, begin_step: int = 0, end_step: int = -1, frequency: int = 100
    ) -> None:
        _check_sparsity("target_sparsity", target_sparsity)
        _check_step("begin_step", begin_step)
        _check_step("end_step", end_step, allow_minus_one=True)
        if end_step != -1 and end_step < begin_step:
            raise ValueError(
                "`end_step` must be -1 (no end) or at least `begin_step`. "
                f"Received: begin_step={begin_step}, end_step={end_step}"
            )
        _check_frequency(frequency)
        self.target_sparsity = float(target_sparsity)
        self.begin_step = begin_step
        self.end_step = end_step
        self.frequency = frequency

    def __call__(self, step):
        should_prune = self._should_prune(step, self.begin_step, self.end_step, self.frequency)
        return should_prune, ops.convert_to_tensor(self.target_sparsity, "float32")

    def target(self) -> float:
        return self.target_sparsity

    def _arguments(self):
        return {
            "target_sparsity": self.target_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
        }


@keras.saving.register_keras_serializable(package="tfcompress")
class PolynomialDecay(PruningSchedule):
    """Raise sparsity from `initial_sparsity` to `final_sparsity` polynomially.

    `sparsity(step) = final + (initial - final) * (1 - p) ** power` with
    `p = clip((step - begin_step) / (end_step - begin_step), 0, 1)`: fast at
    first, slowly at the end (tfmot's meaning).

    Args:
        initial_sparsity: sparsity at `begin_step`, in [0, 1).
        final_sparsity: sparsity from `end_step` on, in [0, 1).
        begin_step: first step at which the masks are updated.
        end_step: step at which `final_sparsity` is reached; must be greater
            than `begin_step`. Masks are not updated after it.
        power: exponent of the polynomial.
        frequency: update the masks every `frequency` steps.

    Example:

    >>> schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=100, frequency=10)
    >>> round(float(schedule(100)[1]), 4)
    0.8
    """

    def __init__(
        self,
        initial_sparsity: float,
        final_sparsity: float,
        begin_step: int,
        end_step: int,
        power: float = 3,
        frequency: int = 100,
    ) -> None:
        _check_sparsity("initial_sparsity", initial_sparsity)
        _check_sparsity("final_sparsity", final_sparsity)
        _check_step("begin_step", begin_step)
        _check_step("end_step", end_step)
        if end_step <= begin_step:
            raise ValueError(
                "`end_step` must be greater than `begin_step`: the sparsity rises between "
                f"them. Received: begin_step={begin_step}, end_step={end_step}"
            )
        if isinstance(power, bool) or not isinstance(power, (int, float)) or not 0 < power < 1e6:
            raise ValueError(
                f"`power` must be a positive, finite number. Received: power={power!r}"
            )
        _check_frequency(frequency)
        self.initial_sparsity = float(initial_sparsity)
        self.final_sparsity = float(final_sparsity)
        self.begin_step = begin_step
        self.end_step = end_step
        self.power = power
        self.frequency = frequency

    def __call__(self, step):
        should_prune = self._should_prune(step, self.begin_step, self.end_step, self.frequency)
        step = ops.cast(ops.convert_to_tensor(step, "int64"), "float32")
        progress = (step - self.begin_step) / float(self.end_step - self.begin_step)
        progress = ops.clip(progress, 0.0, 1.0)
        sparsity = self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * ops.power(
            1.0 - progress, float(self.power)
        )
        return should_prune, ops.cast(sparsity, "float32")

    def target(self) -> float:
        return self.final_sparsity

    def _arguments(self):
        return {
            "initial_sparsity": self.initial_sparsity,
            "final_sparsity": self.final_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "power": self.power,
            "frequency": self.frequency,
        }


def _is_tfmot_schedule(obj):
    return type(obj).__module__.startswith("tensorflow_model_optimization") and hasattr(
        obj, "get_config"
    )


#: What `schedule=` takes: a schedule, a float target sparsity, or a schedule's config.
ScheduleLike: TypeAlias = PruningSchedule | float | dict[str, Any]


def get(identifier: ScheduleLike) -> PruningSchedule:
    """Return a schedule from a schedule, a float or a config.

    A float `s` means `ConstantSparsity(s, begin_step=1)`: pruned at the first
    training step (step 1), masks refreshed every 100 steps (tfmot's default
    frequency).
    """
    if isinstance(identifier, PruningSchedule):
        return identifier
    if isinstance(identifier, float):
        return ConstantSparsity(identifier, begin_step=1)
    if isinstance(identifier, dict):
        known: dict[str, type[PruningSchedule]] = {
            "ConstantSparsity": ConstantSparsity,
            "PolynomialDecay": PolynomialDecay,
        }
        if set(identifier) == {"class_name", "config"} and identifier["class_name"] in known:
            # tfmot's get_config() form.
            return known[identifier["class_name"]].from_config(identifier)
        try:
            schedule = keras.saving.deserialize_keras_object(identifier)
        except (TypeError, ValueError, KeyError) as e:
            raise TypeError(
                "`schedule` is a dict but not a pruning schedule's config (the "
                "{'class_name': ..., 'config': {...}} of ConstantSparsity, PolynomialDecay or a "
                f"registered PruningSchedule): {str(e).splitlines()[0]}. Received: "
                f"schedule={identifier!r}"
            ) from None
        if isinstance(schedule, PruningSchedule):
            return schedule
    elif _is_tfmot_schedule(identifier):
        # A schedule object of tfmot itself (code that still imports tfmot's schedules).
        return get(identifier.get_config())
    raise TypeError(
        "`schedule` must be a tfcompress.prune schedule (ConstantSparsity, PolynomialDecay), "
        f"or a float target sparsity. Received: schedule={identifier!r}"
    )
