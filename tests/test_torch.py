"""numbaopt.torch: the optimizers as torch optimizers, bitwise the NumPy API (tox -e torch).

The reference in every test is the NumPy API (``numbaopt.optimizers``) on NumPy copies of
the same data, given the gradients the torch model computed: the torch optimizer must
reproduce it bit for bit.
"""
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch  # tests/conftest.py collects this module only where torch is installed

import numbaopt
import numbaopt.torch as nt
from numbaopt import optimizers
from numbaopt.checkpoint import CheckpointError
from tests.cases import DTYPES, NAMES, option_sets

pytestmark = pytest.mark.torch

TORCH_DTYPES = {np.float32: torch.float32, np.float64: torch.float64}
CASES = [(name, option, kwargs) for name in NAMES for option, kwargs in option_sets(name)]


def model(dtype, seed=0):
    """A small MLP with a real loss: two layers, four parameter tensors."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    return net.to(TORCH_DTYPES[dtype])


def batch(dtype, step, scale=1.0):
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(8, 5, generator=g, dtype=TORCH_DTYPES[dtype])
    y = torch.randn(8, 3, generator=g, dtype=TORCH_DTYPES[dtype]) * scale
    return x, y


def backward(net, dtype, step, scale=1.0):
    x, y = batch(dtype, step, scale)
    loss = torch.nn.functional.mse_loss(net(x), y)
    loss.backward()
    return loss


def host(net):
    return [p.detach().numpy().copy() for p in net.parameters()]


def assert_same(net, arrays):
    for p, a in zip(net.parameters(), arrays, strict=True):
        np.testing.assert_array_equal(p.detach().numpy(), a)


def assert_same_state(opt, core):
    """The torch optimizer's state (its state_dict) is the core optimizer's, bitwise."""
    state = opt.state_dict()
    assert state["numbaopt"]["iterations"] == core.iterations
    weights = core.get_weights()
    n_scalars = 1 + len(type(core).scalar_state)
    for (name, _), w in zip(type(core).scalar_state, weights[1:n_scalars]):
        assert state["numbaopt"]["scalar_state"][name] == float(w)
    kinds = type(core).slot_names
    n = len(state["state"])
    for k, kind in enumerate(kinds):
        for i in range(n):
            np.testing.assert_array_equal(state["state"][i][kind].numpy(), weights[n_scalars + k * n + i])


def test_every_core_optimizer_has_a_torch_class():
    for name in NAMES:
        cls = getattr(nt, name)
        assert issubclass(cls, torch.optim.Optimizer) and cls.core is getattr(optimizers, name)


# ------------------------------------------------------------ bitwise the NumPy API


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(("name", "option", "kwargs"), CASES, ids=[f"{n.lower()}-{o}" for n, o, _ in CASES])
def test_thirty_steps_of_a_model_are_bitwise_the_numpy_api(name, option, kwargs, dtype):
    net = model(dtype)
    arrays = host(net)
    opt = getattr(nt, name)(net.parameters(), **kwargs)
    core = getattr(optimizers, name)(**kwargs)
    pointers = [p.data_ptr() for p in net.parameters()]
    for step in range(30):
        opt.zero_grad()
        backward(net, dtype, step, scale=1.0 if step % 3 else 20.0)  # large losses: clipnorm clips
        core.apply_gradients([(p.grad.numpy().copy(), a) for p, a in zip(net.parameters(), arrays)])
        opt.step()
    assert_same(net, arrays)
    assert_same_state(opt, core)
    assert [p.data_ptr() for p in net.parameters()] == pointers  # in place, never copied
    assert opt.iterations == 30


@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_learning_rate_alias_positional_arguments_and_checks(name):
    core = getattr(optimizers, name)
    net = model(np.float32)
    first = core.hyperparameters[0]
    opt = getattr(nt, name)(net.parameters(), 0.125, clipnorm=2.0)
    assert opt.param_groups[0][first.name] == 0.125 and opt.defaults["clipnorm"] == 2.0
    assert getattr(nt, name)(net.parameters(), learning_rate=0.25).param_groups[0]["lr"] == 0.25
    with pytest.raises(ValueError, match="lr must be >= 0"):
        getattr(nt, name)(net.parameters(), lr=-1.0)
    with pytest.raises(TypeError, match="Unexpected keyword argument"):
        getattr(nt, name)(net.parameters(), lrr=0.1)
    with pytest.raises(TypeError, match="no device"):
        getattr(nt, name)(net.parameters(), device="cpu")


# --------------------------------------------------------------- None gradients


def reference_step(core, pairs, active):
    """The NumPy API's step of ``core`` over the ``active`` pairs alone: a core optimizer
    over those parameters, given their slots, then its state put back into ``core``."""
    cls = type(core)
    n_scalars = 1 + len(cls.scalar_state)
    weights = core.get_weights()
    n = len(pairs)
    if len(weights) == n_scalars:  # no slots yet: the first step makes zeros for every parameter
        weights += [np.zeros_like(p) for _ in cls.slot_names for _, p in pairs]
    slots = [weights[n_scalars + k * n: n_scalars + (k + 1) * n] for k in range(len(cls.slot_names))]
    part = cls(**core.get_config())
    if active:
        part.set_weights(weights[:n_scalars] + [s[i] for s in slots for i in active])
        part.apply_gradients([pairs[i] for i in active])
    else:  # a step of no parameters still counts: iterations and the scalar state advance
        part.set_weights(weights[:n_scalars])
        part.apply_gradients([(np.zeros(1), np.zeros(1))])
    new = part.get_weights()[:n_scalars] if not active else part.get_weights()
    for k, s in enumerate(slots):
        for j, i in enumerate(active):
            s[i] = new[n_scalars + k * len(active) + j]
    core.set_weights(new[:n_scalars] + [a for s in slots for a in s])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_parameters_without_a_gradient_are_skipped(name, dtype):
    """A step with some ``.grad`` None is bitwise the NumPy API's step over the others alone
    (clip norm over their gradients), with the same iterations; the skipped parameters and
    their slots stay as they were. ``iterations`` counts every step."""
    net = model(dtype)
    arrays = host(net)
    opt = getattr(nt, name)(net.parameters(), clipnorm=0.5)
    core = getattr(optimizers, name)(clipnorm=0.5)
    params = list(net.parameters())
    for step in range(12):
        opt.zero_grad()
        backward(net, dtype, step)
        active = [i for i in range(4) if (step + i) % 3]  # a different subset each step
        if step == 5:
            active = []
        for i in set(range(4)) - set(active):
            params[i].grad = None
        before = [arrays[i].copy() for i in range(4)]
        reference_step(core, [(p.grad.numpy().copy() if p.grad is not None else None, a)
                              for p, a in zip(params, arrays)], active)
        opt.step()
        for i in set(range(4)) - set(active):
            np.testing.assert_array_equal(arrays[i], before[i])
        assert_same(net, arrays)
        assert_same_state(opt, core)
    assert opt.iterations == 12


# ------------------------------------------------------------------ param groups


@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_param_groups_with_the_same_settings_are_one_optimizer(name):
    dtype = np.float64
    net = model(dtype)
    arrays = host(net)
    layers = [list(net[0].parameters()), list(net[2].parameters())]
    opt = getattr(nt, name)([{"params": layers[0]}, {"params": layers[1]}], clipnorm=0.3)
    core = getattr(optimizers, name)(clipnorm=0.3)
    for step in range(10):
        opt.zero_grad()
        backward(net, dtype, step)
        core.apply_gradients([(p.grad.numpy().copy(), a) for p, a in zip(net.parameters(), arrays)])
        opt.step()
    assert_same(net, arrays)
    assert_same_state(opt, core)


@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_param_groups_have_their_own_settings_and_one_global_clip_norm(name):
    """Group k with learning rate lr_k moves as the NumPy API with lr_k over *all*
    parameters would move it: the clip norm is over every gradient of the step."""
    dtype = np.float64
    rates = (0.01, 0.003)
    net = model(dtype)
    layers = [list(net[0].parameters()), list(net[2].parameters())]
    opt = getattr(nt, name)([{"params": layers[0], "lr": rates[0]}, {"params": layers[1], "learning_rate": rates[1]}],
                            clipnorm=0.2)
    references = [(getattr(optimizers, name)(lr=lr, clipnorm=0.2), host(net)) for lr in rates]
    rng = np.random.default_rng(3)
    for _ in range(8):
        grads = [rng.normal(size=tuple(p.shape)) for p in net.parameters()]
        for p, g in zip(net.parameters(), grads):
            p.grad = torch.from_numpy(g.copy())
        for core, arrays in references:
            core.apply_gradients([(g, a) for g, a in zip(grads, arrays)])
        opt.step()
    params = list(net.parameters())
    for k, (core, arrays) in enumerate(references):
        for i in (0, 1) if k == 0 else (2, 3):
            np.testing.assert_array_equal(params[i].detach().numpy(), arrays[i])
    assert opt.iterations == 8


def test_a_scheduler_sets_the_learning_rate_of_the_next_step():
    dtype = np.float64
    net = model(dtype)
    arrays = host(net)
    opt = nt.Adam(net.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    core = optimizers.Adam(lr=0.01)
    for step in range(6):
        opt.zero_grad()
        backward(net, dtype, step)
        core.lr = opt.param_groups[0]["lr"]
        core.apply_gradients([(p.grad.numpy().copy(), a) for p, a in zip(net.parameters(), arrays)])
        opt.step()
        scheduler.step()
    assert_same(net, arrays)
    assert opt.param_groups[0]["lr"] == 0.01 * 0.5**3


def test_a_group_added_after_steps_starts_with_zero_slots():
    dtype = np.float64
    net, extra = model(dtype), model(dtype, seed=1)
    arrays, extra_arrays = host(net), host(extra)
    opt = nt.Adam(net.parameters())
    core = optimizers.Adam()
    for step in range(3):
        opt.zero_grad()
        backward(net, dtype, step)
        core.apply_gradients([(p.grad.numpy().copy(), a) for p, a in zip(net.parameters(), arrays)])
        opt.step()
    opt.add_param_group({"params": list(extra.parameters())})
    n_scalars = 1
    weights = core.get_weights()
    slots = [weights[n_scalars + k * 4: n_scalars + (k + 1) * 4] + [np.zeros_like(a) for a in extra_arrays] for k in range(2)]
    core = optimizers.Adam()
    core.set_weights(weights[:n_scalars] + slots[0] + slots[1])
    for step in range(3, 6):
        opt.zero_grad()
        backward(net, dtype, step)
        backward(extra, dtype, step)
        pairs = [(p.grad.numpy().copy(), a) for p, a in zip([*net.parameters(), *extra.parameters()], arrays + extra_arrays)]
        core.apply_gradients(pairs)
        opt.step()
    assert_same(net, arrays)
    assert_same(extra, extra_arrays)


def test_nadam_groups_share_the_momentum_schedule_settings():
    net = model(np.float32)
    layers = [list(net[0].parameters()), list(net[2].parameters())]
    with pytest.raises(ValueError, match="same beta_1"):
        nt.Nadam([{"params": layers[0]}, {"params": layers[1], "beta_1": 0.5}])
    opt = nt.Nadam([{"params": layers[0]}, {"params": layers[1], "lr": 0.5}])  # lr may differ
    opt.param_groups[1]["schedule_decay"] = 0.01
    backward(net, np.float32, 0)
    before = host(net)
    with pytest.raises(ValueError, match="same schedule_decay"):
        opt.step()
    assert_same(net, before)
    assert opt.iterations == 0


def test_step_returns_the_closure_loss_and_zero_grad_clears():
    net = model(np.float32)
    opt = nt.SGD(net.parameters(), lr=0.1)

    def closure():
        opt.zero_grad()
        return backward(net, np.float32, 0)

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.item() > 0
    assert opt.iterations == 1
    opt.zero_grad()
    assert all(p.grad is None for p in net.parameters())


# ------------------------------------------------------------------- autograd


@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_backward_through_a_graph_from_before_the_step_raises_the_inplace_error(name):
    net = model(np.float32)
    opt = getattr(nt, name)(net.parameters())
    x, y = batch(np.float32, 0)
    stale = torch.nn.functional.mse_loss(net(x), y)  # saves the weights for its backward
    backward(net, np.float32, 1)
    versions = [p._version for p in net.parameters()]
    opt.step()
    assert all(p._version > v for p, v in zip(net.parameters(), versions))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        stale.backward()


# ------------------------------------------------------------------ bad inputs


def set_grad(param, grad):
    """Give ``param`` a gradient of another dtype or layout, as torch lets a user do on purpose."""
    param.grad_dtype = None
    param.grad = grad


def train(net, opt, dtype, steps):
    """``opt.step()`` with the model's gradients of each step number in ``steps`` (a range)."""
    for step in steps:
        opt.zero_grad()
        backward(net, dtype, step)
        opt.step()


