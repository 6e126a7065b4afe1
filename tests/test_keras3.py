"""numbaopt.keras3, Keras 3.15's optimizers: every registered one x float32/float64 against a
NumPy transcription of Keras's source (``tests/keras3_cases.py``), Keras's constructor,
config and errors, the base optimizer's features, bad inputs, checkpoints and threads.

No TensorFlow here: ``test_keras3_keras.py`` (marker ``keras``) compares the facts written
in ``keras3_cases.py`` with the real Keras, and ``test_parity_keras3.py`` replays Keras's
recorded runs.
"""
import inspect
import re
import warnings

import numba
import numpy as np
import pytest

import numbaopt
from numbaopt import cli, keras3, optimizers, registry, tuning
from numbaopt.keras3 import naming, schedules
from tests.cases import BAD_IDS, bad_steps, gradient_steps, make_params
from tests.keras3_cases import (
    CLASSES, CONFIG_DEFAULTS, CUSTOM, DTYPES, ELEMENT_NAMES, TENSOR_WISE, KERAS_CONFIG_KEYS, KERAS_SIGNATURES, NAMES, NOT_BITWISE, REFERENCES, cast32, configurations,
    reference_run,
)

#: Parameters with Keras paths: two dense layers and a scalar, so that name patterns pick some.
SHAPES = [(4, 3), (3,), (3, 2), (2,), ()]
PATHS = ["dense/kernel", "dense/bias", "dense_1/kernel", "dense_1/bias", "scale"]
STEPS = 6

TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}

DTYPE_IDS = {"ids": lambda d: np.dtype(d).name}
CONFIGS = configurations(ELEMENT_NAMES)


def params_of(dtype, shapes=SHAPES, seed=0):
    return make_params(dtype, shapes, seed=seed)


def steps_of(dtype, shapes=SHAPES, steps=STEPS, seed=1):
    return [[g.astype(dtype) for g in grads] for grads in gradient_steps(shapes, steps=steps, seed=seed)]


def run(opt, params, steps, names=PATHS):
    for grads in steps:
        opt.apply(grads, params, names=names)
    return params


def state_bytes(opt):
    """Everything a step may change, as bytes: the Keras variables (iterations, the rate,
    averages, accumulators, slots, Nadam's product) and the scalar state."""
    return [(path, np.asarray(value).tobytes()) for path, value in opt.keras_variables()] + [
        (k, repr(v)) for k, v in sorted(opt.state().scalars.items())]


