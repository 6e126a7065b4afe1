"""Weights, bad inputs that must change nothing, determinism across thread counts, import cost."""
import json
import os
import subprocess
import sys

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numbaopt import optimizers
from tests.cases import BAD_IDS, NAMES, SHAPES, assert_unchanged, bad_steps, gradient_steps, make_params, snapshot


def trained(name, dtype=np.float64, steps=3, **kwargs):
    """An optimizer after a few steps, and its parameters."""
    params = make_params(dtype)
    opt = getattr(optimizers, name)(**kwargs)
    for grads in gradient_steps(steps=steps):
        opt.apply_gradients(zip([g.astype(dtype) for g in grads], params))
    return opt, params


# --------------------------------------------------------------------- weights


@pytest.mark.parametrize("name", NAMES)
def test_weights_layout(name):
    opt, params = trained(name, steps=2)
    cls = type(opt)
    weights = opt.get_weights()
    assert weights[0].shape == () and weights[0].dtype == np.int64 and int(weights[0]) == 2
    assert len(weights) == 1 + len(cls.scalar_state) + len(cls.slot_names) * len(params)
    slots = weights[1 + len(cls.scalar_state):]
    assert [w.shape for w in slots] == [p.shape for p in params] * len(cls.slot_names)


@pytest.mark.parametrize("name", NAMES)
def test_weights_before_first_step_hold_only_scalar_state(name):
    opt = getattr(optimizers, name)()
    assert len(opt.get_weights()) == 1 + len(type(opt).scalar_state)


@pytest.mark.parametrize("name", NAMES)
def test_set_weights_then_resume_equals_uninterrupted_run(name):
    steps = gradient_steps(steps=8)
    full, params_full = trained(name, steps=0, clipnorm=1.0, **({} if name == "Nadam" else {"decay": 0.1}))
    for grads in steps:
        full.apply_gradients(zip(grads, params_full))

    first, params = trained(name, steps=0, clipnorm=1.0, **({} if name == "Nadam" else {"decay": 0.1}))
    for grads in steps[:5]:
        first.apply_gradients(zip(grads, params))
    second = type(first).from_config(first.get_config())
    second.set_weights(first.get_weights())  # before its first step: slots created from the list
    for grads in steps[5:]:
        second.apply_gradients(zip(grads, params))
    for p, q in zip(params, params_full):
        np.testing.assert_array_equal(p, q)
    for w, v in zip(second.get_weights(), full.get_weights()):
        np.testing.assert_array_equal(w, v)


@pytest.mark.parametrize("name", NAMES)
@given(steps=st.integers(0, 4))
def test_set_weights_of_get_weights_is_a_no_op(name, steps):
    opt, params = trained(name, steps=steps)
    before = snapshot(opt, params)
    opt.set_weights(opt.get_weights())
    assert_unchanged(before, opt, params)


@pytest.mark.parametrize("name", NAMES)
def test_keras_2_0_weights_list_is_accepted(name):
    opt, params = trained(name, steps=3)
    cls = type(opt)
    slots = opt.get_weights()[1 + len(cls.scalar_state):]
    keras2 = ([np.array(7, np.int64)] if cls.keras2_iterations else []) + [s * 0 + 1 for s in slots]
    iterations_before, scalars_before = opt.iterations, opt.state().scalars
    opt.set_weights(keras2)
    assert opt.iterations == (7 if cls.keras2_iterations else iterations_before)
    assert opt.state().scalars == scalars_before  # Nadam's m_schedule is not in Keras 2.0's list
    assert all(np.all(s == 1) for s in opt.get_weights()[1 + len(cls.scalar_state):])


@pytest.mark.parametrize("name", ["RMSprop", "Adagrad", "Adadelta"])
def test_keras_2_0_list_before_the_first_step(name):
    opt = getattr(optimizers, name)()
    slots = [np.full(s, 0.5) for s in SHAPES] * len(type(opt).slot_names)
    opt.set_weights(slots)
    assert opt.iterations == 0
    params = make_params(np.float64)
    opt.apply_gradients(zip(gradient_steps(steps=1)[0], params))
    assert opt.iterations == 1


@pytest.mark.parametrize(
    "make_weights, error",
    [
        (lambda w: w[:-1], ValueError),
        (lambda w: w + [np.zeros(3)], ValueError),
        (lambda w: w[:-1] + [np.zeros((9, 9))], ValueError),
        (lambda w: [np.array(-1)] + w[1:], ValueError),
        (lambda w: w[:-1] + [np.full(w[-1].shape, "x")], TypeError),
    ],
    ids=["too-few", "too-many", "wrong-shape", "negative-iterations", "not-numeric"],
)
@pytest.mark.parametrize("name", NAMES)
def test_bad_set_weights_changes_nothing(name, make_weights, error):
    opt, params = trained(name, steps=2)
    before = snapshot(opt, params)
    with pytest.raises(error):
        opt.set_weights(make_weights(opt.get_weights()))
    assert_unchanged(before, opt, params)