def trained_pair(name="Adam", steps=2):
    net = model(np.float32)
    opt = getattr(nt, name)(net.parameters(), clipnorm=1.0)
    train(net, opt, np.float32, range(steps))
    opt.zero_grad()
    backward(net, np.float32, steps)
    return net, opt


def snapshot(net, opt):
    return host(net), opt.state_dict(), [p._version for p in net.parameters()]


def assert_unchanged(before, net, opt):
    arrays, state, versions = before
    assert_same(net, arrays)
    after = opt.state_dict()
    assert after["numbaopt"] == state["numbaopt"]
    assert after["param_groups"] == state["param_groups"]
    for i, entry in state["state"].items():
        for kind, tensor in entry.items():
            assert torch.equal(after["state"][i][kind], tensor)
    assert [p._version for p in net.parameters()] == versions


BAD_GRADIENTS = {
    "float64-into-float32": (lambda g: g.double(), TypeError, "gradient 2 has dtype float64, which cannot be cast safely"),
    "complex": (lambda g: g.to(torch.complex64), TypeError, "gradient 2 has dtype complex64"),
    "bool": (lambda g: g > 0, TypeError, "gradient 2 has dtype bool.*not a bool"),
    "sparse": (lambda g: g.to_sparse(), TypeError, "gradient 2 is a torch.sparse_coo tensor"),
}


