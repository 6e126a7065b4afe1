"""torch.optim's generic behaviours, for every numbaopt torch optimizer (tox -e torch).

Written from what torch.optim does (its ``test/test_optim.py`` checks these for each of its
optimizers): hooks, ``opt.state``, ``torch.compile``, 16-bit and strided parameters, meta
tensors, a tensor ``lr``, momentum cycling by schedulers, param groups, ``zero_grad``,
state dicts, copies. Every class of Keras 2.0's family (``numbaopt.torch.<Name>``) and of
Keras 3's (``numbaopt.torch.keras3.<Name>``) that steps by parts, and of torch.optim's
(``numbaopt.torch.optim.<Name>``), from the registry; where
torch.optim has the behaviour, ``torch.optim.Adam`` runs beside it.
"""
import copy
import pickle

import numpy as np
import pytest
import torch  # tests/conftest.py collects this module only where torch is installed
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import numbaopt.keras3  # noqa: F401  # registers Keras 3's family
import numbaopt.torch.optim
from numbaopt import registry
from numbaopt.torch import torch_class

pytestmark = pytest.mark.torch


def _steps_by_parts(core):
    try:
        core().check_part_stepping()
    except ValueError:  # Muon: by apply_gradients only
        return False
    return True


CLASSES = [torch_class(core) for family in ("keras2", "keras3") for core in registry.rule_based(family) if _steps_by_parts(core)]
CLASSES += [getattr(numbaopt.torch.optim, core.__name__) for core in registry.rule_based("torch_optim")]
IDS = [f"{registry.family_of(cls.core)}-{cls.__name__.lower()}" for cls in CLASSES]
every_class = pytest.mark.parametrize("cls", CLASSES, ids=IDS)


def lr_name(cls):
    """The constructor's name for the learning rate (Keras's: ``lr`` or ``learning_rate``)."""
    return cls.core.lr_name


def net(seed=0, **kwargs):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3, **kwargs), torch.nn.Tanh(), torch.nn.Linear(3, 2, **kwargs))


def backward(model, step=0):
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(100 + step))
    model(x).pow(2).sum().backward()


def train(model, opt, steps=3, first=0):
    for step in range(first, first + steps):
        opt.zero_grad()
        backward(model, step)
        opt.step()


def assert_same_parameters(a, b):
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p.detach(), q.detach())


def slot_kinds(cls):
    """The names of the slots ``cls`` keeps at its defaults."""
    return {slot.name for slot in cls.core.declared_slots(cls.core().get_config())}


def is_torch_optim(cls):
    return registry.family_of(cls.core) == "torch_optim"


def twin_class(cls):
    """The torch.optim class that runs beside ``cls``: its namesake for torch.optim's family, else Adam."""
    return getattr(torch.optim, cls.__name__) if is_torch_optim(cls) else torch.optim.Adam


# ------------------------------------------------------------------------- state


@every_class
def test_state_holds_each_parameters_slots_as_torch_optims_state_does(cls):
    model, twin = net(), net()
    opt, adam = cls(model.parameters()), twin_class(cls)(twin.parameters())
    assert len(opt.state) == 0
    assert len(adam.state) == 0 or cls.__name__ == "Adagrad"  # torch.optim's Adagrad fills it in its constructor
    train(model, opt, 1)
    train(twin, adam, 1)
    kinds = slot_kinds(cls)
    assert len(opt.state) == (len(adam.state) if kinds or is_torch_optim(cls) else 0)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert set(opt.state[p]) == (set(adam.state[q]) if is_torch_optim(cls) else kinds)
        assert all(isinstance(t, torch.Tensor) for t in opt.state[p].values())
    if kinds:
        weight, kind = model[0].weight, sorted(kinds)[0]
        held = opt.state[weight][kind]
        before = held.clone()
        train(model, opt, 1, first=1)
        assert held is opt.state[weight][kind] and torch.equal(held, opt.state_dict()["state"][0][kind])
        assert not torch.equal(held, before) or not before.any()  # a view of the state the step updates


