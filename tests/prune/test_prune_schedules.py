import keras
import numpy as np
import pytest

from tfcompress.prune import ConstantSparsity, PolynomialDecay


def _eval(schedule, step):
    should_prune, sparsity = schedule(step)
    return bool(should_prune), float(sparsity)


def test_constant_sparsity_follows_tfmot_rules():
    s = ConstantSparsity(0.8, begin_step=10, end_step=50, frequency=5)
    assert _eval(s, 9) == (False, pytest.approx(0.8))
    assert _eval(s, 10)[0] and _eval(s, 15)[0] and _eval(s, 50)[0]
    assert not _eval(s, 12)[0] and not _eval(s, 55)[0]
    assert _eval(ConstantSparsity(0.5, 0, frequency=1), 10_000)[0]  # end_step=-1: no end


def test_polynomial_decay_values():
    s = PolynomialDecay(0.2, 0.8, begin_step=0, end_step=100, power=3, frequency=10)
    assert _eval(s, 0) == (True, pytest.approx(0.2))
    assert _eval(s, 50)[1] == pytest.approx(0.8 + (0.2 - 0.8) * 0.5**3)
    assert _eval(s, 100) == (True, pytest.approx(0.8))
    assert _eval(s, 110) == (False, pytest.approx(0.8))
    assert not _eval(s, 55)[0]


def test_schedule_works_on_tensors():
    s = PolynomialDecay(0.0, 0.5, 0, 10, frequency=2)
    should_prune, sparsity = s(keras.ops.convert_to_tensor(4, "int64"))
    assert bool(should_prune) and 0 < float(sparsity) < 0.5


@pytest.mark.parametrize(
    "schedule",
    [
        ConstantSparsity(0.7, 3, end_step=30, frequency=3),
        PolynomialDecay(0.1, 0.9, 5, 50, power=2, frequency=7),
    ],
)
def test_config_round_trip(schedule):
    config = schedule.get_config()
    assert type(schedule).from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert restored == schedule


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ConstantSparsity(1.0, 0), r"\[0, 1\).*Received: target_sparsity=1.0"),
        (lambda: ConstantSparsity(-0.1, 0), r"Received: target_sparsity=-0.1"),
        (lambda: PolynomialDecay(0.0, 1.5, 0, 10), r"Received: final_sparsity=1.5"),
        (
            lambda: PolynomialDecay(0.0, 0.5, 10, 10),
            r"end_step.*greater.*begin_step=10, end_step=10",
        ),
        (lambda: PolynomialDecay(0.0, 0.5, 10, 5), r"begin_step=10, end_step=5"),
        (lambda: ConstantSparsity(0.5, 10, end_step=5), r"begin_step=10, end_step=5"),
        (lambda: ConstantSparsity(0.5, 0, frequency=0), r"Received: frequency=0"),
        (lambda: ConstantSparsity(0.5, -3), r"Received: begin_step=-3"),
    ],
)
def test_bad_schedule_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_default_schedules_are_not_shared():
    from tfcompress.prune import schedules

    assert schedules.get(0.25) is not schedules.get(0.25)
    np.testing.assert_allclose(float(schedules.get(0.25)(0)[1]), 0.25)