@pytest.mark.parametrize("case", BAD_GRADIENTS)
@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_a_bad_gradient_changes_nothing(name, case):
    make, error, message = BAD_GRADIENTS[case]
    net, opt = trained_pair(name)
    params = list(net.parameters())
    set_grad(params[2], make(params[2].grad))
    before = snapshot(net, opt)
    with pytest.raises(error, match=message):
        opt.step()
    assert_unchanged(before, net, opt)


@pytest.mark.parametrize(("key", "value", "error"), [
    ("lr", -0.1, ValueError), ("lr", float("nan"), ValueError), ("lr", "0.1", TypeError),
    ("clipnorm", -1.0, ValueError), ("lr", 1e300, ValueError),  # 1e300 does not fit float32
])
def test_a_bad_group_setting_is_refused_at_the_step_and_changes_nothing(key, value, error):
    net, opt = trained_pair()
    opt.param_groups[0][key] = value
    before = snapshot(net, opt)
    with pytest.raises(error, match=key):
        opt.step()
    before[1]["param_groups"][0][key] = value  # the group holds what the user wrote
    assert_unchanged(before, net, opt)


def test_bad_param_groups_are_refused():
    net = model(np.float32)
    params = list(net.parameters())
    with pytest.raises(ValueError, match="more than one parameter group"):  # torch's own check
        nt.Adam([{"params": params[:2]}, {"params": params[1:]}])
    with pytest.raises(ValueError, match="appears twice"), pytest.warns(UserWarning, match="duplicate"):
        nt.Adam([params[0], params[1], params[0]])
    with pytest.raises(ValueError, match="beta_1 must be in"):
        nt.Adam([{"params": params, "beta_1": 1.5}])
    with pytest.raises(TypeError, match="both lr and learning_rate"):
        nt.Adam([{"params": params, "lr": 0.1, "learning_rate": 0.1}])
    with pytest.raises(TypeError, match="float32, float64"):  # float16 and bfloat16 step (tests/test_memory.py)
        opt = nt.Adam([torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))])
        opt.param_groups[0]["params"][0].grad = torch.zeros(3, dtype=torch.complex64)
        opt.step()