@every_class
def test_a_write_into_opt_state_is_the_next_steps_state(cls):
    models = [net(), net(), net()]
    opts = [cls(m.parameters()) for m in models]
    for m, o in zip(models, opts):
        train(m, o, 2)
    saved = copy.deepcopy(opts[1].state_dict())
    for p in models[0].parameters():  # by assignment, as torch users write it
        for kind, value in list(opts[0].state[p].items()):
            opts[0].state[p][kind] = value * 0.5
    halved = copy.deepcopy(saved)
    for entry in halved["state"].values():
        for kind in entry:
            entry[kind] = entry[kind] * 0.5
    opts[1].load_state_dict(halved)
    fresh = cls(models[2].parameters())  # loaded, not yet stepped: written in place
    fresh.load_state_dict(saved)
    for p in models[2].parameters():
        for kind, value in fresh.state[p].items():
            if kind in slot_kinds(cls):  # a slot in place; torch.optim's step count by assignment
                value.mul_(0.5)
            else:
                fresh.state[p][kind] = value * 0.5
    fresh_model = models[2]
    for m, o in [(models[0], opts[0]), (models[1], opts[1]), (fresh_model, fresh)]:
        train(m, o, 2, first=2)
    assert_same_parameters(models[0], models[1])
    assert_same_parameters(models[0], fresh_model)


def test_opt_state_keeps_a_users_own_keys_as_torchs_defaultdict():
    model = net()
    opt = torch_class(registry.optimizer_class("Adam"))(model.parameters())
    opt.state["mine"]["count"] = 1
    assert opt.state["mine"] == {"count": 1}
    train(model, opt, 1)
    with pytest.raises(KeyError, match="not 'momentum_buffer'"):
        opt.state[model[0].weight]["momentum_buffer"] = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="shape"):
        opt.state[model[0].weight]["ms"] = torch.zeros(2)


# ------------------------------------------------------------------------- hooks


def _record(opt, calls, tag):
    """Every hook torch.optim has, each appending what it was called with."""
    handles = [
        opt.register_step_pre_hook(lambda o, args, kwargs: calls.append((tag, "step_pre", o is opt, [a is opt for a in args], kwargs))),
        opt.register_step_post_hook(lambda o, args, kwargs: calls.append((tag, "step_post", o is opt, [a is opt for a in args], kwargs))),
        opt.register_state_dict_pre_hook(lambda o: calls.append((tag, "state_dict_pre", o is opt))),
        opt.register_state_dict_post_hook(lambda o, sd: calls.append((tag, "state_dict_post", o is opt, {"state", "param_groups"} <= set(sd)))),
        opt.register_load_state_dict_pre_hook(lambda o, sd: calls.append((tag, "load_pre", o is opt, {"state", "param_groups"} <= set(sd)))),
        opt.register_load_state_dict_post_hook(lambda o: calls.append((tag, "load_post", o is opt))),
    ]
    return handles


@every_class
def test_hooks_run_as_torch_optims_run_them(cls):
    runs = {}
    for tag, make in [("numbaopt", cls), ("torch", torch.optim.Adam)]:
        model = net()
        opt = make(model.parameters())
        calls = runs[tag] = []
        _record(opt, calls, "own")
        handles = [register_optimizer_step_pre_hook(lambda o, a, k: calls.append(("global", "step_pre"))),
                   register_optimizer_step_post_hook(lambda o, a, k: calls.append(("global", "step_post")))]
        try:
            backward(model)
            opt.step()
            opt.load_state_dict(opt.state_dict())
        finally:
            for handle in handles:
                handle.remove()
    assert runs["numbaopt"] == runs["torch"]
    assert [c[:2] for c in runs["torch"]] == [
        ("global", "step_pre"), ("own", "step_pre"), ("own", "step_post"), ("global", "step_post"),
        ("own", "state_dict_pre"), ("own", "state_dict_post"), ("own", "load_pre"), ("own", "load_post"),
    ]


@every_class
def test_state_dict_hooks_may_replace_what_is_saved_and_loaded(cls):
    model = net()
    opt = cls(model.parameters())
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "note": "kept"})
    assert opt.state_dict()["note"] == "kept"

    def halve_lr(o, sd):
        sd = copy.deepcopy(sd)
        sd["param_groups"][0]["lr"] = sd["param_groups"][0]["lr"] / 2
        return sd

    lr = opt.param_groups[0]["lr"]
    opt.register_load_state_dict_pre_hook(halve_lr)
    opt.load_state_dict(opt.state_dict())
    assert opt.param_groups[0]["lr"] == lr / 2


