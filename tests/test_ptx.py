"""Every real CUDA kernel, for each dtype, compiled to PTX without a GPU (tox -e ptx).

The CUDA simulator runs kernels as Python and type-checks nothing; this compiles the
kernels for the GPU with the NVVM that ``numba-cuda[cu12]`` installs, so a kernel that
would not compile on a GPU fails here. It needs the real CUDA target (no
``NUMBA_ENABLE_CUDASIM``) but no GPU and no driver.
"""
import numba
import numpy as np
import pytest

from numbaopt import optimizers, quantization
from numbaopt.clipping import clip_arguments
from numbaopt.phases import ElementPass
from tests.cases import DTYPES, NAMES

pytestmark = [pytest.mark.cuda, pytest.mark.ptx]

#: The architecture the kernels are compiled for. Any would do: the check is that Numba
#: can type and lower every kernel for the GPU, not how fast the code is.
COMPUTE_CAPABILITY = (7, 5)


class _Device:
    """What Numba asks the current device for when it compiles a device function."""

    compute_capability = COMPUTE_CAPABILITY


@pytest.fixture
def kernels(monkeypatch):
    """``numbaopt.kernels.cuda`` on the real CUDA target, with no GPU in the machine.

    numba-cuda compiles a called device function for "the current device", which needs a
    driver; compile_ptx itself does not. The stand-in device gives it the target instead.
    """
    from numba.cuda import dispatcher

    from numbaopt.kernels import cuda

    assert not cuda.SIMULATOR, "the PTX check needs the real CUDA target: unset NUMBA_ENABLE_CUDASIM"
    monkeypatch.setattr(dispatcher, "get_current_device", lambda: _Device)
    return cuda


def compile_ptx(kernel, signature):
    from numba import cuda

    ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=COMPUTE_CAPABILITY)
    return ptx


def update_signature(name, dtype):
    """The argument types ``SlotStore.run`` passes to optimizer ``name``'s kernel."""
    dt = numba.from_dtype(np.dtype(dtype))
    opt = getattr(optimizers, name)()
    clip = numba.typeof(clip_arguments(1.0, 0.5, 2.0, dtype))
    scalars = numba.typeof(opt.step_scalars(opt.step_inputs(), dtype))
    return (numba.int64[::1], numba.int64[::1], dt[:, ::1], numba.int64[::1], numba.int64[:, ::1], clip, scalars, dt[::1])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_update_kernel_compiles(kernels, name, dtype):
    cls = getattr(optimizers, name)
    kernel = kernels.update_kernel(cls.rule, len(cls.slot_names)).kernel
    ptx = compile_ptx(kernel, update_signature(name, dtype))
    assert ".entry" in ptx
    if dtype == np.float32:
        # Every scalar reaches the kernel in the parameters' dtype, so a float32 step has no
        # float64 arithmetic: a stray double would halve the speed on most GPUs.
        assert ".f64" not in ptx, f"{name}'s update kernel does float64 arithmetic on float32 parameters"
    else:
        assert ".f64" in ptx


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_reduction_and_fill_kernels_compile(kernels, dtype):
    dt = numba.from_dtype(np.dtype(dtype))
    signatures = {
        "sum_of_squares": (numba.int64[::1], numba.int64[:, ::1], dt[::1], numba.float64[::1], numba.float64[:, ::1]),
        "total": (numba.float64[::1], numba.float64[::1], numba.float64[:, ::1]),
        "fill_zero": (dt[:, ::1],),
    }
    for kernel_name, signature in signatures.items():
        ptx = compile_ptx(kernels.HELPER_KERNELS[kernel_name], signature)
        assert ".entry" in ptx, kernel_name
    assert set(kernels.HELPER_KERNELS) == set(signatures)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_phase_kernels_compile(kernels, dtype, monkeypatch):
    """The element and tensor passes of optimizers whose state has other shapes
    (``tests/extending_shapes.py``), as ``SlotStore.run_phases`` launches them."""
    from numbaopt import registry
    from tests import extending_shapes

    monkeypatch.setattr(registry, "_CLASSES", dict(registry._CLASSES))
    dt = numba.from_dtype(np.dtype(dtype))
    clip = numba.typeof(clip_arguments(1.0, 0.5, 2.0, dtype))
    i64, i64_2d = numba.int64[::1], numba.int64[:, ::1]
    for cls in extending_shapes.declare():
        scalars = numba.typeof(cls.step_scalars(cls().step_inputs(), dtype))
        n_element = sum(slot.shape == "element" for slot in cls.slots)
        for phase in cls.phases:
            if isinstance(phase, ElementPass):
                launcher = kernels.phase_kernel("element", phase.rule, n_element)
                signature = (i64, i64, dt[:, ::1], i64, i64_2d, clip, scalars, dt[::1], dt[::1], i64, numba.int64)
            else:
                launcher = kernels.phase_kernel("tensor", phase.function, len(cls.slots))
                signature = (i64, i64, dt[::1], i64_2d, i64_2d, i64_2d, i64, clip, scalars, dt[::1])
            assert ".entry" in compile_ptx(launcher.kernel, signature), (cls.__name__, phase)