def test_a_non_contiguous_parameter_is_updated_in_place():
    weight = torch.nn.Parameter(torch.zeros(4, 3))
    strided = weight.detach().t().requires_grad_()
    opt = nt.SGD([strided], lr=0.5)
    strided.grad = torch.arange(12.0).reshape(3, 4)
    opt.step()
    assert opt.iterations == 1 and torch.equal(weight.detach(), -0.5 * torch.arange(12.0).reshape(3, 4).t())


# ------------------------------------------------------------------ state dict


def test_state_dict_follows_torchs_layout():
    net, opt = trained_pair("Nadam")
    state = opt.state_dict()
    assert sorted(state["state"]) == [0, 1, 2, 3]
    assert set(state["state"][0]) == {"ms", "vs"}
    assert state["param_groups"][0]["params"] == [0, 1, 2, 3]
    assert state["numbaopt"]["iterations"] == 2 and 0 < state["numbaopt"]["scalar_state"]["m_schedule"] < 1
    fresh = nt.Nadam(model(np.float32).parameters()).state_dict()
    assert fresh["state"] == {} and fresh["numbaopt"]["iterations"] == 0


@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_state_dict_round_trip_in_a_new_process_resumes_bitwise(name, tmp_path):
    dtype = np.float32
    net = model(dtype)
    opt = getattr(nt, name)(net.parameters(), clipnorm=0.5)
    train(net, opt, dtype, range(4))
    torch.save({"model": net.state_dict(), "opt": opt.state_dict()}, tmp_path / "run.pt")
    train(net, opt, dtype, range(4, 8))
    root = Path(__file__).resolve().parent.parent  # appended: an installed numbaopt comes first
    code = textwrap.dedent(f"""
        import sys, torch
        sys.path.append({str(root)!r})
        import numpy as np
        import numbaopt.torch as nt
        from tests.test_torch import model, train
        saved = torch.load({str(tmp_path / "run.pt")!r})  # weights_only=True, torch's default
        net = model(np.float32, seed=7)
        net.load_state_dict(saved["model"])
        opt = nt.{name}(net.parameters())
        opt.load_state_dict(saved["opt"])
        train(net, opt, np.float32, range(4, 8))
        torch.save([p.detach() for p in net.parameters()] + [opt.iterations], {str(tmp_path / "after.pt")!r})
    """)
    subprocess.run([sys.executable, "-c", code], check=True)
    *params, iterations = torch.load(tmp_path / "after.pt")
    assert iterations == 8
    for p, q in zip(net.parameters(), params):
        assert torch.equal(p.detach(), q)


