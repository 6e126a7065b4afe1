"""Adding an optimizer is one module: a class with a rule, and everything else follows.

A toy AMSGrad (three slots per element, which no Keras 2.0 optimizer has) declared here,
as a new module would declare it, runs on the CPU kernels and the CUDA kernels, is found
by name by ``deserialize`` and round-trips through a checkpoint, with no other edit.
"""
import math

import numpy as np
import pytest

from numbaopt import checkpoint, optimizers, registry
from numbaopt.optimizers.base import Hyperparameter, Optimizer
from tests.cases import DTYPES, gradient_steps, make_params, relative_error

SHAPES = [(), (7,), (3, 5)]
TOLERANCE = {np.float32: 2e-5, np.float64: 1e-12}


def amsgrad_rule(p, g, m, v, v_max, lr_t, beta_1, one_minus_beta_1, beta_2, one_minus_beta_2, epsilon):
    m = beta_1 * m + one_minus_beta_1 * g
    v = beta_2 * v + one_minus_beta_2 * (g * g)
    if v > v_max:
        v_max = v
    p = p - lr_t * m / (math.sqrt(v_max) + epsilon)
    return p, m, v, v_max


def _declare():
    class AMSGrad(Optimizer):
        hyperparameters = (
            Hyperparameter("lr", 0.01),
            Hyperparameter("beta_1", 0.9, "fraction"),
            Hyperparameter("beta_2", 0.999, "fraction"),
            Hyperparameter("epsilon", 1e-7),
        )
        slot_names = ("ms", "vs", "v_maxes")
        rule = staticmethod(amsgrad_rule)

        @staticmethod
        def step_scalars(h, dtype):
            one, t = dtype(1), dtype(h.iterations + 1)
            beta_1, beta_2 = dtype(h.beta_1), dtype(h.beta_2)
            lr_t = dtype(h.lr) * (np.sqrt(one - beta_2**t) / (one - beta_1**t))
            return lr_t, beta_1, one - beta_1, beta_2, one - beta_2, dtype(h.epsilon)

    return AMSGrad


@pytest.fixture
def amsgrad(monkeypatch):
    """The toy optimizer, registered for this test only."""
    monkeypatch.setattr(registry, "_CLASSES", dict(registry._CLASSES))
    return _declare()


def reference(params, steps, clipnorm, lr=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    params = [np.asarray(p, np.float64) for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    v_max = [np.zeros_like(p) for p in params]
    for t, grads in enumerate(steps, start=1):
        norm = np.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2) for g in grads))
        if norm >= clipnorm:
            grads = [g * clipnorm / norm for g in grads]
        lr_t = lr * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
        for i, g in enumerate(grads):
            m[i] = beta_1 * m[i] + (1 - beta_1) * g
            v[i] = beta_2 * v[i] + (1 - beta_2) * g**2
            v_max[i] = np.maximum(v_max[i], v[i])
            params[i] = params[i] - lr_t * m[i] / (np.sqrt(v_max[i]) + epsilon)
    return params, {"ms": m, "vs": v, "v_maxes": v_max}


def run(opt, dtype, shapes=SHAPES, steps=8, to_device=list, to_host=list):
    """``steps`` steps of ``opt`` on parameters of ``shapes``: ``(params after, params before, gradients)``."""
    params = make_params(dtype, shapes)
    initial = [p.copy() for p in params]
    grads = [[g.astype(dtype) for g in step] for step in gradient_steps(shapes, steps=steps)]
    on_device = to_device(params)
    for step in grads:
        opt.apply_gradients(zip(to_device(step), on_device))
    return to_host(on_device), initial, grads


@pytest.fixture
def on_cuda(monkeypatch):
    """``run``'s device arguments for CUDA arrays, with blocks and chunks small enough that
    tiny tensors span several."""
    from numba import cuda

    from numbaopt import tuning

    monkeypatch.setattr(tuning, "CUDA_THREADS_PER_BLOCK", 4)
    monkeypatch.setattr(tuning, "CHUNK_ELEMENTS", 8)
    return {"to_device": lambda arrays: [cuda.to_device(a) for a in arrays],
            "to_host": lambda arrays: [a.copy_to_host() for a in arrays]}