def test_set_weights_before_first_step_is_checked_against_parameters():
    opt = optimizers.Adam()
    opt.set_weights([np.array(0)] + [np.zeros(3), np.zeros(2)] * 2)
    p, q = np.zeros(3), np.zeros(5)
    with pytest.raises(ValueError, match="shape"):
        opt.apply_gradients([(np.ones(3), p), (np.ones(5), q)])
    assert opt.iterations == 0 and np.all(p == 0) and np.all(q == 0)


# ------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize("case", BAD_IDS)
@pytest.mark.parametrize("name", NAMES)
def test_bad_step_changes_nothing(name, case):
    opt, params = trained(name, steps=2, clipnorm=1.0)
    _, pairs, error = next(c for c in bad_steps(params) if c[0] == case)
    before = snapshot(opt, params)
    with pytest.raises(error):
        opt.apply_gradients(pairs)
    assert_unchanged(before, opt, params)


def test_float64_gradient_for_float32_parameter_is_refused():
    p = np.zeros(3, np.float32)
    opt = optimizers.SGD()
    with pytest.raises(TypeError, match="cannot be cast safely"):
        opt.apply_gradients([(np.ones(3), p)])
    assert opt.iterations == 0 and np.all(p == 0) and len(opt.get_weights()) == 1


def test_first_step_refusal_creates_no_slots():
    opt = optimizers.Adam()
    p = np.zeros(3)
    with pytest.raises(ValueError):
        opt.apply_gradients([(np.ones(4), p)])
    assert len(opt.get_weights()) == 1
    opt.apply_gradients([(np.ones(3), p)])
    assert opt.iterations == 1


# ---------------------------------------------------------------- determinism

DETERMINISM_SCRIPT = """
import json, sys, numpy as np
from numbaopt import optimizers, tuning
tuning.CHUNK_ELEMENTS = 1000
rng = np.random.default_rng(0)
out = {}
for name in %r:
    params = [rng.normal(size=s).astype(np.float32) for s in [(30000,), (123, 45), ()]]
    opt = getattr(optimizers, name)(clipnorm=1.0)
    for step in range(3):
        grads = [rng.normal(size=p.shape).astype(np.float32) for p in params]
        opt.apply_gradients(zip(grads, params))
    out[name] = [p.tobytes().hex() for p in params] + [w.tobytes().hex() for w in opt.get_weights()]
json.dump(out, sys.stdout)
""" % (list(NAMES),)


def test_results_are_bitwise_identical_for_1_and_2_threads():
    results = []
    for threads in ("1", "2"):
        env = dict(os.environ, NUMBA_NUM_THREADS=threads)
        run = subprocess.run([sys.executable, "-c", DETERMINISM_SCRIPT], env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        results.append(json.loads(run.stdout))
    assert results[0] == results[1]


def test_import_does_not_import_numba():
    code = "import sys, numbaopt; from numbaopt import optimizers; optimizers.Adam(); print('numba' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"


@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_random_bad_gradient_shapes_change_nothing(name, data):
    opt, params = trained(name, steps=1)
    which = data.draw(st.integers(0, len(params) - 1), label="parameter")
    shape = data.draw(st.lists(st.integers(0, 5), max_size=4).map(tuple).filter(lambda s: s != params[which].shape))
    pairs = [(np.ones_like(p), p) for p in params]
    pairs[which] = (np.ones(shape), params[which])
    before = snapshot(opt, params)
    with pytest.raises(ValueError, match=f"gradient {which}"):
        opt.apply_gradients(pairs)
    assert_unchanged(before, opt, params)


def test_none_gradient_is_refused_with_a_clear_message():
    opt, params = trained("Adam", steps=1)
    before = snapshot(opt, params)
    pairs = [(np.ones_like(p), p) for p in params]
    pairs[2] = (None, params[2])
    with pytest.raises(ValueError, match="gradient 2 is None"):
        opt.apply_gradients(pairs)
    assert_unchanged(before, opt, params)


@pytest.mark.parametrize("weights", ["abc", None, 3, {"a": 1}, [np.array(0), "x"], [np.array(0), object()]])
def test_set_weights_refuses_what_is_not_a_list_of_arrays(weights):
    opt, params = trained("Adam", steps=1)
    before = snapshot(opt, params)
    with pytest.raises(TypeError, match="set_weights"):
        opt.set_weights(weights)
    assert_unchanged(before, opt, params)


THREADS_SCRIPT = """
import threading, numpy as np
from tests.test_state import trained, NAMES

def run(results, k):
    opt, params = trained(NAMES[k % len(NAMES)], np.float32, steps=20, clipnorm=1.0)
    results[k] = [p.copy() for p in params] + opt.get_weights()

sequential, threaded = {}, {}
for k in range(6):
    run(sequential, k)
threads = [threading.Thread(target=run, args=(threaded, k)) for k in range(6)]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert all(np.array_equal(a, b) for k in range(6) for a, b in zip(threaded[k], sequential[k]))
print("ok")
"""


def test_optimizers_stepped_from_several_threads_give_the_sequential_results():
    """Kernel launches are serialised: under Numba's workqueue threading layer (used where
    neither OpenMP nor TBB is available) two concurrent launches abort the process."""
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue")
    # The tree at the end of the path, for ``tests``: numbaopt stays the installed one.
    script = f"import sys; sys.path.append({str(Path(__file__).resolve().parent.parent)!r})\n" + THREADS_SCRIPT
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "ok"
