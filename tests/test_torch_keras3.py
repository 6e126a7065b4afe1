"""numbaopt.torch.keras3: Keras 3's optimizers as torch optimizers, bitwise ``numbaopt.keras3``
(tox -e torch). Every registered Keras 3 optimizer x float32/float64; the reference is the
NumPy API on copies of the same data, fed the gradients the torch model computed.
"""
import numpy as np
import pytest
import torch  # tests/conftest.py collects this module only where torch is installed

import numbaopt
import numbaopt.torch as nt
import numbaopt.torch.keras3 as ntk
from numbaopt.keras3 import schedules
from tests.keras3_cases import CLASSES, CUSTOM, DTYPES
from tests.keras3_cases import NAMES as ALL_NAMES

#: Muon routes parameters by their Keras paths and orthogonalizes whole matrices: it steps
#: by apply_gradients only, and refuses torch's steps by parts (test below).
NOT_BY_PARTS = ("Muon",)
NAMES = tuple(name for name in ALL_NAMES if name not in NOT_BY_PARTS)
from tests.test_torch import assert_same, backward, host, model

pytestmark = pytest.mark.torch

DTYPE_IDS = {"ids": lambda d: np.dtype(d).name}


def settings(name):
    """The optimizer's first setting away from the defaults (momentum, amsgrad, ...), if any."""
    return dict((CUSTOM.get(name) or [{}])[0])


def core_step(core, net, arrays):
    core.apply([p.grad.numpy().copy() for p in net.parameters()], arrays)


def assert_same_slots(opt, core):
    state = opt.state_dict()
    assert state["numbaopt"]["iterations"] == core.iterations
    slots = core.state().slots
    for kind, values in slots.items():
        for i, value in enumerate(values):
            np.testing.assert_array_equal(state["state"][i][kind].numpy(), value)


def test_every_registered_keras3_optimizer_has_a_torch_class():
    assert sorted(ntk.__all__) == sorted(ALL_NAMES)
    for name in NAMES:
        cls = getattr(ntk, name)
        assert issubclass(cls, torch.optim.Optimizer) and cls.core is CLASSES[name]
        assert cls.__module__ == "numbaopt.torch.keras3"
    assert ntk.Adam is not nt.Adam
    with pytest.raises(AttributeError):
        ntk.NoSuchOptimizer  # noqa: B018


@pytest.mark.parametrize("dtype", DTYPES, **DTYPE_IDS)
@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_param_groups_with_their_own_lr_and_weight_decay_are_bitwise_the_numpy_api(name, dtype):
    net = model(dtype)
    arrays = host(net)
    kwargs = {k: v for k, v in settings(name).items() if k not in ("learning_rate", "weight_decay")}
    layers = [list(net[0].parameters()), list(net[2].parameters())]
    groups = [{"params": layers[0], "lr": 0.02, "weight_decay": 0.05}, {"params": layers[1], "learning_rate": 0.005}]
    opt = getattr(ntk, name)(groups, **kwargs)
    default_decay = CLASSES[name](**kwargs).get_config()["weight_decay"]
    cores = [CLASSES[name](learning_rate=0.02, weight_decay=0.05, **kwargs),
             CLASSES[name](learning_rate=0.005, weight_decay=default_decay, **kwargs)]
    pointers = [p.data_ptr() for p in net.parameters()]
    for step in range(6):
        opt.zero_grad()
        backward(net, dtype, step)
        grads = [p.grad.numpy().copy() for p in net.parameters()]
        cores[0].apply(grads[:2], arrays[:2])
        cores[1].apply(grads[2:], arrays[2:])
        opt.step()
    assert_same(net, arrays)
    assert [p.data_ptr() for p in net.parameters()] == pointers
    state = opt.state_dict()
    for k, core in enumerate(cores):
        for kind, values in core.state().slots.items():
            for i, value in enumerate(values):
                np.testing.assert_array_equal(state["state"][2 * k + i][kind].numpy(), value)
    assert opt.iterations == 6


