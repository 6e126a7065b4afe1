"""Keras 3.15.1's own optimizer tests, ported: the facts of ``keras/src/optimizers/*_test.py``
and ``schedules/learning_rate_schedule_test.py`` asserted against ``numbaopt.keras3``.

Each test names the Keras test it ports (``# keras: adam_test.test_ema``) and uses Keras's
inputs, golden values and tolerances: ``assertAllClose`` is ``assert_allclose`` with
``atol=rtol=1e-6`` unless the test says otherwise, ``assertAlmostEqual(decimal=6)`` is
``round(a - b, 6) == 0``. Keras's inputs keep their dtypes: ``backend.Variable([1.0, ...])``
is float32, ``backend.Variable(np.ones([10]))`` float64; ``ops.arange`` / ``ops.full`` /
``ops.array`` gradients are float32 (cast to the variable's dtype in ``update_step``),
``np.arange`` / ``np.array`` ones float64. A Keras variable's path is ``"variable"`` unless
it is named, so that is the name passed where names matter.

What Keras's tests reach through private methods (``_clip_gradients``,
``_model_variables_moving_average``, ``_accumulated_gradients``, ``_iterations``,
``update_step``, ``lr_adjust``, ``zeropower_via_newtonschulz5``, ``_should_use_adamw``) is
observed here through the public API: a step, ``keras_variables()``, ``finalize_variable_values``.
Model ``fit`` tests run the same steps on a Dense layer's mean-squared-error gradients,
written out in NumPy (float32, as Keras computes them).

Not ported (no counterpart in numbaopt): ``nadam_test.test_build_with_empty_var_list``
(no ``build``), ``adam_test.test_clipnorm_indexed_slices`` and
``optimizer_test.test_mixed_with_tf_variables`` (TensorFlow tensors), ``test_constraints_are_applied``
and the two ``test_overwrite_with_gradient`` tests (Keras variable attributes),
``test_callable_learning_rate`` (numbaopt takes a float or a schedule), ``test_set_weights``
(numbaopt's weights are Keras 2.0's list, Keras 3's are its ``variables``).

"""
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

import numbaopt
from numbaopt import keras3
from numbaopt.keras3 import schedules

F32, F64 = np.float32, np.float64


def optimizer_class(name):
    """The numbaopt.keras3 class ``name``."""
    return getattr(keras3, name)


def close(actual, desired, atol=1e-6, rtol=1e-6):
    """Keras's ``assertAllClose``."""
    np.testing.assert_allclose(np.asarray(actual), np.asarray(desired), atol=atol, rtol=rtol)


def almost_equal(actual, desired, decimal=6):
    """``unittest``'s ``assertAlmostEqual(actual, desired, decimal)``."""
    assert round(float(actual) - desired, decimal) == 0, (float(actual), desired)


def ops_arange():
    """``ops.arange(0.1, 1.1, 0.1)`` on TensorFlow: float32, ``start + i * delta``."""
    return F32(0.1) + np.arange(10, dtype=F32) * F32(0.1)


def variables_of(optimizer, suffix):
    """The values of ``keras_variables()`` whose path ends with ``suffix``."""
    return [value for path, value in optimizer.keras_variables() if path.endswith(suffix)]


def dense_mse(x, y, kernel, bias=None):
    """Keras's ``mean_squared_error`` of ``Dense`` (``x @ kernel + bias``) and its gradients, float32."""
    diff = x @ kernel + (0 if bias is None else bias) - y
    d = (F32(2) * diff / F32(diff.size)).astype(F32)
    grads = [(x.T @ d).astype(F32)] + ([] if bias is None else [d.sum(axis=0).astype(F32)])
    return F32(np.mean(diff * diff, dtype=F32)), grads


# ----------------------------------------------------------------------------- golden values
# keras: <name>_test.test_correctness_with_golden. x = ones(10) of the dtype given, one step
# on ops.full(0.01) (or np.full for Ftrl and Adafactor), then five on the arange gradients,
# x checked against each row before the step (rtol = atol = 5e-4).

