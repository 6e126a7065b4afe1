"""TFOptimizer against TensorFlow itself: the same steps, exact resumes, numbaopt's checks.

Runs in the tox environment with the ``keras`` extra (``tox -e keras``). TensorFlow is
imported inside the tests, so collecting this module in the default environment, which
deselects the ``keras`` marker, does not need it.
"""
from pathlib import Path

import numpy as np
import pytest

import numbaopt
from numbaopt import optimizers
from numbaopt.checkpoint import read_checkpoint
from tests.cases import BAD_IDS, DTYPES, assert_unchanged, bad_steps, gradient_steps, make_params, snapshot

pytestmark = pytest.mark.keras
DATA = Path(__file__).resolve().parent / "data"


def _legacy(name, **kwargs):
    import tf_keras

    return lambda: getattr(tf_keras.optimizers.legacy, name)(**kwargs)


def _tf_keras(name, **kwargs):
    import tf_keras

    return lambda: getattr(tf_keras.optimizers, name)(**kwargs)


def _keras3(name, **kwargs):
    import keras

    return lambda: getattr(keras.optimizers, name)(**kwargs)


def _compat_v1(name, *args, **kwargs):
    import tensorflow as tf

    return lambda: getattr(tf.compat.v1.train, name)(*args, **kwargs)


#: The wrapped optimizers: id -> (family, builder factory). The factory runs in the test,
#: so TensorFlow is imported only when a test runs.
WRAPPED = {
    "legacy-adam": (_legacy, ("Adam",), {"learning_rate": 0.01}),
    "legacy-sgd-nesterov": (_legacy, ("SGD",), {"learning_rate": 0.05, "momentum": 0.9, "nesterov": True}),
    "tf_keras-rmsprop": (_tf_keras, ("RMSprop",), {"learning_rate": 0.01}),
    "tf_keras-adam": (_tf_keras, ("Adam",), {"learning_rate": 0.01, "global_clipnorm": 1.0}),
    "keras3-adam": (_keras3, ("Adam",), {"learning_rate": 0.01}),
    "v1-adam": (_compat_v1, ("AdamOptimizer", 0.01), {}),
    "v1-momentum": (_compat_v1, ("MomentumOptimizer", 0.05, 0.9), {}),
}
#: One of each family, for the tests whose subject is the wrapper rather than the update.
FAMILIES = ["legacy-adam", "tf_keras-rmsprop", "keras3-adam", "v1-adam"]


def builder(case):
    family, args, kwargs = WRAPPED[case]
    return family(*args, **kwargs)


def steps(dtype, n, seed=1):
    return [[g.astype(dtype) for g in grads] for grads in gradient_steps(steps=n, seed=seed)]


def direct_run(make, params, all_grads, edit_at=None):
    """The wrapped optimizer driven by TensorFlow itself on its own variables, one
    ``tf.function`` call per step as in Keras's ``fit``; before step ``edit_at`` the
    parameters are halved.

    A tf.function, not eager calls: the new-style Keras optimizers update with several
    small ops, which TensorFlow's graph rewrites may round differently (by an ulp) from
    eager execution, and TFOptimizer runs in a graph.
    """
    import tensorflow as tf

    optimizer = make()
    if hasattr(optimizer, "stateless_apply"):
        import keras  # Keras 3 optimizers take Keras variables

        variables = [keras.Variable(p, dtype=p.dtype.name) for p in params]
    else:
        variables = [tf.Variable(p) for p in params]
    @tf.function
    def apply(grads):
        optimizer.apply_gradients(zip(grads, variables))

    for k, grads in enumerate(all_grads):
        if k == edit_at:
            for v in variables:
                v.assign(v.numpy() * 0.5)
        apply([tf.constant(g) for g in grads])
    return [np.asarray(v.numpy()) for v in variables]


def wrapped_run(opt, params, all_grads):
    for grads in all_grads:
        opt.apply_gradients(zip(grads, params))
    return params


# ------------------------------------------------------------------ the update


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", list(WRAPPED))
def test_steps_equal_tensorflow_driven_directly(case, dtype):
    make = builder(case)
    params, all_grads = make_params(dtype), steps(dtype, 8)
    expected = direct_run(make, [p.copy() for p in params], all_grads)
    opt = optimizers.TFOptimizer(make())
    wrapped_run(opt, params, all_grads)
    assert opt.iterations == len(all_grads)
    for ours, theirs in zip(params, expected):
        assert ours.dtype == dtype
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("case", FAMILIES)
def test_one_trace_for_all_steps(case):
    opt = optimizers.TFOptimizer(builder(case)())
    wrapped_run(opt, make_params(np.float32), steps(np.float32, 5))
    assert opt._tf.step.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("case", FAMILIES)