def foreign_states():
    """(id, change to a saved state dict, exception) that load_state_dict must refuse."""

    def sgd(state):
        state["numbaopt"]["class_name"] = "SGD"

    def count(state):
        state["param_groups"][0]["params"] = state["param_groups"][0]["params"][:-1]

    def groups(state):
        state["param_groups"].append(dict(state["param_groups"][0]))

    def shape(state):
        state["state"][2]["ms"] = torch.zeros(3)

    def dtype(state):
        state["state"][1]["vs"] = state["state"][1]["vs"].double()

    def missing(state):
        del state["state"][3]

    def torch_own(state):
        del state["numbaopt"]

    def iterations(state):
        state["numbaopt"]["iterations"] = -1

    def hyper(state):
        state["param_groups"][0]["beta_2"] = 1.0

    return [("another-class", sgd, ValueError), ("parameter-count", count, ValueError),
            ("group-count", groups, ValueError), ("slot-shape", shape, ValueError), ("slot-dtype", dtype, TypeError),
            ("missing-slot", missing, ValueError), ("torch-optim-state", torch_own, ValueError),
            ("iterations", iterations, ValueError), ("hyperparameter", hyper, ValueError)]


@pytest.mark.parametrize(("case", "change", "error"), foreign_states(), ids=[c[0] for c in foreign_states()])
def test_load_state_dict_refuses_a_foreign_state_and_changes_nothing(case, change, error):
    net, opt = trained_pair("Adam", steps=3)
    _, other = trained_pair("Adam", steps=1)
    state = other.state_dict()
    change(state)
    before = snapshot(net, opt)
    with pytest.raises(error):
        opt.load_state_dict(state)
    assert_unchanged(before, net, opt)