@every_class
def test_a_steps_profiler_name_is_torch_optims(cls):
    model = net()
    opt = cls(model.parameters())
    backward(model)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        opt.step()
    assert f"Optimizer.step#{cls.__name__}.step" in {event.name for event in profile.events()}


# ----------------------------------------------------------------------- compile


@every_class
def test_a_compiled_function_that_steps_is_the_eager_step(cls):
    torch._dynamo.reset()
    models = [net(), net()]
    opts = [cls(m.parameters()) for m in models]

    def train_step(model, opt, x):
        opt.zero_grad()
        loss = model(x).pow(2).sum()
        loss.backward()
        opt.step()
        return loss

    compiled = torch.compile(train_step, backend="eager")
    for step in range(3):
        x = torch.randn(5, 4, generator=torch.Generator().manual_seed(step))
        train_step(models[0], opts[0], x)
        compiled(models[1], opts[1], x)
    assert_same_parameters(*models)
    assert opts[1].iterations == 3


@every_class
def test_a_step_compiled_with_the_default_backend_is_the_eager_step(cls):
    """Inductor may compute the forward and backward passes in another order (other
    gradients, in the last bits); given the same gradients, the step is the eager one."""
    torch._dynamo.reset()
    models = [net(), net()]
    opts = [cls(m.parameters()) for m in models]
    compiled = torch.compile(lambda: opts[1].step())
    for step in range(2):
        backward(models[0], step)
        for p, q in zip(models[0].parameters(), models[1].parameters()):
            q.grad = p.grad.clone()
        opts[0].step()
        compiled()
    assert_same_parameters(*models)


# ---------------------------------------------------- 16-bit and strided parameters


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@every_class
def test_16_bit_parameters_step_in_float32_rounded_once(cls, dtype):
    generator = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4, 6, generator=generator).to(dtype))
    pointer = p.data_ptr()
    opt = cls([p], **{lr_name(cls): 0.05})
    core = cls.core(**{lr_name(cls): 0.05})
    work = p.detach().float().numpy().copy()
    for _ in range(3):
        grad = torch.randn(4, 6, generator=generator).to(dtype)
        p.grad = grad
        opt.step()
        core.apply_gradients([(grad.float().numpy(), work)])
        expected = torch.from_numpy(work).to(dtype)  # rounded once, to nearest even
        assert torch.equal(p.detach(), expected) and p.dtype == dtype and p.data_ptr() == pointer
        work[...] = expected.float().numpy()  # the next step reads the parameter as it is
    assert all(t.dtype == torch.float32 for t in opt.state[p].values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@every_class
def test_channels_last_and_transposed_parameters_are_updated_in_place(cls, dtype):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3).to(dtype=dtype, memory_format=torch.channels_last)
    transposed = torch.nn.Parameter(torch.randn(5, 4, dtype=dtype).t())
    params = [conv.weight, conv.bias, transposed]
    copies = [torch.nn.Parameter(p.detach().contiguous().clone()) for p in params]
    layout = [(p.data_ptr(), p.stride()) for p in params]
    opt, reference = cls(params), cls(copies)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        for p, q in zip(params, copies):
            grad = torch.randn(p.shape, generator=generator).to(dtype)
            p.grad = torch.empty_like(p).copy_(grad)  # the parameter's strides, as backward gives them
            q.grad = grad
        opt.step()
        reference.step()
    for p, q in zip(params, copies):
        assert torch.equal(p.detach(), q.detach())
        assert opt.state[p].keys() == reference.state[q].keys()
        assert all(torch.equal(opt.state[p][kind], reference.state[q][kind]) for kind in opt.state[p])  # as indexed
    assert [(p.data_ptr(), p.stride()) for p in params] == layout
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(opt.core_optimizer().get_weights(), reference.core_optimizer().get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # a checkpoint holds the slots as the parameters are indexed
    resumed = cls(copies := [torch.nn.Parameter(p.detach().contiguous().clone()) for p in params])
    resumed.load_state_dict(opt.state_dict())
    for p, q in zip(params, copies):
        p.grad = torch.empty_like(p).copy_(torch.ones(p.shape))
        q.grad = torch.ones(q.shape, dtype=dtype)
    opt.step()
    resumed.step()
    for p, q in zip(params, copies):
        assert torch.equal(p.detach(), q.detach())


@every_class
def test_a_parameter_whose_strides_change_between_steps_keeps_its_slots(cls):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4, 3, 2, 2))
    q = torch.nn.Parameter(p.detach().clone())
    opt, reference = cls([p]), cls([q])
    generator = torch.Generator().manual_seed(1)
    for step in range(4):
        if step == 2:
            p.data = p.data.to(memory_format=torch.channels_last)
        grad = torch.randn(p.shape, generator=generator)
        p.grad, q.grad = grad.clone(), grad
        opt.step()
        reference.step()
        assert torch.equal(p.detach(), q.detach())
    assert all(torch.equal(opt.state[p][kind], reference.state[q][kind]) for kind in opt.state[p])