def assert_matches_reference(opt, params, initial, steps, dtype):
    expected, slots = reference(initial, steps, clipnorm=1.0)
    for p, r in zip(params, expected):
        assert relative_error(p, r) <= TOLERANCE[dtype]
    state = opt.state()
    for kind, arrays in slots.items():
        for ours, theirs in zip(state.slots[kind], arrays):
            assert relative_error(ours, theirs) <= TOLERANCE[dtype], kind


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_a_new_three_slot_optimizer_runs_on_the_cpu(amsgrad, dtype):
    opt = amsgrad(clipnorm=1.0)
    params, initial, steps = run(opt, dtype)
    assert_matches_reference(opt, params, initial, steps, dtype)


def test_a_new_optimizer_is_registered_by_name_and_checkpoints(amsgrad, tmp_path):
    assert amsgrad in registry.rule_based()
    opt = optimizers.deserialize({"class_name": "amsgrad", "config": {"lr": 0.02, "clipnorm": 1.0}})
    assert type(opt) is amsgrad and opt.get_config() == {"lr": 0.02, "beta_1": 0.9, "beta_2": 0.999,
                                                         "epsilon": 1e-7, "clipnorm": 1.0}
    run(opt, np.float32)
    checkpoint.save_optimizer(opt, tmp_path / "amsgrad.h5")
    loaded = checkpoint.load_optimizer(tmp_path / "amsgrad.h5")
    assert type(loaded) is amsgrad and loaded.iterations == opt.iterations
    for ours, theirs in zip(loaded.get_weights(), opt.get_weights()):
        assert ours.tobytes() == theirs.tobytes()


def test_a_second_optimizer_of_the_same_name_is_refused(amsgrad):
    with pytest.raises(ValueError, match="already registered"):
        class Adam(Optimizer):  # noqa: F841 - defining it is the test
            rule = staticmethod(amsgrad_rule)


def test_a_rule_with_more_slots_than_any_loop_is_refused_clearly(monkeypatch):
    monkeypatch.setattr(registry, "_CLASSES", dict(registry._CLASSES))

    def four_slot_rule(p, g, a, b, c, d, lr):
        return p - lr * g, a, b, c, d

    class FourSlots(Optimizer):
        hyperparameters = (Hyperparameter("lr", 0.1),)
        slot_names = ("a", "b", "c", "d")
        rule = staticmethod(four_slot_rule)

        @staticmethod
        def step_scalars(h, dtype):
            return (dtype(h.lr),)

    param = np.zeros(3)
    with pytest.raises(ValueError, match="keeps 4 slots per element"):
        FourSlots().apply_gradients([(np.ones(3), param)])


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_a_new_three_slot_optimizer_runs_on_cuda(amsgrad, dtype, on_cuda):
    opt = amsgrad(clipnorm=1.0)
    params, initial, steps = run(opt, dtype, **on_cuda)
    assert_matches_reference(opt, params, initial, steps, dtype)


# ------------------------------------------------------------------ state of other shapes
#
# ``tests/extending_shapes.py`` declares a factored (Adafactor-shaped) and a per-tensor-norm
# (LAMB-shaped) optimizer as a new module would; each runs everywhere below with no other edit.

from tests import extending_shapes  # noqa: E402

SHAPED = [(), (7,), (3, 5), (2, 3, 4), (0, 3)]
SHAPED_TOLERANCE = {np.float32: 5e-5, np.float64: 1e-12}
REFERENCES = {"Factored": extending_shapes.factored_reference, "TrustRatio": extending_shapes.trust_reference}


@pytest.fixture(params=["Factored", "TrustRatio"])
def shaped(request, monkeypatch):
    """One of the two optimizers, registered for this test only."""
    monkeypatch.setattr(registry, "_CLASSES", dict(registry._CLASSES))
    return dict(zip(("Factored", "TrustRatio"), extending_shapes.declare()))[request.param]


def shaped_run(opt, dtype, steps=6, **device):
    return run(opt, dtype, SHAPED, steps, **device)


