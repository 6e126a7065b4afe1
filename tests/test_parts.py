"""``apply_gradient_parts``: steps over parts of the parameters with their own settings
(what numbaopt.torch runs for param groups and missing gradients), on NumPy arrays."""
import numpy as np
import pytest

from numbaopt import optimizers
from tests.cases import DTYPES, NAMES, gradient_steps, make_params


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_one_part_of_every_parameter_is_apply_gradients(name, dtype):
    cls = getattr(optimizers, name)
    params, reference = make_params(dtype), make_params(dtype)
    opt, core = cls(clipnorm=1.0), cls(clipnorm=1.0)
    for grads in gradient_steps(steps=6, dtype=dtype):
        opt.apply_gradient_parts(grads, params, [(opt.get_config(), range(len(params)))])
        core.apply_gradients(zip(grads, reference))
    for p, q in zip(params, reference):
        np.testing.assert_array_equal(p, q)
    for w, v in zip(opt.get_weights(), core.get_weights()):
        np.testing.assert_array_equal(w, v)


@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_skipped_parameters_and_their_slots_are_untouched_and_the_others_step_alone(name):
    cls = getattr(optimizers, name)
    params = make_params(np.float64)
    alone = [params[1].copy(), params[3].copy()]
    opt, core = cls(clipnorm=0.3), cls(clipnorm=0.3)
    for grads in gradient_steps(steps=5):
        opt.apply_gradient_parts([None, grads[1], None, grads[3]], params, [(opt.get_config(), [1, 3])])
        core.apply_gradients([(grads[1], alone[0]), (grads[3], alone[1])])
    first = make_params(np.float64)
    for i in (0, 2):
        np.testing.assert_array_equal(params[i], first[i])
    np.testing.assert_array_equal(params[1], alone[0])
    np.testing.assert_array_equal(params[3], alone[1])
    assert opt.iterations == core.iterations == 5
    n = len(params)
    weights = opt.get_weights()
    for k in range(len(cls.slot_names)):
        for i in (0, 2):
            assert not weights[1 + len(cls.scalar_state) + k * n + i].any()


@pytest.mark.parametrize(("grads", "parts", "message"), [
    ([None, 1.0], [[0, 1]], "gradient 0 is None"),
    ([1.0, 1.0], [[0], [0]], "one part at most"),
    ([1.0, 1.0], [[2]], "one part at most"),
    ([1.0], [[0]], "1 gradients for 2 parameters"),
])
def test_bad_parts_are_refused_and_change_nothing(grads, parts, message):
    params = [np.zeros(()), np.zeros(())]
    opt = optimizers.Adam()
    with pytest.raises(ValueError, match=message):
        opt.apply_gradient_parts(grads, params, [(opt.get_config(), at) for at in parts])
    assert opt.iterations == 0 and not any(p.any() for p in params)
