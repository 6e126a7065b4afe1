"""Keras-compatible config: constructor rules, get_config / from_config, serialize / get."""
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numbaopt import optimizers
from numbaopt.parity.fixtures import load_fixtures
from tests.cases import FIXTURES, NAMES

#: The Keras 2.0 defaults, as the capture script recorded them with each fixture's
#: ``defaults`` case (it configured real Keras with them).
KERAS2_DEFAULTS = {fx.optimizer: fx.keras2_config for fx in load_fixtures(FIXTURES)
                   if fx.family == "keras2" and fx.case == "defaults"}


@pytest.mark.parametrize("name", NAMES)
def test_defaults_are_keras_2_0(name):
    assert name in KERAS2_DEFAULTS, f"no fixture records {name}'s Keras defaults"
    assert getattr(optimizers, name)().get_config() == KERAS2_DEFAULTS[name]


@pytest.mark.parametrize("name", NAMES)
def test_positional_arguments_in_keras_order(name):
    cls = getattr(optimizers, name)
    values = [h.default for h in cls.hyperparameters]
    values[0] = 0.123
    assert cls(*values).get_config()["lr"] == 0.123
    with pytest.raises(TypeError):
        cls(*values, 1.0)


def test_clip_settings_appear_only_when_given():
    assert "clipnorm" not in optimizers.Adam().get_config()
    config = optimizers.Adam(clipnorm=1.0, clipvalue=0.0).get_config()
    assert config["clipnorm"] == 1.0 and config["clipvalue"] == 0.0


def test_learning_rate_is_lr():
    opt = optimizers.Adam(learning_rate=0.5)
    assert opt.lr == 0.5 and opt.learning_rate == 0.5 and opt.get_config()["lr"] == 0.5
    with pytest.raises(TypeError, match="multiple values"):
        optimizers.Adam(lr=0.1, learning_rate=0.2)


@pytest.mark.parametrize(
    "name, kwargs, error",
    [
        ("Adam", {"foo": 1}, TypeError),
        ("Nadam", {"decay": 0.1}, TypeError),
        ("SGD", {"lr": -0.1}, ValueError),
        ("SGD", {"decay": -1.0}, ValueError),
        ("SGD", {"momentum": -0.5}, ValueError),
        ("SGD", {"nesterov": "yes"}, TypeError),
        ("Adam", {"epsilon": -1e-8}, ValueError),
        ("Adam", {"beta_1": 1.0}, ValueError),
        ("Adam", {"beta_2": -0.1}, ValueError),
        ("Adamax", {"beta_1": 1.5}, ValueError),
        ("RMSprop", {"rho": -0.9}, ValueError),
        ("Adadelta", {"rho": -0.1}, ValueError),
        ("Nadam", {"schedule_decay": -0.004}, ValueError),
        ("Adam", {"clipnorm": -1.0}, ValueError),
        ("Adam", {"clipvalue": -0.5}, ValueError),
        ("Adam", {"lr": float("nan")}, ValueError),
        ("Adam", {"lr": "0.1"}, TypeError),
        ("Adam", {"lr": True}, TypeError),
    ],
)
def test_bad_arguments(name, kwargs, error):
    key = next(iter(kwargs))
    with pytest.raises(error, match=key):
        getattr(optimizers, name)(**kwargs)


def hyperparameter_values(cls):
    """A strategy for valid constructor kwargs of ``cls``."""
    fields = {}
    for h in cls.hyperparameters:
        if h.kind == "flag":
            fields[h.name] = st.booleans()
        elif h.kind == "fraction":
            fields[h.name] = st.floats(0.0, 0.999999)
        else:
            fields[h.name] = st.floats(0.0, 1e6)
    fields["clipnorm"] = st.floats(0.0, 100.0)
    fields["clipvalue"] = st.floats(0.0, 100.0)
    return st.fixed_dictionaries({}, optional=fields)


@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_config_round_trips(name, data):
    cls = getattr(optimizers, name)
    opt = cls(**data.draw(hyperparameter_values(cls)))
    config = opt.get_config()
    assert json.loads(json.dumps(config)) == config
    assert cls.from_config(config).get_config() == config
    rebuilt = optimizers.deserialize(json.loads(json.dumps(optimizers.serialize(opt))))
    assert type(rebuilt) is cls and rebuilt.get_config() == config


@pytest.mark.parametrize("name", NAMES)
def test_get_and_deserialize_by_name_in_any_case(name):
    for spelling in (name, name.lower(), name.upper()):
        assert type(optimizers.get(spelling)) is getattr(optimizers, name)
        opt = optimizers.deserialize({"class_name": spelling, "config": {"learning_rate": 0.25}})
        assert opt.lr == 0.25


