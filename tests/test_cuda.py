"""The CUDA path: every optimizer × dtype × option on CUDA arrays, against the CPU kernels and
the NumPy transcription; device dispatch and its errors; weights and checkpoints across devices.

Run by ``tox -e cudasim`` under Numba's CUDA simulator (or on a GPU: ``pytest -m "cuda and
not ptx"``). Launches are patched small (4 threads per block, 2 blocks per multiprocessor,
8-element chunks) so that the 42 elements of ``cases.SHAPES`` span several chunks, blocks
and strides.
"""
import sys

import numpy as np
import pytest

from numbaopt import devices, optimizers, tuning
from numbaopt.checkpoint import load_optimizer, save_optimizer
from tests.cases import (
    DTYPES, NAMES, assert_unchanged, full_config, gradient_steps, make_params, relative_error, snapshot,
)
from tests.reference import SLOTS, reference_run
from tests.test_reference import CASES, TOLERANCE

pytestmark = [pytest.mark.cuda]

#: Steps per run: enough for clipnorm to clip on some steps and not on others.
STEPS = 6

#: CUDA against the CPU kernels. Not bitwise: a GPU contracts multiply-adds.
CPU_TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}


@pytest.fixture(scope="module")
def cuda():
    from numba import cuda

    return cuda


@pytest.fixture(autouse=True)
def small_launches(monkeypatch):
    monkeypatch.setattr(tuning, "CUDA_THREADS_PER_BLOCK", 4)
    monkeypatch.setattr(tuning, "CUDA_BLOCKS_PER_SM", 2)
    monkeypatch.setattr(tuning, "CHUNK_ELEMENTS", 8)


