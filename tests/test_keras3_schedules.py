"""numbaopt.keras3.schedules: Keras 3.15's learning-rate schedules.

Without TensorFlow: each schedule against an independent float64 formula, config and serialize
round trips, and bad inputs. Marked ``keras``: bitwise against the real Keras 3 (TensorFlow
backend) and tf-keras schedules, and serialize output against Keras's own.
"""
import json
import math
import os

import numpy as np
import pytest

from numbaopt.keras3 import schedules

STEPS = range(0, 301)

#: (class name, constructor kwargs): boundaries of each schedule fall inside STEPS.
CASES = [
    ("ExponentialDecay", dict(initial_learning_rate=0.1, decay_steps=10, decay_rate=0.9)),
    ("ExponentialDecay", dict(initial_learning_rate=1e-3, decay_steps=7, decay_rate=0.5, staircase=True)),
    ("ExponentialDecay", dict(initial_learning_rate=0.3, decay_steps=33.3, decay_rate=1.07)),
    ("PiecewiseConstantDecay", dict(boundaries=[10, 20], values=[1.0, 0.5, 0.1])),
    ("PiecewiseConstantDecay", dict(boundaries=(5, 100, 250), values=(0.3, 0.01, 1e-3, 7e-5))),
    ("PiecewiseConstantDecay", dict(boundaries=[10.7, 99.2], values=[0.2, 0.1, 0.05])),
    ("PiecewiseConstantDecay", dict(boundaries=[50], values=[3, 1])),
    ("PolynomialDecay", dict(initial_learning_rate=0.1, decay_steps=100)),
    ("PolynomialDecay", dict(initial_learning_rate=0.1, decay_steps=70, end_learning_rate=0.01, power=0.5)),
    ("PolynomialDecay", dict(initial_learning_rate=0.05, decay_steps=30, power=2.0, cycle=True)),
    ("PolynomialDecay", dict(initial_learning_rate=1e-2, decay_steps=17, end_learning_rate=1e-3, power=1.7,
                             cycle=True)),
    ("InverseTimeDecay", dict(initial_learning_rate=0.1, decay_steps=1.0, decay_rate=0.5)),
    ("InverseTimeDecay", dict(initial_learning_rate=0.03, decay_steps=20, decay_rate=0.3, staircase=True)),
    ("CosineDecay", dict(initial_learning_rate=0.1, decay_steps=200)),
    ("CosineDecay", dict(initial_learning_rate=0.1, decay_steps=77, alpha=0.1)),
    ("CosineDecay", dict(initial_learning_rate=0.0, decay_steps=150, warmup_target=0.1, warmup_steps=100)),
    ("CosineDecay", dict(initial_learning_rate=1e-3, decay_steps=90, alpha=0.3, warmup_target=0.02, warmup_steps=33)),
    ("CosineDecay", dict(initial_learning_rate=0.01, decay_steps=50, warmup_target=0.05, warmup_steps=0)),
    ("CosineDecayRestarts", dict(initial_learning_rate=0.1, first_decay_steps=10)),
    ("CosineDecayRestarts", dict(initial_learning_rate=0.1, first_decay_steps=25, t_mul=1.0)),
    ("CosineDecayRestarts", dict(initial_learning_rate=0.05, first_decay_steps=7, t_mul=1.5, m_mul=0.8, alpha=0.1)),
    ("CosineDecayRestarts", dict(initial_learning_rate=0.2, first_decay_steps=33, t_mul=1.0, m_mul=0.5, alpha=0.05)),
    ("CosineDecayRestarts", dict(initial_learning_rate=1e-3, first_decay_steps=3, t_mul=3.0, m_mul=0.9)),
]
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(CASES)]


def make(name, kwargs):
    return schedules.SCHEDULES[name](**kwargs)


def _cosine(fraction, alpha):
    return (1 - alpha) * 0.5 * (1 + math.cos(math.pi * fraction)) + alpha


