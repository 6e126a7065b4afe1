"""The CPU kernels' machine code and plumbing: what keeps a step at the memory's speed."""
import platform
import re

import numpy as np
import pytest

from numbaopt import devices, keras3, optimizers
from numbaopt.kernels import object_layout
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


def _update_kernel(name, parallel=True):
    cls = getattr(optimizers, name)
    return cpu.update_kernel(cls.rule, len(cls.slot_names), parallel)


def _step_arguments(name, dtype, n=100):
    opt = getattr(optimizers, name)()
    p = np.ones(n, dtype)
    g = np.full(n, 0.5, dtype)
    slots = np.zeros((len(opt.slot_names), n), dtype)
    one = dtype(1)
    return (
        devices.CPU.addresses([p]), devices.CPU.addresses([g]), slots, np.zeros(1, np.int64),
        np.array([[0, 0, n]], np.int64), (one, one, dtype(np.inf)), opt.step_scalars(opt.step_inputs(), dtype), np.empty(0, dtype),
        _work(),
    ), (p, g)


def _work():
    """A launch's counters for a kernel run on the calling thread alone (``numbaopt.kernels.cpu``)."""
    return np.array([0, 0, 1], np.int64)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="reads x86 assembly")
@pytest.mark.parametrize("parallel", [True, False], ids=["parallel", "serial"])
@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_update_loops_are_vectorised(name, parallel):
    """A scalar loop (one element per instruction) runs at a fraction of the bandwidth:
    a Python-style division check or an aliasing doubt is enough to get one."""
    args, _ = _step_arguments(name, np.float32)
    asm = _fresh_asm(_update_kernel(name, parallel), *args)
    assert PACKED_FLOAT32.search(asm), f"{name}'s update kernel has no packed float32 arithmetic"


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="reads x86 assembly")
def test_sum_of_squares_is_vectorised():
    g = np.ones(1000, np.float32)
    partial = np.zeros(1)
    asm = _fresh_asm(cpu.sum_of_squares_kernel("native", True), devices.CPU.addresses([g]), np.array([[0, 0, 1000]], np.int64),
                     np.zeros((1, 1), np.float32), partial, _work())
    assert re.search(r"\bv?(add|mul)pd\b", asm), "sum_of_squares has no packed float64 arithmetic"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_unclipped_loop_equals_clipped_loop_with_nothing_to_clip(name, dtype):
    """The kernels skip ``clip_gradient`` when it cannot change a value; both loops must agree bitwise."""
    kernel = _update_kernel(name)
    results = []
    for clip in ((dtype(1), dtype(1), dtype(np.inf)), (dtype(1), dtype(1), np.finfo(dtype).max)):
        params = make_params(dtype, [(257,)])
        grads = [p * dtype(0.1) for p in make_params(dtype, [(257,)], seed=1)]
        args, _ = _step_arguments(name, dtype, 257)
        slots = args[2]
        kernel(devices.CPU.addresses(params), devices.CPU.addresses(grads), slots, args[3],
               np.array([[0, 0, 200], [0, 200, 257]], np.int64), clip, args[6], args[7], _work())
        results.append((params[0].copy(), slots.copy()))
    assert results[0][0].tobytes() == results[1][0].tobytes()
    assert results[0][1].tobytes() == results[1][1].tobytes()


def test_data_addresses_match_the_array_interface():
    """The compiled reading of NumPy's array objects agrees with NumPy's own answer."""
    assert object_layout.object_fields() is not None
    base = np.arange(60, dtype=np.float64).reshape(6, 10)
    arrays = [base, base[2:], base[:, 3:], base[1:4, 2:5].copy(), np.empty(0, np.float32), np.ones(()),
              np.zeros(5, np.float32)[1:], np.frombuffer(bytearray(16), np.float32)]
    expected = [a.__array_interface__["data"][0] for a in arrays]
    assert devices.CPU.addresses(arrays).tolist() == expected


