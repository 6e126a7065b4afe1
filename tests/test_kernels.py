"""The CPU kernels' machine code and plumbing: what keeps a step at the memory's speed."""
import platform
import re

import numpy as np
import pytest

from numbaopt import devices, optimizers
from tests.cases import DTYPES, NAMES, make_params

cpu = pytest.importorskip("numbaopt.kernels.cpu")  # imports Numba, which the core depends on

#: Packed (SIMD) float32 arithmetic in x86 assembly: addps, vmulps, vdivps, vsqrtps, ...
PACKED_FLOAT32 = re.compile(r"\bv?(add|sub|mul|div|sqrt|max|min)ps\b")


def _fresh_asm(kernel, *args):
    """The assembly of ``kernel`` compiled anew with its own options (cached code cannot be inspected)."""
    from numba import njit

    options = {k: v for k, v in kernel.targetoptions.items() if k != "nopython"}
    fresh = njit(**options)(kernel.py_func)
    fresh(*args)
    return "\n".join(fresh.inspect_asm().values())


def _step_arguments(name, dtype, n=100):
    opt = getattr(optimizers, name)()
    p = np.ones(n, dtype)
    g = np.full(n, 0.5, dtype)
    slots = np.zeros((len(opt.slot_names), n), dtype)
    one = dtype(1)
    return (
        devices.CPU.addresses([p]), devices.CPU.addresses([g]), slots, np.zeros(1, np.int64),
        np.array([[0, 0, n]], np.int64), (one, one, dtype(np.inf)), opt.step_scalars(dtype),
    ), (p, g)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="reads x86 assembly")
@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_update_loops_are_vectorised(name):
    """A scalar loop (one element per instruction) runs at a fraction of the bandwidth:
    a Python-style division check or an aliasing doubt is enough to get one."""
    args, _ = _step_arguments(name, np.float32)
    asm = _fresh_asm(getattr(cpu, f"{name.lower()}_step"), *args)
    assert PACKED_FLOAT32.search(asm), f"{name.lower()}_step has no packed float32 arithmetic"


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="reads x86 assembly")
def test_sum_of_squares_is_vectorised():
    g = np.ones(1000, np.float32)
    partial = np.zeros(1)
    asm = _fresh_asm(cpu.sum_of_squares, devices.CPU.addresses([g]), np.array([[0, 0, 1000]], np.int64),
                     np.zeros((1, 1), np.float32), partial)
    assert re.search(r"\bv?(add|mul)pd\b", asm), "sum_of_squares has no packed float64 arithmetic"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_unclipped_loop_equals_clipped_loop_with_nothing_to_clip(name, dtype):
    """The kernels skip ``clip_gradient`` when it cannot change a value; both loops must agree bitwise."""
    kernel = getattr(cpu, f"{name.lower()}_step")
    results = []
    for clip in ((dtype(1), dtype(1), dtype(np.inf)), (dtype(1), dtype(1), np.finfo(dtype).max)):
        params = make_params(dtype, [(257,)])
        grads = [p * dtype(0.1) for p in make_params(dtype, [(257,)], seed=1)]
        args, _ = _step_arguments(name, dtype, 257)
        slots = args[2]
        kernel(devices.CPU.addresses(params), devices.CPU.addresses(grads), slots, args[3],
               np.array([[0, 0, 200], [0, 200, 257]], np.int64), clip, args[6])
        results.append((params[0].copy(), slots.copy()))
    assert results[0][0].tobytes() == results[1][0].tobytes()
    assert results[0][1].tobytes() == results[1][1].tobytes()


def test_data_addresses_match_the_array_interface():
    """The compiled reading of NumPy's array objects agrees with NumPy's own answer."""
    assert devices._data_field() is not None
    base = np.arange(60, dtype=np.float64).reshape(6, 10)
    arrays = [base, base[2:], base[:, 3:], base[1:4, 2:5].copy(), np.empty(0, np.float32), np.ones(()),
              np.zeros(5, np.float32)[1:], np.frombuffer(bytearray(16), np.float32)]
    expected = [a.__array_interface__["data"][0] for a in arrays]
    assert devices.CPU.addresses(arrays).tolist() == expected
