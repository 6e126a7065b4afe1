"""The gradient cast policy on a CUDA device (tox -e cudasim; on a GPU without the simulator).

Numba device arrays cannot cast, so a safe cast is refused with how to do it, and an unsafe
one with the host's message; torch and CuPy gradients (cast on the device by their own
library) need a GPU and are covered by the same ``check_cast``."""
import numpy as np
import pytest

from numbaopt import optimizers

pytestmark = [pytest.mark.cuda]


@pytest.fixture(scope="module")
def cuda():
    from numba import cuda

    return cuda


@pytest.mark.parametrize(("source", "message"), [
    (np.float64, "gradient 0 has dtype float64, which cannot be cast safely"),
    (np.float16, "a Numba device array is not cast: cast it on the device first"),
])
def test_device_gradients_of_another_dtype_are_refused_with_the_policys_reason(cuda, source, message):
    param = cuda.to_device(np.zeros(4, np.float32))
    opt = optimizers.Adam()
    with pytest.raises(TypeError, match=message):
        opt.apply_gradients([(cuda.to_device(np.ones(4, source)), param)])
    assert opt.iterations == 0 and not param.copy_to_host().any()