def test_an_expanded_parameter_is_refused_and_nothing_changes():
    p = torch.zeros(1, 3).expand(4, 3).requires_grad_()
    p.grad = torch.ones(4, 3)
    opt = torch_class(registry.optimizer_class("SGD"))([p], lr=0.1)
    with pytest.raises(ValueError, match="parameter 0 is an expanded or overlapping view"):
        opt.step()
    assert opt.iterations == 0 and not p.any()
    with pytest.raises(RuntimeError, match="single memory location"):  # torch's own in-place ops refuse it too
        p.detach().add_(1.0)


# --------------------------------------------------------------------------- meta


@every_class
def test_meta_parameters_construct_and_step_as_torch_optims_do(cls):
    for make in (cls, torch.optim.Adam):
        model = net(device="meta")
        opt = make(model.parameters())
        model(torch.randn(5, 4, device="meta")).sum().backward()
        opt.step()
        assert all(p.is_meta for p in model.parameters())
        assert all(t.is_meta for p in model.parameters() for t in opt.state[p].values() if isinstance(t, torch.Tensor)
                   and t.dim())
    assert set(opt.state[model[0].weight]) >= {"exp_avg", "exp_avg_sq"}


def test_a_step_over_meta_and_real_parameters_is_refused():
    opt = torch_class(registry.optimizer_class("Adam"))([torch.nn.Parameter(torch.zeros(2)),
                                                         torch.nn.Parameter(torch.zeros(2, device="meta"))])
    with pytest.raises(ValueError, match="some parameters are meta tensors"):
        opt.step()


# ------------------------------------------------------------------ settings


@every_class
def test_a_tensor_lr_is_read_at_each_step(cls):
    if is_torch_optim(cls):  # torch.optim computes in tensor ops then, in other roundings
        with pytest.raises(ValueError, match="^lr as a Tensor is not supported.*pass float"):
            cls(net().parameters(), lr=torch.tensor(0.01))
        return
    models = [net(), net()]
    opts = [cls(models[0].parameters(), **{lr_name(cls): torch.tensor(0.01)}),
            cls(models[1].parameters(), **{lr_name(cls): 0.01})]
    assert isinstance(opts[0].param_groups[0]["lr"], torch.Tensor)
    for m, o in zip(models, opts):
        train(m, o, 1)
    opts[0].param_groups[0]["lr"].fill_(0.003)  # as torch's schedulers write a tensor lr
    opts[1].param_groups[0]["lr"] = 0.003
    for m, o in zip(models, opts):
        train(m, o, 2, first=1)
    assert_same_parameters(*models)
    for make in (cls, torch.optim.Adam):
        with pytest.raises(ValueError, match="Tensor (lr|learning_rate) must be 1-element"):
            make(net().parameters(), **{lr_name(cls) if make is cls else "lr": torch.tensor([0.1, 0.2])})