def assert_shaped_matches(opt, params, initial, steps, dtype, clipnorm=1.0):
    expected, slots = REFERENCES[type(opt).__name__](initial, steps, clipnorm=clipnorm)
    for p, r in zip(params, expected):
        assert relative_error(p, r) <= SHAPED_TOLERANCE[dtype]
    state = opt.state()
    for kind, arrays in slots.items():
        for i, (ours, theirs) in enumerate(zip(state.slots[kind], arrays)):
            assert ours.shape == np.shape(theirs), (kind, i)
            assert relative_error(ours, theirs) <= SHAPED_TOLERANCE[dtype], (kind, i)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_state_of_other_shapes_runs_on_the_cpu(shaped, dtype):
    opt = shaped(clipnorm=1.0)
    assert shaped in registry.rule_based()
    params, initial, steps = shaped_run(opt, dtype)
    assert_shaped_matches(opt, params, initial, steps, dtype)
    declared = {slot.name: slot for slot in shaped.slots}
    for kind, arrays in opt.state().slots.items():
        assert [a.shape for a in arrays] == [declared[kind].shape_of(s) for s in SHAPED]


def test_state_of_other_shapes_is_the_same_for_any_thread_count(shaped, monkeypatch):
    from numbaopt import tuning

    results = []
    for threshold in (0, 1 << 40):  # every step parallel, then every step on one thread
        monkeypatch.setattr(tuning, "PARALLEL_MIN_ELEMENTS", threshold)
        opt = shaped(clipnorm=1.0)
        params, _, _ = shaped_run(opt, np.float32)
        results.append([p.tobytes() for p in params] + [a.tobytes() for v in opt.state().slots.values() for a in v])
    assert results[0] == results[1]


def test_inspect_shows_each_slot_as_declared(shaped, tmp_path, capsys):
    """``numbaopt inspect`` lists each slot with its own shape, not its parameter's."""
    import re

    from numbaopt.cli import main

    opt = shaped(clipnorm=1.0)
    shaped_run(opt, np.float64, steps=1)
    checkpoint.save_optimizer(opt, tmp_path / "shaped.h5")
    assert main(["inspect", str(tmp_path / "shaped.h5")]) == 0
    rows = [re.split(r"\s{2,}", line.strip()) for line in capsys.readouterr().out.splitlines() if line[:1].isdigit()]
    shown = {(int(label), slot): shape for label, slot, shape, *_ in rows}
    assert shown == {(i, slot.name): str(slot.shape_of(shape)) for i, shape in enumerate(SHAPED) for slot in shaped.slots}


def test_state_of_other_shapes_loads_in_a_new_process(shaped, tmp_path):
    """Checkpoint format 3 records each slot's shape and dtype; a new process continues bitwise."""
    import subprocess
    import sys
    from pathlib import Path

    opt = shaped(clipnorm=1.0)
    params, _, _ = shaped_run(opt, np.float64, steps=3)
    checkpoint.save_optimizer(opt, tmp_path / "shaped.h5")
    np.savez(tmp_path / "params.npz", *params)
    last = gradient_steps(SHAPED, steps=1, seed=7)[0]
    opt.apply_gradients(zip(last, params))
    script = f"""
import numpy as np
from tests import extending_shapes
from tests.cases import gradient_steps
from numbaopt import checkpoint
extending_shapes.declare()
opt = checkpoint.load_optimizer({str(tmp_path / 'shaped.h5')!r})
saved = np.load({str(tmp_path / 'params.npz')!r})
params = [saved[f"arr_{{i}}"] for i in range({len(SHAPED)})]
opt.apply_gradients(zip(gradient_steps({SHAPED!r}, steps=1, seed=7)[0], params))
np.savez({str(tmp_path / 'after.npz')!r}, *params)
"""
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", script], check=True, cwd=root)
    after = np.load(tmp_path / "after.npz")
    for i, p in enumerate(params):
        assert after[f"arr_{i}"].tobytes() == p.tobytes()


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_state_of_other_shapes_runs_on_cuda(shaped, dtype, on_cuda):
    opt = shaped(clipnorm=1.0)
    params, initial, steps = shaped_run(opt, dtype, steps=3, **on_cuda)
    assert_shaped_matches(opt, params, initial, steps, dtype)


