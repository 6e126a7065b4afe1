"""The Keras 3.15 facts ``tests/keras3_cases.py`` writes down, against the real Keras
(marker ``keras``, TensorFlow backend): constructor signatures, ``get_config()`` keys and
values at the defaults and at custom settings (schedules too), and a few steps of every
registered optimizer in float64 (bitwise but for ``NOT_BITWISE``'s rules).
"""
import inspect

import numpy as np
import pytest

from numbaopt import keras3
from numbaopt.keras3 import schedules
from tests.keras3_cases import CLASSES, CUSTOM, KERAS_CONFIG_KEYS, KERAS_SIGNATURES, NAMES, NOT_BITWISE, TENSOR_WISE

pytestmark = pytest.mark.keras


@pytest.fixture(scope="module")
def keras():
    keras = pytest.importorskip("keras")
    assert keras.__version__.startswith("3.") and keras.backend.backend() == "tensorflow", keras.__version__
    return keras


@pytest.mark.parametrize("name", sorted(KERAS_SIGNATURES), ids=str.lower)
def test_the_written_signatures_and_config_keys_are_keras(keras, name):
    cls = getattr(keras.optimizers, name)
    ordinary = tuple((p.name, p.default) for p in inspect.signature(cls).parameters.values()
                     if p.kind is not inspect.Parameter.VAR_KEYWORD)
    assert ordinary == KERAS_SIGNATURES[name]
    assert tuple(cls().get_config()) == KERAS_CONFIG_KEYS[name]


def settings(name):
    return [{}, *CUSTOM.get(name, []), {"learning_rate": schedules.CosineDecay(0.01, 100, warmup_target=0.1, warmup_steps=10),
                                         "clipnorm": 0.5, "use_ema": True, "ema_overwrite_frequency": 3,
                                         "gradient_accumulation_steps": 2, "loss_scale_factor": 8.0}]


def keras_kwargs(keras, kwargs):
    lr = kwargs.get("learning_rate")
    if isinstance(lr, schedules.LearningRateSchedule):
        return {**kwargs, "learning_rate": keras.optimizers.schedules.deserialize(schedules.serialize(lr))}
    return kwargs


@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_get_config_equals_keras(keras, name):
    for kwargs in settings(name):
        ours = CLASSES[name](**kwargs, name="opt").get_config()
        theirs = getattr(keras.optimizers, name)(**keras_kwargs(keras, kwargs), name="opt").get_config()
        assert ours == theirs, kwargs
        assert keras3.serialize(CLASSES[name](**kwargs, name="opt")) == keras.optimizers.serialize(
            getattr(keras.optimizers, name)(**keras_kwargs(keras, kwargs), name="opt"))
        assert keras3.deserialize(keras.optimizers.serialize(
            getattr(keras.optimizers, name)(**keras_kwargs(keras, kwargs), name="opt"))).get_config() == ours


@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_steps_equal_keras_in_float64(keras, name):
    """The defaults and every CUSTOM setting (the NumPy references' settings), 4 steps."""
    rng = np.random.default_rng(0)
    shapes = [(3, 2), (4,)]
    for kwargs in [{}, *CUSTOM.get(name, [])]:
        if name == "Muon":  # Keras on TensorFlow fails on float64 Muon matrices otherwise (muon.py says why)
            kwargs = {**kwargs, "rms_rate": None}
        start = [rng.normal(size=s) for s in shapes]
        steps = [[0.3 * rng.normal(size=s) for s in shapes] for _ in range(4)]
        variables = [keras.Variable(p, dtype="float64") for p in start]
        theirs = getattr(keras.optimizers, name)(**kwargs)
        params = [p.copy() for p in start]
        ours = CLASSES[name](**kwargs)
        for grads in steps:
            theirs.apply([keras.ops.convert_to_tensor(g, dtype="float64") for g in grads], variables)
            ours.apply(grads, params)
        for v, p in zip(variables, params):
            if name in NOT_BITWISE or name in TENSOR_WISE:  # TensorFlow's pow (Eigen's) is not the C library's,
                # and its sums over a tensor (norms, means) add in another order: last-bit differences
                np.testing.assert_allclose(p, np.asarray(v.numpy()), rtol=1e-12, atol=0, err_msg=str(kwargs))
            else:
                np.testing.assert_array_equal(np.asarray(v.numpy()), p, err_msg=str(kwargs))
