"""The one gradient cast policy (``numbaopt.devices.check_cast``), for NumPy arrays,
Python numbers and lists, and JAX arrays where JAX is installed. (torch tensors:
tests/test_torch.py.)"""
import numpy as np
import pytest

from numbaopt import optimizers
from tests.cases import DTYPES

SAFE = {np.float32: [np.float16, np.int8, np.int16, np.uint8], np.float64: [np.float16, np.float32, np.int32, np.int64]}
UNSAFE = {np.float32: [np.float64, np.int64, np.complex64, np.bool_], np.float64: [np.complex128, np.bool_]}


def step(grad, param):
    """One SGD step of ``grad`` on ``param`` beside a second, valid pair: the bad one is index 1."""
    opt = optimizers.SGD(lr=0.5)
    opt.apply_gradients([(np.ones_like(param), np.zeros_like(param)), (grad, param)])
    return opt


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_safe_casts_widen_exactly(dtype):
    values = np.array([0.5, -1.25, 3.0, 8.0])
    for source in SAFE[dtype]:
        param = np.zeros(4, dtype)
        step(values.astype(source), param)
        np.testing.assert_array_equal(param, -0.5 * values.astype(source).astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_unsafe_casts_are_refused_naming_the_gradient(dtype):
    for source in UNSAFE[dtype]:
        param = np.zeros(4, dtype)
        message = f"gradient 1 has dtype {np.dtype(source).name}, which cannot be cast safely"
        with pytest.raises(TypeError, match=message):
            step(np.ones(4, source), param)
        assert not param.any()


def test_a_bool_gradient_is_refused_although_numpy_calls_the_cast_safe():
    assert np.can_cast(np.bool_, np.float32, "safe")
    with pytest.raises(TypeError, match="not a bool"):
        step(np.ones(3, bool), np.zeros(3, np.float32))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_python_numbers_and_lists_take_the_parameters_dtype(dtype):
    """Python numbers have no precision of their own (NEP 50's weak scalars): a list of
    floats is read in the parameter's dtype, as ``np.float32(1) * 0.1`` stays float32."""
    values = [0.1, -2.0, 1e-3]
    param, reference = np.zeros(3, dtype), np.zeros(3, dtype)
    step(values, param)
    step(np.array(values, dtype), reference)
    np.testing.assert_array_equal(param, reference)
    scalar = np.zeros((), dtype)
    step(0.1, scalar)
    assert scalar == dtype(-0.5) * dtype(0.1)


@pytest.mark.parametrize(("grad", "what"), [([True, False], "bools"), ([1 + 2j, 0j], "complex numbers"),
                                            (["a", "b"], "dtype <U1"), ([[1.0], [2.0, 3.0]], "")])
def test_lists_of_other_values_are_refused(grad, what):
    param = np.zeros(2)
    with pytest.raises(TypeError, match=f"gradient 1 is not a numeric array.*{what}"):
        step(grad, param)
    assert not param.any()


def test_numpy_scalars_keep_their_dtype():
    with pytest.raises(TypeError, match="gradient 1 has dtype float64"):
        step(np.float64(0.5), np.zeros((), np.float32))
    param = np.zeros((), np.float64)
    step(np.float32(0.5), param)
    assert param == -0.25


@pytest.mark.jax
def test_jax_arrays_follow_the_same_policy():
    import jax.numpy as jnp
    param = np.zeros(3, np.float32)
    step(jnp.ones(3, jnp.bfloat16), param)
    np.testing.assert_array_equal(param, [-0.5] * 3)
    with pytest.raises(TypeError, match="gradient 1 has dtype complex64"):
        step(jnp.ones(3, jnp.complex64), np.zeros(3, np.float32))