@pytest.mark.torch
def test_state_of_other_shapes_runs_through_the_torch_adapter(shaped, tmp_path):
    """The torch class appears with no edit, steps bitwise like the NumPy API, and its
    state dict and numbaopt checkpoint carry the declared shapes."""
    import torch

    import numbaopt.torch as nt

    torch_class = getattr(nt, shaped.__name__)
    params = make_params(np.float64, SHAPED)
    tensors = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params]
    opt, core = torch_class(tensors, clipnorm=1.0), shaped(clipnorm=1.0)
    for step in gradient_steps(SHAPED, steps=3):
        for t, g in zip(tensors, step):
            t.grad = torch.from_numpy(np.array(g))
        opt.step()
        core.apply_gradients(zip(step, params))
    for t, p in zip(tensors, params):
        assert t.detach().numpy().tobytes() == p.tobytes()
    saved = opt.state_dict()
    declared = {slot.name: slot for slot in shaped.slots}
    for i, entry in saved["state"].items():
        assert {k: tuple(v.shape) for k, v in entry.items()} == {k: s.shape_of(SHAPED[i]) for k, s in declared.items()}
    again = torch_class([torch.nn.Parameter(t.detach().clone()) for t in tensors], clipnorm=1.0)
    again.load_state_dict(saved)
    checkpoint.save_optimizer(opt, tmp_path / "torch.h5")
    loaded = nt.load_optimizer(tmp_path / "torch.h5", [torch.nn.Parameter(t.detach().clone()) for t in tensors])
    for resumed in (again, loaded):
        for ours, theirs in zip(resumed.core_optimizer().get_weights(), core.get_weights()):
            assert ours.tobytes() == theirs.tobytes()


def test_slots_may_be_stored_in_another_dtype_than_their_parameters(monkeypatch, tmp_path):
    """float64 parameters with float32 slots: the rule computes in float64, each slot is
    rounded to float32 when stored; checkpoints and get_weights keep the declared dtype."""
    from numbaopt.optimizers.adam import Adam, adam_rule
    from numbaopt.state import Slot

    monkeypatch.setattr(registry, "_CLASSES", dict(registry._CLASSES))

    class LeanAdam(Optimizer):
        hyperparameters = Adam.hyperparameters
        slots = (Slot("ms", dtype="float32"), Slot("vs", dtype="float32"))
        rule = staticmethod(adam_rule)
        step_scalars = staticmethod(Adam.step_scalars)

    params = make_params(np.float64, SHAPES)
    expected = [p.copy() for p in params]
    m = [np.zeros(p.shape, np.float32) for p in params]
    v = [np.zeros(p.shape, np.float32) for p in params]
    opt = LeanAdam()
    for t, grads in enumerate(gradient_steps(SHAPES, steps=5), start=1):
        opt.apply_gradients(zip(grads, params))
        lr_t = 0.001 * np.sqrt(1 - 0.999**t) / (1 - 0.9**t)
        for i, g in enumerate(grads):
            m64 = 0.9 * m[i].astype(np.float64) + (1 - 0.9) * g
            v64 = 0.999 * v[i].astype(np.float64) + (1 - 0.999) * (g * g)
            expected[i] = expected[i] - lr_t * m64 / (np.sqrt(v64) + 1e-8)
            m[i], v[i] = m64.astype(np.float32), v64.astype(np.float32)
    for p, r in zip(params, expected):
        assert relative_error(p, r) <= 1e-12
    state = opt.state()
    assert all(a.dtype == np.float32 for arrays in state.slots.values() for a in arrays)
    for ours, theirs in zip(state.slots["ms"], m):
        assert relative_error(ours, theirs) <= 1e-6
    checkpoint.save_optimizer(opt, tmp_path / "lean.h5")
    loaded = checkpoint.load_optimizer(tmp_path / "lean.h5")
    assert [w.tobytes() for w in loaded.get_weights()] == [w.tobytes() for w in opt.get_weights()]