_ROW = np.tile
GOLDEN = [
    ("SGD", dict(nesterov=True), F64, "ops", np.array([
        [0.9999] * 10,
        [0.9989, 0.9979, 0.9969, 0.9959, 0.9949, 0.9939, 0.9929, 0.9919, 0.9909, 0.9899],
        [0.9979, 0.9959, 0.9939, 0.9919, 0.9899, 0.9879, 0.9859, 0.9839, 0.9819, 0.9799],
        [0.9969, 0.9939, 0.9909, 0.9879, 0.9849, 0.9819, 0.9789, 0.9759, 0.9729, 0.9699],
        [0.9959, 0.9919, 0.9879, 0.9839, 0.9799, 0.9759, 0.9719, 0.9679, 0.9639, 0.9599]])),
    ("RMSprop", dict(centered=True), F64, "ops",
     _ROW([[0.9967], [0.9933], [0.9908], [0.9885], [0.9864]], (1, 10))),
    ("Adagrad", dict(learning_rate=0.2, initial_accumulator_value=0.3, epsilon=1e-6), F64, "ops", np.array([
        [0.9963] * 10,
        [0.9604, 0.9278, 0.9003, 0.8784, 0.8615, 0.8487, 0.8388, 0.8313, 0.8255, 0.8209],
        [0.9251, 0.8629, 0.8137, 0.7768, 0.7497, 0.7298, 0.7151, 0.704, 0.6956, 0.6891],
        [0.8903, 0.8012, 0.7342, 0.6862, 0.6521, 0.6277, 0.6099, 0.5967, 0.5867, 0.579],
        [0.856, 0.7422, 0.6604, 0.6037, 0.5644, 0.5367, 0.5168, 0.5021, 0.491, 0.4825]])),
    ("Adadelta", dict(learning_rate=1.0, rho=0.8, epsilon=1e-6), F64, "ops",
     _ROW([[0.9978], [0.9947], [0.9915], [0.9882], [0.9849]], (1, 10))),
    ("Adam", dict(amsgrad=True), F32, "ops",
     _ROW([[0.999], [0.9982], [0.9974], [0.9965], [0.9955]], (1, 10))),
    ("AdamW", dict(learning_rate=1.0, weight_decay=0.5, epsilon=2), F32, "ops", np.array([
        [0.4998] * 10,
        [0.2486, 0.2475, 0.2463, 0.2451, 0.244, 0.2428, 0.2417, 0.2405, 0.2394, 0.2382],
        [0.1223, 0.1198, 0.1174, 0.1149, 0.1124, 0.11, 0.1075, 0.1051, 0.1027, 0.1003],
        [0.0586, 0.0549, 0.0512, 0.0475, 0.0439, 0.0402, 0.0366, 0.033, 0.0294, 0.0258],
        [0.0263, 0.0215, 0.0167, 0.012, 0.0073, 0.0026, -0.0021, -0.0067, -0.0113, -0.0159]])),
    ("Adamax", dict(learning_rate=0.2, beta_1=0.85, beta_2=0.95, epsilon=1e-6), F32, "ops", np.array([
        [0.8] * 10,
        [0.6827, 0.6873, 0.6888, 0.6896, 0.6901, 0.6904, 0.6906, 0.6908, 0.6909, 0.691],
        [0.5333, 0.5407, 0.5431, 0.5444, 0.5451, 0.5456, 0.546, 0.5462, 0.5464, 0.5466],
        [0.368, 0.3773, 0.3804, 0.382, 0.3829, 0.3835, 0.384, 0.3843, 0.3846, 0.3848],
        [0.1933, 0.204, 0.2076, 0.2094, 0.2105, 0.2112, 0.2117, 0.2121, 0.2124, 0.2126]])),
    ("Nadam", dict(learning_rate=0.5, beta_1=0.5, beta_2=0.67, epsilon=1e-5), F32, "ops", np.array([
        [0.4281] * 10,
        [-0.1738, -0.1731, -0.1726, -0.1723, -0.1721, -0.172, -0.1719, -0.1718, -0.1718, -0.1717],
        [-0.7115, -0.7103, -0.7096, -0.7092, -0.709, -0.7088, -0.7086, -0.7085, -0.7085, -0.7084],
        [-1.2335, -1.2322, -1.2313, -1.2309, -1.2306, -1.2304, -1.2302, -1.2301, -1.23, -1.2299],
        [-1.7492, -1.7478, -1.7469, -1.7464, -1.7461, -1.7459, -1.7457, -1.7456, -1.7455, -1.7454]])),
    ("Ftrl", dict(learning_rate=0.05, learning_rate_power=-0.2, initial_accumulator_value=0.4,
                  l1_regularization_strength=0.05, l2_regularization_strength=0.15,
                  l2_shrinkage_regularization_strength=0.01, beta=0.3), F64, "np", np.array([
        [0.0] * 10,
        [-0.0034, -0.0077, -0.0118, -0.0157, -0.0194, -0.023, -0.0263, -0.0294, -0.0325, -0.0354],
        [-0.0078, -0.0162, -0.0242, -0.0317, -0.0387, -0.0454, -0.0516, -0.0575, -0.0631, -0.0685],
        [-0.0121, -0.0246, -0.0363, -0.0472, -0.0573, -0.0668, -0.0757, -0.0842, -0.0922, -0.0999],
        [-0.0164, -0.0328, -0.0481, -0.0623, -0.0753, -0.0875, -0.099, -0.1098, -0.1201, -0.1299]])),
    ("Lion", dict(), F64, "ops", _ROW([[0.999], [0.998], [0.997], [0.996], [0.995]], (1, 10))),
    ("Lamb", dict(), F32, "ops", _ROW([[0.999], [0.9982], [0.9974], [0.9965], [0.9955]], (1, 10))),
    ("Adafactor", dict(learning_rate=0.5, beta_2_decay=-0.65, epsilon_1=1e-15, epsilon_2=1e-4,
                       clip_threshold=0.9, relative_step=False), F64, "np", np.array([
        [0.55] * 10,
        [0.3031, 0.3026, 0.3025, 0.3024, 0.3024, 0.3024, 0.3024, 0.3024, 0.3024, 0.3024],
        [0.1671, 0.1665, 0.1663, 0.1663, 0.1663, 0.1663, 0.1663, 0.1663, 0.1663, 0.1663],
        [0.0923, 0.0916, 0.0915, 0.0914, 0.0914, 0.0914, 0.0914, 0.0914, 0.0914, 0.0914],
        [0.0554, 0.0548, 0.0546, 0.0546, 0.0546, 0.0546, 0.0546, 0.0545, 0.0545, 0.0545]])),
]


@pytest.mark.parametrize("name, kwargs, dtype, grads_from, golden", GOLDEN, ids=[g[0].lower() for g in GOLDEN])
def test_correctness_with_golden(name, kwargs, dtype, grads_from, golden):
    optimizer = optimizer_class(name)(**kwargs)
    x = np.ones([10], dtype)
    if grads_from == "ops":  # float32 tensors, cast to the variable's dtype by update_step
        grads, first_grads = ops_arange().astype(dtype), np.full((10,), 0.01, F32).astype(dtype)
    else:
        grads, first_grads = np.arange(0.1, 1.1, 0.1).astype(dtype), np.full((10,), 0.01).astype(dtype)
    optimizer.apply_gradients([(first_grads, x)], names=["variable"])
    for row in golden:
        close(x, row, rtol=5e-4, atol=5e-4)
        optimizer.apply_gradients([(grads, x)], names=["variable"])


# ----------------------------------------------------------------------------- single steps
# keras: <name>_test.test_single_step (Adafactor: _1d and _2d; Muon: test_adamw_single_step,
# test_muon_single_step). Keras's Muon tests call update_step(grads, vars, 0.5) on a built
# optimizer: the step without weight decay at learning rate 0.5.

_V4, _G4 = [1.0, 2.0, 3.0, 4.0], [1.0, 6.0, 7.0, 2.0]
SINGLE = [
    ("sgd", "SGD", dict(learning_rate=0.5), _V4, _G4, F32, [0.5, -1.0, -0.5, 3.0], 1e-4),
    ("rmsprop", "RMSprop", dict(learning_rate=0.5), _V4, _G4, F32, [-0.5811, 0.4189, 1.4189, 2.4189], 1e-4),
    ("adagrad", "Adagrad", dict(learning_rate=0.5), _V4, _G4, F32, [0.5233, 1.5007, 2.5005, 3.5061], 1e-4),
    ("adadelta", "Adadelta", dict(learning_rate=0.5), _V4, _G4, F32, [0.9993, 1.9993, 2.9993, 3.9993], 1e-4),
    ("adam", "Adam", dict(learning_rate=0.5), _V4, _G4, F32, [0.5, 1.5, 2.5, 3.5], 1e-4),
    ("adamw", "AdamW", dict(learning_rate=0.5), _V4, _G4, F32, [0.4980, 1.4960, 2.494, 3.492], 1e-4),
    ("adamax", "Adamax", dict(learning_rate=0.5), _V4, _G4, F32, [0.5, 1.5, 2.5, 3.5], 1e-4),
    ("nadam", "Nadam", dict(learning_rate=0.5), _V4, _G4, F32, [0.4686, 1.4686, 2.4686, 3.4686], 1e-4),
    ("ftrl", "Ftrl", dict(learning_rate=0.5), _V4, _G4, F64, [0.2218, 1.3954, 2.3651, 2.8814], 1e-4),
    ("lion", "Lion", dict(learning_rate=0.5), _V4, _G4, F32, [0.5, 1.5, 2.5, 3.5], 1e-4),
    ("lamb", "Lamb", dict(learning_rate=0.5), _V4, _G4, F32, [-0.3693, 0.6306, 1.6306, 2.6306], 1e-4),
    ("adafactor-1d", "Adafactor", dict(learning_rate=0.5), _V4, _G4, F64, [-0.3693, 0.6307, 1.6307, 2.6307], 1e-4),
    ("adafactor-2d", "Adafactor", dict(learning_rate=0.5), [[1.0, 2.0], [3.0, 4.0]], [[1.0, 6.0], [7.0, 2.0]], F64,
     [[0.7007, -0.0081], [1.2492, 3.4407]], 1e-4),
    ("muon-adamw", "Muon", dict(learning_rate=0.5, weight_decay=0, adam_weight_decay=0), _V4, _G4, F32,
     [0.5, 1.5, 2.5, 3.5], 1e-4),
    ("muon", "Muon", dict(learning_rate=0.5, weight_decay=0), [[1.0, 2.0], [3.0, 4.0]], [[1.0, 6.0], [7.0, 2.0]], F32,
     [[0.988775, 1.887053], [2.873428, 3.97035]], 1e-2),
]