def test_changes_to_the_parameters_between_steps_are_used(case):
    make = builder(case)
    params, all_grads = make_params(np.float64), steps(np.float64, 4)
    expected = direct_run(make, [p.copy() for p in params], all_grads, edit_at=2)
    opt = optimizers.TFOptimizer(make())
    wrapped_run(opt, params, all_grads[:2])
    for p in params:
        p *= 0.5  # the user edits the parameters in place, e.g. weight averaging
    wrapped_run(opt, params, all_grads[2:])
    for ours, theirs in zip(params, expected):
        np.testing.assert_array_equal(ours, theirs)


# ------------------------------------------------------------------ resuming


@pytest.mark.parametrize("case", list(WRAPPED))
def test_checkpoint_resume_equals_uninterrupted_run(case, tmp_path):
    make = builder(case)
    params, all_grads = make_params(np.float32), steps(np.float32, 8)
    opt = optimizers.TFOptimizer(make())
    wrapped_run(opt, params, all_grads[:4])
    numbaopt.save_optimizer(opt, tmp_path / "opt.h5")
    saved = read_checkpoint(tmp_path / "opt.h5")
    # The wrapped variables are datasets in /arrays, with their own dtypes; the config is small.
    assert sorted(saved.config) == ["class_name", "config", "kind", "module"]
    assert list(saved.arrays) == [f"wrapped_{i}" for i in range(len(opt.get_weights()) - 1)]
    for stored, weight in zip(saved.arrays.values(), opt.get_weights()[1:]):
        assert stored.dtype == weight.dtype and stored.tobytes() == weight.tobytes()
    resumed_params = [p.copy() for p in params]
    resumed = numbaopt.load_optimizer(tmp_path / "opt.h5", wrapped=make())
    assert_resumes_exactly(opt, params, resumed, resumed_params, all_grads[4:])


def assert_resumes_exactly(opt, params, resumed, resumed_params, rest):
    """``resumed`` (loaded at ``opt``'s step) and ``opt`` take the same ``rest`` steps to the same bits."""
    assert resumed.iterations == opt.iterations
    wrapped_run(opt, params, rest)
    wrapped_run(resumed, resumed_params, rest)
    for ours, theirs in zip(resumed_params, params):
        np.testing.assert_array_equal(ours, theirs)
    for ours, theirs in zip(resumed.get_weights(), opt.get_weights()):
        assert ours.dtype == theirs.dtype
        np.testing.assert_array_equal(ours, theirs)


def test_a_format_1_checkpoint_with_variables_in_the_config_still_resumes():
    """numbaopt 0.1.0 wrote the wrapped variables into the config as base64 (format 1).

    ``tests/data/checkpoint-v1-tfoptimizer.h5`` is that: a legacy Adam (learning rate 0.01)
    after the first 4 of ``steps(np.float32, 8)`` on ``make_params(np.float32)``.
    """
    path = DATA / "checkpoint-v1-tfoptimizer.h5"
    assert read_checkpoint(path).format_version == 1 and "weights" in read_checkpoint(path).config
    make = builder("legacy-adam")
    params, all_grads = make_params(np.float32), steps(np.float32, 8)
    opt = optimizers.TFOptimizer(make())
    wrapped_run(opt, params, all_grads[:4])
    resumed = numbaopt.load_optimizer(path, wrapped=make())
    assert_resumes_exactly(opt, params, resumed, [p.copy() for p in params], all_grads[4:])


@pytest.mark.parametrize("case", FAMILIES)
def test_set_weights_before_the_first_step_resumes_exactly(case):
    make = builder(case)
    params, all_grads = make_params(np.float64), steps(np.float64, 6)
    opt = optimizers.TFOptimizer(make())
    wrapped_run(opt, params, all_grads[:3])
    resumed, resumed_params = optimizers.TFOptimizer(make()), [p.copy() for p in params]
    resumed.set_weights(opt.get_weights())
    assert len(resumed.get_weights()) == len(opt.get_weights())
    wrapped_run(opt, params, all_grads[3:])
    wrapped_run(resumed, resumed_params, all_grads[3:])
    for ours, theirs in zip(resumed_params, params):
        np.testing.assert_array_equal(ours, theirs)


def test_weights_hold_iterations_then_the_wrapped_variables():
    opt = optimizers.TFOptimizer(builder("legacy-adam")())
    assert [int(w) for w in opt.get_weights()] == [0]
    params = make_params(np.float32)
    wrapped_run(opt, params, steps(np.float32, 2))
    weights = opt.get_weights()
    assert weights[0].dtype == np.int64 and int(weights[0]) == 2
    # legacy Adam: its own iteration count, then m for every parameter, then v.
    assert int(weights[1]) == 2
    assert [w.shape for w in weights[2:]] == [p.shape for p in params] * 2