def reference(name, kw, step):
    """Each schedule's formula in float64, written from its definition (not Keras's op order)."""
    lr = kw.get("initial_learning_rate")
    if name == "ExponentialDecay":
        p = step / kw["decay_steps"]
        return lr * kw["decay_rate"] ** (math.floor(p) if kw.get("staircase") else p)
    if name == "InverseTimeDecay":
        p = step / kw["decay_steps"]
        return lr / (1 + kw["decay_rate"] * (math.floor(p) if kw.get("staircase") else p))
    if name == "PiecewiseConstantDecay":
        for boundary, value in zip(kw["boundaries"], kw["values"]):
            if step <= int(boundary):
                return value
        return kw["values"][-1]
    if name == "PolynomialDecay":
        end, power, decay = kw.get("end_learning_rate", 1e-4), kw.get("power", 1.0), kw["decay_steps"]
        if kw.get("cycle"):
            decay *= max(1, math.ceil(step / decay))
        return (lr - end) * (1 - min(step, decay) / decay) ** power + end
    if name == "CosineDecay":
        alpha, target, warmup = kw.get("alpha", 0.0), kw.get("warmup_target"), kw.get("warmup_steps", 0)
        if target is None:
            return lr * _cosine(min(step, kw["decay_steps"]) / kw["decay_steps"], alpha)
        if step < warmup:
            return lr + (target - lr) * step / warmup
        return target * _cosine(min(step - warmup, kw["decay_steps"]) / kw["decay_steps"], alpha)
    # CosineDecayRestarts: walk the periods.
    start, length, restart = 0.0, float(kw["first_decay_steps"]), 0
    while step >= start + length:
        start, length, restart = start + length, length * kw.get("t_mul", 2.0), restart + 1
    peak = kw.get("m_mul", 1.0) ** restart
    alpha = kw.get("alpha", 0.0)
    return lr * ((1 - alpha) * peak * 0.5 * (1 + math.cos(math.pi * (step - start) / length)) + alpha)