@pytest.mark.parametrize("name, kwargs, value, grads, grads_dtype, expected, tol",
                         [s[1:] for s in SINGLE], ids=[s[0] for s in SINGLE])
def test_single_step(name, kwargs, value, grads, grads_dtype, expected, tol):
    optimizer = optimizer_class(name)(**kwargs)
    x = np.array(value, F32)  # backend.Variable of a list: float32
    optimizer.apply_gradients([(np.array(grads, grads_dtype).astype(F32), x)], names=["test_vars" if name == "Muon" and x.ndim == 1 else "variable"])
    close(x, expected, rtol=tol, atol=tol)


def test_schedule_free_adamw_single_step_changes_the_parameters():
    # keras: schedule_free_adamw_test.test_single_step
    x = np.array(_V4, F32)
    keras3.ScheduleFreeAdamW(learning_rate=0.5).apply_gradients([(np.array(_G4, F32), x)])
    assert not np.allclose(x, _V4, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- weight decay
# keras: <name>_test.test_weight_decay: three optimizers, zero gradients on scalars of 2.0;
# var1 is decayed by all three (2 * 0.996^3), var2 is excluded by name, var3 by identity.

WEIGHT_DECAY = ["SGD", "RMSprop", "Adagrad", "Adadelta", "Adam", "AdamW", "Adamax", "Nadam", "Lion", "Lamb", "Adafactor"]


@pytest.mark.parametrize("name", WEIGHT_DECAY, ids=str.lower)
def test_weight_decay(name):
    cls = optimizer_class(name)
    grads = np.zeros((), F32)
    var1, var2, var3 = np.array(2.0, F32), np.array(2.0, F32), np.array(2.0, F32)
    optimizer_1 = cls(learning_rate=1.0, weight_decay=0.004)
    optimizer_1.apply_gradients([(grads, var1)], names=["variable"])

    optimizer_2 = cls(learning_rate=1.0, weight_decay=0.004)
    optimizer_2.exclude_from_weight_decay(var_names=["exclude"])
    optimizer_2.apply_gradients([(grads, var1), (grads, var2)], names=["variable", "exclude"])

    optimizer_3 = cls(learning_rate=1.0, weight_decay=0.004)
    optimizer_3.exclude_from_weight_decay(var_list=[var3])
    optimizer_3.apply_gradients([(grads, var1), (grads, var3)])

    almost_equal(var1, 1.9760959)
    almost_equal(var2, 2.0)
    almost_equal(var3, 2.0)


def test_schedule_free_adamw_weight_decay_skips_an_excluded_name():
    # keras: schedule_free_adamw_test.test_weight_decay
    grads, var1, var2 = np.zeros((), F32), np.array(2.0, F32), np.array(2.0, F32)
    keras3.ScheduleFreeAdamW(learning_rate=1.0, weight_decay=0.004).apply_gradients([(grads, var1)])
    optimizer_2 = keras3.ScheduleFreeAdamW(learning_rate=1.0, weight_decay=0.004)
    optimizer_2.exclude_from_weight_decay(var_names=["exclude"])
    optimizer_2.apply_gradients([(grads, var1), (grads, var2)], names=["variable", "exclude"])
    almost_equal(var2, 2.0)


def test_muon_weight_decay_on_a_matrix():
    # keras: muon_test.test_muon_weight_decay (Muon's _apply_weight_decay, seen through a
    # step with a zero gradient: Newton-Schulz of zero is zero)
    variable = np.array([[1.0, 2.0], [3.0, 4.0]], F32)
    expected = variable - variable * F32(0.01)
    optimizer_class("Muon")(learning_rate=1.0, weight_decay=0.01).apply_gradients(
        [(np.zeros((2, 2), F32), variable)], names=["variable"])
    close(variable, expected, rtol=1e-4, atol=1e-4)


def test_muon_adam_weight_decay_on_a_scalar():
    # keras: muon_test.test_adamw_weight_decay
    variable = np.array(2.0, F32)
    optimizer_class("Muon")(learning_rate=1.0, adam_weight_decay=0.01).apply_gradients(
        [(np.zeros((), F32), variable)], names=["variable"])
    close(variable, 2.0 - 2.0 * 0.01, rtol=1e-4, atol=1e-4)


def test_adamw_weight_decay_none_is_refused():
    # keras: adamw_test.test_weight_decay_is_none
    with pytest.raises(ValueError, match="Argument `weight_decay` must be a float. Received: weight_decay=None"):
        keras3.AdamW(learning_rate=1.0, weight_decay=None)


# ----------------------------------------------------------------------------- clipping
# keras: <name>_test.test_clip_norm / test_clip_value: Keras reads _clip_gradients([[100, 100]]).
# Here the step shows it: a step with clipnorm=1 (clipvalue=1) on [100, 100] leaves the
# parameters and every optimizer variable as a step without clipping on Keras's clipped
# gradient, [sqrt(2)/2, sqrt(2)/2] ([1, 1]).

ALL = ["SGD", "RMSprop", "Adagrad", "Adadelta", "Adam", "AdamW", "Adamax", "Nadam", "Ftrl", "Lion", "Lamb",
       "Adafactor", "Muon", "ScheduleFreeAdamW"]
CLIPS = [("clipnorm", [2**0.5 / 2, 2**0.5 / 2]), ("clipvalue", [1.0, 1.0])]


@pytest.mark.parametrize("setting, clipped", CLIPS, ids=["clip_norm", "clip_value"])
@pytest.mark.parametrize("name", ALL, ids=str.lower)
def test_clip(name, setting, clipped):
    cls = optimizer_class(name)
    clipping, plain = cls(**{setting: 1}), cls()
    assert clipping.get_config()[setting] == 1
    x_clipping, x_plain = np.array([1.0, 2.0], F32), np.array([1.0, 2.0], F32)
    clipping.apply_gradients([(np.array([100.0, 100.0], F32), x_clipping)], names=["variable"])
    plain.apply_gradients([(np.array(clipped, F32), x_plain)], names=["variable"])
    close(x_clipping, x_plain)
    state = [(path.split("/", 1)[1], value) for path, value in clipping.keras_variables()]
    expected = [(path.split("/", 1)[1], value) for path, value in plain.keras_variables()]
    assert [p for p, _ in state] == [p for p, _ in expected]
    for (path, value), (_, want) in zip(state, expected):
        close(value, want)


def test_clip_args():
    # keras: optimizer_test.test_clip_args
    assert keras3.SGD(learning_rate=1.0, clipnorm=0.1).clipnorm == 0.1
    assert keras3.SGD(learning_rate=1.0, clipvalue=0.1).clipvalue == 0.1
    assert keras3.SGD(learning_rate=1.0, global_clipnorm=0.1).global_clipnorm == 0.1
    for pair in (dict(clipnorm=0.1, clipvalue=0.1), dict(clipnorm=0.1, global_clipnorm=0.1)):
        with pytest.raises(ValueError, match="Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can"):
            keras3.SGD(learning_rate=1.0, **pair)


@pytest.mark.parametrize("setting, grad, expected", [
    ("clipnorm", [100.0, 100.0], [2**0.5 / 2, 2**0.5 / 2]),
    ("clipvalue", [100.0, 100.0], [1.0, 1.0]),
    ("global_clipnorm", [50.0, 100.0], np.array([50.0, 100.0], F32) / np.linalg.norm(np.array([50.0, 100.0], F32))),
], ids=["clip_norm", "clip_value", "global_clip_norm"])
def test_sgd_clips_what_it_steps_with(setting, grad, expected):
    # keras: optimizer_test.test_clip_norm, test_clip_value, test_global_clip_norm
    # (SGD at learning rate 1 from zero: the parameters are minus the clipped gradient)
    x = np.zeros(2, F32)
    keras3.SGD(learning_rate=1.0, **{setting: 1}).apply_gradients([(np.array(grad, F32), x)])
    close(-x, expected)


# ----------------------------------------------------------------------------- config
# keras: <name>_test.test_config (run_class_serialization_test): get_config -> from_config ->
# get_config is the same JSON; serialize -> deserialize gives the same config.

CONFIGS = [
    ("SGD", dict(learning_rate=0.5, momentum=0.06, nesterov=True, weight_decay=0.004)),
    ("RMSprop", dict(learning_rate=0.5, rho=0.8, momentum=0.05, epsilon=1e-6, centered=True)),
    ("Adagrad", dict(learning_rate=0.5, initial_accumulator_value=0.2, epsilon=1e-5)),
    ("Adadelta", dict(learning_rate=0.5, rho=0.9, epsilon=1e-5)),
    ("Adam", dict(learning_rate=0.5, beta_1=0.5, beta_2=0.67, epsilon=1e-5, amsgrad=True)),
    ("AdamW", dict(learning_rate=0.5, weight_decay=0.008, beta_1=0.5, beta_2=0.67, epsilon=1e-5, amsgrad=True)),
    ("Adamax", dict(learning_rate=0.5, beta_1=0.8, beta_2=0.95, epsilon=1e-5)),
    ("Nadam", dict(learning_rate=0.5, beta_1=0.5, beta_2=0.67, epsilon=1e-5)),
    ("Ftrl", dict(learning_rate=0.05, learning_rate_power=-0.2, initial_accumulator_value=0.4,
                  l1_regularization_strength=0.05, l2_regularization_strength=0.15,
                  l2_shrinkage_regularization_strength=0.01, beta=0.3)),
    ("Lion", dict(learning_rate=0.5, beta_1=0.5, beta_2=0.67)),
    ("Lamb", dict(learning_rate=0.5, beta_1=0.5, beta_2=0.67, epsilon=1e-5)),
    ("Adafactor", dict(learning_rate=0.5, beta_2_decay=-0.65, epsilon_1=1e-15, epsilon_2=1e-4,
                       clip_threshold=0.9, relative_step=False)),
    ("Muon", dict(learning_rate=0.5, epsilon=1e-5)),
    ("ScheduleFreeAdamW", dict(learning_rate=0.005, beta_1=0.95, beta_2=0.99, epsilon=1e-6, warmup_steps=100)),
]


def _json(config):
    import json

    return json.dumps(config, sort_keys=True, default=lambda o: list(o) if isinstance(o, tuple) else repr(o))


@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=[c[0].lower() for c in CONFIGS])
def test_config(name, kwargs):
    cls = optimizer_class(name)
    optimizer = cls(**kwargs)
    config = optimizer.get_config()
    assert _json(cls.from_config(config).get_config()) == _json(config)
    assert _json(keras3.deserialize(keras3.serialize(optimizer)).get_config()) == _json(config)
    assert set(dir(cls.from_config(config))) == set(dir(optimizer))