SCHEDULERS = {
    "one-cycle": lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=8, cycle_momentum=True),
    "cyclic": lambda opt: torch.optim.lr_scheduler.CyclicLR(opt, base_lr=0.001, max_lr=0.01, step_size_up=2,
                                                           cycle_momentum=True, base_momentum=0.8, max_momentum=0.9),
}


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@every_class
def test_schedulers_cycle_the_steps_momentum(cls, scheduler):
    model = net()
    # torch.optim's SGD and RMSprop without momentum keep no momentum buffer; numbaopt's
    # slots are chosen by the constructor, so a cycled momentum needs one from the start.
    cycled = {"momentum": 0.9} if is_torch_optim(cls) and "momentum" in cls.core().get_config() else {}
    opt = cls(model.parameters(), **cycled)
    key = "betas" if "betas" in opt.defaults else "momentum" if "momentum" in opt.defaults else None
    if key is None:  # as for torch.optim.Adagrad, which has neither
        with pytest.raises(ValueError, match="momentum or beta1"):
            SCHEDULERS[scheduler](opt)
        with pytest.raises(ValueError, match="momentum or beta1"):
            SCHEDULERS[scheduler](torch.optim.Adagrad(net().parameters()))
        return
    keras_key = key if is_torch_optim(cls) else "beta_1" if key == "betas" else "momentum"
    schedule = SCHEDULERS[scheduler](opt)
    written, fixed = net(), net()  # beta_1 or momentum written by hand / not cycled
    by_hand, uncycled = cls(written.parameters(), **cycled), cls(fixed.parameters(), **cycled)
    seen = set()
    for step in range(6):
        group = opt.param_groups[0]
        momentum = group[key][0] if key == "betas" else group[key]
        seen.add(momentum)
        by_hand.param_groups[0]["lr"] = uncycled.param_groups[0]["lr"] = group["lr"]
        by_hand.param_groups[0][keras_key] = group[key] if key == keras_key else momentum
        for m, o in [(model, opt), (written, by_hand), (fixed, uncycled)]:
            o.zero_grad()
            backward(m, step)
            o.step()
        assert by_hand.param_groups[0][key] == group[key]  # Keras's name and torch's kept equal both ways
        assert (group[keras_key] == momentum) or key == keras_key
        schedule.step()
    assert len(seen) > 2
    assert_same_parameters(model, written)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), fixed.parameters()))


@pytest.mark.parametrize("cls", [c for c in CLASSES if {"beta_1", "beta_2"} <= set(c.core.part_settings())],
                         ids=lambda c: f"{registry.family_of(c.core)}-{c.__name__.lower()}")
def test_betas_and_beta_1_written_apart_raise(cls):
    model = net()
    opt = cls(model.parameters())
    backward(model)
    opt.param_groups[0]["betas"] = (0.5, 0.9)
    opt.param_groups[0]["beta_1"] = 0.7
    with pytest.raises(ValueError, match="betas was set to .* beta_1, beta_2"):
        opt.step()
    assert opt.iterations == 0
    with pytest.raises(ValueError, match="betas=.* but beta_1"):
        cls([{"params": list(net().parameters()), "betas": (0.5, 0.9), "beta_1": 0.6}])


@every_class
def test_a_parameter_in_two_groups_is_refused_as_torch_refuses_it(cls):
    params = list(net().parameters())
    for make in (cls, torch.optim.Adam):
        with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
            make([{"params": params[:2]}, {"params": params[1:]}])
        opt = make([{"params": params[:2]}])
        with pytest.raises(ValueError, match="more than one parameter group"):
            opt.add_param_group({"params": params[1:]})
        assert len(opt.param_groups) == 1


@pytest.mark.parametrize("set_to_none", [True, False])
@every_class
def test_zero_grad_is_torch_optims(cls, set_to_none):
    results = []
    for make in (cls, torch.optim.Adam):
        model = net()
        opt = make(model.parameters())
        backward(model)
        grads = [p.grad for p in model.parameters()]
        opt.zero_grad(set_to_none=set_to_none)
        results.append([None if p.grad is None else (p.grad is g, p.grad.abs().sum().item())
                        for p, g in zip(model.parameters(), grads)])
    assert results[0] == results[1]


# ------------------------------------------------------- state dicts and copies


@every_class
def test_a_state_dict_round_trip_resumes_bitwise(cls, tmp_path):
    models = [net(), net()]
    opt = cls(models[0].parameters())
    train(models[0], opt, 2)
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    models[1].load_state_dict(models[0].state_dict())
    resumed = cls(models[1].parameters())
    resumed.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    for m, o in zip(models, (opt, resumed)):
        train(m, o, 2, first=2)
    assert_same_parameters(*models)
    if opt.state or not is_torch_optim(cls):  # torch.optim's SGD without momentum keeps no step count
        assert resumed.iterations == opt.iterations == 4