def test_get_returns_an_optimizer_unchanged_and_rejects_junk():
    opt = optimizers.SGD()
    assert optimizers.get(opt) is opt
    assert optimizers.get({"class_name": "adam", "config": {}}).get_config()["lr"] == 0.001
    with pytest.raises(ValueError, match="Unknown optimizer"):
        optimizers.get("adamw")
    with pytest.raises(ValueError, match="Unknown optimizer"):
        optimizers.deserialize({"class_name": "Foo", "config": {}})
    with pytest.raises(ValueError, match="interpret"):
        optimizers.get(42)


def test_from_config_refuses_unknown_keys():
    with pytest.raises(TypeError, match="lrr"):
        optimizers.Adam.from_config({"lrr": 0.1})


@pytest.mark.parametrize(
    "class_name, config, expected",
    [
        # tf-keras legacy configs
        ("Adam", {"name": "Adam", "learning_rate": 0.01, "decay": 0.0, "beta_1": 0.9, "beta_2": 0.999,
                  "epsilon": 1e-7, "amsgrad": False}, {"lr": 0.01, "epsilon": 1e-7}),
        ("Nadam", {"name": "Nadam", "learning_rate": 0.002, "decay": 0.004, "beta_1": 0.9, "beta_2": 0.999,
                   "epsilon": 1e-7}, {"schedule_decay": 0.004}),
        ("Adagrad", {"name": "Adagrad", "learning_rate": 0.01, "decay": 0.0, "initial_accumulator_value": 0.0,
                     "epsilon": 1e-7}, {"lr": 0.01}),
        ("SGD", {"name": "SGD", "learning_rate": 0.1, "decay": 0.0, "momentum": 0.9, "nesterov": True,
                 "global_clipnorm": 1.0, "clipvalue": None, "clipnorm": None}, {"clipnorm": 1.0, "nesterov": True}),
        # a new-style tf-keras config
        ("Adam", {"name": "Adam", "weight_decay": None, "clipnorm": None, "global_clipnorm": None, "clipvalue": None,
                  "use_ema": False, "ema_momentum": 0.99, "ema_overwrite_frequency": None, "jit_compile": False,
                  "is_legacy_optimizer": False, "learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999,
                  "epsilon": 1e-07, "amsgrad": False}, {"lr": 0.001}),
    ],
)
def test_later_keras_configs_map_to_keras_2_0(class_name, config, expected):
    opt = optimizers.deserialize({"class_name": class_name, "config": config})
    for key, value in expected.items():
        assert opt.get_config()[key] == value


@pytest.mark.parametrize(
    "class_name, config",
    [
        ("Adam", {"name": "Adam", "learning_rate": 0.01, "amsgrad": True}),
        ("Adagrad", {"name": "Adagrad", "learning_rate": 0.01, "initial_accumulator_value": 0.1}),
        ("RMSprop", {"name": "RMSprop", "learning_rate": 0.01, "centered": True}),
        ("Adam", {"name": "Adam", "learning_rate": 0.01, "clipnorm": 1.0}),
        ("Adam", {"name": "Adam", "learning_rate": 0.01, "use_ema": True}),
    ],
)
def test_later_keras_settings_that_cannot_be_honoured_are_refused(class_name, config):
    with pytest.raises(ValueError):
        optimizers.deserialize({"class_name": class_name, "config": config})


def test_hyperparameters_read_as_attributes():
    opt = optimizers.SGD(momentum=0.5, nesterov=True, clipvalue=1.0)
    assert opt.momentum == 0.5 and opt.nesterov is True and opt.clipvalue == 1.0
    with pytest.raises(AttributeError):
        opt.beta_1
    assert "momentum=0.5" in repr(opt)
    assert isinstance(np.float32(0.1).item(), float)


@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_out_of_range_hyperparameters_are_refused(name, data):
    cls = getattr(optimizers, name)
    numeric = [h for h in cls.hyperparameters if h.kind != "flag"]
    h = data.draw(st.sampled_from(numeric + [None]), label="hyperparameter")
    if h is None:
        key, bad = data.draw(st.sampled_from(["clipnorm", "clipvalue"])), data.draw(st.floats(max_value=-1e-300))
    elif h.kind == "fraction":
        key, bad = h.name, data.draw(st.one_of(st.floats(max_value=-1e-300), st.floats(min_value=1.0)))
    else:
        key, bad = h.name, data.draw(st.one_of(st.floats(max_value=-1e-300), st.just(float("inf"))))
    with pytest.raises(ValueError, match=key):
        cls(**{key: bad})


def test_assigning_a_hyperparameter_checks_it_and_updates_the_config():
    opt = optimizers.SGD()
    opt.lr = 0.5
    opt.learning_rate = 0.25
    opt.clipnorm = 2.0
    assert opt.get_config()["lr"] == 0.25 and opt.get_config()["clipnorm"] == 2.0
    with pytest.raises(ValueError, match="momentum"):
        opt.momentum = -1.0
    assert opt.get_config()["momentum"] == 0.0
    p = np.zeros(1)
    opt.apply_gradients([(np.ones(1), p)])
    assert p[0] == -0.25