# ----------------------------------------------------------------------------- bad arguments

BAD = [
    # keras: sgd_test.test_invalid_momentum
    ("sgd-momentum--1", "SGD", dict(momentum=-1.0), "`momentum` must be a float between \\[0, 1\\]."),
    ("sgd-momentum-2", "SGD", dict(momentum=2.0), "`momentum` must be a float between \\[0, 1\\]."),
    # keras: lion_test.test_invalid_beta_1
    *[(f"lion-beta_1-{v}", "Lion", dict(beta_1=v),
       "Argument `beta_1` must be in the \\[0, 1\\] range. Otherwise, the optimizer degenerates to SignSGD. "
       f"Received: beta_1={v}.") for v in (-0.1, 0.0, 1.1)],
    # keras: ftrl_test.test_invalid_* (five tests)
    ("ftrl-initial_accumulator_value", "Ftrl", dict(initial_accumulator_value=-0.1),
     "^`initial_accumulator_value` needs to be positive or zero. Received: initial_accumulator_value=-0.1.$"),
    ("ftrl-learning_rate_power", "Ftrl", dict(learning_rate_power=0.1),
     "^`learning_rate_power` needs to be negative or zero. Received: learning_rate_power=0.1.$"),
    *[(f"ftrl-{arg}", "Ftrl", {arg: -0.1}, f"^`{arg}` needs to be positive or zero. Received: {arg}=-0.1.$")
      for arg in ("l1_regularization_strength", "l2_regularization_strength", "l2_shrinkage_regularization_strength")],
]

@pytest.mark.parametrize("name, kwargs, message", [
    pytest.param(*b[1:], id=b[0]) for b in BAD])
def test_invalid_argument_is_refused_with_keras_message(name, kwargs, message):
    with pytest.raises(ValueError) as raised:
        keras3.__dict__[name](**kwargs)
    import re

    assert re.search(message, str(raised.value)), str(raised.value)


# ----------------------------------------------------------------------------- EMA

def test_ema_sgd_overwrites_every_third_step():
    # keras: optimizer_test.test_ema
    v = np.array([[3.0, 4.0], [5.0, 6.0]], F32)
    grads = np.ones((2, 2), F32)
    optimizer = keras3.SGD(learning_rate=1.0, use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=3)
    optimizer.apply_gradients([(grads, v)], names=["variable"])
    close(v, [[2.0, 3.0], [4.0, 5.0]])
    close(variables_of(optimizer, "_average")[0], [[2.0, 3.0], [4.0, 5.0]])  # initialized after the first step
    optimizer.apply_gradients([(grads, v)], names=["variable"])
    close(v, [[1.0, 2.0], [3.0, 4.0]])
    close(variables_of(optimizer, "_average")[0], [[1.9, 2.9], [3.9, 4.9]])
    optimizer.apply_gradients([(grads, v)], names=["variable"])
    close(v, [[1.71, 2.71], [3.71, 4.71]])  # overwritten with the average
    close(variables_of(optimizer, "_average")[0], [[1.71, 2.71], [3.71, 4.71]])


