"""numbaopt.torch_optim's NumPy API: the family in the registry, per-parameter step counts,
checkpoints, refusals; and (marker ``torch``) the NumPy API against torch.optim itself.
"""
import pickle
import subprocess
import sys

import numpy as np
import pytest

import numbaopt
from numbaopt import registry, torch_optim
from tests.test_ptx import kernels  # noqa: F401 - the fixture: the real CUDA target without a GPU

CLASSES = {cls.__name__: cls for cls in registry.rule_based("torch_optim")}
SHAPES = [(5, 3), (4,), (2, 3, 2)]


def arrays(seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape).astype(dtype) for shape in SHAPES]


def test_the_family_is_registered_apart_from_keras():
    assert set(CLASSES) == {"SGD", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop", "Rprop", "Adagrad",
                            "Adadelta", "ASGD", "Adafactor"}
    assert registry.qualified_name(torch_optim.Adam) == "torch_optim.Adam"
    assert registry.optimizer_class("torch_optim.adam") is torch_optim.Adam
    assert registry.optimizer_class("Adam") is not torch_optim.Adam  # Keras 2.0's keeps its bare name


def test_importing_the_family_imports_neither_torch_nor_numba():
    code = "import sys, numbaopt.torch_optim; print(sorted({'torch', 'numba'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


@pytest.mark.parametrize("name", CLASSES)
def test_a_checkpoint_resumes_bitwise_after_steps_by_parts(name, tmp_path):
    """Steps that skip a parameter leave per-parameter counts apart; a checkpoint keeps them."""
    values, grads = arrays(0), [arrays(i + 1) for i in range(6)]
    whole = CLASSES[name]()
    params = [v.copy() for v in values]
    for k, step in enumerate(grads[:2]):
        whole.apply_gradient_parts(step, params, [(whole.get_config(), [i for i in range(3) if (i + k) % 3])])
    assert sorted(set(whole.parameter_scalars()["step"].tolist())) == [1.0, 2.0]
    numbaopt.save_optimizer(whole, tmp_path / "opt.h5")
    loaded = numbaopt.load_optimizer(tmp_path / "opt.h5")
    assert type(loaded) is CLASSES[name]
    resumed = [p.copy() for p in params]
    for step in grads[2:]:
        whole.apply_gradients(zip(step, params))
        loaded.apply_gradients(zip(step, resumed))
    for a, b in zip(params, resumed):
        assert a.tobytes() == b.tobytes()
    assert pickle.loads(pickle.dumps(whole)).parameter_scalars()["step"].tolist() == whole.parameter_scalars()["step"].tolist()


def test_a_refused_step_changes_nothing():
    opt = torch_optim.Adam()
    params = arrays(0)
    opt.apply_gradients(zip(arrays(1), params))
    before = [p.copy() for p in params], opt.parameter_scalars()
    with pytest.raises(ValueError):
        opt.apply_gradients(zip(arrays(2)[:2], params[:2]))
    with pytest.raises(ValueError):
        opt.apply_gradients(zip([np.full(2, 1.0)] + arrays(2)[1:], params))
    assert all(a.tobytes() == b.tobytes() for a, b in zip(before[0], params))
    assert before[1]["step"].tolist() == opt.parameter_scalars()["step"].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("kwargs, error", [
    ({"lr": -1.0}, "Invalid learning rate: -1.0"), ({"betas": (0.9, 1.0)}, "Invalid beta parameter at index 1: 1.0"),
    ({"capturable": True}, "capturable=True"), ({"differentiable": True}, "differentiable=True"), ({"fused": True}, "fused=True"),
])
def test_torchs_checks_and_numbaopts_refusals(kwargs, error):
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(".", r"\.")):
        torch_optim.Adam(**kwargs)


def test_a_call_torch_would_refuse_is_a_type_error():
    with pytest.raises(TypeError, match="unexpected keyword argument 'learning_rate'"):
        torch_optim.SGD(learning_rate=0.1)
    with pytest.raises(TypeError, match="positional"):
        torch_optim.AdamW(1e-3, (0.9, 0.999), 1e-8, 0.01, False, True)
    assert torch_optim.AdamW(foreach=True).get_config()["foreach"] is True  # recorded, no effect on the numbers


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", CLASSES)
def test_the_numpy_api_is_torchs_single_tensor_step(name, dtype):
    torch = pytest.importorskip("torch")
    params = arrays(0, dtype)
    tensors = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    core, reference = CLASSES[name](), getattr(torch.optim, name)(tensors, foreach=False)
    for k in range(50):
        grads = arrays(k + 1, dtype)
        for t, g in zip(tensors, grads):
            t.grad = torch.tensor(g)
        core.apply_gradients(zip(grads, params))
        reference.step()
    tolerance = 1e-13 if dtype == np.float64 else 1e-6
    for p, t in zip(params, tensors):
        assert np.linalg.norm(p - t.detach().numpy()) <= tolerance * np.linalg.norm(t.detach().numpy())