def _keras3_variants():
    """(id, optimizer) for every registered Keras 3 optimizer at each of its settings
    (``tests/keras3_cases.py``): the variants have rules of their own (amsgrad, centered ...)."""
    from tests.keras3_cases import CLASSES, configurations

    return [(case, CLASSES[name](**kwargs)) for case, name, kwargs in configurations()]


KERAS3_VARIANTS = _keras3_variants()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", [c for c, _ in KERAS3_VARIANTS], ids=lambda c: f"keras3-{c}")
def test_keras3_update_kernel_compiles(kernels, case, dtype):
    opt = dict(KERAS3_VARIANTS)[case]
    dt = numba.from_dtype(np.dtype(dtype))
    clip = numba.typeof(clip_arguments(1.0, 0.5, 2.0, dtype))
    scalars = numba.typeof(opt.step_scalars(opt.step_inputs(), dtype))
    i64, i64_2d = numba.int64[::1], numba.int64[:, ::1]
    if opt.phases:  # a kernel per phase (Lamb, Adafactor)
        n_element = sum(slot.shape == "element" for slot in opt.slots)
        compiled = []
        for phase in opt.phases:
            if isinstance(phase, ElementPass):
                launcher = kernels.phase_kernel("element", phase.rule, n_element)
                signature = (i64, i64, dt[:, ::1], i64, i64_2d, clip, scalars, dt[::1], dt[::1], i64, numba.int64)
            else:
                launcher = kernels.phase_kernel("tensor", phase.function, len(opt.slots))
                signature = (i64, i64, dt[::1], i64_2d, i64_2d, i64_2d, i64, clip, scalars, dt[::1])
            # A tensor pass may sum in float64 on purpose (Lamb's norms, Adafactor's means:
            # closer to TensorFlow's tree sums than a float32 loop); element passes may not.
            compiled.append((compile_ptx(launcher.kernel, signature), isinstance(phase, ElementPass)))
    else:
        kernel = kernels.update_kernel(opt.rule, len(opt.slot_names)).kernel
        signature = (i64, i64, dt[:, ::1], i64, i64_2d, clip, scalars, dt[::1])
        compiled = [(compile_ptx(kernel, signature), True)]
    for ptx, per_element in compiled:
        assert ".entry" in ptx
        if dtype == np.float32 and per_element:
            assert ".f64" not in ptx, f"{case}'s kernel does float64 arithmetic on float32 parameters"
        elif dtype == np.float64:
            assert ".f64" in ptx


#: (parameter format, slot format, rounding) of the converting and 8-bit kernels.
STORAGE_FORMATS = [("native", "bfloat16", False), ("native", "q8", False), ("float16", "native", False),
                   ("float16", "native", True), ("bfloat16", "q8", True), ("bfloat16", "bfloat16", False)]


@pytest.mark.parametrize("formats", STORAGE_FORMATS, ids=lambda f: "-".join(map(str, f)))
@pytest.mark.parametrize("name", ["Adam", "SGD", "RMSprop"], ids=str.lower)
def test_storage_kernels_compile(kernels, name, formats):
    """16-bit parameters and bfloat16 or 8-bit slots (``numbaopt.halves``, ``quantization``):
    a float32 step with no float64 arithmetic (the bit conversions are integer code)."""
    parameters, slots, stochastic = formats
    cls = getattr(optimizers, name)
    maps = tuple(quantization.map_index(slot.sign) for slot in cls.slots)  # as ``slots`` gives any storage but the native
    launcher = kernels.update_kernel(cls.rule, len(cls.slot_names), True, (parameters, slots), stochastic, maps)
    memory = numba.uint16 if parameters != "native" else numba.float32
    stored = {"native": numba.float32, "bfloat16": numba.uint16, "q8": numba.uint8}[slots]
    clip = numba.typeof(clip_arguments(1.0, 0.5, 2.0, np.float32))
    scalars = numba.typeof(cls().step_scalars(cls().step_inputs(), np.float32))
    i64 = numba.int64[::1]
    signature = (i64, i64, stored[:, ::1], i64, numba.int64[:, ::1], clip, scalars, memory[::1], numba.uint64)
    if slots == "q8":
        signature += (numba.float32[:, ::1],)  # the scales (the maps are compiled in)
    ptx = compile_ptx(launcher.kernel, signature)
    assert ".entry" in ptx and ".f64" not in ptx