def test_ema_adam_average_and_finalize():
    # keras: adam_test.test_ema (first part)
    optimizer = keras3.Adam(learning_rate=1.0, use_ema=True, ema_momentum=0.9)
    var = np.array([1.0, 2.0], F32)
    grads = np.array([0.1, 0.2], F32)
    optimizer.apply_gradients([(grads, var)])
    v1 = var.copy()
    close(variables_of(optimizer, "_average")[0], v1)
    optimizer.apply_gradients([(grads, var)])
    v2 = var.copy()
    expected_ema = 0.9 * v1 + 0.1 * v2
    close(variables_of(optimizer, "_average")[0], expected_ema)
    optimizer.finalize_variable_values([var])
    close(var, expected_ema)


def test_ema_adam_fit_ends_with_the_average_in_the_weights():
    # keras: adam_test.test_ema (model.fit part): Dense(10, ones, no bias), x ones (1, 5),
    # y zeros (1, 10), one epoch; fit finalizes, so the weights are the average
    optimizer = keras3.Adam(use_ema=True, ema_momentum=0.9)
    kernel = np.ones((5, 10), F32)
    x, y = np.ones((1, 5), F32), np.zeros((1, 10), F32)
    _, grads = dense_mse(x, y, kernel)
    optimizer.apply_gradients(zip(grads, [kernel]), names=["sequential/dense/kernel"])
    optimizer.finalize_variable_values([kernel])
    close(kernel, variables_of(optimizer, "_average")[0])


def test_ema_overwrite_frequency():
    # keras: adam_test.test_ema_overwrite_frequency
    optimizer = keras3.Adam(learning_rate=1.0, use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=2)
    optimizer_no_ema = keras3.Adam(learning_rate=1.0)
    var, var_no_ema = np.array([1.0, 2.0], F32), np.array([1.0, 2.0], F32)
    grads = np.array([0.1, 0.2], F32)
    optimizer.apply_gradients([(grads, var)])
    optimizer_no_ema.apply_gradients([(grads, var_no_ema)])
    v1 = var_no_ema.copy()
    close(var, v1)  # not overwritten yet
    optimizer.apply_gradients([(grads, var)])
    optimizer_no_ema.apply_gradients([(grads, var_no_ema)])
    v2 = var_no_ema.copy()
    expected_ema = 0.9 * v1 + 0.1 * v2
    close(var, expected_ema)  # stepped to v2, then overwritten with the average
    close(variables_of(optimizer, "_average")[0], expected_ema)


def test_ema_with_model_fit():
    # keras: optimizer_test.test_ema_with_model_fit: Dense(2, ones, no bias), x = [[1]],
    # y = [[0]], batch 1, two epochs, SGD(0.1) with EMA 0.9
    optimizer = keras3.SGD(learning_rate=0.1, use_ema=True, ema_momentum=0.9)
    kernel = np.ones((1, 2), F32)
    x, y = np.ones((1, 1), F32), np.zeros((1, 1), F32)
    for _ in range(2):
        _, grads = dense_mse(x, y, kernel)
        optimizer.apply_gradients(zip(grads, [kernel]), names=["sequential/dense/kernel"])
    optimizer.finalize_variable_values([kernel])
    close(variables_of(optimizer, "_average")[0], [[0.891, 0.891]], atol=1e-5)
    close(kernel, [[0.891, 0.891]], atol=1e-5)


def test_ema_lion_fit_runs():
    # keras: lion_test.test_ema ("TODO: test correctness": fit runs): Dense(10), x and y zeros (1, 5) / (1, 10)
    optimizer = keras3.Lion(use_ema=True)
    rng = np.random.default_rng(0)
    kernel, bias = rng.uniform(-0.6, 0.6, (5, 10)).astype(F32), np.zeros(10, F32)
    _, grads = dense_mse(np.zeros((1, 5), F32), np.zeros((1, 10), F32), kernel, bias)
    optimizer.apply_gradients(zip(grads, [kernel, bias]), names=["sequential/dense/kernel", "sequential/dense/bias"])
    optimizer.finalize_variable_values([kernel, bias])
    assert np.isfinite(kernel).all() and np.isfinite(bias).all()


# ----------------------------------------------------------------------------- the base optimizer

def test_iterations_counter():
    # keras: optimizer_test.test_iterations_counter
    v = np.array([[1.0, 2.0], [3.0, 4.0]], F32)
    grads = np.ones((2, 2), F32)
    optimizer = keras3.Adam(learning_rate=1.0)
    assert optimizer.iterations == 0
    optimizer.apply_gradients([(grads, v)])
    assert optimizer.iterations == 1
    optimizer.apply_gradients([(grads, v)])
    assert optimizer.iterations == 2


def test_no_gradients_is_refused():
    # keras: optimizer_test.test_empty_gradients (first part)
    v = np.array([[3.0, 4.0], [5.0, 6.0]], F32)
    with pytest.raises(ValueError, match="No gradients provided for any variable."):
        keras3.SGD(learning_rate=1.0).apply_gradients([(None, v)])