def as_json(config):
    """A config as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(config))


def ulps(a, b):
    """Distance in float32 ulps (0 for two nans)."""
    a, b = np.float32(a), np.float32(b)
    if np.isnan(a) and np.isnan(b):
        return 0
    return abs(int(a.view(np.int32)) - int(b.view(np.int32)))


# ---------------------------------------------------------------- without TensorFlow


@pytest.mark.parametrize("name, kwargs", CASES, ids=IDS)
def test_schedule_matches_its_float64_formula(name, kwargs):
    schedule = make(name, kwargs)
    scale = max(abs(reference(name, kwargs, step)) for step in STEPS)
    for step in STEPS:
        got = schedule(step)
        assert type(got) is np.float32
        want = reference(name, kwargs, step)
        assert abs(float(got) - want) <= 1e-5 * abs(want) + 1e-6 * scale, (step, got, want)


@pytest.mark.parametrize("name, kwargs", CASES, ids=IDS)
def test_config_and_serialize_round_trips(name, kwargs):
    schedule = make(name, kwargs)
    config = schedule.get_config()
    assert config == {**config, **kwargs}
    again = type(schedule).from_config(config)
    assert again.get_config() == config
    data = schedules.serialize(schedule)
    assert data == {"module": "keras.optimizers.schedules", "class_name": name, "config": config,
                    "registered_name": None}
    from_json = schedules.deserialize(json.loads(json.dumps(data)))
    assert type(from_json) is type(schedule)
    assert [from_json(s) for s in range(0, 120, 7)] == [schedule(s) for s in range(0, 120, 7)]
    # tf-keras's legacy form, and its name default of None.
    legacy = schedules.deserialize({"class_name": name, "config": {**config, "name": None}})
    assert legacy.name == type(schedule)(**{**kwargs, "name": None}).name == config["name"]


def test_defaults_and_config_keys_are_keras_3s():
    assert schedules.ExponentialDecay(0.1, 10, 0.9).get_config() == {
        "initial_learning_rate": 0.1, "decay_steps": 10, "decay_rate": 0.9, "staircase": False,
        "name": "ExponentialDecay"}
    assert schedules.PiecewiseConstantDecay([1], [0.1, 0.2]).get_config()["name"] == "PiecewiseConstant"
    assert schedules.PolynomialDecay(0.1, 10).get_config() == {
        "initial_learning_rate": 0.1, "decay_steps": 10, "end_learning_rate": 0.0001, "power": 1.0, "cycle": False,
        "name": "PolynomialDecay"}
    assert schedules.InverseTimeDecay(0.1, 10, 0.5).get_config()["name"] == "InverseTimeDecay"
    assert schedules.CosineDecay(0.1, 10).get_config() == {
        "initial_learning_rate": 0.1, "decay_steps": 10, "alpha": 0.0, "name": "CosineDecay", "warmup_target": None,
        "warmup_steps": 0}
    assert schedules.CosineDecayRestarts(0.1, 10).get_config() == {
        "initial_learning_rate": 0.1, "first_decay_steps": 10, "t_mul": 2.0, "m_mul": 1.0, "alpha": 0.0,
        "name": "SGDRDecay"}


def test_serialize_writes_numpy_scalars_as_python_scalars_like_keras():
    data = schedules.serialize(schedules.ExponentialDecay(np.float32(0.1), np.int64(10), np.float64(0.9)))
    config = data["config"]
    assert config["initial_learning_rate"] == 0.10000000149011612 and type(config["initial_learning_rate"]) is float
    assert type(config["decay_steps"]) is int and isinstance(config["decay_rate"], float)
    assert json.dumps(data)


def test_piecewise_truncates_float_boundaries_for_integer_steps_and_sums_like_keras_3():
    schedule = schedules.PiecewiseConstantDecay([10.7, 20], [1.0, 2.0, 3.0])
    assert (schedule(10), schedule(11), schedule(20), schedule(21)) == (1.0, 2.0, 2.0, 3.0)
    assert (schedule(10.5), schedule(10.8)) == (1.0, 2.0)  # a float step meets the float boundary
    # Keras 3 sums condition * value: an inf anywhere makes 0 * inf = nan.
    assert np.isnan(schedules.PiecewiseConstantDecay([10, 20], [1.0, float("inf"), 3.0])(5))


def test_c_math_functions_and_their_float64_fallback_agree_within_one_ulp():
    rng = np.random.default_rng(0)
    for x in rng.uniform(0, math.pi, 300).astype(np.float32):
        assert ulps(schedules._cos(x), np.cos(np.float64(x))) <= 1
    for x in rng.uniform(0.5, 20, 300).astype(np.float32):
        assert ulps(schedules._log(x), np.log(np.float64(x))) <= 1
    for x, y in rng.uniform(0.01, 3, (300, 2)).astype(np.float32):
        assert ulps(schedules._pow(x, y * 10), np.float64(x) ** np.float64(y * 10)) <= 1


BAD = [
    (lambda: schedules.ExponentialDecay(0.1, 0, 0.9), ValueError, "decay_steps"),
    (lambda: schedules.ExponentialDecay(0.1, -3, 0.9), ValueError, "decay_steps"),
    (lambda: schedules.ExponentialDecay("0.1", 10, 0.9), TypeError, "initial_learning_rate"),
    (lambda: schedules.ExponentialDecay(0.1, 10, None), TypeError, "decay_rate"),
    (lambda: schedules.ExponentialDecay(0.1, 10, 0.9, staircase="yes"), TypeError, "staircase"),
    (lambda: schedules.ExponentialDecay(0.1, 10, 0.9, name="a/b"), ValueError, "name"),
    (lambda: schedules.ExponentialDecay(0.1, 10, 0.9, name=3), ValueError, "name"),
    (lambda: schedules.PiecewiseConstantDecay([10, 20], [1.0, 0.5]), ValueError, "1 less"),
    (lambda: schedules.PiecewiseConstantDecay([], [1.0]), ValueError, "boundaries"),
    (lambda: schedules.PiecewiseConstantDecay([10], [1, 0.5]), TypeError, "values"),
    (lambda: schedules.PiecewiseConstantDecay(10, [1.0, 0.5]), TypeError, "boundaries"),
    (lambda: schedules.PiecewiseConstantDecay([10], [1.0, "x"]), TypeError, "values"),
    (lambda: schedules.PolynomialDecay(0.1, 0), ValueError, "decay_steps"),
    (lambda: schedules.PolynomialDecay(0.1, 10, power="2"), TypeError, "power"),
    (lambda: schedules.PolynomialDecay(0.1, 10, cycle=1), TypeError, "cycle"),
    (lambda: schedules.InverseTimeDecay(0.1, 0.0, 0.5), ValueError, "decay_steps"),
    (lambda: schedules.CosineDecay(0.1, 0), ValueError, "decay_steps"),
    (lambda: schedules.CosineDecay(0.1, 10, warmup_target="0.2"), TypeError, "warmup_target"),
    (lambda: schedules.CosineDecay(0.1, 10, warmup_steps=None), TypeError, "warmup_steps"),
    (lambda: schedules.CosineDecayRestarts(0.1, 0), ValueError, "first_decay_steps"),
    (lambda: schedules.CosineDecayRestarts(0.1, 10, t_mul=True), TypeError, "t_mul"),
    (lambda: schedules.ExponentialDecay(0.1, 10, 0.9)("3"), TypeError, "step"),
    (lambda: schedules.LearningRateSchedule()(3), NotImplementedError, "__call__"),
    (lambda: schedules.LearningRateSchedule().get_config(), NotImplementedError, "get_config"),
    (lambda: schedules.deserialize({"class_name": "LinearCosineDecay", "config": {}}), ValueError, "LinearCosine"),
    (lambda: schedules.deserialize({"class_name": "MySchedule", "config": {}}), ValueError, "MySchedule"),
    (lambda: schedules.deserialize({"module": "my_pkg", "class_name": "ExponentialDecay", "config": {}}),
     ValueError, "my_pkg"),
    (lambda: schedules.deserialize({"module": None, "class_name": "ExponentialDecay", "config": {},
                                    "registered_name": "Custom>ExponentialDecay"}), ValueError, "Custom>"),
    (lambda: schedules.deserialize({"class_name": "LearningRateSchedule", "config": {}}), ValueError, "RateSchedule'"),
    (lambda: schedules.deserialize("ExponentialDecay"), TypeError, "class_name"),
    (lambda: schedules.deserialize({"class_name": "ExponentialDecay", "config": {
        "initial_learning_rate": 0.1, "decay_steps": 0, "decay_rate": 0.9, "staircase": False, "name": None}}),
     ValueError, "decay_steps"),
]


@pytest.mark.parametrize("call, error, words", BAD, ids=[f"{e.__name__}-{w}-{i}" for i, (_, e, w) in enumerate(BAD)])
def test_bad_inputs_raise_naming_the_argument(call, error, words):
    with pytest.raises(error, match=f"(?s).*{words.replace('>', '.')}"):
        call()


def test_serialize_refuses_a_custom_schedule():
    class Custom(schedules.ExponentialDecay):
        pass

    with pytest.raises(ValueError, match="Custom"):
        schedules.serialize(Custom(0.1, 10, 0.9))


# ---------------------------------------------------------------- against Keras 3 and tf-keras

#: The worst difference from Keras measured over CASES and RANDOM_CASES: bitwise where the C
#: library's cosf/logf/powf were loaded (TensorFlow's CPU kernels call them); with the float64
#: fallback, 1 ulp, but 4 for CosineDecayRestarts.
KERAS_ULPS = 0 if schedules._C_FUNCTIONS is not None else 4


@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    keras = pytest.importorskip("keras")
    if int(keras.__version__.split(".")[0]) < 3 or keras.backend.backend() != "tensorflow":
        pytest.skip("needs Keras 3 on the TensorFlow backend")
    return keras


def keras_values(schedule, steps):
    """Keras's schedule at int64 steps, as the optimizer's `iterations` variable calls it."""
    import tensorflow as tf

    return [np.float32(schedule(tf.constant(step, tf.int64)).numpy()) for step in steps]


def worst_ulps(name, kwargs, theirs):
    got = [make(name, kwargs)(step) for step in STEPS]
    return max(ulps(a, b) for a, b in zip(got, theirs))


def random_cases(count=60, seed=7):
    """Random configurations, with steps spread over several periods of each schedule."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        lr = float(rng.choice([1e-4, 3e-3, 0.01, 0.1, 1.0]) * rng.uniform(0.5, 2))
        steps = int(rng.integers(1, 120))
        name = list(schedules.SCHEDULES)[i % 6]
        kw = {
            "ExponentialDecay": dict(initial_learning_rate=lr, decay_steps=steps,
                                     decay_rate=float(rng.uniform(0.1, 1)),
                                     staircase=bool(rng.integers(2))),
            "PiecewiseConstantDecay": dict(boundaries=sorted(rng.choice(300, 3, replace=False).tolist()),
                                           values=rng.uniform(0, 1, 4).tolist()),
            "PolynomialDecay": dict(initial_learning_rate=lr, decay_steps=steps, end_learning_rate=lr / 10,
                                    power=float(rng.uniform(0.3, 3)), cycle=bool(rng.integers(2))),
            "InverseTimeDecay": dict(initial_learning_rate=lr, decay_steps=float(rng.uniform(0.5, 50)),
                                     decay_rate=float(rng.uniform(0, 2)), staircase=bool(rng.integers(2))),
            "CosineDecay": dict(initial_learning_rate=lr, decay_steps=steps, alpha=float(rng.uniform(0, 0.5)),
                                warmup_target=None if rng.integers(2) else lr * 3,
                                warmup_steps=int(rng.integers(0, 80))),
            "CosineDecayRestarts": dict(initial_learning_rate=lr, first_decay_steps=steps // 3 + 1,
                                        t_mul=float(rng.choice([1.0, 2.0, rng.uniform(0.5, 3)])),
                                        m_mul=float(rng.uniform(0.3, 1.2)), alpha=float(rng.uniform(0, 0.3))),
        }[name]
        out.append((name, kw))
    return out