def test_a_torch_optim_state_dict_is_refused():
    net, opt = trained_pair()
    adam = torch.optim.Adam(net.parameters())
    with pytest.raises(ValueError, match="not from a numbaopt.torch optimizer"):
        opt.load_state_dict(adam.state_dict())


# ---------------------------------------------------------- numbaopt checkpoints


@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_a_run_moves_between_the_numpy_api_and_torch_through_a_checkpoint(name, tmp_path):
    dtype = np.float64
    net = model(dtype)
    arrays = host(net)
    core = getattr(optimizers, name)(clipnorm=0.5)
    for step in range(3):  # steps on the NumPy API, with the model's gradients at the same weights
        net.zero_grad()
        backward(net, dtype, step)
        core.apply_gradients([(p.grad.numpy().copy(), a) for p, a in zip(net.parameters(), arrays)])
        with torch.no_grad():
            for p, a in zip(net.parameters(), arrays):
                p.copy_(torch.from_numpy(a))
    numbaopt.save_optimizer(core, tmp_path / "numpy.h5")
    opt = nt.load_optimizer(tmp_path / "numpy.h5", net.parameters())
    assert type(opt) is getattr(nt, name) and opt.iterations == 3
    assert opt.param_groups[0]["clipnorm"] == 0.5
    for step in range(3, 6):
        opt.zero_grad()
        backward(net, dtype, step)
        core.apply_gradients([(p.grad.numpy().copy(), a) for p, a in zip(net.parameters(), arrays)])
        opt.step()
    assert_same(net, arrays)
    numbaopt.save_optimizer(opt, tmp_path / "torch.h5")
    back = numbaopt.load_optimizer(tmp_path / "torch.h5")
    assert type(back) is type(core) and back.get_config() == core.get_config()
    for w, v in zip(back.get_weights(), core.get_weights(), strict=True):
        np.testing.assert_array_equal(w, v)


def test_load_optimizer_checks_the_parameters(tmp_path):
    net, opt = trained_pair()
    numbaopt.save_optimizer(opt, tmp_path / "opt.h5")
    with pytest.raises(CheckpointError, match="shape"):
        nt.load_optimizer(tmp_path / "opt.h5", [torch.nn.Parameter(torch.zeros(2)) for _ in range(4)])
    with pytest.raises(CheckpointError, match="parameters"):
        nt.load_optimizer(tmp_path / "opt.h5", list(net.parameters())[:3])
    loaded = nt.load_optimizer(tmp_path / "opt.h5", net.parameters())
    assert loaded.iterations == 2


def test_groups_with_different_settings_do_not_fit_one_checkpoint(tmp_path):
    net = model(np.float32)
    opt = nt.Adam([{"params": list(net[0].parameters()), "lr": 0.1}, {"params": list(net[2].parameters())}])
    with pytest.raises(ValueError, match=r"differ in \['lr'\]"):
        numbaopt.save_optimizer(opt, tmp_path / "opt.h5")
    assert not (tmp_path / "opt.h5").exists()