def test_a_none_gradient_is_filtered_with_a_warning():
    # keras: optimizer_test.test_empty_gradients (second part)
    v = np.array([[3.0, 4.0], [5.0, 6.0]], F32)
    v2 = np.array([[3.0, 4.0], [5.0, 6.0]], F32)
    optimizer = keras3.SGD(learning_rate=1.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optimizer.apply_gradients([(None, v), (np.ones((2, 2), F32), v2)])
    close(v, [[3.0, 4.0], [5.0, 6.0]])
    close(v2, [[2.0, 3.0], [4.0, 5.0]])
    assert caught, "no warning"


def test_get_method():
    # keras: optimizer_test.test_get_method (get(None) is the next test)
    assert isinstance(keras3.get("sgd"), keras3.SGD)
    assert isinstance(keras3.get("adamw"), keras3.AdamW)
    with pytest.raises(ValueError):
        keras3.get("typo")


def test_get_none_is_none():
    # keras: optimizer_test.test_get_method (get(None))
    assert keras3.get(None) is None


def test_static_loss_scaling():
    # keras: optimizer_test.test_static_loss_scaling (the step; numbaopt has no scale_loss())
    v = np.array([[1.0, 2.0], [3.0, 4.0]], F32)
    grads = np.array([[1.0, 2.0], [3.0, 4.0]], F32) * F32(1024.0)
    keras3.SGD(learning_rate=1.0, loss_scale_factor=1024.0).apply_gradients([(grads, v)])
    close(v, [[0.0, 0.0], [0.0, 0.0]])


def test_gradient_accumulation():
    # keras: optimizer_test.test_gradient_accumulation (Keras's _iterations is the
    # "iteration" variable, its _accumulated_gradients the "_gradient_accumulator" ones)
    v = np.array([[1.0, 2.0], [3.0, 4.0]], F32)
    grads = np.ones((2, 2), F32)
    optimizer = keras3.SGD(learning_rate=1.0, gradient_accumulation_steps=3)
    assert optimizer.gradient_accumulation_steps == 3
    expected = [  # v, accumulator, _iterations, iterations after each call
        ([[1.0, 2.0], [3.0, 4.0]], 1.0, 1, 0),
        ([[1.0, 2.0], [3.0, 4.0]], 2.0, 2, 0),
        ([[0.0, 1.0], [2.0, 3.0]], 0.0, 3, 1),
        ([[0.0, 1.0], [2.0, 3.0]], 1.0, 4, 1),
    ]
    for value, accumulated, calls, iterations in expected:
        optimizer.apply_gradients([(grads, v)], names=["variable"])
        close(v, value)
        close(variables_of(optimizer, "_gradient_accumulator")[0], np.full((2, 2), accumulated))
        close(variables_of(optimizer, "/iteration")[0], calls)
        assert optimizer.iterations == iterations


ACCUMULATING = ["adam", "sgd", "adamw", "adagrad", "rmsprop", "adadelta", "adamax", "lion", "nadam", "ftrl", "adafactor"]


@pytest.mark.parametrize("name", ACCUMULATING)
def test_gradient_accumulation_with_weight_decay(name):
    # keras: optimizer_test.test_gradient_accumulation_with_weigth_decay
    if name == "adafactor":
        optimizer_class("Adafactor")
    optimizer1 = keras3.get({"class_name": name, "config": {"weight_decay": 0.05}})
    optimizer3 = keras3.get({"class_name": name, "config": {"weight_decay": 0.05, "gradient_accumulation_steps": 3}})
    variable1, variable3 = np.array([[0.9], [0.5]], F32), np.array([[0.9], [0.5]], F32)
    rng = np.random.default_rng(7)
    for _ in range(8):
        grads3 = rng.random([3, 2, 1]).astype(F32)
        optimizer1.apply_gradients([(grads3.mean(axis=0), variable1)])
        for batch in range(3):
            optimizer3.apply_gradients([(grads3[batch], variable3)])
    close(variable1, variable3)


def test_setting_lr_to_a_schedule_untracks_the_lr_variable():
    # keras: optimizer_test.test_setting_lr_to_callable_untracks_lr_var
    adam = keras3.Adam(learning_rate=0.001)
    assert len(adam.keras_variables()) == 2
    adam.learning_rate = schedules.PolynomialDecay(adam.learning_rate, 4)
    assert len(adam.keras_variables()) == 1


@pytest.mark.parametrize("name", ACCUMULATING)
def test_pickleable_optimizers(name):
    # keras: optimizer_test.test_pickleable_optimizers
    if name == "adafactor":
        optimizer_class("Adafactor")
    optimizer = keras3.get(name)
    reloaded = pickle.loads(pickle.dumps(optimizer))
    assert optimizer.get_config() == reloaded.get_config()


def test_optimizer_auto_naming():
    # keras: optimizer_test.test_optimizer_auto_naming (a fresh process: names count per process)
    script = """
from numbaopt import keras3
adam_1, adam_2, sgd_1, sgd_2, adamw_1, adamw_2 = (keras3.Adam(), keras3.Adam(), keras3.SGD(), keras3.SGD(),
                                                  keras3.AdamW(), keras3.AdamW())
assert [o.name for o in (adam_1, adam_2, sgd_1, sgd_2, adamw_1, adamw_2)] == [
    "adam", "adam_1", "sgd", "sgd_1", "adam_w", "adam_w_1"], [o.name for o in (adam_1, adam_2, sgd_1, sgd_2, adamw_1, adamw_2)]
custom_adam = keras3.Adam(name="my_adam")
assert custom_adam.name == "my_adam"
assert keras3.deserialize(keras3.serialize(adam_2)).name == "adam_1"
assert keras3.deserialize(keras3.serialize(custom_adam)).name == "my_adam"
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_checkpoint_restores_the_training_state(tmp_path):
    # keras: optimizer_test.test_tf_checkpointing, with numbaopt's checkpoint: save after a
    # step, step on, restore the model and optimizer: the next step is the one a run that
    # never went on takes
    rng = np.random.default_rng(3)
    kernel, bias = rng.standard_normal((2, 2)).astype(F32), np.zeros(2, F32)
    x, y = rng.random((1, 2)).astype(F32), rng.random((1, 2)).astype(F32)
    names = ["sequential/dense/kernel", "sequential/dense/bias"]
    optimizer = keras3.Adam()
    optimizer.apply_gradients(zip(dense_mse(x, y, kernel, bias)[1], [kernel, bias]), names=names)
    numbaopt.save_optimizer(optimizer, tmp_path / "ckpt")
    saved = [kernel.copy(), bias.copy()]
    reference = [kernel.copy(), bias.copy()]
    optimizer.apply_gradients(zip(dense_mse(x, y, kernel, bias)[1], [kernel, bias]), names=names)
    assert not np.allclose(kernel, saved[0], atol=1e-7)
    restored = numbaopt.load_optimizer(tmp_path / "ckpt")
    kernel, bias = saved
    restored.apply_gradients(zip(dense_mse(x, y, kernel, bias)[1], [kernel, bias]), names=names)
    reference_optimizer = numbaopt.load_optimizer(tmp_path / "ckpt")
    reference_optimizer.apply_gradients(zip(dense_mse(x, y, *reference)[1], reference), names=names)
    close(kernel, reference[0], atol=1e-5)
    close(bias, reference[1], atol=1e-5)


# ----------------------------------------------------------------------------- Muon

def test_muon_newton_schulz():
    # keras: muon_test.test_Newton_Schulz: zeropower_via_newtonschulz5(X, 5) ~ [[-0.4422, 0.6457],
    # [0.7285, 0.2968]] (1e-3). Seen through a step from zero at learning rate 1, no weight
    # decay, no rms scaling: the first Nesterov step orthogonalizes 1.95 * X, and the
    # iteration is scale-free up to its 1e-7 guard.
    muon = optimizer_class("Muon")(learning_rate=1.0, weight_decay=0, rms_rate=None)
    x = np.zeros((2, 2), F32)
    muon.apply_gradients([(np.array([[0.2499, 0.9105], [0.2655, 0.8824]], F32), x)], names=["dense/kernel"])
    close(-x, [[-0.4422, 0.6457], [0.7285, 0.2968]], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("kwargs, path, adam", [
    (dict(exclude_layers=["var"]), "variable", True),
    (dict(exclude_layers=["var"]), "embedding/embeddings", True),
    (dict(), "variable", False),
    (dict(), "dense/kernel", False),
], ids=["excluded-layer", "embedding", "matrix", "dense-kernel"])
def test_muon_should_use_adamw(kwargs, path, adam):
    # keras: muon_test.test_should_use_adamw (one optimizer per case; AdamW's step keeps a
    # "velocity", Muon's does not)
    muon = optimizer_class("Muon")(**kwargs)
    muon.apply_gradients([(np.ones((2, 2), F32), np.array([[1.0, 2.0], [3.0, 4.0]], F32))], names=[path])
    assert bool(variables_of(muon, "_velocity")) == adam, muon.keras_variables()


@pytest.mark.parametrize("rms_rate, scale", [(None, 1.0), (0.2, 0.2 * 2)], ids=["lr_adjust_none", "lr_adjust_2d"])
def test_muon_lr_adjust(rms_rate, scale):
    # keras: muon_test.test_lr_adjust_none / test_lr_adjust_2d: on a (4, 2) matrix the update
    # is times sqrt(max(4, 2)) * rms_rate, or as it is with rms_rate=None
    cls = optimizer_class("Muon")
    grads = np.arange(1, 9, dtype=F32).reshape(4, 2)
    plain, adjusted = np.zeros((4, 2), F32), np.zeros((4, 2), F32)
    cls(learning_rate=1.0, weight_decay=0, rms_rate=None).apply_gradients([(grads, plain)], names=["dense/kernel"])
    cls(learning_rate=1.0, weight_decay=0, rms_rate=rms_rate).apply_gradients([(grads, adjusted)], names=["dense/kernel"])
    close(adjusted, plain * F32(scale))


def test_muon_model_fit_runs():
    # keras: muon_test.test_model_fit: Dense(5), Dense(1, name="last"), exclude_layers=["last"]
    muon = optimizer_class("Muon")(learning_rate=1e-3, exclude_layers=["last"])
    rng = np.random.default_rng(1)
    k1, b1 = rng.uniform(-0.7, 0.7, (10, 5)).astype(F32), np.zeros(5, F32)
    k2, b2 = rng.uniform(-1, 1, (5, 1)).astype(F32), np.zeros(1, F32)
    x, y = np.ones((1, 10), F32), np.ones((1, 1), F32)
    hidden = x @ k1 + b1
    _, (g2, gb2) = dense_mse(hidden, y, k2, b2)
    d_hidden = ((hidden @ k2 + b2 - y) * F32(2)) @ k2.T
    g1, gb1 = (x.T @ d_hidden).astype(F32), d_hidden.sum(axis=0).astype(F32)
    names = ["sequential/dense/kernel", "sequential/dense/bias", "sequential/last/kernel", "sequential/last/bias"]
    muon.apply_gradients(zip([g1, gb1, g2, gb2], [k1, b1, k2, b2]), names=names)
    assert all(np.isfinite(p).all() for p in (k1, b1, k2, b2))
    velocities = {path for path, _ in muon.keras_variables() if path.endswith("_velocity")}
    assert not any("dense_kernel" in p for p in velocities) and any("last_kernel" in p for p in velocities)


# ----------------------------------------------------------------------------- ScheduleFreeAdamW

def test_schedule_free_adamw_warmup_makes_a_smaller_first_step():
    # keras: schedule_free_adamw_test.test_warmup
    grads = np.ones(3, F32)
    var1, var2 = np.array([1.0, 2.0, 3.0], F32), np.array([1.0, 2.0, 3.0], F32)
    keras3.ScheduleFreeAdamW(learning_rate=0.5, warmup_steps=0).apply_gradients([(grads, var1)])
    keras3.ScheduleFreeAdamW(learning_rate=0.5, warmup_steps=10).apply_gradients([(grads, var2)])
    assert np.all(np.abs(var2 - [1.0, 2.0, 3.0]) < np.abs(var1 - [1.0, 2.0, 3.0]))


def test_schedule_free_adamw_multiple_steps_descend():
    # keras: schedule_free_adamw_test.test_multiple_steps
    optimizer = keras3.ScheduleFreeAdamW(learning_rate=0.01)
    var = np.array([1.0, 2.0, 3.0], F32)
    for _ in range(10):
        optimizer.apply_gradients([(np.full(3, 0.1, F32), var)])
    assert np.all(var < [1.0, 2.0, 3.0])


def test_schedule_free_adamw_with_model():
    # keras: schedule_free_adamw_test.test_with_model: Dense(10), x ones (4, 5), y zeros, two epochs
    optimizer = keras3.ScheduleFreeAdamW(learning_rate=0.01)
    rng = np.random.default_rng(2)
    kernel, bias = rng.uniform(-0.6, 0.6, (5, 10)).astype(F32), np.zeros(10, F32)
    x, y = np.ones((4, 5), F32), np.zeros((4, 10), F32)
    losses = []
    for _ in range(2):
        loss, grads = dense_mse(x, y, kernel, bias)
        losses.append(loss)
        optimizer.apply_gradients(zip(grads, [kernel, bias]), names=["sequential/dense/kernel", "sequential/dense/bias"])
    assert np.isfinite(dense_mse(x, y, kernel, bias)[0])


# ----------------------------------------------------------------------------- schedules
# keras: schedules/learning_rate_schedule_test.py. assertAllClose(lr(step), expected, 1e-6)
# passes 1e-6 as atol (rtol is 1e-6 by default).

SCHEDULE_CONFIGS = [
    ("ExponentialDecay", dict(initial_learning_rate=0.05, decay_steps=10, decay_rate=0.96, staircase=True, name="my_ed")),
    ("PiecewiseConstantDecay", dict(boundaries=[10, 20], values=[1, 2, 3], name="my_pcd")),
    ("PolynomialDecay", dict(initial_learning_rate=0.1, decay_steps=100, end_learning_rate=0.005, power=1.0,
                             cycle=False, name="my_ld")),
    ("InverseTimeDecay", dict(initial_learning_rate=0.05, decay_steps=10, decay_rate=0.96, staircase=True, name="my_itd")),
    ("CosineDecay", dict(initial_learning_rate=0.05, decay_steps=10, alpha=0.1, warmup_target=0.2, warmup_steps=2,
                         name="my_cd")),
    ("CosineDecayRestarts", dict(initial_learning_rate=0.05, first_decay_steps=10, alpha=0.1, t_mul=3.0, m_mul=4.0,
                                 name="my_cdr")),
]


@pytest.mark.parametrize("name, kwargs", SCHEDULE_CONFIGS, ids=[c[0] for c in SCHEDULE_CONFIGS])
def test_schedule_config(name, kwargs):
    # keras: <Schedule>Test.test_config (run_class_serialization_test)
    schedule = getattr(schedules, name)(**kwargs)
    config = schedule.get_config()
    assert _json(type(schedule).from_config(config).get_config()) == _json(config)
    assert _json(schedules.deserialize(schedules.serialize(schedule)).get_config()) == _json(config)


def _cosine(step, decay_steps, alpha=0.0):
    step = min(step, decay_steps)
    return (1.0 - alpha) * 0.5 * (1.0 + np.cos(np.pi * step / decay_steps)) + alpha


def _restarts(step, decay_steps, t_mul=2.0, m_mul=1.0, alpha=0.0):
    fac = 1.0
    while step >= decay_steps:
        step -= decay_steps
        decay_steps *= t_mul
        fac *= m_mul
    return (1.0 - alpha) * fac * 0.5 * (1.0 + np.cos(np.pi * step / decay_steps)) + alpha


def _warmup(step, warmup_steps, initial_lr, target_lr):
    return step / warmup_steps * (target_lr - initial_lr)


_E, _P = schedules.ExponentialDecay, schedules.PolynomialDecay
_CD, _CDR, _IT = schedules.CosineDecay, schedules.CosineDecayRestarts, schedules.InverseTimeDecay
_R = range(0, 1500, 250)
#: (id, schedule, [(step, expected)], atol): every Keras schedule test that compares values.
SCHEDULE_VALUES = [
    ("exponential-continuous", _E(0.05, 10, 0.96), [(5, 0.05 * 0.96 ** (5.0 / 10.0))], 1e-6),
    ("exponential-staircase", _E(0.1, 3, 0.96, staircase=True), [(1, 0.1), (2, 0.1), (100, 0.1 * 0.96 ** (100 // 3))], 1e-6),
    ("exponential-variables", _E(0.1, 3, 0.96, staircase=True), [(1, 0.1), (2, 0.1), (100, 0.1 * 0.96 ** (100 // 3))], 1e-6),
    ("piecewise-values", schedules.PiecewiseConstantDecay([100, 110, 120], [1.0, 0.1, 0.01, 0.001]),
     [(-999, 1.0), (100, 1.0), (105, 0.1), (110, 0.1), (120, 0.01), (999, 0.001)], 1e-6),
    ("piecewise-boundary-values", schedules.PiecewiseConstantDecay([1, 2, 3], [0.4, 0.5, 0.6, 0.7]),
     [(0, 0.4), (1, 0.4), (2, 0.5), (3, 0.6), (4, 0.7)], 1e-6),
    ("linear-halfway", _P(0.05, 10, 0.0), [(5, 0.05 * 0.5)], 1e-6),
    ("linear-end", _P(0.05, 10, 0.001), [(10, 0.001)], 1e-6),
    ("linear-halfway-with-end", _P(0.05, 10, 0.001), [(5, (0.05 + 0.001) * 0.5)], 1e-6),
    ("linear-beyond-end", _P(0.05, 10, 0.001), [(15, 0.001)], 1e-6),
    ("linear-beyond-end-with-cycle", _P(0.05, 10, 0.001, cycle=True), [(15, (0.05 - 0.001) * 0.25 + 0.001)], 1e-6),
    ("sqrt-halfway", _P(0.05, 10, 0.0, power=0.5), [(5, 0.05 * 0.5**0.5)], 1e-6),
    ("sqrt-end", _P(0.05, 10, 0.001, power=0.5), [(10, 0.001)], 1e-6),
    ("sqrt-halfway-with-end", _P(0.05, 10, 0.001, power=0.5), [(5, (0.05 - 0.001) * 0.5**0.5 + 0.001)], 1e-6),
    ("sqrt-beyond-end", _P(0.05, 10, 0.001, power=0.5), [(15, 0.001)], 1e-6),
    ("sqrt-beyond-end-with-cycle", _P(0.05, 10, 0.001, power=0.5, cycle=True),
     [(15, (0.05 - 0.001) * 0.25**0.5 + 0.001)], 1e-6),
    ("sqrt-begin-with-cycle", _P(0.001, 10, cycle=True), [(0, 0.001)], 1e-6),
    ("inverse-time-decay", _IT(0.1, 10, 0.96), [(i, 0.1 / (1 + i / 10 * 0.96)) for i in range(11)], 1e-6),
    ("inverse-time-staircase", _IT(0.1, 10, 0.96, staircase=True),
     [(i, 0.1 / (1 + 0.96 * (i // 10))) for i in range(11)], 1e-6),
    ("cosine-decay", _CD(1.0, 1000), [(s, _cosine(s, 1000)) for s in _R], 1e-6),
    ("cosine-warmup", _CD(0.0, 10, warmup_target=10.0, warmup_steps=1500),
     [(s, _warmup(s, 1500, 0.0, 10.0)) for s in _R], 1e-6),
    ("cosine-alpha", _CD(1.0, 1000, 0.1), [(s, _cosine(s, 1000, 0.1)) for s in _R], 1e-6),
    ("cosine-float64", _CD(np.float64(1.0), 1000), [(s, _cosine(s, 1000)) for s in _R], 1e-6),
    ("cosine-warmup-decay", _CD(0.0, 1000, warmup_target=10.0, warmup_steps=2000),
     [(s, _warmup(s, 2000, 0.0, 10.0) if s < 2001 else 10.0 * _cosine(s - 2000, 1000)) for s in range(0, 3000, 250)],
     1e-6),
    ("restarts-decay", _CDR(1.0, 1000), [(s, _restarts(s, 1000)) for s in _R], 1e-6),
    ("restarts-float64", _CDR(np.float64(1.0), 1000), [(s, _restarts(s, 1000)) for s in _R], 1e-6),
    ("restarts-alpha", _CDR(1.0, 1000, alpha=0.1), [(s, _restarts(s, 1000, alpha=0.1)) for s in _R], 1e-6),
    ("restarts-mmul", _CDR(1.0, 1000, m_mul=0.9), [(s, _restarts(s, 1000, m_mul=0.9)) for s in _R], 1e-6),
    ("restarts-tmul", _CDR(1.0, 1000, t_mul=1.0), [(s, _restarts(s, 1000, t_mul=1.0)) for s in _R], 1e-6),
]


@pytest.mark.parametrize("schedule, values, atol", [v[1:] for v in SCHEDULE_VALUES], ids=[v[0] for v in SCHEDULE_VALUES])
def test_schedule_values(schedule, values, atol):
    for step, expected in values:
        close(schedule(step), expected, atol=atol)


def test_fit_lr_correctness():
    # keras: TestFitLRSchedulesFlow.test_fit_lr_correctness: Dense(2, ones, ones), Adam on
    # ExponentialDecay(0.05, 1, 0.9), x = y = arange(32).reshape(16, 2), three epochs of four
    # batches of 4, not shuffled; the epoch losses (mean of the batch losses before each step)
    optimizer = keras3.Adam(learning_rate=schedules.ExponentialDecay(initial_learning_rate=0.05, decay_steps=1,
                                                                     decay_rate=0.9))
    assert len(optimizer.keras_variables()) == 1
    assert optimizer.keras_variables()[0][1] == 0
    kernel, bias = np.ones((2, 2), F32), np.ones(2, F32)
    x = y = np.arange(32).reshape((16, 2)).astype(F32)
    history = []
    for _ in range(3):
        losses = []
        for start in range(0, 16, 4):
            loss, grads = dense_mse(x[start:start + 4], y[start:start + 4], kernel, bias)
            losses.append(loss)
            optimizer.apply_gradients(zip(grads, [kernel, bias]), names=["sequential/dense/kernel", "sequential/dense/bias"])
        history.append(np.mean(losses, dtype=F32))
    assert optimizer.keras_variables()[0][1] == 4 * 3
    close(history, [230.79457092285156, 128.30319213867188, 79.33648681640625], rtol=5e-5)