def assert_bitwise(ours, theirs, what=""):
    assert len(ours) == len(theirs), what
    for i, (a, b) in enumerate(zip(ours, theirs)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, f"{what} {i}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        assert a.tobytes() == b.tobytes(), f"{what} {i} differs: max |diff| {np.max(np.abs(a.astype(float) - b))}"


def assert_close(name, ours, theirs, dtype, what):
    if name not in NOT_BITWISE:
        assert_bitwise(ours, theirs, what)
        return
    for i, (a, b) in enumerate(zip(ours, theirs)):
        scale = max(float(np.max(np.abs(b))), 1e-30) if b.size else 1.0
        error = float(np.max(np.abs(a.astype(np.float64) - b))) / scale if b.size else 0.0
        assert a.dtype == b.dtype and error <= TOLERANCE[dtype], f"{what} {i}: relative error {error:.3g}"


# ---------------------------------------------------------------- the tables are complete


@pytest.mark.parametrize("table", ["KERAS_SIGNATURES", "KERAS_CONFIG_KEYS", "REFERENCES"])
def test_every_registered_keras3_optimizer_is_in_the_tables(table):
    """A newly registered optimizer fails here until its Keras facts and reference are written."""
    import tests.keras3_cases as cases

    covered_elsewhere = set(TENSOR_WISE) if table == "REFERENCES" else set()  # test_keras3_tensor_optimizers.py
    missing = set(NAMES) - set(getattr(cases, table)) - covered_elsewhere
    assert not missing, f"{table} lacks {sorted(missing)}: add them to tests/keras3_cases.py"


def test_the_family_is_registered_and_apart_from_keras2():
    assert set(NAMES) >= {"SGD", "RMSprop", "Adagrad", "Adadelta", "Adam", "AdamW", "Adamax", "Nadam", "Ftrl", "Lion",
                          "ScheduleFreeAdamW"}
    for name, cls in CLASSES.items():
        assert getattr(keras3, name) is cls and registry.optimizer_class(name, family="keras3") is cls
        assert registry.optimizer_class(f"keras3.{name}") is cls
        assert cls not in registry.rule_based("keras2")
    assert registry.optimizer_class("Adam") is optimizers.Adam is not keras3.Adam


# ------------------------------------------------------------ the math against NumPy


@pytest.mark.parametrize("dtype", DTYPES, **DTYPE_IDS)
@pytest.mark.parametrize(("case", "name", "kwargs"), CONFIGS, ids=[c[0] for c in CONFIGS])
def test_steps_equal_the_numpy_transcription_of_keras(case, name, kwargs, dtype):
    opt = CLASSES[name](**kwargs)
    initial, steps = params_of(dtype), steps_of(dtype)
    expected_params, expected_slots = reference_run(name, opt.get_config(), initial, steps)
    params = run(opt, [p.copy() for p in initial], steps)
    assert opt.iterations == STEPS
    assert_close(name, params, expected_params, dtype, "parameter")
    slots = opt.state().slots
    assert sorted(slots) == sorted(expected_slots), "the slots are not the variables Keras's build adds"
    for kind in expected_slots:
        assert_close(name, slots[kind], expected_slots[kind], dtype, f"slot {kind}")


@pytest.mark.parametrize("dtype", DTYPES, **DTYPE_IDS)
@pytest.mark.parametrize("name", ELEMENT_NAMES, ids=str.lower)
def test_a_schedule_gives_each_step_its_rate_at_the_step_count(name, dtype):
    schedule = schedules.ExponentialDecay(0.01, decay_steps=2, decay_rate=0.5)
    opt = CLASSES[name](learning_rate=schedule)
    initial, steps = params_of(dtype), steps_of(dtype)
    rates = [schedule(k) for k in range(STEPS)]
    assert all(isinstance(r, np.float32) for r in rates) and len(set(rates)) > 2
    expected_params, _ = reference_run(name, {**opt.get_config(), "learning_rate": None}, initial, steps, rates)
    params = [p.copy() for p in initial]
    for k, grads in enumerate(steps):
        assert opt.learning_rate == float(rates[k])
        opt.apply(grads, params, names=PATHS)
    assert_close(name, params, expected_params, dtype, "parameter")
    assert all(not path.endswith("/learning_rate") for path, _ in opt.keras_variables())


# ----------------------------------------------------------------- the constructor


@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_constructor_has_keras_parameters_defaults_and_positional_order(name):
    cls = CLASSES[name]
    ordinary = [(p.name, p.default) for p in inspect.signature(cls).parameters.values()
                if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert tuple(ordinary) == KERAS_SIGNATURES[name]
    positional = [value for _, value in KERAS_SIGNATURES[name]]
    positional[0] = 0.125  # every argument given positionally, the rate changed
    opt = cls(*positional)
    config = opt.get_config()
    assert config["learning_rate"] == 0.125
    for key, default in KERAS_SIGNATURES[name][1:]:
        if key != "name":
            assert config[key] == CONFIG_DEFAULTS.get(name, {}).get(key, default), key
    assert opt.name == naming.snake_case(name) or re.fullmatch(re.escape(naming.snake_case(name)) + r"_\d+", opt.name)


@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_get_config_has_exactly_keras_keys_and_defaults(name):
    config = CLASSES[name]().get_config()
    assert tuple(config) == KERAS_CONFIG_KEYS[name]
    defaults = {**dict(KERAS_SIGNATURES[name]), **CONFIG_DEFAULTS.get(name, {})}
    for key, value in config.items():
        if key == "learning_rate":
            assert value == float(np.float32(defaults[key])), "Keras keeps the rate in a float32 variable"
        elif key != "name":
            assert value == defaults[key] and type(value) is type(defaults[key]), key


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"lrr": 0.1}, "Argument\\(s\\) not recognized: {'lrr': 0.1}"),
    ({"clipnorm": 1.0, "clipvalue": 1.0}, "Only one of `clipnorm`, `clipvalue` and `global_clipnorm`"),
    ({"clipnorm": 1.0, "global_clipnorm": 1.0}, "Only one of"),
    ({"global_clipnorm": 1.0, "clipvalue": 0.5}, "Only one of"),
    ({"gradient_accumulation_steps": 1}, "must be an integer >= 2"),
    ({"learning_rate": 1}, "Argument `learning_rate` should be float"),
    ({"learning_rate": "0.1"}, "Argument `learning_rate` should be float"),
], ids=["unknown-kwarg", "clipnorm-clipvalue", "clipnorm-global", "global-clipvalue", "accumulate-1", "int-rate",
        "str-rate"])
