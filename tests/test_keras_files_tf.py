"""Keras model files against real tf-keras (``tox -e keras``): the shipped files are what Keras
writes, and a file numbaopt exported loads in tf-keras with exactly that state and trains on
as numbaopt does.
"""
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import numbaopt
from numbaopt import keras_legacy_files
from numbaopt.keras_files import read_keras_file
from tests.test_keras_files import H5_CASES, KERAS_FILES, TOLERANCE, copy_of, fresh_copy, recorded, relative_error

pytestmark = pytest.mark.keras

ROOT = Path(__file__).resolve().parent.parent


def test_recapture_gives_the_shipped_model_files():
    pytest.importorskip("tf_keras")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "fixtures" / "scripts" / "capture_keras_files.py"), "--check", str(KERAS_FILES)],
        capture_output=True, text=True, timeout=900,
    )
    sys.stdout.write(proc.stdout[-5000:])
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    assert "keras files recapture check passed" in proc.stdout


@pytest.fixture(scope="module")
def tf_keras():
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    module = pytest.importorskip("tf_keras")
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    return module


#: Every shipped .h5, as Keras saved it and as Keras saves it before the first step (but
#: tf-keras's Adagrad, whose accumulators start at 0.1: that file is refused without its slots).
EXPORTS = [(case, False) for case in H5_CASES] + [(case, True) for case in H5_CASES if case != "legacy_adagrad"]


@pytest.mark.parametrize("case, fresh", EXPORTS, ids=[f"{c}{'-fresh' if f else ''}" for c, f in EXPORTS])
def test_an_exported_file_resumes_in_tf_keras_with_exactly_that_state(case, fresh, tmp_path, tf_keras):
    path, _, dtype, grads, weights = recorded(case)
    opt, params = numbaopt.import_keras_optimizer(path)
    for g in grads[:2]:
        opt.apply_gradients(zip(g, params.values()), names=list(params))
    exported = fresh_copy(case, tmp_path) if fresh else copy_of(case, tmp_path)
    numbaopt.export_keras_optimizer(opt, exported, parameters=params)

    model = tf_keras.models.load_model(exported)
    found = read_keras_file(exported)
    state = opt.state()
    expected = {found.iterations.path: np.int64(state.iterations)}
    for name, slot in found.scalars.items():
        expected[slot.path] = np.asarray(state.scalars[name], slot.value.dtype)
    names = list(params)
    for kind, slots in found.slots.items():
        for variable, slot in zip(found.names, slots):
            expected[slot.path] = state.slots[kind][names.index(variable)]
    keras_optimizer = model.optimizer
    legacy = hasattr(keras_optimizer, "get_slot_names")  # OptimizerV2; the new-style optimizer lists .variables
    variables = keras_optimizer.weights if legacy else keras_optimizer.variables
    with h5py.File(exported, "r") as f:  # the order in which load_model sets the optimizer's weights
        order = [f"optimizer_weights/{n.decode() if isinstance(n, bytes) else n}"
                 for n in f["optimizer_weights"].attrs["weight_names"]]
    assert sorted(order) == sorted(expected) and len(variables) == len(order)
    for where, variable in zip(order, variables):
        assert variable.numpy().tobytes() == np.asarray(expected[where]).tobytes(), where
    for variable, name in zip(model.trainable_variables, names):
        assert variable.numpy().tobytes() == params[name].tobytes(), name
    loaded_config = {**found.keras_config, **keras_optimizer.get_config()}  # as Keras rebuilt it
    if "schedule_decay" in found.keras_config:  # legacy Nadam reports it as decay
        loaded_config["schedule_decay"] = loaded_config["decay"]
    rebuilt = keras_legacy_files.arguments(found.keras_class, loaded_config, True, dtype == "float64")
    assert type(opt)(**rebuilt).get_config() == opt.get_config()

    for step, (g, keras_weights) in enumerate(zip(grads[2:], weights[2:]), start=3):
        keras_optimizer.apply_gradients(zip(g, model.trainable_variables))
        opt.apply_gradients(zip(g, params.values()), names=names)
        for variable, name, reached in zip(model.trainable_variables, names, keras_weights):
            error = relative_error(params[name], variable.numpy())
            assert error <= TOLERANCE[dtype], f"{case} step {step} {name}: numbaopt and Keras {error:.3g} apart"
            assert relative_error(variable.numpy(), reached) <= TOLERANCE[dtype]


@pytest.mark.parametrize("case", ["legacy_adam", "legacy_nadam"])
def test_exported_settings_are_the_ones_tf_keras_loads(case, tmp_path, tf_keras):
    opt, params = numbaopt.import_keras_optimizer(recorded(case)[0])
    opt.lr, opt.beta_1, opt.clipnorm = 0.125, 0.5, 1.0
    if case == "legacy_nadam":
        opt.schedule_decay = 0.25
    exported = copy_of(case, tmp_path)
    numbaopt.export_keras_optimizer(opt, exported)
    config = tf_keras.models.load_model(exported).optimizer.get_config()
    assert (config["learning_rate"], config["beta_1"], config["global_clipnorm"]) == (0.125, 0.5, 1.0)
    if case == "legacy_nadam":
        assert config["decay"] == 0.25  # legacy Nadam keeps schedule_decay as decay
    assert numbaopt.import_keras_optimizer(exported)[0].get_config() == opt.get_config()