@every_class
def test_deepcopy_and_pickle_keep_the_state_and_drop_the_hooks_as_torch_does(cls):
    model = net()
    opt = cls(model.parameters())
    train(model, opt, 1)
    for o in (opt, torch.optim.Adam(net().parameters())):
        o.register_step_pre_hook(lambda *args: None)  # a lambda: pickle could not keep it
        assert not pickle.loads(pickle.dumps(o))._optimizer_step_pre_hooks
    twins = [copy.deepcopy((model, opt)), pickle.loads(pickle.dumps((model, opt)))]
    train(model, opt, 2, first=1)
    for twin_model, twin_opt in twins:
        train(twin_model, twin_opt, 2, first=1)
        assert_same_parameters(model, twin_model)


@every_class
def test_repr_is_torch_optims(cls):
    text = repr(cls(net().parameters()))
    assert text.startswith(f"{cls.__name__} (\nParameter Group 0\n    ") and "    lr: " in text


# ------------------------------------------------------------ torch's argument names


@pytest.mark.parametrize(("family", "name", "argument", "message"), [
    ("keras2", "Adam", "betas", "Adam takes beta_1 and beta_2 \\(Keras's names\\), not betas"),
    ("keras2", "Adam", "eps", "Adam takes epsilon \\(Keras's name\\), not eps"),
    ("keras2", "Adam", "weight_decay", "its decay is the learning rate's decay"),
    ("keras2", "Nadam", "momentum_decay", "takes schedule_decay"),
    ("keras2", "RMSprop", "alpha", "takes rho"),
    ("keras2", "RMSprop", "momentum", "RMSprop has no momentum"),
    ("keras3", "Adam", "lr", "Adam takes learning_rate"),
    ("keras3", "AdamW", "fused", "AdamW has no fused"),
    ("keras3", "Adafactor", "eps", "takes epsilon_1 and epsilon_2"),
])
def test_torch_argument_names_raise_a_type_error_naming_keras_names(family, name, argument, message):
    cls = torch_class(registry.optimizer_class(name if family == "keras2" else f"keras3.{name}"))
    with pytest.raises(TypeError, match=message + ".*numbaopt.torch.optim"):
        cls(net().parameters(), **{argument: 0.9})


@pytest.mark.parametrize("cls", [c for c in CLASSES if not is_torch_optim(c)],
                         ids=lambda c: f"{registry.family_of(c.core)}-{c.__name__.lower()}")
def test_betas_is_a_type_error_for_every_keras_class(cls):
    with pytest.raises(TypeError, match="numbaopt.torch.optim's classes take torch.optim's arguments"):
        cls(net().parameters(), betas=(0.9, 0.99))


@every_class
def test_a_16_bit_parameter_given_another_shape_steps_with_new_copies(cls):
    p = torch.nn.Parameter(torch.ones(3, dtype=torch.bfloat16))
    opt = cls([p])
    p.grad = torch.ones(3, dtype=torch.bfloat16)
    opt.step()
    opt.load_state_dict({**opt.state_dict(), "state": {}})  # fresh slots, for the new shape
    p.data, p.grad = torch.ones(4, dtype=torch.bfloat16), torch.ones(4, dtype=torch.bfloat16)
    opt.step()
    assert p.shape == (4,) and p.dtype == torch.bfloat16


@pytest.mark.parametrize(("family", "name", "key", "error", "message"), [
    ("keras2", "Adam", "eps", TypeError, "Adam takes epsilon \\(Keras's name\\), not eps"),
    ("keras3", "AdamW", "foreach", TypeError, "AdamW has no foreach"),
    ("keras3", "SGD", "momentum", ValueError, "a param group of SGD cannot set momentum"),
    ("keras3", "Adam", "use_ema", ValueError, "a param group of Adam cannot set use_ema"),
])
def test_a_param_group_that_sets_what_it_cannot_is_refused(family, name, key, error, message):
    cls = torch_class(registry.optimizer_class(name if family == "keras2" else f"keras3.{name}"))
    params = list(net().parameters())
    with pytest.raises(error, match=message):
        cls([{"params": params, key: 0.5}])
    opt = cls([{"params": params, "note": "the user's own key"}])  # as torch keeps it
    assert opt.param_groups[0]["note"] == "the user's own key"