@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_keras_constructor_errors(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        CLASSES[name](**kwargs)


@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_decay_is_ignored_with_keras_warning_and_positional_excess_refused(name):
    with pytest.warns(UserWarning, match="`decay` is no longer supported"):
        opt = CLASSES[name](decay=0.1)
    assert "decay" not in opt.get_config()
    with pytest.raises(TypeError):
        CLASSES[name](*range(len(KERAS_SIGNATURES[name]) + 1))


def test_keras_errors_of_single_optimizers():
    with pytest.raises(ValueError, match="Argument `weight_decay` must be a float. Received: weight_decay=None"):
        keras3.AdamW(weight_decay=None)
    with pytest.raises(ValueError, match="Argument `beta_1` must be in the \\[0, 1\\] range.*SignSGD"):
        keras3.Lion(beta_1=0.0)
    with pytest.raises(ValueError, match="`learning_rate_power` needs to be negative or zero"):
        keras3.Ftrl(learning_rate_power=0.5)
    keras3.Ftrl(learning_rate_power=0.0)  # zero is allowed
    keras3.Lion(beta_1=1.0)


@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_automatic_names_count_per_class(name):
    base = naming.snake_case(name)
    names = [CLASSES[name]().name for _ in range(3)]
    numbers = [0 if n == base else int(n.rsplit("_", 1)[1]) for n in names]
    assert all(n == base or n.startswith(base + "_") for n in names)
    assert numbers[1] == numbers[0] + 1 and numbers[2] == numbers[1] + 1
    assert CLASSES[name](name="mine").name == "mine"


def test_snake_case_is_keras():
    assert [naming.snake_case(n) for n in ("Adam", "AdamW", "RMSprop", "SGD", "ScheduleFreeAdamW")] == [
        "adam", "adam_w", "rm_sprop", "sgd", "schedule_free_adam_w"]


# ---------------------------------------------------------------------- configs


def custom_settings(name):
    """Every CUSTOM setting of ``name`` and base settings away from Keras's defaults."""
    return {**(CUSTOM.get(name) or [{}])[0], "clipnorm": 0.5, "use_ema": True, "ema_momentum": 0.9,
            "ema_overwrite_frequency": 3, "loss_scale_factor": 8.0, "gradient_accumulation_steps": 2, "name": "opt"}


@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_config_round_trips_through_from_config_serialize_deserialize_and_get(name):
    cls = CLASSES[name]
    for opt in (cls(), cls(**custom_settings(name)),
                cls(learning_rate=schedules.CosineDecay(0.01, 100, warmup_target=0.1, warmup_steps=10))):
        config = opt.get_config()
        again = cls.from_config(config)
        assert type(again) is cls and again.get_config() == config
        data = keras3.serialize(opt)
        assert data == {"module": "keras.optimizers", "class_name": name, "config": config, "registered_name": None}
        assert keras3.deserialize(data).get_config() == config
        assert keras3.get(data).get_config() == config
        assert keras3.deserialize({"class_name": name, "config": config}).get_config() == config  # tf-keras's form
    assert type(keras3.get(name.lower())) is cls and keras3.get(name).get_config()["learning_rate"] == cls().get_config()["learning_rate"]
    opt = cls()
    assert keras3.get(opt) is opt


def test_a_schedule_config_is_keras_serialized_form():
    schedule = schedules.PiecewiseConstantDecay([2, 4], [0.1, 0.01, 0.001])
    config = keras3.Adam(learning_rate=schedule).get_config()
    assert config["learning_rate"] == {"module": "keras.optimizers.schedules", "class_name": "PiecewiseConstantDecay",
                                       "config": schedule.get_config(), "registered_name": None}
    again = keras3.Adam.from_config(config)
    assert isinstance(again._hyper["learning_rate"], schedules.PiecewiseConstantDecay)


@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_a_tf_keras_config_turns_tf_keras_on(name):
    config = {**CLASSES[name]().get_config(), "jit_compile": True, "is_legacy_optimizer": False}
    opt = CLASSES[name].from_config(config)
    assert opt.get_config()["tf_keras"] is True
    assert "jit_compile" not in opt.get_config()
    assert keras3.deserialize({"class_name": name, "config": config}).get_config()["tf_keras"] is True
    assert "tf_keras" not in CLASSES[name]().get_config()


@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_a_legacy_config_is_refused_naming_the_keras2_family(name):
    config = {**CLASSES[name]().get_config(), "is_legacy_optimizer": True}
    with pytest.raises(ValueError, match="numbaopt.optimizers"):
        CLASSES[name].from_config(config)


@pytest.mark.parametrize("bad", [
    {"module": "mypackage.optim", "class_name": "Adam", "config": {}},
    {"module": "keras.optimizers", "class_name": "Adam", "config": {}, "registered_name": "Custom>Adam"},
    {"class_name": "NoSuchOptimizer", "config": {}},
    "no-such-optimizer",
    ["Adam"],
], ids=["custom-module", "registered-name", "unknown-class", "unknown-name", "list"])
def test_deserialize_refuses_what_is_not_keras(bad):
    with pytest.raises(ValueError):
        keras3.get(bad)


# ----------------------------------------------------------------- weight decay


@pytest.mark.parametrize("how", ["names", "var_list", "tf-variable-name"])
@pytest.mark.parametrize("name", ELEMENT_NAMES, ids=str.lower)
def test_weight_decay_exclusions_leave_exactly_those_parameters_undecayed(name, how):
    dtype = np.float64
    initial, steps = params_of(dtype), steps_of(dtype)
    params = [p.copy() for p in initial]
    opt = CLASSES[name](weight_decay=0.05)
    if how == "names":
        opt.exclude_from_weight_decay(var_names=["bias"])
        excluded = {1, 3}
    elif how == "var_list":
        opt.exclude_from_weight_decay(var_list=[params[0], params[4]])
        excluded = {0, 4}
    else:  # Keras on TensorFlow searches "path:0": "dense/" also names dense_1's, "kernel:0$" ends a path
        opt.exclude_from_weight_decay(var_names=["kernel:0$"])
        excluded = {0, 2}
    run(opt, params, steps)
    decayed = run(CLASSES[name](weight_decay=0.05), [p.copy() for p in initial], steps)
    undecayed = run(CLASSES[name](weight_decay=0.0), [p.copy() for p in initial], steps)
    for i in range(len(SHAPES)):
        assert_bitwise([params[i]], [(undecayed if i in excluded else decayed)[i]], f"parameter {i}")
    assert any(decayed[i].tobytes() != undecayed[i].tobytes() for i in excluded), "weight decay changed nothing"


def test_exclusion_patterns_search_the_tensorflow_variable_name():
    assert naming.excluded_by_pattern(["dense/kernel", "dense_1/kernel", "dense/bias", "conv/bias"], ["dense"]) == [
        True, True, True, False]
    assert naming.excluded_by_pattern(["dense/kernel", "dense/bias"], ["kernel:0"]) == [True, False]
    assert naming.excluded_by_pattern(["a", "b"], []) == [False, False]


@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_exclusions_after_the_first_step_are_refused_and_need_names(name):
    opt = CLASSES[name](weight_decay=0.1)
    opt.exclude_from_weight_decay(var_names=["bias"])
    params = params_of(np.float32)
    with pytest.raises(ValueError, match="pass names="):
        opt.apply(steps_of(np.float32)[0], params)
    assert opt.iterations == 0
    opt.apply(steps_of(np.float32)[0], params, names=PATHS)
    with pytest.raises(ValueError, match="can only be configured before the optimizer is built"):
        opt.exclude_from_weight_decay(var_names=["kernel"])


# ---------------------------------------------------- gradient processing (Keras's apply)


def clip_by_norm(g, c):
    """tf.clip_by_norm, as Keras 3 calls it per variable."""
    kind = g.dtype.type
    norm = np.sqrt(np.sum(g * g, dtype=g.dtype))
    return (g * kind(c)) / np.maximum(norm, kind(c))


def clip_by_global_norm(grads, c):
    kind = grads[0].dtype.type
    norm = np.sqrt(np.sum([np.sum(g * g) for g in grads], dtype=grads[0].dtype))
    scale = kind(c) * np.minimum(kind(1.0) / norm, kind(1.0 / c))
    return [g * scale for g in grads]


CLIPS = {
    "clipnorm": ({"clipnorm": 0.3}, lambda grads: [clip_by_norm(g, 0.3) for g in grads]),
    "global_clipnorm": ({"global_clipnorm": 0.3}, lambda grads: clip_by_global_norm(grads, 0.3)),
    "clipvalue": ({"clipvalue": 0.02}, lambda grads: [np.clip(g, -g.dtype.type(0.02), g.dtype.type(0.02)) for g in grads]),
    "loss_scale_factor": ({"loss_scale_factor": 64.0}, lambda grads: [g / g.dtype.type(64.0) for g in grads]),
}


@pytest.mark.parametrize("dtype", DTYPES, **DTYPE_IDS)
@pytest.mark.parametrize("setting", list(CLIPS))
@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_clipping_and_loss_scale_equal_the_step_on_processed_gradients(name, setting, dtype):
    """The same optimizer given the clipped (unscaled) gradients computed here in NumPy;
    the clip must act on some steps (the gradients' norms straddle it)."""
    kwargs, process = CLIPS[setting]
    initial, steps = params_of(dtype), steps_of(dtype)
    ours = run(CLASSES[name](**kwargs), [p.copy() for p in initial], steps)
    processed = [process(grads) for grads in steps]
    assert any(not np.array_equal(a, b) for grads, done in zip(steps, processed) for a, b in zip(grads, done))
    theirs = run(CLASSES[name](), [p.copy() for p in initial], processed)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        np.testing.assert_allclose(a, b, rtol=TOLERANCE[dtype] if setting.endswith("norm") else 0, atol=0,
                                   err_msg=f"parameter {i}")
    if setting in ("clipvalue", "loss_scale_factor"):
        assert_bitwise(ours, theirs)


@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_gradient_accumulation_updates_every_nth_call_with_the_mean(name):
    dtype, n = np.float64, 3
    schedule = schedules.ExponentialDecay(0.01, decay_steps=1, decay_rate=0.8)
    opt = CLASSES[name](learning_rate=schedule, gradient_accumulation_steps=n)
    initial, steps = params_of(dtype), steps_of(dtype, steps=2 * n)
    params = [p.copy() for p in initial]
    reference = CLASSES[name]()
    expected = [p.copy() for p in initial]
    accumulated = [np.zeros_like(p) for p in initial]
    for call, grads in enumerate(steps):
        before = [p.copy() for p in params]
        assert opt.learning_rate == float(schedule(call)), "the schedule runs at the count of calls"
        opt.apply(grads, params, names=PATHS)
        assert opt.iterations == (call + 1) // n
        if (call + 1) % n:
            accumulated = [a + g for a, g in zip(accumulated, grads)]
            assert_bitwise(params, before, "an accumulating call changed a parameter")
            continue
        mean = [(g + a) / dtype(n) for g, a in zip(grads, accumulated)]
        accumulated = [np.zeros_like(p) for p in initial]
        reference.learning_rate = float(schedule(call))
        reference.apply(mean, expected, names=PATHS)
        assert_bitwise(params, expected, f"call {call}")
    accumulators = [v for path, v in opt.keras_variables() if path.endswith("_gradient_accumulator")]
    assert len(accumulators) == len(SHAPES) and all(not a.any() for a in accumulators)
    assert opt.keras_variables()[0][1] == 2 * n  # Keras's variable counts calls


@pytest.mark.parametrize("tf_keras", [False, True], ids=["keras3", "tf_keras"])
@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_ema_averages_overwrites_and_finalizes(name, tf_keras):
    dtype, momentum, frequency = np.float64, 0.9, 3
    opt = CLASSES[name](use_ema=True, ema_momentum=momentum, ema_overwrite_frequency=frequency, tf_keras=tf_keras)
    plain = CLASSES[name](tf_keras=tf_keras)  # tf_keras also changes Nadam's product
    initial, steps = params_of(dtype), steps_of(dtype, steps=7)
    params, expected = [p.copy() for p in initial], [p.copy() for p in initial]
    averages = [p.copy() if tf_keras else np.zeros_like(p) for p in initial]
    for k, grads in enumerate(steps):
        opt.apply(grads, params, names=PATHS)
        plain.apply(grads, expected, names=PATHS)
        m = dtype(momentum) if (k != 0 or tf_keras) else dtype(0.0)
        averages = [m * a + (dtype(1) - m) * p for a, p in zip(averages, expected)]
        if (k + 1) % frequency == 0:
            for p, a in zip(expected, averages):
                p[...] = a
        assert_bitwise(params, expected, f"step {k}")
        ours = [v for path, v in opt.keras_variables() if path.endswith("_average")]
        assert_bitwise(ours, averages, f"average after step {k}")
    assert any(not np.array_equal(p, a) for p, a in zip(params, averages))
    opt.finalize_variable_values(params)
    assert_bitwise(params, averages)
    with pytest.raises(ValueError, match="does not match the length"):
        opt.finalize_variable_values(params[:-1])
    untouched = [p.copy() for p in params]
    plain.finalize_variable_values(params)  # no EMA: nothing
    assert_bitwise(params, untouched)


@pytest.mark.parametrize("name", ELEMENT_NAMES, ids=str.lower)
def test_a_none_gradient_skips_its_parameter_and_slots(name):
    dtype = np.float32
    initial, steps = params_of(dtype), steps_of(dtype)
    opt, alone = CLASSES[name](), CLASSES[name]()
    params = [p.copy() for p in initial]
    kept = [0, 2, 3, 4]
    others = [initial[i].copy() for i in kept]
    for grads in steps:
        opt.apply([None if i == 1 else g for i, g in enumerate(grads)], params, names=PATHS)
        alone.apply([grads[i] for i in kept], others, names=[PATHS[i] for i in kept])
    assert_bitwise([params[i] for i in kept], others)
    assert_bitwise([params[1]], [initial[1]], "the parameter without a gradient moved")
    start = reference_run(name, opt.get_config(), [initial[1]], [])[1]
    for kind, values in opt.state().slots.items():
        assert_bitwise([values[1]], start[kind], f"slot {kind} of the parameter without a gradient")
        assert_bitwise([values[i] for i in kept], alone.state().slots[kind], f"slot {kind}")
    with pytest.raises(ValueError, match="No gradients provided for any variable"):
        opt.apply([None] * len(params), params)


@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_apply_without_variables_uses_the_first_steps(name):
    dtype = np.float32
    initial, steps = params_of(dtype), steps_of(dtype)
    fresh = CLASSES[name]()
    with pytest.raises(ValueError, match="must already be built"):
        fresh.apply(steps[0])
    opt, other = CLASSES[name](), CLASSES[name]()
    params, expected = [p.copy() for p in initial], [p.copy() for p in initial]
    opt.apply(steps[0], params, names=PATHS)
    other.apply(steps[0], expected, names=PATHS)
    for grads in steps[1:]:
        opt.apply(grads)
        other.apply(grads, expected)
    assert_bitwise(params, expected)
    opt.apply_gradients(zip(steps[0], params), names=PATHS)
    other.apply(steps[0], expected)
    assert_bitwise(params, expected)


@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_learning_rate_setter_and_structural_settings(name):
    opt = CLASSES[name]()
    opt.learning_rate = 0.1
    assert opt.learning_rate == float(np.float32(0.1)) and opt.get_config()["learning_rate"] == float(np.float32(0.1))
    with pytest.raises(ValueError):
        opt.learning_rate = -1.0
    assert opt.learning_rate == float(np.float32(0.1))
    opt.learning_rate = schedules.InverseTimeDecay(0.1, 1, 0.5)  # a float optimizer takes a schedule, as Keras's
    assert opt.learning_rate == float(np.float32(0.1))
    with pytest.raises(TypeError, match="not settable"):  # and then, as Keras's, no float
        opt.learning_rate = 0.5
    scheduled = CLASSES[name](learning_rate=schedules.ExponentialDecay(0.1, 10, 0.9))
    with pytest.raises(TypeError, match="not settable"):
        scheduled.learning_rate = 0.5
    for setting in CLASSES[name].structural:
        with pytest.raises(AttributeError, match="chooses"):
            setattr(opt, setting, getattr(opt, setting))


def test_every_structural_setting_changes_the_slots():
    """``structural`` names the settings Keras's ``build`` reads (the slots they choose)."""
    seen = 0
    for name, cls in CLASSES.items():
        for setting in cls.structural:
            default = dict(KERAS_SIGNATURES[name])[setting]
            other = (not default) if isinstance(default, bool) else 0.5
            assert cls(**{setting: other}).slot_names != cls().slot_names, (name, setting)
            seen += 1
    assert seen >= 4  # SGD's momentum, RMSprop's momentum and centered, Adam's and AdamW's amsgrad


@pytest.mark.parametrize("name", ELEMENT_NAMES, ids=str.lower)
def test_keras_variables_are_in_keras_order_and_paths(name):
    kwargs = {"use_ema": True, "gradient_accumulation_steps": 2, "name": "opt"}
    opt = CLASSES[name](**kwargs)
    params = params_of(np.float32)
    run(opt, params, steps_of(np.float32, steps=2))
    paths = [path for path, _ in opt.keras_variables()]
    slot_names = REFERENCES[name][0](opt.get_config())
    flat = [p.replace("/", "_") for p in PATHS]
    expected = ["opt/iteration", "opt/learning_rate"] + [f"opt/{p}_average" for p in flat] + [
        f"opt/{p}_gradient_accumulator" for p in flat]
    assert paths[:len(expected)] == expected
    rest = paths[len(expected):]
    assert sorted(rest[:len(slot_names) * len(flat)]) == sorted(f"opt/{p}_{s}" for p in flat for s in slot_names)
    assert len(paths) == len(set(paths))


# ------------------------------------------------------- bad inputs change nothing


def snapshot(opt, params):
    return [p.copy() for p in params], state_bytes(opt), opt.iterations


def assert_unchanged(before, opt, params):
    old_params, old_state, old_iterations = before
    assert opt.iterations == old_iterations
    assert_bitwise(params, old_params, "parameter")
    assert state_bytes(opt) == old_state


def bound(name, params, **kwargs):
    opt = CLASSES[name](**kwargs)
    opt.apply_gradients([(np.full_like(p, 0.1), p) for p in params])
    return opt


#: Keras 3's ``apply`` returns at once for an empty list (``if len(grads) == 0: return``):
#: tested below, not as a refused call.
REFUSED = [case for case in BAD_IDS if case != "no-pairs"]


@pytest.mark.parametrize("case", REFUSED)
@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_a_refused_step_changes_nothing(name, case):
    """Keras 2.0's family's bad calls (``tests/cases.py``), refused with the same exception
    types; with accumulation and EMA too, whose arrays must not change either."""
    params = make_params(np.float64)
    for kwargs in ({}, {"use_ema": True, "gradient_accumulation_steps": 2, "clipnorm": 1.0}):
        opt = bound(name, params, **kwargs)
        _, pairs, error = next(c for c in bad_steps(params) if c[0] == case)
        before = snapshot(opt, params)
        with pytest.raises(error):
            opt.apply_gradients(pairs)
        assert_unchanged(before, opt, params)


@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_an_empty_call_is_a_no_op_as_in_keras(name):
    params = params_of(np.float32)
    opt = CLASSES[name](gradient_accumulation_steps=2, use_ema=True)
    opt.apply(steps_of(np.float32)[0], params, names=PATHS)
    before = snapshot(opt, params)
    opt.apply([])
    opt.apply([], params)
    assert_unchanged(before, opt, params)


@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_keras3_specific_bad_calls_change_nothing(name):
    params = params_of(np.float32)
    grads = steps_of(np.float32)[0]
    opt = CLASSES[name](use_ema=True)
    opt.apply(grads, params, names=PATHS)
    before = snapshot(opt, params)
    calls = [
        (ValueError, lambda: opt.apply(grads, params, names=PATHS[:-1])),  # names count
        (ValueError, lambda: opt.apply(grads, params, names=PATHS[::-1])),  # other names than the first step's
        (ValueError, lambda: opt.apply(grads[:-1], params)),  # fewer gradients than variables
        (ValueError, lambda: opt.apply(grads[:-1])),
        (TypeError, lambda: opt.apply([g.astype(np.complex64) for g in grads], params)),
        (ValueError, lambda: opt.apply([np.ones(7, np.float32)] + grads[1:], params)),
        (ValueError, lambda: opt.finalize_variable_values(params[:-1])),
    ]
    for error, call in calls:
        with pytest.raises(error):
            call()
        assert_unchanged(before, opt, params)


@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_nan_gradients_are_applied_as_keras_applies_them(name):
    """Keras 3 checks no values: a NaN gradient makes NaN parameters (and counts the step)."""
    params = params_of(np.float32)
    grads = [np.full_like(p, np.nan) for p in params]
    opt = bound(name, params)
    with np.errstate(all="ignore"):
        opt.apply(grads, params, names=PATHS)
    assert opt.iterations == 2
    assert all(np.isnan(p).all() for p in params if p.size)


@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_narrower_float_gradients_are_widened(name):
    dtype = np.float64
    initial, steps = params_of(dtype), steps_of(np.float32)
    ours = run(CLASSES[name](), [p.copy() for p in initial], steps)
    theirs = run(CLASSES[name](), [p.copy() for p in initial], [[g.astype(dtype) for g in grads] for grads in steps])
    assert_bitwise(ours, theirs)


# ------------------------------------------------------------------ checkpoints


CHECKPOINT_CASES = {
    "plain": {},
    "custom": "custom",
    "schedule": {"learning_rate": schedules.CosineDecayRestarts(0.01, 3)},
    "ema": {"use_ema": True, "ema_momentum": 0.9, "ema_overwrite_frequency": 4},
    "accumulation": {"gradient_accumulation_steps": 3, "global_clipnorm": 0.5},
    "tf_keras": {"tf_keras": True, "use_ema": True},
}


@pytest.mark.parametrize("dtype", DTYPES, **DTYPE_IDS)
@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_a_checkpoint_resumes_bitwise(name, case, dtype, tmp_path):
    """Saved after 4 calls (mid-cycle with accumulation), loaded, 4 more: bitwise the run
    that never stopped; the exclusions survive the file."""
    kwargs = CHECKPOINT_CASES[case]
    if kwargs == "custom":
        kwargs = (CUSTOM.get(name) or [{}])[0]
    kwargs = {**kwargs, "weight_decay": 0.05}
    initial, steps = params_of(dtype), steps_of(dtype, steps=8)
    opt = CLASSES[name](**kwargs)
    opt.exclude_from_weight_decay(var_names=["bias"])
    params = run(opt, [p.copy() for p in initial], steps[:4])
    numbaopt.save_optimizer(opt, tmp_path / "opt.h5")
    resumed_params = [p.copy() for p in params]
    loaded = numbaopt.load_optimizer(tmp_path / "opt.h5")
    assert type(loaded) is CLASSES[name] and loaded.get_config() == opt.get_config()
    assert loaded.iterations == opt.iterations and loaded.learning_rate == opt.learning_rate
    run(opt, params, steps[4:])
    run(loaded, resumed_params, steps[4:])
    assert_bitwise(resumed_params, params)
    assert state_bytes(loaded) == state_bytes(opt)
    assert loaded._excluded_patterns == ["bias"]


def test_a_checkpoint_before_the_first_step_and_inspect_shows_keras3(tmp_path, capsys):
    opt = keras3.Nadam(use_ema=True, gradient_accumulation_steps=2)
    numbaopt.save_optimizer(opt, tmp_path / "fresh.h5")
    assert numbaopt.load_optimizer(tmp_path / "fresh.h5").get_config() == opt.get_config()
    params = params_of(np.float32)
    run(opt, params, steps_of(np.float32, steps=3))
    numbaopt.save_optimizer(opt, tmp_path / "opt.h5")
    assert cli.main(["inspect", str(tmp_path / "opt.h5")]) == 0
    out = capsys.readouterr().out
    assert "keras3.Nadam" in out or "Nadam" in out
    for word in ("momentum", "velocity", "iterations"):
        assert word in out, out


def test_a_keras2_checkpoint_does_not_load_as_keras3(tmp_path):
    legacy = optimizers.Adam()
    legacy.apply_gradients([(np.ones(3), np.zeros(3))])
    numbaopt.save_optimizer(legacy, tmp_path / "k2.h5")
    numbaopt.save_optimizer(keras3.Adam(), tmp_path / "k3.h5")
    assert type(numbaopt.load_optimizer(tmp_path / "k2.h5")) is optimizers.Adam
    assert type(numbaopt.load_optimizer(tmp_path / "k3.h5")) is keras3.Adam


# ---------------------------------------------------------------------- threads


THREAD_SHAPES = [(), (7,), (3, 50), (40_000,)]


def threaded_run(name, dtype, kwargs, threshold, n_threads, monkeypatch):
    monkeypatch.setattr(tuning, "PARALLEL_MIN_ELEMENTS", threshold)
    monkeypatch.setattr(tuning, "CHUNK_ELEMENTS", 8192)
    previous = numba.get_num_threads()
    numba.set_num_threads(n_threads)
    try:
        opt = CLASSES[name](**kwargs, name="opt")
        params = params_of(dtype, THREAD_SHAPES)
        for grads in steps_of(dtype, THREAD_SHAPES, steps=4):
            opt.apply(grads, params)
    finally:
        numba.set_num_threads(previous)
    return params, state_bytes(opt)


@pytest.mark.parametrize("dtype", DTYPES, **DTYPE_IDS)
@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_results_are_identical_for_every_thread_count(name, dtype, monkeypatch):
    kwargs = {"global_clipnorm": 1.0, "weight_decay": 0.01}
    most = numba.config.NUMBA_NUM_THREADS
    serial = threaded_run(name, dtype, kwargs, 10**9, 1, monkeypatch)
    for n in sorted({1, 2, most}):
        params, state = threaded_run(name, dtype, kwargs, 0, min(n, most), monkeypatch)
        assert_bitwise(params, serial[0], f"{n} threads")
        assert state == serial[1]


def test_warnings_are_not_raised_by_a_plain_step():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in NAMES:
            run(CLASSES[name](), params_of(np.float32), steps_of(np.float32, steps=1))


def test_float32_settings_in_a_float64_model_are_rounded_as_tensorflow_casts():
    """A fact the references rely on, checked once directly: ``ops.cast(0.1, float64)`` on
    TensorFlow is float64(float32(0.1)), not 0.1."""
    assert cast32(0.1, np.float64) == np.float64(np.float32(0.1)) != np.float64(0.1)