def variants():
    """(id, class, kwargs) for every optimizer at its defaults and with every flag on (and
    momentum, where it chooses other state): the settings that choose other rules."""
    for name, cls in CLASSES.items():
        arguments = {a.name: a for a in cls.arguments}
        flags = {key: True for key, a in arguments.items() if a.kind == "flag" and key != "nesterov"}
        yield f"{name}-defaults", cls, {}
        yield f"{name}-flags", cls, {**flags, **({"momentum": 0.9} if "momentum" in arguments else {})}


VARIANTS = list(variants())


def _scalars(opt, dtype):
    """The step scalars of a first step of ``opt`` for parameters of ``dtype``."""
    from numbaopt.hyperparameters import StepInputs

    initial = {name: np.float32(value) for name, value in opt.parameter_state}
    during, _ = opt.parameter_update(StepInputs(opt.get_config(), 0, {}), initial)
    return opt.step_scalars(opt.step_inputs({"state": during}), dtype)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case, cls, kwargs", VARIANTS, ids=[case for case, _, _ in VARIANTS])
def test_on_cuda_arrays_as_on_the_cpu(case, cls, kwargs, dtype, monkeypatch):
    """Every rule on CUDA arrays (a GPU, or the simulator in tox -e cudasim), launches made
    small so that the tensors span several blocks: the CPU's result."""
    from numba import cuda

    from numbaopt import tuning

    monkeypatch.setattr(tuning, "CUDA_THREADS_PER_BLOCK", 4)
    monkeypatch.setattr(tuning, "CHUNK_ELEMENTS", 8)
    on_gpu, on_cpu = cls(**kwargs), cls(**kwargs)
    params_gpu, params_cpu = [cuda.to_device(p) for p in arrays(0, dtype)], arrays(0, dtype)
    for k in range(4):
        grads = arrays(k + 1, dtype)
        on_gpu.apply_gradients(zip([cuda.to_device(g) for g in grads], params_gpu))
        on_cpu.apply_gradients(zip(grads, params_cpu))
    tolerance = 1e-5 if dtype == np.float32 else 1e-12  # a GPU contracts multiply-adds
    for gpu, cpu in zip(params_gpu, params_cpu):
        np.testing.assert_allclose(gpu.copy_to_host(), cpu, rtol=tolerance, atol=tolerance)


@pytest.mark.cuda
@pytest.mark.ptx
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case, cls, kwargs", VARIANTS, ids=[case for case, _, _ in VARIANTS])
def test_kernels_compile_to_ptx(kernels, case, cls, kwargs, dtype):  # noqa: F811 - the fixture
    """Every rule compiles for the GPU; a float32 element rule does no float64 arithmetic
    (its scalars reach it in the parameters' dtype), a tensor pass may sum in float64."""
    import numba

    from numbaopt.clipping import clip_arguments
    from tests.test_ptx import compile_ptx

    opt = cls(**kwargs)
    dt = numba.from_dtype(np.dtype(dtype))
    clip = numba.typeof(clip_arguments(1.0, 0.5, 2.0, dtype))
    scalars = numba.typeof(_scalars(opt, dtype))
    i64, i64_2d = numba.int64[::1], numba.int64[:, ::1]
    if opt.phases:
        (phase,) = opt.phases
        launcher = kernels.phase_kernel("tensor", phase.function, len(opt.slots))
        ptx = compile_ptx(launcher.kernel, (i64, i64, dt[::1], i64_2d, i64_2d, i64_2d, i64, clip, scalars, dt[::1]))
        assert ".entry" in ptx
        return
    kernel = kernels.update_kernel(opt.rule, len(opt.slot_names)).kernel
    ptx = compile_ptx(kernel, (i64, i64, dt[:, ::1], i64, i64_2d, clip, scalars, dt[::1]))
    assert ".entry" in ptx
    assert (".f64" in ptx) == (dtype == np.float64), f"{case}: float64 arithmetic in a {np.dtype(dtype).name} step"