# ------------------------------------------------------- tensors in the core API


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_the_core_api_updates_cpu_tensors_in_place(name, dtype):
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=s).astype(dtype) for s in [(3, 4), (5,), ()]]
    tensors = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in arrays]
    pointers = [t.data_ptr() for t in tensors]
    by_tensor, by_array = getattr(optimizers, name)(clipnorm=0.5), getattr(optimizers, name)(clipnorm=0.5)
    for _ in range(3):
        grads = [rng.normal(size=a.shape).astype(dtype) for a in arrays]
        by_tensor.apply_gradients([(torch.from_numpy(g.copy()), t) for g, t in zip(grads, tensors)])
        by_array.apply_gradients(zip(grads, arrays))
    for t, a, pointer in zip(tensors, arrays, pointers):
        np.testing.assert_array_equal(t.detach().numpy(), a)
        assert t.data_ptr() == pointer
        assert t._version == 3  # autograd sees every step's in-place update


@pytest.mark.parametrize(("make", "error", "message"), [
    (lambda: torch.zeros(4, 3).t(), ValueError, "parameter 0 is not C-contiguous"),
    (lambda: torch.zeros(3, 4, dtype=torch.complex64), TypeError, "parameter 0 has dtype torch.complex64"),
    (lambda: torch.zeros(3, 4, dtype=torch.int32), TypeError, "only float32, float64, bfloat16 and float16"),
])
def test_the_core_api_refuses_tensors_as_it_refuses_arrays(make, error, message):
    opt = optimizers.Adam()
    param = make()
    with pytest.raises(error, match=message):
        opt.apply_gradients([(torch.ones(param.shape), param)])
    assert opt.iterations == 0


# ------------------------------------------------------------ the cast policy


