"""Defects an adversarial review found in steps and state, each kept fixed by its reproducer.

Checkpoint files have their own: ``tests/test_checkpoint_hardening.py``.
"""
import warnings

import numpy as np
import pytest

from numbaopt import optimizers
from tests.cases import NAMES, assert_unchanged, snapshot


def test_iterations_beyond_int64_are_refused_where_they_enter():
    """Item 3: 2**63 was accepted by set_weights, then broke get_weights and every save."""
    opt = optimizers.Adam()
    for bad in (np.array(2**63, np.uint64), np.array(2**64 - 1, np.uint64), np.array(1e300)):
        with pytest.raises(ValueError, match="iterations must be an integer from 0 to 2\\*\\*63 - 1"):
            opt.set_weights([bad])
    opt.set_weights([np.array(2**63 - 1, np.uint64)])
    assert opt.iterations == 2**63 - 1 and opt.get_weights()[0] == 2**63 - 1


def _race_inputs(dtype=np.float32, n=200_000):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype)
    return a, b


@pytest.mark.parametrize("name", NAMES)
def test_a_gradient_that_is_another_parameter_is_refused_and_changes_nothing(name):
    """Item 9: ``[(g, a), (a, b)]`` raced: threads wrote ``a`` while others read it as a gradient."""
    a, b = _race_inputs()
    opt = getattr(optimizers, name)()
    opt.apply_gradients([(np.ones_like(a), a), (np.ones_like(b), b)])  # bind the slots
    before = snapshot(opt, [a, b])
    with pytest.raises(ValueError, match="gradient 1 is parameter 0 of the same step"):
        opt.apply_gradients([(np.ones_like(a), a), (a, b)])
    assert_unchanged(before, opt, [a, b])


def test_a_gradient_overlapping_another_parameter_is_refused():
    buffer = np.zeros(2001, np.float32)
    a = buffer[:1000]
    b = buffer[1000:2000]
    opt = optimizers.Adam()
    with pytest.raises(ValueError, match="gradient 0 overlaps parameter 1"):
        opt.apply_gradients([(buffer[500:1500], a), (np.ones(1000, np.float32), b)])
    assert opt.iterations == 0 and opt.state().slots == {}


def test_a_gradient_that_is_its_own_parameter_is_deterministic_and_allowed():
    """Each element reads its gradient before it writes the parameter: nothing races."""
    first, second = np.linspace(-1, 1, 100_000), np.linspace(-1, 1, 100_000)
    optimizers.Adam().apply_gradients([(first, first)])
    optimizers.Adam().apply_gradients([(second.copy(), second)])
    assert first.tobytes() == second.tobytes()


@pytest.mark.parametrize("setting", [{"lr": 1e300}, {"decay": 1e300}, {"clipnorm": 1e300}, {"clipvalue": 1e300},
                                     {"epsilon": 1e300}])
def test_hyperparameters_beyond_the_parameters_dtype_are_refused_before_anything_changes(setting):
    """Item 10: with warnings as errors, lr=1e300 updated the float64 parameter, then raised
    on the float32 cast: a half-applied step."""
    key = next(iter(setting))
    name = "Adadelta" if key == "epsilon" else "Adam"
    opt = getattr(optimizers, name)()
    params = [np.ones(4, np.float64), np.ones(4, np.float32)]
    grads = [np.full(4, 0.5), np.full(4, 0.5, np.float32)]
    opt.apply_gradients(zip(grads, params))
    setattr(opt, key, setting[key])
    before = snapshot(opt, params)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=f"{key}=1e\\+300 does not fit the float32 parameters"):
            opt.apply_gradients(zip(grads, params))
    assert_unchanged(before, opt, params)
    optimizers.Adam(**{k: v for k, v in setting.items() if k != "epsilon"}).apply_gradients(
        [(np.ones(2), np.ones(2))]
    )  # float64 parameters take it


def test_a_long_float32_run_does_not_stop_on_underflow_with_floating_point_errors_raised():
    """beta_2**t underflows to zero after enough float32 steps, as in Keras: no error for it."""
    opt = optimizers.Adam(beta_1=0.5, beta_2=0.5)
    opt.set_weights([np.array(400), np.zeros(3, np.float32), np.zeros(3, np.float32)])
    param = np.ones(3, np.float32)
    with np.errstate(all="raise"):
        opt.apply_gradients([(np.ones(3, np.float32), param)])
    assert np.isfinite(param).all() and opt.iterations == 401


@pytest.mark.parametrize("how", ["constructor", "from_config", "assignment"])
@pytest.mark.parametrize("key", ["lr", "clipnorm"])
def test_huge_integers_are_out_of_range_not_overflow(how, key):
    """Item 11: ``Adam(lr=10**400)`` raised OverflowError; now the ValueError of any bad value."""
    with pytest.raises(ValueError, match=f"{key} must be finite"):
        if how == "constructor":
            optimizers.Adam(**{key: 10**400})
        elif how == "from_config":
            optimizers.Adam.from_config({key: 10**400})
        else:
            setattr(optimizers.Adam(), key, 10**400)


def test_slots_of_another_dtype_are_refused_exactly():
    """Item 12: float64 slots were cast down onto float32 parameters (1e-63 became 0.0)."""
    opt = optimizers.Adam()
    param = np.ones(3, np.float32)
    opt.set_weights([np.array(1), np.full(3, 1e-63), np.full(3, 1e-63)])
    with pytest.raises(TypeError, match="ms\\[0\\] has dtype float64, but parameter 0 has dtype float32"):
        opt.apply_gradients([(np.ones(3, np.float32), param)])
    assert param.tolist() == [1, 1, 1] and opt.iterations == 1
    bound = optimizers.Adam()
    bound.apply_gradients([(np.ones(3, np.float32), param)])
    with pytest.raises(TypeError, match="has dtype float64, but parameter 0 has dtype float32"):
        bound.set_weights([np.array(1), np.zeros(3), np.zeros(3)])


def test_errors_about_loaded_state_name_where_it_came_from():
    """Item 13: the message blamed set_weights when the user had loaded a checkpoint."""
    opt = optimizers.Adam()
    opt.set_weights([np.array(1), np.zeros(3), np.zeros(3)])
    with pytest.raises(ValueError, match="the first step after set_weights: ms\\[0\\] has shape \\(3,\\), "
                                         "but parameter 0 has shape \\(4,\\)"):
        opt.apply_gradients([(np.ones(4), np.ones(4))])
    opt.set_state_origin("loading the checkpoint run/opt.h5")
    with pytest.raises(ValueError, match="the first step after loading the checkpoint run/opt.h5"):
        opt.apply_gradients([(np.ones(4), np.ones(4))])
