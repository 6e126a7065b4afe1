"""Every optimizer × option × dtype against the float64 NumPy transcription of the spec."""
import numpy as np
import pytest

from numbaopt import optimizers, tuning
from tests.cases import DTYPES, NAMES, SHAPES, full_config, gradient_steps, make_params, option_sets, relative_error
from tests.reference import SLOTS, reference_run

TOLERANCE = {np.float32: 2e-5, np.float64: 1e-12}

CASES = [
    pytest.param(name, option, kwargs, dtype, id=f"{name.lower()}-{option}-{np.dtype(dtype).name}")
    for name in NAMES
    for option, kwargs in option_sets(name)
    for dtype in DTYPES
]


@pytest.mark.parametrize("name", NAMES)
def test_every_registered_optimizer_has_a_reference(name):
    """The reference is written from the spec by hand: a new optimizer needs its own."""
    assert name in SLOTS, f"tests/reference.py has no transcription of {name}'s update"
    assert SLOTS[name] == getattr(optimizers, name).slot_names


@pytest.mark.parametrize("name, option, kwargs, dtype", CASES)
def test_matches_reference(name, option, kwargs, dtype):
    params = make_params(dtype)
    initial = [p.copy() for p in params]
    steps = gradient_steps()
    opt = getattr(optimizers, name)(**kwargs)
    expected = reference_run(name, full_config(name, kwargs), initial, steps)
    for k, grads in enumerate(steps):
        opt.apply_gradients(zip([g.astype(dtype) for g in grads], params))
        if k % 10 == 9 or k == len(steps) - 1:
            ref_params, ref_slots = expected[k]
            for i, (p, r) in enumerate(zip(params, ref_params)):
                assert relative_error(p, r) <= TOLERANCE[dtype], f"step {k + 1}, parameter {i}"
            weights = opt.get_weights()
            slots = weights[len(weights) - len(SLOTS[name]) * len(params):]
            for s, kind in enumerate(SLOTS[name]):
                for i in range(len(params)):
                    err = relative_error(slots[s * len(params) + i], ref_slots[kind][i])
                    assert err <= TOLERANCE[dtype], f"step {k + 1}, slot {kind}[{i}]"
    assert opt.iterations == len(steps)


@pytest.mark.parametrize("name", NAMES)
def test_many_chunks_and_mixed_dtypes(name, monkeypatch):
    """Tensors split over many chunks, and float32 and float64 parameters in one call."""
    monkeypatch.setattr(tuning, "CHUNK_ELEMENTS", 7)
    shapes = [(40,), (3, 11), (), (64,)]
    dtypes = [np.float32, np.float64, np.float64, np.float32]
    params = [p.astype(d) for p, d in zip(make_params(np.float64, shapes), dtypes)]
    initial = [p.astype(np.float64) for p in params]
    steps = [[g.astype(d) for g, d in zip(grads, dtypes)] for grads in gradient_steps(shapes, steps=12)]
    kwargs = {"clipnorm": 1.0}
    opt = getattr(optimizers, name)(**kwargs)
    for grads in steps:
        opt.apply_gradients(zip(grads, params))
    ref_params, _ = reference_run(name, full_config(name, kwargs), initial, steps)[-1]
    for p, r in zip(params, ref_params):
        assert p.dtype in (np.float32, np.float64)
        assert relative_error(p, r) <= TOLERANCE[p.dtype.type]


@pytest.mark.parametrize("name", NAMES)
def test_nan_and_inf_propagate(name):
    """NaN and Inf gradients reach the parameters, as in Keras: they are not dropped."""
    p = np.ones(4)
    opt = getattr(optimizers, name)()
    opt.apply_gradients([(np.array([np.nan, 1.0, np.inf, 1.0]), p)])
    assert np.isnan(p[0])
    assert not np.isfinite(p[2])
    assert np.isfinite(p[1]) and np.isfinite(p[3])


def test_clipnorm_with_nan_gradient_leaves_others_unclipped():
    """A NaN global norm fails Keras's ``norm >= clipnorm`` test: nothing is scaled."""
    a, b = np.zeros(2), np.zeros(2)
    opt = optimizers.SGD(lr=1.0, clipnorm=1e-3)
    opt.apply_gradients([(np.array([np.nan, 0.0]), a), (np.array([2.0, 3.0]), b)])
    np.testing.assert_array_equal(b, [-2.0, -3.0])


def test_float32_arithmetic_stays_float32():
    """A float32 step equals the same step with float32 scalars; float64 would differ."""
    p32 = np.array([1.0, 2.0, 3.0], np.float32)
    g32 = np.array([0.1, 0.2, 0.3], np.float32)
    optimizers.SGD(lr=0.1).apply_gradients([(g32, p32)])
    expected = np.array([1.0, 2.0, 3.0], np.float32) + (np.float32(0) * np.float32(0) - np.float32(0.1) * g32)
    np.testing.assert_array_equal(p32, expected)


def test_gradient_may_be_any_array_like():
    p = np.zeros((2, 2))
    optimizers.SGD(lr=1.0).apply_gradients([([[1, 2], [3, 4]], p)])
    np.testing.assert_array_equal(p, [[-1, -2], [-3, -4]])
    q = np.zeros((), np.float32)
    optimizers.SGD(lr=1.0).apply_gradients([(0.5, q)])
    assert q == np.float32(-0.5)


def test_float32_gradient_for_float64_parameter_is_cast():
    p = np.zeros(3)
    optimizers.SGD(lr=1.0).apply_gradients([(np.ones(3, np.float32), p)])
    np.testing.assert_array_equal(p, -np.ones(3))


def test_non_contiguous_gradient_is_copied():
    p = np.zeros(3)
    g = np.arange(6.0)[::2]
    optimizers.SGD(lr=1.0).apply_gradients([(g, p)])
    np.testing.assert_array_equal(p, [-0.0, -2.0, -4.0])


def test_empty_tensor_is_accepted():
    p, q = np.zeros((0, 3)), np.zeros(2)
    opt = optimizers.Adam()
    opt.apply_gradients([(np.zeros((0, 3)), p), (np.ones(2), q)])
    assert opt.iterations == 1 and q[0] < 0


@pytest.mark.parametrize("shapes", [SHAPES, [(1000,)] * 30])
def test_many_steps_agree_in_float64(shapes):
    """200 Adam steps with clipping over many tensors stay within 1e-12 of the transcription."""
    params = make_params(np.float64, shapes)
    initial = [p.copy() for p in params]
    steps = gradient_steps(shapes, steps=200)
    opt = optimizers.Adam(lr=0.01, decay=0.01, clipnorm=1.0, clipvalue=0.3)
    for grads in steps:
        opt.apply_gradients(zip(grads, params))
    ref, _ = reference_run("Adam", full_config("Adam", opt.get_config()), initial, steps)[-1]
    assert max(relative_error(p, r) for p, r in zip(params, ref)) <= 1e-12