@pytest.mark.parametrize("source", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_narrower_float_gradients_widen_exactly(source, dtype):
    grad = (torch.arange(12, dtype=torch.float32) / 7).reshape(3, 4).to(source)
    widened = grad.to(TORCH_DTYPES[dtype]).numpy()
    param, reference = np.zeros((3, 4), dtype), np.zeros((3, 4), dtype)
    optimizers.Adam().apply_gradients([(grad, param)])
    optimizers.Adam().apply_gradients([(widened, reference)])
    np.testing.assert_array_equal(param, reference)


@pytest.mark.parametrize(("source", "message"), [
    (torch.float64, "float64, which cannot be cast safely to its parameter's dtype float32"),
    (torch.complex64, "complex64"), (torch.bool, "bool.*not a bool"), (torch.int64, "int64"),
], ids=str)
def test_unsafe_tensor_gradients_are_refused_naming_their_index(source, message):
    params = [np.zeros(3, np.float32), np.zeros(4, np.float32)]
    opt = optimizers.SGD()
    with pytest.raises(TypeError, match="gradient 1 has dtype " + message):
        opt.apply_gradients([(np.ones(3, np.float32), params[0]), (torch.ones(4).to(source), params[1])])
    assert opt.iterations == 0 and not params[0].any()


def test_a_gradient_that_requires_grad_is_read_through_detach():
    param = np.zeros(3)
    grad = torch.ones(3, dtype=torch.float64, requires_grad=True) * 2  # a non-leaf that requires grad
    optimizers.SGD(lr=0.5).apply_gradients([(grad, param)])
    np.testing.assert_array_equal(param, [-1.0, -1.0, -1.0])


def test_a_cpu_gradient_tensor_for_a_tensor_parameter_of_another_dtype_follows_the_policy():
    net = model(np.float32)
    opt = nt.SGD(net.parameters(), lr=0.1)
    backward(net, np.float32, 0)
    for p in net.parameters():
        set_grad(p, p.grad.to(torch.bfloat16))
    before = host(net)
    opt.step()
    for p, a in zip(net.parameters(), before):
        assert not np.array_equal(p.detach().numpy(), a)


def test_a_parameter_given_new_memory_is_updated_there():
    """The step keeps NumPy views of the parameters between steps; ``p.data = ...`` gives a
    tensor new memory (and shape), which the next step must update instead of the old."""
    dtype = np.float64
    net = model(dtype)
    opt = nt.SGD(net.parameters(), lr=0.1)
    backward(net, dtype, 0)
    opt.step()
    old = net[2].bias.data
    kept = old.clone()
    net[2].bias.data = torch.ones(3, dtype=torch.float64)
    opt.zero_grad()
    backward(net, dtype, 1)
    expected = 1.0 - 0.1 * net[2].bias.grad
    opt.step()
    assert torch.equal(net[2].bias.detach(), expected) and torch.equal(old, kept)


def test_numbaopt_and_the_numpy_step_never_import_torch():
    code = (
        "import sys, numpy as np\n"
        "import numbaopt\n"
        "from numbaopt import optimizers\n"
        "p = np.zeros(3)\n"
        "optimizers.Adam(clipnorm=1.0).apply_gradients([(np.ones(3, np.float16), p)])\n"
        "assert p[0] < 0\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_square_parameter_transposed_in_place_is_updated_as_it_reads_not_through_a_stale_view():
    weight = torch.nn.Parameter(torch.arange(4.0).reshape(2, 2))
    opt = nt.SGD([weight], lr=1.0)
    weight.grad = torch.ones(2, 2)
    opt.step()
    weight.data = weight.data.t()  # the same memory and shape, other strides
    weight.grad = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    expected = weight.detach() - weight.grad
    opt.step()
    assert torch.equal(weight.detach(), expected) and opt.iterations == 2


@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_a_deep_copy_of_model_and_optimizer_trains_on_identically(name):
    import copy

    dtype = np.float32
    net = model(dtype)
    opt = getattr(nt, name)(net.parameters(), clipnorm=0.5)
    train(net, opt, dtype, range(3))
    twin = copy.deepcopy({"net": net, "opt": opt})
    for step in range(3, 6):
        for n, o in ((net, opt), (twin["net"], twin["opt"])):
            o.zero_grad()
            backward(n, dtype, step)
            o.step()
    assert twin["opt"].iterations == opt.iterations == 6
    for p, q in zip(net.parameters(), twin["net"].parameters()):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr()


@pytest.mark.torch
def test_the_keras_files_page_moves_a_keras_run_to_torch_linear_layers_exactly(tmp_path, monkeypatch):
    """docs/keras-files.md's "Continue it in PyTorch", run as written on a real tf-keras file,
    then the steps Keras took after saving, in torch: the weights are Keras's, transposed."""
    import shutil

    import h5py

    fixtures = Path(__file__).resolve().parent.parent / "fixtures" / "keras_files"
    shutil.copy(fixtures / "legacy_adam.h5", tmp_path / "model.h5")
    monkeypatch.chdir(tmp_path)
    page = (Path(__file__).resolve().parent.parent / "docs" / "keras-files.md").read_text()
    section = page[page.index("## Continue it in PyTorch"):page.index("## Hand it back to Keras")]
    code = section.split("```python\n")[1].split("```")[0]
    namespace: dict = {}
    exec(compile(code, "docs/keras-files.md", "exec"), namespace)
    model, torch_opt, kinds = namespace["model"], namespace["torch_opt"], namespace["kinds"]
    from numbaopt import layouts

    with h5py.File(fixtures / "legacy_adam.steps.h5") as steps:
        for step in range(int(steps.attrs["steps"])):
            for i, (p, kind) in enumerate(zip(model.parameters(), kinds)):
                p.grad = torch.from_numpy(layouts.to_torch(steps[f"grads/{i}"][step], kind))
            torch_opt.step()
            for i, (p, kind) in enumerate(zip(model.parameters(), kinds)):
                keras = layouts.to_torch(steps[f"weights/{i}"][step], kind)
                np.testing.assert_allclose(p.detach().numpy(), keras, rtol=1e-5, atol=1e-7)