CACHE_PROBE = """
import numpy as np
from numbaopt import optimizers, tuning
from numbaopt.kernels import cpu
for size in (10, tuning.PARALLEL_MIN_ELEMENTS):  # the serial kernel, then the parallel one
    opt = optimizers.{name}(clipnorm=1.0)
    opt.apply_gradients([(np.ones(size, np.float32), np.zeros(size, np.float32))])
for parallel in (False, True):
    kernel = cpu.update_kernel(optimizers.{name}.rule, len(opt.slot_names), parallel)
    print(sum(kernel.stats.cache_hits.values()), sum(kernel.stats.cache_misses.values()))
"""


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_update_kernels_load_from_the_disk_cache_in_a_new_process(name, tmp_path):
    """A kernel whose arguments include a function never loads from Numba's cache; the rule
    is a global of a per-rule kernel instead, so a second process compiles nothing. The
    serial and the parallel kernel of a rule have cache files of their own."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    runs = [subprocess.run([sys.executable, "-c", CACHE_PROBE.format(name=name)], env=env, capture_output=True,
                           text=True, check=True).stdout.split() for _ in range(2)]
    assert runs[0] == ["0", "1", "0", "1"], runs[0]  # compiled, and written to the cache
    assert runs[1] == ["1", "0", "1", "0"], runs[1]  # loaded from it


def test_rules_never_share_cache_files_and_an_edited_rule_gets_its_own():
    from numbaopt.kernels import code_digest, specialise

    def rule(p, g, a, lr):
        return p - lr * g, a

    def edited(p, g, a, lr):
        return p - lr * g * 2, a

    names = {specialise(cpu._update_step, f, {}).__qualname__ for f in (rule, edited, optimizers.SGD.rule)}
    assert len(names) == 3
    assert code_digest(rule) == code_digest(rule) != code_digest(edited)


#: 8-bit optimizers with 1, 2 and 3 slots: each number of slots has its own loop.
EIGHT_BIT = {1: lambda: optimizers.RMSprop(slot_dtype="q8"), 2: lambda: optimizers.Adam(slot_dtype="q8"),
             3: lambda: keras3.Adam(amsgrad=True, slot_dtype="q8")}


def _eight_bit_asm(n_slots, monkeypatch):
    """The assembly of the kernel an 8-bit optimizer of ``n_slots`` slots steps with."""
    from numbaopt import threads

    launches = []
    run = threads.Launch.run
    monkeypatch.setattr(threads.Launch, "run", lambda self, kernel, arguments: (launches.append((kernel, arguments)),
                                                                                 run(self, kernel, arguments)))
    opt = EIGHT_BIT[n_slots]()
    grads, params = np.full(1000, 0.5, np.float32), np.ones(1000, np.float32)  # alive while their addresses are used
    opt.apply_gradients([(grads, params)])
    kernel, arguments = launches[-1]
    assert "_q8" in kernel.py_func.__qualname__
    return _fresh_asm(kernel, *arguments, _work())


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="reads x86 assembly")
@pytest.mark.parametrize("n_slots", [1, 2, 3])
def test_8_bit_loops_prefetch_the_blocks_ahead(n_slots, monkeypatch):
    """The 8-bit loops compute enough per element that the processor's own prefetching fell
    behind memory: without the hints, a step over 5e7 parameters took 8-10% longer."""
    assert re.search(r"\bprefetcht0\b", _eight_bit_asm(n_slots, monkeypatch)), "the 8-bit loops issue no prefetch"


def _host_has_wide_vectors():
    from llvmlite import binding

    return binding.get_host_cpu_features().get("avx512f", False) and binding.get_host_cpu_name() not in cpu._NARROW_VECTOR_CPUS


@pytest.mark.skipif(not _host_has_wide_vectors(), reason="needs a processor with AVX-512 that LLVM lets use it")
@pytest.mark.parametrize("n_slots", [1, 2, 3])
def test_8_bit_loops_use_512_bit_vectors(n_slots, monkeypatch):
    """The 8-bit loops are limited by integer instructions: 16 lanes instead of LLVM's
    default 8 made the step some 15% faster."""
    assert re.search(r"\bvsqrtps\s+%zmm|\bvpmovdb\s+%zmm", _eight_bit_asm(n_slots, monkeypatch)), "no 512-bit vector"


FULL_DISK_PROBE = """
import errno, json, warnings
import numpy as np
from numba.core import caching

def full(self, key, data):
    raise OSError(errno.ENOSPC, "No space left on device")

caching.IndexDataCacheFile.save = full  # every write to Numba's cache fails, as on a full disk
from numbaopt import optimizers
p, before = np.ones(10, np.float32), np.ones(10, np.float32)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    optimizers.Adam().apply_gradients([(np.full(10, 0.5, np.float32), p)])
print(json.dumps({"stepped": bool((p < before).all()), "warnings": [str(w.message) for w in caught]}))
"""


def test_a_kernel_that_cannot_be_saved_to_the_cache_still_steps(tmp_path):
    """A full disk (or a cache folder made read-only) made Numba raise OSError from the
    step that compiled a kernel; the kernel now stays compiled for the process, with a warning."""
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    run = subprocess.run([sys.executable, "-c", FULL_DISK_PROBE], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["stepped"]
    assert result["warnings"] and all("No space left on device" in message for message in result["warnings"])