@pytest.fixture(scope="module", autouse=True)
def prompt_thread_switches():
    """The simulator runs a block's threads as Python threads and polls them at every
    ``syncthreads``; at the default 5 ms switch interval the reductions crawl."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    yield
    sys.setswitchinterval(interval)


def to_device(cuda, arrays):
    return [cuda.to_device(a) for a in arrays]


def host(arrays):
    return [a.copy_to_host() for a in arrays]


def on_host(array):
    return array.copy_to_host()


def run(opt, params, steps, cuda=None):
    """Apply ``steps`` (host gradients) to ``params``, copying each gradient to the device
    when ``cuda`` is given."""
    for grads in steps:
        grads = [g.astype(params[0].dtype) for g in grads]
        opt.apply_gradients(zip(to_device(cuda, grads) if cuda else grads, params))


def assert_close(ours, expected, tolerance, what):
    for i, (a, b) in enumerate(zip(ours, expected)):
        assert relative_error(a, b) <= tolerance, f"{what} {i}"


# ------------------------------------------------------------------ the math


@pytest.mark.parametrize("name, option, kwargs, dtype", CASES)
def test_matches_cpu_kernels_and_reference(cuda, name, option, kwargs, dtype):
    initial = make_params(dtype)
    steps = gradient_steps(steps=STEPS)
    on_gpu, on_cpu = getattr(optimizers, name)(**kwargs), getattr(optimizers, name)(**kwargs)
    params_gpu, params_cpu = to_device(cuda, initial), [p.copy() for p in initial]
    run(on_gpu, params_gpu, steps, cuda)
    run(on_cpu, params_cpu, steps)

    assert on_gpu.iterations == STEPS
    assert_close(host(params_gpu), params_cpu, CPU_TOLERANCE[dtype], "parameter")
    weights_gpu, weights_cpu = on_gpu.get_weights(), on_cpu.get_weights()
    assert all(isinstance(w, np.ndarray) for w in weights_gpu)
    assert [(w.shape, w.dtype) for w in weights_gpu] == [(w.shape, w.dtype) for w in weights_cpu]
    assert_close(weights_gpu, weights_cpu, CPU_TOLERANCE[dtype], "weight")

    ref_params, ref_slots = reference_run(name, full_config(name, kwargs), [p.astype(np.float64) for p in initial], steps)[-1]
    assert_close(host(params_gpu), ref_params, TOLERANCE[dtype], "parameter (reference)")
    n = len(initial)
    slots = weights_gpu[len(weights_gpu) - len(SLOTS[name]) * n:]
    for s, kind in enumerate(SLOTS[name]):
        assert_close(slots[s * n:(s + 1) * n], ref_slots[kind], TOLERANCE[dtype], f"slot {kind}")


@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_mixed_dtypes_in_one_call(cuda, name):
    """float32 and float64 CUDA parameters in one call: two groups, two launches."""
    shapes = [(13,), (3, 5), (), (9,)]
    dtypes = [np.float32, np.float64, np.float64, np.float32]
    initial = [p.astype(d) for p, d in zip(make_params(np.float64, shapes), dtypes)]
    steps = [[g.astype(d) for g, d in zip(grads, dtypes)] for grads in gradient_steps(shapes, steps=4)]
    on_gpu, on_cpu = getattr(optimizers, name)(clipnorm=1.0), getattr(optimizers, name)(clipnorm=1.0)
    params_gpu, params_cpu = to_device(cuda, initial), [p.copy() for p in initial]
    for grads in steps:
        on_gpu.apply_gradients(zip(to_device(cuda, grads), params_gpu))
        on_cpu.apply_gradients(zip(grads, params_cpu))
    for p, q in zip(host(params_gpu), params_cpu):
        assert p.dtype == q.dtype
        assert relative_error(p, q) <= CPU_TOLERANCE[q.dtype.type]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_global_norm_on_device_is_exact_deterministic_and_crosses_as_one_scalar(cuda, dtype, monkeypatch):
    params = to_device(cuda, make_params(dtype))
    grads_host = [g.astype(dtype) for g in gradient_steps(steps=2)[1]]
    grads = to_device(cuda, grads_host)
    opt = optimizers.Adam(clipnorm=1.0)
    opt.apply_gradients(zip(grads, params))
    store = opt._slots

    copies = []
    device_array_type = type(grads[0])
    copy_to_host = device_array_type.copy_to_host

    def counting_copy(self, *args, **kwargs):
        copies.append(self.size)
        return copy_to_host(self, *args, **kwargs)

    monkeypatch.setattr(device_array_type, "copy_to_host", counting_copy)
    norm = store.global_norm(store.split(store.backend.addresses(grads)))
    assert copies == [1], "only the norm's scalar may cross to the host"

    expected = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads_host))
    assert abs(norm - expected) <= 1e-14 * expected
    monkeypatch.setattr(tuning, "CUDA_BLOCKS_PER_SM", 1)
    assert store.global_norm(store.split(store.backend.addresses(grads))) == norm  # bitwise, whatever the grid size


# ------------------------------------------------------------- dispatch errors


def _host_gradient(cuda, params, grads):
    return [(np.ones(params[0].shape, params[0].dtype), params[0])] + list(zip(grads[1:], params[1:]))


def _other_dtype(cuda, params, grads):
    return [(cuda.to_device(np.ones(params[0].shape, np.float32)), params[0])] + list(zip(grads[1:], params[1:]))


def _other_shape(cuda, params, grads):
    return [(cuda.to_device(np.ones(7, np.float64)), params[1])] + [(grads[0], params[0])] + list(zip(grads[2:], params[2:]))


def _strided_gradient(cuda, params, grads):
    strided = cuda.to_device(np.ones(10, np.float64))[::2]
    return [(strided, params[1])] + [(grads[0], params[0])] + list(zip(grads[2:], params[2:]))


def _host_parameter(cuda, params, grads):
    return [(g.copy_to_host(), p.copy_to_host()) for g, p in zip(grads[:1], params[:1])] + list(zip(grads[1:], params[1:]))


BAD_CALLS = {
    "host-gradient": (_host_gradient, TypeError, "on the host"),
    "gradient-dtype": (_other_dtype, TypeError, "dtype"),
    "gradient-shape": (_other_shape, ValueError, "shape"),
    "strided-gradient": (_strided_gradient, ValueError, "C-contiguous"),
    "host-and-cuda-parameters": (_host_parameter, ValueError, "one device"),
}


@pytest.mark.parametrize("bad", BAD_CALLS)
@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_bad_call_raises_and_changes_nothing(cuda, name, bad):
    make_call, error, message = BAD_CALLS[bad]
    params = to_device(cuda, make_params(np.float64))
    opt = getattr(optimizers, name)(clipnorm=1.0)
    run(opt, params, gradient_steps(steps=1), cuda)
    before = snapshot(opt, params, to_host=on_host)
    grads = to_device(cuda, gradient_steps(steps=2)[1])
    with pytest.raises(error, match=message):
        opt.apply_gradients(make_call(cuda, params, grads))
    assert_unchanged(before, opt, params, to_host=on_host)


def test_cuda_gradient_for_host_parameter_is_refused(cuda):
    params = make_params(np.float64)
    opt = optimizers.Adam()
    grads = [cuda.to_device(g) for g in gradient_steps(steps=1)[0]]
    with pytest.raises(TypeError, match="gradient 0 is a CUDA array"):
        opt.apply_gradients(zip(grads, params))
    assert opt.iterations == 0 and opt.get_weights()[1:] == []


def test_parameters_sharing_device_memory_are_refused(cuda):
    whole = cuda.to_device(np.zeros(10))
    with pytest.raises(ValueError, match="share memory"):
        optimizers.SGD().apply_gradients([(cuda.to_device(np.ones(6)), whole[0:6]), (cuda.to_device(np.ones(6)), whole[4:10])])
    np.testing.assert_array_equal(whole.copy_to_host(), 0)


def test_device_argument_forces_and_checks_the_choice(cuda):
    host_params = make_params(np.float64)
    device_params = to_device(cuda, host_params)
    grads = gradient_steps(steps=1)[0]
    with pytest.raises(ValueError, match="device='cpu'"):
        optimizers.Adam(device="cpu").apply_gradients(zip(to_device(cuda, grads), device_params))
    with pytest.raises(ValueError, match="device='cuda'"):
        optimizers.Adam(device="cuda").apply_gradients(zip(grads, host_params))
    forced = optimizers.Adam(device="cuda")
    forced.apply_gradients(zip(to_device(cuda, grads), device_params))
    assert forced.iterations == 1
    assert forced.get_config()["device"] == "cuda"


def test_slots_stay_on_their_device(cuda):
    opt = optimizers.Adam()
    params = to_device(cuda, make_params(np.float64))
    run(opt, params, gradient_steps(steps=1), cuda)
    before = snapshot(opt, params, to_host=on_host)
    with pytest.raises(ValueError, match="slots live on cuda"):
        opt.apply_gradients(zip(gradient_steps(steps=1)[0], make_params(np.float64)))
    assert_unchanged(before, opt, params, to_host=on_host)


def test_cuda_unavailable_is_a_clear_error(cuda, monkeypatch):
    monkeypatch.setattr(devices, "_CUDA", [])
    monkeypatch.setattr(cuda, "is_available", lambda: False)
    params = to_device(cuda, make_params(np.float64))
    opt = optimizers.Adam()
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        opt.apply_gradients(zip(to_device(cuda, gradient_steps(steps=1)[0]), params))
    assert opt.iterations == 0


# ------------------------------------------------- state across devices


@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_weights_move_between_devices(cuda, name):
    """GPU state continues on the CPU and CPU state on the GPU, as if never interrupted."""
    kwargs = {"clipnorm": 1.0} if name == "Nadam" else {"clipnorm": 1.0, "decay": 0.1}
    steps = gradient_steps(steps=STEPS)
    initial = make_params(np.float64)

    reference = getattr(optimizers, name)(**kwargs)
    params_ref = [p.copy() for p in initial]
    run(reference, params_ref, steps)

    gpu = getattr(optimizers, name)(**kwargs)
    params_gpu = to_device(cuda, initial)
    run(gpu, params_gpu, steps[:2], cuda)
    cpu = getattr(optimizers, name)(**kwargs)
    cpu.set_weights(gpu.get_weights())
    params_cpu = host(params_gpu)
    run(cpu, params_cpu, steps[2:4])
    gpu.set_weights(cpu.get_weights())  # into slots already bound on the device
    params_gpu = to_device(cuda, params_cpu)
    run(gpu, params_gpu, steps[4:], cuda)

    assert gpu.iterations == STEPS
    assert_close(host(params_gpu), params_ref, CPU_TOLERANCE[np.float64], "parameter")
    assert_close(gpu.get_weights(), reference.get_weights(), CPU_TOLERANCE[np.float64], "weight")


@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_checkpoint_from_gpu_state_loads_on_cpu_and_back(cuda, name, tmp_path):
    steps = gradient_steps(steps=4)
    initial = make_params(np.float32)
    gpu = getattr(optimizers, name)(clipnorm=1.0, device="cuda")
    params_gpu = to_device(cuda, initial)
    run(gpu, params_gpu, steps[:2], cuda)
    save_optimizer(gpu, tmp_path / "gpu.h5")

    cpu = load_optimizer(tmp_path / "gpu.h5")
    assert "device" not in cpu.get_config()
    params_cpu = host(params_gpu)
    run(cpu, params_cpu, steps[2:3])
    save_optimizer(cpu, tmp_path / "cpu.h5")

    again = load_optimizer(tmp_path / "cpu.h5")
    params_again = to_device(cuda, params_cpu)
    run(again, params_again, steps[3:], cuda)
    run(cpu, params_cpu, steps[3:])
    run(gpu, params_gpu, steps[2:], cuda)
    for other, params in ((cpu, params_cpu), (again, host(params_again))):
        assert other.iterations == gpu.iterations == len(steps)
        assert_close(params, host(params_gpu), CPU_TOLERANCE[np.float32], "parameter")
        assert_close(other.get_weights(), gpu.get_weights(), CPU_TOLERANCE[np.float32], "weight")


# ------------------------------------------------------------------ parity


@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_parity_replays_keras_fixtures_on_cuda(name):
    """``numbaopt parity --device cuda``'s replay, on each optimizer's clipnorm fixtures."""
    from numbaopt import parity

    fixtures = [f for f in parity.load_fixtures() if f.family == "keras2" and f.optimizer == name and f.case == "clipnorm"]
    assert {f.dtype for f in fixtures} == {"float32", "float64"}
    for fixture in fixtures:
        result = parity.replay(fixture, "keras2", device="cuda")
        assert result.passed, (result.error, result.max_error, result.worst_step, result.worst_tensor)


# ------------------------------------------------------------- numbaopt.keras3


def _keras3_cases():
    from tests.keras3_cases import configurations

    return [(case, name, kwargs, dtype) for case, name, kwargs in configurations() for dtype in DTYPES]


KERAS3_CASES = _keras3_cases()


@pytest.mark.parametrize(("case", "name", "kwargs", "dtype"), KERAS3_CASES,
                         ids=[f"keras3-{c}-{np.dtype(d).name}" for c, _, _, d in KERAS3_CASES])
def test_keras3_rule_on_device_arrays_equals_the_cpu(cuda, case, name, kwargs, dtype):
    """Every Keras 3 rule (and its variants: momentum, centered, amsgrad ...) on CUDA arrays,
    with weight decay and a global norm on some: the CPU's result."""
    from tests.keras3_cases import CLASSES, NOT_BITWISE

    shapes = [(3, 4), (5,), ()]
    initial = make_params(dtype, shapes)
    steps = [[g.astype(dtype) for g in grads] for grads in gradient_steps(shapes, steps=4)]
    kwargs = {**kwargs, "global_clipnorm": 1.0} if case.endswith("custom0") else kwargs
    on_gpu, on_cpu = CLASSES[name](**kwargs), CLASSES[name](**kwargs)
    params_gpu, params_cpu = to_device(cuda, initial), [p.copy() for p in initial]
    for grads in steps:
        on_gpu.apply(to_device(cuda, grads), params_gpu)
        on_cpu.apply(grads, params_cpu)
    assert on_gpu.iterations == len(steps)
    tolerance = CPU_TOLERANCE[dtype] * (10 if name in NOT_BITWISE else 1)
    assert_close(host(params_gpu), params_cpu, tolerance, "parameter")
    slots_gpu, slots_cpu = on_gpu.state().slots, on_cpu.state().slots
    assert sorted(slots_gpu) == sorted(slots_cpu)
    for kind in slots_cpu:
        assert_close(slots_gpu[kind], slots_cpu[kind], tolerance, f"slot {kind}")


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_keras3_host_settings_on_device_arrays_equal_the_cpu(cuda, name):
    """EMA, accumulation and loss scale run on host copies of CUDA arrays."""
    from tests.keras3_cases import CLASSES

    dtype, shapes = np.float64, [(3, 4), (5,)]
    kwargs = {"use_ema": True, "ema_overwrite_frequency": 2, "gradient_accumulation_steps": 2, "loss_scale_factor": 4.0,
              "clipvalue": 0.05}
    initial = make_params(dtype, shapes)
    on_gpu, on_cpu = CLASSES[name](**kwargs), CLASSES[name](**kwargs)
    params_gpu, params_cpu = to_device(cuda, initial), [p.copy() for p in initial]
    for grads in gradient_steps(shapes, steps=6):
        on_gpu.apply(to_device(cuda, grads), params_gpu)
        on_cpu.apply(grads, params_cpu)
    assert on_gpu.iterations == on_cpu.iterations == 3
    assert_close(host(params_gpu), params_cpu, CPU_TOLERANCE[dtype], "parameter")
    on_gpu.finalize_variable_values(params_gpu)
    on_cpu.finalize_variable_values(params_cpu)
    assert_close(host(params_gpu), params_cpu, CPU_TOLERANCE[dtype], "average")