def test_loading_needs_a_fresh_optimizer_of_the_recorded_kind_and_settings(tmp_path):
    make = builder("legacy-adam")
    opt = optimizers.TFOptimizer(make())
    wrapped_run(opt, make_params(np.float32), steps(np.float32, 2))
    numbaopt.save_optimizer(opt, tmp_path / "opt.h5")
    with pytest.raises(numbaopt.CheckpointError, match="wrapped="):
        numbaopt.load_optimizer(tmp_path / "opt.h5")
    with pytest.raises(numbaopt.CheckpointError, match="AdamOptimizer"):
        numbaopt.load_optimizer(tmp_path / "opt.h5", wrapped=builder("v1-adam")())
    with pytest.raises(numbaopt.CheckpointError, match="learning_rate"):
        numbaopt.load_optimizer(tmp_path / "opt.h5", wrapped=_legacy("Adam", learning_rate=0.1)())


def test_a_checkpoint_whose_arrays_are_not_the_wrapped_variables_is_refused(tmp_path):
    import h5py

    from tests.test_checkpoint import redigest

    make = builder("legacy-adam")
    opt = optimizers.TFOptimizer(make())
    wrapped_run(opt, make_params(np.float32), steps(np.float32, 2))
    numbaopt.save_optimizer(opt, tmp_path / "opt.h5")
    with h5py.File(tmp_path / "opt.h5", "r+") as f:  # a consistent file, but not TFOptimizer's names
        f["arrays"].move("wrapped_1", "slot")
        f.attrs["array_names"] = f.attrs["array_names"].replace("wrapped_1", "slot")
        redigest(f)
    with pytest.raises(numbaopt.CheckpointError, match=r"named wrapped_0, wrapped_1, \.\.\. in order"):
        numbaopt.load_optimizer(tmp_path / "opt.h5", wrapped=make())


def test_weights_for_other_parameters_are_refused_at_the_first_step_and_change_nothing():
    make = builder("v1-adam")
    opt = optimizers.TFOptimizer(make())
    wrapped_run(opt, make_params(np.float64), steps(np.float64, 2))
    resumed = optimizers.TFOptimizer(make())
    resumed.set_weights(opt.get_weights())
    params = make_params(np.float64, shapes=[(7,)])
    before = snapshot(resumed, params)
    with pytest.raises(ValueError, match="expected"):
        resumed.apply_gradients([(np.ones(7), params[0])])
    assert_unchanged(before, resumed, params)


def test_set_weights_checks_before_it_changes_anything():
    opt = optimizers.TFOptimizer(builder("tf_keras-rmsprop")())
    params = make_params(np.float64)
    wrapped_run(opt, params, steps(np.float64, 2))
    weights = opt.get_weights()
    before = snapshot(opt, params)
    with pytest.raises(ValueError, match="arrays for the wrapped optimizer"):
        opt.set_weights(weights[:-1])
    with pytest.raises(ValueError, match="shape"):
        opt.set_weights(weights[:-1] + [np.zeros((9, 9))])
    with pytest.raises(TypeError, match="dtype"):
        opt.set_weights(weights[:-1] + [weights[-1].astype(np.float32)])
    assert_unchanged(before, opt, params)


# ----------------------------------------------------------- checks and config


@pytest.mark.parametrize("bad", BAD_IDS)
@pytest.mark.parametrize("case", ["legacy-adam", "v1-adam"])
def test_bad_step_gives_numbaopts_error_and_changes_nothing(case, bad):
    opt = optimizers.TFOptimizer(builder(case)())
    params = make_params(np.float64)
    wrapped_run(opt, params, steps(np.float64, 2))
    _, pairs, error = next(c for c in bad_steps(params) if c[0] == bad)
    before = snapshot(opt, params)
    with pytest.raises(error):
        opt.apply_gradients(pairs)
    assert_unchanged(before, opt, params)


def test_config_is_refused_as_in_keras_2():
    opt = optimizers.TFOptimizer(builder("legacy-adam")())
    for call in (opt.get_config, lambda: optimizers.TFOptimizer.from_config({}), lambda: optimizers.serialize(opt)):
        with pytest.raises(NotImplementedError, match="Keras 2.0"):
            call()


@pytest.mark.parametrize("case", FAMILIES)
def test_get_wraps_a_tensorflow_optimizer(case):
    wrapped = builder(case)()
    opt = optimizers.get(wrapped)
    assert isinstance(opt, optimizers.TFOptimizer) and opt.optimizer is wrapped


def test_only_tensorflow_optimizers_are_wrapped():
    with pytest.raises(TypeError, match="TensorFlow optimizer"):
        optimizers.TFOptimizer(optimizers.Adam())
    with pytest.raises(ValueError, match="Could not interpret"):
        optimizers.get(object())
