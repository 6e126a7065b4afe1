"""16-bit parameters and 8-bit state through ``numbaopt.torch`` (tox -e torch).

Every torch family (Keras 2.0's, Keras 3's, torch.optim's, and the 8-bit names) at every
``slot_dtype``, over float32, bfloat16 and float16 modules: the step is the NumPy core's on
the same memory, the state dict resumes bitwise through ``torch.save``, and ``opt.state``
shows what the core keeps (``numbaopt.torch.stored``).
"""
import inspect

import ml_dtypes
import numpy as np
import pytest
import torch  # tests/conftest.py collects this module only where torch is installed

import numbaopt.keras3  # noqa: F401  # registers Keras 3's family
import numbaopt.torch as nt
import numbaopt.torch.keras3 as ntk
import numbaopt.torch.optim as nto
from numbaopt import quantization

pytestmark = pytest.mark.torch

CLASSES = {"keras2-adam": nt.Adam, "keras3-adamw": ntk.AdamW, "torch_optim-adamw": nto.AdamW,
           "torch_optim-rmsprop": nto.RMSprop, "torch_optim-adamw8bit": nto.AdamW8bit}
SLOT_DTYPES = [None, "float32", "bfloat16", "q8"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
NUMPY = {torch.float32: np.float32, torch.bfloat16: ml_dtypes.bfloat16, torch.float16: np.float16}


def make(name, params, slot_dtype):
    cls = CLASSES[name]
    lr = {"lr": 0.01} if "torch_optim" in name else {cls.core.lr_name: 0.01}
    return cls(params, **lr, **({} if slot_dtype is None else {"slot_dtype": slot_dtype}))


def model(dtype, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(300, 40), torch.nn.Tanh(), torch.nn.Linear(40, 3)).to(dtype)


def train(net, opt, steps, first=0):
    for step in range(first, first + steps):
        x = torch.randn(8, 300, generator=torch.Generator().manual_seed(step)).to(next(net.parameters()).dtype)
        opt.zero_grad()
        net(x).float().pow(2).mean().backward()
        opt.step()


def bits(net):
    return [p.detach().view(torch.uint8 if p.element_size() == 1 else {2: torch.int16, 4: torch.int32}[p.element_size()]).clone()
            for p in net.parameters()]


def same_bits(a, b):
    return all(torch.equal(x, y) for x, y in zip(bits(a), bits(b), strict=True))


every = pytest.mark.parametrize("name", CLASSES)
storages = pytest.mark.parametrize("slot_dtype", SLOT_DTYPES, ids=lambda d: str(d))
dtypes = pytest.mark.parametrize("dtype", DTYPES.values(), ids=list(DTYPES))


@dtypes
@storages
@every
def test_the_step_is_the_numpy_cores_on_the_same_values(name, slot_dtype, dtype):
    if name.endswith("8bit") and slot_dtype is None:
        slot_dtype = "q8"  # its default
    net = model(dtype)
    opt = make(name, net.parameters(), slot_dtype)
    core = opt.core(**{k: v for k, v in opt._core.get_config().items()})
    arrays = [p.detach().clone().view(torch.int16).numpy().view(NUMPY[dtype]) if dtype is torch.bfloat16
              else p.detach().clone().numpy() for p in net.parameters()]
    for step in range(3):
        train(net, opt, 1, first=step)
        grads = [p.grad.detach().view(torch.int16).numpy().view(ml_dtypes.bfloat16) if dtype is torch.bfloat16
                 else p.grad.detach().numpy() for p in net.parameters()]
        core.apply_gradients(zip(grads, arrays))
    for p, a in zip(net.parameters(), arrays):
        ours = p.detach().view(torch.int16).numpy() if dtype is torch.bfloat16 else p.detach().numpy()
        assert ours.tobytes() == a.view(ours.dtype).tobytes()


@dtypes
@storages
@every
def test_a_state_dict_saved_with_torch_resumes_bitwise(name, slot_dtype, dtype, tmp_path):
    nets = [model(dtype), model(dtype)]
    opt = make(name, nets[0].parameters(), slot_dtype)
    train(nets[0], opt, 2)
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    nets[1].load_state_dict(nets[0].state_dict())
    resumed = make(name, nets[1].parameters(), slot_dtype)
    resumed.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    for net, o in zip(nets, (opt, resumed)):
        train(net, o, 2, first=2)
    assert same_bits(*nets)


def test_a_state_dict_names_its_codes_and_earlier_codes_convert():
    """The ``numbaopt`` entry names the checkpoint format of its 8-bit codes; a state dict of
    format 4's codes loads converted as a format-4 checkpoint does, and a later one is refused."""
    net = model(torch.float32)
    opt = make("keras2-adam", net.parameters(), "q8")
    train(net, opt, 2)
    saved = opt.state_dict()
    assert saved["numbaopt"]["codes"] == quantization.FORMAT
    old = {**saved, "numbaopt": {**saved["numbaopt"], "codes": 4}}
    loaded = make("keras2-adam", net.parameters(), "q8")
    loaded.load_state_dict(old)
    for i, entry in saved["state"].items():
        for slot in opt.core.declared_slots(opt._core.get_config()):
            blocks = entry[slot.name].numpy().view(quantization.HOST_DTYPE).reshape(-1)
            expected = quantization.from_format(blocks, slot.sign, 4)
            assert loaded.state_dict()["state"][i][slot.name].numpy().tobytes() == expected.tobytes()
    for later in (quantization.FORMAT + 1, "5", None):
        with pytest.raises(ValueError, match="codes must be"):
            loaded.load_state_dict({**saved, "numbaopt": {**saved["numbaopt"], "codes": later}})
    assert loaded.state_dict()["state"][0]["vs"].numpy().tobytes() != saved["state"][0]["vs"].numpy().tobytes()


@storages
@every
def test_opt_state_shows_the_slots_as_the_core_keeps_them(name, slot_dtype):
    net = model(torch.bfloat16)
    opt = make(name, net.parameters(), slot_dtype)
    train(net, opt, 1)
    stored = "q8" if name.endswith("8bit") and slot_dtype is None else slot_dtype
    weight = net[0].weight
    slots = {k: v for k, v in opt.state[weight].items() if v.dim() > 0}
    assert slots
    for tensor in slots.values():
        if stored == "q8":  # the blocks: 256 codes and the float32 scale each
            assert tensor.dtype is torch.uint8 and tuple(tensor.shape) == (quantization.blocks(weight.numel()), 260)
        else:
            assert tensor.dtype is (torch.bfloat16 if stored == "bfloat16" else torch.float32)
            assert tensor.shape == weight.shape


@pytest.mark.parametrize("name", ["keras2-adam", "torch_optim-adamw"])
def test_a_write_into_a_16_bit_slot_is_the_next_steps_state(name):
    nets = [model(torch.float32), model(torch.float32)]
    opts = [make(name, n.parameters(), "bfloat16") for n in nets]
    for n, o in zip(nets, opts):
        train(n, o, 1)
    kind = next(k for k, v in opts[0].state[nets[0][0].weight].items() if v.dim() > 0)
    opts[0].state[nets[0][0].weight][kind].mul_(0.5)  # in place, into the core's bfloat16 memory
    saved = opts[1].state_dict()
    saved["state"][0][kind] = saved["state"][0][kind] * 0.5
    opts[1].load_state_dict(saved)
    for n, o in zip(nets, opts):
        train(n, o, 1, first=1)
    assert same_bits(*nets)


def test_a_torch_optim_state_dict_loads_into_the_8_bit_optimizer_quantized():
    nets = [model(torch.float32), model(torch.float32)]
    reference = torch.optim.AdamW(nets[0].parameters(), lr=0.01)
    train(nets[0], reference, 2)
    nets[1].load_state_dict(nets[0].state_dict())
    ours = nto.AdamW8bit(nets[1].parameters(), lr=0.01)
    saved = reference.state_dict()
    ours.load_state_dict(saved)
    for i, entry in saved["state"].items():
        assert torch.equal(ours.state_dict()["state"][i]["step"], entry["step"])
        for kind, sign in (("exp_avg", "signed"), ("exp_avg_sq", "nonnegative")):
            expected = quantization.quantize(entry[kind].numpy(), sign)
            assert ours.state_dict()["state"][i][kind].numpy().tobytes() == expected.tobytes()
    train(nets[0], reference, 3, first=2)
    train(nets[1], ours, 3, first=2)
    # 8-bit state: close, not equal. An AdamW step moves an element by at most about lr; the
    # codes' relative error (at most 1/16 for m, 1/32 through sqrt(v)) makes each of the 3
    # steps at most 1/8 of lr off.
    for p, q in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.allclose(p, q, rtol=0, atol=3 * 0.01 / 8)


def test_a_bfloat16_state_dict_loads_into_torch_optim():
    net = model(torch.float32)
    ours = nto.AdamW(net.parameters(), lr=0.01, slot_dtype="bfloat16")
    train(net, ours, 2)
    twin = model(torch.float32)
    reference = torch.optim.AdamW(twin.parameters(), lr=0.01)
    reference.load_state_dict(ours.state_dict())  # torch casts the bfloat16 state to its parameters' float32
    assert reference.state[next(twin.parameters())]["exp_avg"].dtype is torch.float32


@pytest.mark.parametrize("name", ["keras2-adam", "torch_optim-adamw8bit"])
def test_stochastic_rounding_of_a_bfloat16_module_is_deterministic_and_resumes(name, tmp_path):
    def run(steps, state=None, net=None):
        net = net or model(torch.bfloat16)
        cls = CLASSES[name]
        kwargs = {"bf16_stochastic_round": True} if name.endswith("8bit") else {"stochastic_rounding": True}
        opt = cls(net.parameters(), **({"lr": 0.01} if "torch_optim" in name else {cls.core.lr_name: 0.01}), **kwargs)
        if state is not None:
            opt.load_state_dict(state)
        train(net, opt, steps, first=0 if state is None else 2)
        return net, opt

    whole, _ = run(4)
    again, _ = run(4)
    assert same_bits(whole, again)
    half, opt = run(2)
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    resumed, _ = run(2, torch.load(tmp_path / "opt.pt", weights_only=True), half)
    assert same_bits(whole, resumed)
    nearest = model(torch.bfloat16)
    train(nearest, make(name, nearest.parameters(), None), 4)
    assert not same_bits(whole, nearest)


def test_the_8_bit_names_take_torchaos_arguments():
    params = list(model(torch.float32).parameters())
    assert nto.AdamW8bit(params).defaults["weight_decay"] == torch.optim.AdamW(params).defaults["weight_decay"]
    assert nto.Adam8bit(params).defaults["weight_decay"] == 0
    assert nto.AdamW8bit(params)._core.get_config()["slot_dtype"] == "q8"
    with pytest.raises(ValueError, match="blocks of 256 elements.*block_size=128"):
        nto.AdamW8bit(params, block_size=128)
    with pytest.raises(ValueError, match="slot_dtype"):
        nto.Adafactor(params, slot_dtype="q8")  # factored state: not quantizable


def test_slot_dtype_takes_torch_dtypes_by_name():
    params = list(model(torch.float32).parameters())
    assert nto.AdamW(params, slot_dtype=torch.bfloat16)._core.get_config()["slot_dtype"] == "bfloat16"
    assert nt.Adam(params, slot_dtype=torch.float32)._core.get_config()["slot_dtype"] == "float32"
    with pytest.raises(ValueError, match="slot_dtype must be None or one of.*torch.float16"):
        nto.AdamW(params, slot_dtype=torch.float16)


@pytest.mark.parametrize("name", ["AdamW8bit", "Adam8bit"])
def test_the_8_bit_names_take_bitsandbytes_arguments(name):
    """bitsandbytes' keywords at the values that mean what numbaopt does give its optimizer;
    any other value is refused by name, before anything is made."""
    cls = getattr(nto, name)
    params = list(model(torch.float32).parameters())
    plain = cls(params, lr=1e-3)
    same = cls(params, lr=1e-3, optim_bits=32, args=None, min_8bit_size=16384, is_paged=False, percentile_clipping=100,
               block_wise=True)
    assert same._core.get_config() == plain._core.get_config()
    assert {"optim_bits", "min_8bit_size", "is_paged"} <= set(inspect.signature(cls).parameters)
    for keyword, value in [("optim_bits", 8), ("is_paged", True), ("percentile_clipping", 95), ("block_wise", False),
                           ("args", {"lr": 0.1}), ("optim_bits", "32")]:
        with pytest.raises(ValueError, match=f"{keyword}={value!r}"):
            cls(params, **{keyword: value})