RANDOM_CASES = random_cases()


@pytest.mark.keras
@pytest.mark.parametrize("name, kwargs", CASES + RANDOM_CASES,
                         ids=IDS + [f"random-{name}-{i}" for i, (name, _) in enumerate(RANDOM_CASES)])
def test_schedule_equals_keras_3(keras, name, kwargs):
    theirs = keras_values(getattr(keras.optimizers.schedules, name)(**kwargs), STEPS)
    assert worst_ulps(name, kwargs, theirs) <= KERAS_ULPS


@pytest.mark.keras
@pytest.mark.parametrize("name, kwargs", CASES, ids=IDS)
def test_schedule_equals_tf_keras(keras, name, kwargs):
    tf_keras = pytest.importorskip("tf_keras")
    theirs = keras_values(getattr(tf_keras.optimizers.schedules, name)(**kwargs), STEPS)
    assert worst_ulps(name, kwargs, theirs) <= KERAS_ULPS


@pytest.mark.keras
@pytest.mark.parametrize("name, kwargs", CASES, ids=IDS)
def test_serialize_is_keras_3s_and_loads_both_ways(keras, name, kwargs):
    ks = keras.optimizers.schedules
    theirs = getattr(ks, name)(**kwargs)
    data = schedules.serialize(make(name, kwargs))
    assert data == ks.serialize(theirs)
    loaded = ks.deserialize(json.loads(json.dumps(data)))
    assert type(loaded) is type(theirs) and as_json(loaded.get_config()) == as_json(theirs.get_config())
    assert schedules.deserialize(ks.serialize(theirs)).get_config() == make(name, kwargs).get_config()