@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_a_torch_scheduler_sets_the_rate_of_the_next_step(name):
    dtype = np.float64
    net = model(dtype)
    arrays = host(net)
    opt = getattr(ntk, name)(net.parameters(), **{**settings(name), "learning_rate": 0.01})
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    core = CLASSES[name](**{**settings(name), "learning_rate": 0.01})
    for step in range(6):
        opt.zero_grad()
        backward(net, dtype, step)
        core.learning_rate = opt.param_groups[0]["lr"]
        core_step(core, net, arrays)
        opt.step()
        scheduler.step()
    assert_same(net, arrays)
    assert np.float32(opt.param_groups[0]["lr"]) == np.float32(0.01 * 0.5**3)


@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_the_groups_rate_is_the_float_given(name):
    """torch's schedulers read and compare the group's ``lr``: it is the user's float, not
    Keras's float32 variable (the step rounds it to float32 itself, as Keras does)."""
    net = model(np.float32)
    assert getattr(ntk, name)(net.parameters(), learning_rate=0.01).param_groups[0]["lr"] == 0.01
    assert getattr(ntk, name)([{"params": net.parameters(), "lr": 0.01}]).param_groups[0]["lr"] == 0.01


@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_state_dict_round_trip_resumes_bitwise(name):
    dtype = np.float32
    net, other = model(dtype), model(dtype)
    opt = getattr(ntk, name)(net.parameters(), **settings(name))
    for step in range(3):
        opt.zero_grad()
        backward(net, dtype, step)
        opt.step()
    other.load_state_dict(net.state_dict())
    again = getattr(ntk, name)(other.parameters(), **settings(name))
    again.load_state_dict(opt.state_dict())
    for step in range(3, 6):
        for n, o in ((net, opt), (other, again)):
            o.zero_grad()
            backward(n, dtype, step)
            o.step()
    for p, q in zip(net.parameters(), other.parameters()):
        assert torch.equal(p, q)
    assert again.iterations == opt.iterations == 6


@pytest.mark.parametrize(("kwargs", "way"), [
    ({"clipnorm": 1.0}, "clip_grad_norm_"),
    ({"global_clipnorm": 1.0}, "clip_grad_norm_"),
    ({"clipvalue": 0.1}, "clip_grad_value_"),
    ({"use_ema": True}, "AveragedModel"),
    ({"gradient_accumulation_steps": 2}, "every n backward passes"),
    ({"loss_scale_factor": 128.0}, "GradScaler"),
    ({"learning_rate": schedules.ExponentialDecay(0.01, 10, 0.9)}, "lr_scheduler"),
], ids=["clipnorm", "global_clipnorm", "clipvalue", "use_ema", "accumulation", "loss_scale", "schedule"])
@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_keras_processing_around_the_update_is_refused_with_torchs_way(name, kwargs, way):
    net = model(np.float32)
    with pytest.raises(ValueError, match=way):
        getattr(ntk, name)(net.parameters(), **kwargs)


@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_a_run_moves_from_the_numpy_api_to_torch_through_a_checkpoint(name, tmp_path):
    dtype = np.float64
    net = model(dtype)
    arrays = host(net)
    core = CLASSES[name](**settings(name))
    for step in range(3):
        net.zero_grad()
        backward(net, dtype, step)
        core_step(core, net, arrays)
        with torch.no_grad():
            for p, a in zip(net.parameters(), arrays):
                p.copy_(torch.from_numpy(a))
    numbaopt.save_optimizer(core, tmp_path / "numpy.h5")
    opt = nt.load_optimizer(tmp_path / "numpy.h5", net.parameters())
    assert type(opt) is getattr(ntk, name) and opt.iterations == 3
    for step in range(3, 6):
        opt.zero_grad()
        backward(net, dtype, step)
        core_step(core, net, arrays)
        opt.step()
    assert_same(net, arrays)
    assert_same_slots(opt, core)
    numbaopt.save_optimizer(opt, tmp_path / "torch.h5")
    back = numbaopt.load_optimizer(tmp_path / "torch.h5")
    assert type(back) is CLASSES[name] and back.iterations == 6
    for kind, values in core.state().slots.items():
        for a, b in zip(back.state().slots[kind], values):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", NOT_BY_PARTS, ids=str.lower)
def test_an_optimizer_that_needs_whole_steps_is_refused_saying_why(name):
    with pytest.raises(ValueError, match="not by parts"):
        getattr(ntk, name)(model(np.float32).parameters())