@pytest.mark.keras
@pytest.mark.parametrize("name, kwargs", CASES, ids=IDS)
def test_tf_keras_configs_deserialize_and_compute_as_keras_3(keras, name, kwargs):
    tf_keras = pytest.importorskip("tf_keras")
    ts = tf_keras.optimizers.schedules
    theirs = getattr(ts, name)(**kwargs)
    keras_3 = keras_values(getattr(keras.optimizers.schedules, name)(**kwargs), STEPS)
    for data in (ts.serialize(theirs), ts.serialize(theirs, use_legacy_format=True)):
        loaded = schedules.deserialize(json.loads(json.dumps(data)))
        assert as_json(loaded.get_config()) == as_json({**theirs.get_config(), "name": make(name, kwargs).name})
        assert max(ulps(loaded(s), k) for s, k in zip(STEPS, keras_3)) <= KERAS_ULPS


@pytest.mark.keras
def test_numpy_and_tuple_arguments_serialize_like_keras(keras):
    ks = keras.optimizers.schedules
    for name, kwargs in [
        ("ExponentialDecay", dict(initial_learning_rate=np.float32(0.1), decay_steps=np.int64(10),
                                  decay_rate=np.float64(0.9))),
        ("PiecewiseConstantDecay", dict(boundaries=(np.int32(10), 20), values=(np.float32(0.5), 0.25, 0.125))),
    ]:
        assert schedules.serialize(make(name, kwargs)) == ks.serialize(getattr(ks, name)(**kwargs))
