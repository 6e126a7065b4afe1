"""torch.optim's optimizers with numbaopt's step: ``numbaopt.torch.optim.AdamW(model.parameters(), lr=1e-3)``.

One class per registered torch.optim optimizer (``numbaopt.registry.rule_based("torch_optim")``),
made from the registry when first asked for, as ``numbaopt.torch.keras3`` makes Keras 3's:
torch.optim's signature, defaults and param-group keys (schedulers find ``lr``, ``betas``,
``momentum`` where torch keeps them), and torch.optim's ``state_dict`` layout, so a state
dict goes both ways between ``torch.optim.<Name>`` and ``numbaopt.torch.optim.<Name>``.
The step is the ``numbaopt.torch_optim`` optimizer's: torch's single-tensor arithmetic.

``TorchOptim`` overrides only how the state looks: ``opt.state[p]`` and ``state_dict()`` in
torch's layout (``_parameter_state``: per parameter, ``step`` and the other per-parameter
scalars as 0-d tensors of torch's scalar dtype, then the slots under torch's names and
shapes), what ``load_state_dict`` reads (``_checked_core``), and a group added after a step;
and it keeps the per-parameter scalars in float64 where torch's default dtype is float64
when the optimizer is made, as torch's ``_get_scalar_dtype()`` does. Hooks, copies and the
compile guard are ``TorchOptimizer``'s. ``AdamW8bit`` and ``Adam8bit`` are AdamW and Adam
with 8-bit state, under bitsandbytes' and torchao's names and keyword arguments.
"""
from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from numbaopt import quantization, registry, torch_optim
from numbaopt.state import OptimizerState
from numbaopt.torch import stored, torch_class
from numbaopt.torch.optimizer import TorchOptimizer
from numbaopt.torch.states import SlotState
from numbaopt.torch.working import slot_dtype


class TorchOptim(TorchOptimizer):
    """Base class of ``numbaopt.torch.optim``'s optimizers: torch.optim's state dicts."""

    _core: torch_optim.TorchOptimOptimizer
    _torch_shown: tuple[list[Any], dict[int, dict[str, Any]]]  # the slots shown, and each parameter's in torch's shapes

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "core" in cls.__dict__:  # torch's signature: numbaopt's scalar_dtype follows torch's default dtype
            signature = cls.__signature__  # type: ignore[attr-defined, unused-ignore]
            parameters = [p for p in signature.parameters.values() if p.name != "scalar_dtype"]
            cls.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined, unused-ignore]

    def __init__(self, params: Any, *args: Any, **kwargs: Any) -> None:
        if "scalar_dtype" in kwargs:
            raise TypeError(f"{type(self).__name__} takes no scalar_dtype: it follows torch.get_default_dtype()")
        named = dict(zip(list(inspect.signature(type(self)).parameters)[1:], args)) | kwargs
        tensors = [name for name, value in named.items() if torch.is_tensor(value)
                   or (isinstance(value, tuple) and any(torch.is_tensor(v) for v in value))]
        if tensors:  # a ValueError with torch's words, as torch refuses a tensor lr where it cannot take one
            raise ValueError(f"{tensors[0]} as a Tensor is not supported by {type(self).__name__}: torch computes with "
                             f"a tensor {tensors[0]} in tensor ops, in other roundings than the single-tensor step "
                             "numbaopt reproduces; pass float(value)")
        if torch.get_default_dtype() == torch.float64:
            kwargs["scalar_dtype"] = "float64"
        super().__init__(params, *args, **kwargs)

    def _parameter_state(self, i: int) -> dict[str, Any]:
        """Parameter ``i``'s state in torch.optim's layout: its per-parameter scalars as 0-d
        tensors of torch's scalar dtype, then its slots under torch's names and shapes, views
        of the core's memory; empty before its first step, as torch's."""
        core = self._core
        scalars = core.parameter_scalars_of(i)
        if not scalars or scalars["step"] == 0:
            return {}
        entry = {name: torch.from_numpy(scalars[name]) for name, _ in core.parameter_state
                 if name != "step" or core.torch_keeps_step}
        entry.update(self._torch_slots(i))
        scalar_names = frozenset(name for name, _ in core.parameter_state)
        return TorchOptimState(entry, scalar_names, lambda name, value: self._set_parameter_scalar(i, name, value))

    def _torch_slots(self, i: int) -> dict[str, Any]:
        """Parameter ``i``'s slots under torch's shapes, the same tensors while the slots
        shown (``_slot_tensors``) are the same."""
        shown = self._slot_tensors()
        made = self.__dict__.get("_torch_shown")
        if made is None or made[0] is not shown:
            made = self._torch_shown = (shown, {})
        if i not in made[1] and i < len(shown):
            shape = tuple(self._parameters()[i].shape)
            made[1][i] = {slot.name: shown[i][slot.name] if slot.dtype == "q8" else shown[i][slot.name].reshape(torch_shape)
                          for slot in self._core.slots if (torch_shape := self._core.torch_slot_shape(slot, shape)) is not None}
        return made[1].get(i, {})

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_torch_shown", None)  # made anew from the slots shown
        return state

    def _set_parameter_scalar(self, i: int, name: str, value: Any) -> None:
        """``opt.state[p]["step"] = n``: parameter ``i``'s next step counts from ``n``."""
        scalars = self._core.parameter_scalars()
        scalars[name][i] = float(_host(value, f"state {name}").reshape(()))
        self._core.load_parameter_scalars(scalars)

    def _own_entry(self) -> dict[str, Any]:
        """Nothing beside torch.optim's layout: the iterations are the largest ``step``."""
        return {}

    def _checked_core(self, state_dict: Mapping[str, Any]) -> tuple[list[dict[str, Any]], Any]:
        """The param groups' new values and a core holding the state of a state dict of this
        class or of ``torch.optim.<Name>`` (float state cast to the parameter's dtype, as
        torch casts it)."""
        name = type(self).__name__
        if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(state_dict):
            raise ValueError(f"{name}.load_state_dict takes a state dict with 'state' and 'param_groups'")
        groups = self._checked_groups(state_dict["param_groups"])
        params = self._parameters()
        entries = state_dict["state"]
        if not isinstance(entries, Mapping) or any(not isinstance(i, int) or not 0 <= i < len(params) for i in entries):
            raise ValueError(f"{name}.load_state_dict: 'state' must be keyed by parameter indices 0 to {len(params) - 1}")
        core = self._core.__class__(**self._core.get_config())
        if entries:
            scalars, slots = self._checked_entries(core, entries, params)
            shapes = tuple((tuple(p.shape), self._working.core_dtype_name(p)) for p in params)
            core.load_state(OptimizerState(int(scalars["step"].max()), {}, slots, parameters=shapes))
            core.load_parameter_scalars(scalars)
        return groups, core

    def _checked_groups(self, saved_groups: Any) -> list[dict[str, Any]]:
        """The base's checks, and each group's settings a variant this optimizer steps. A
        group saved before torch had a flag (``foreach``, ``maximize``, ``fused``, AdamW's
        ``decoupled_weight_decay``, ...) gets its default, as torch's ``__setstate__`` gives it."""
        core = self._core
        flags = [a for a in core.arguments + core.group_only if a.kind in ("flag", "optional_flag", "refused")]
        if isinstance(saved_groups, list):
            saved_groups = [{**{a.name: a.default for a in flags}, **group} if isinstance(group, Mapping) else group
                            for group in saved_groups]
        groups = super()._checked_groups(saved_groups)
        for values in groups:
            self._core.check_variant({**self._core.get_config(), **values})
        return groups

    def _checked_entries(self, core: Any, entries: Mapping[int, Any], params: list[Any]
                         ) -> tuple[dict[str, npt.NDArray[np.floating[Any]]], dict[str, list[npt.NDArray[Any]]]]:
        """The per-parameter scalars and the slots of every parameter from torch's entries
        (a parameter without one: before its first step, zeros)."""
        name = type(self).__name__
        saved = [_host(entry["step"], "step").dtype for entry in entries.values() if isinstance(entry, Mapping) and "step" in entry]
        dtype = saved[0] if saved and saved[0] == np.float64 else np.dtype(core.get_config().get("scalar_dtype", "float32"))
        scalars = {key: np.full(len(params), initial, dtype) for key, initial in core.parameter_state}
        slots: dict[str, list[npt.NDArray[Any]]] = {slot.name: [] for slot in core.slots}
        for i, p in enumerate(params):
            param_dtype = np.dtype(self._working.core_dtype_name(p))
            entry = entries.get(i, {})
            where = f"{name}.load_state_dict: state {i}"
            if not isinstance(entry, Mapping):
                raise ValueError(f"{where} must be a dict")
            expected = {key for key, _ in core.parameter_state if key != "step" or core.torch_keeps_step}
            expected |= {slot.name for slot in core.slots if core.torch_slot_shape(slot, tuple(p.shape)) is not None}
            if entry and set(entry) != expected:
                raise ValueError(f"{where} holds {sorted(entry)}; {name} keeps {sorted(expected)} for it")
            for key, _ in core.parameter_state:
                if key in entry:
                    scalars[key][i] = float(_host(entry[key], f"{where} {key}").reshape(()))
            if entry and not core.torch_keeps_step:
                scalars["step"][i] = 1  # a buffer: the parameter has stepped
            for slot in core.slots:
                torch_shape = core.torch_slot_shape(slot, tuple(p.shape))
                if entry and torch_shape is not None:
                    value = entry[slot.name]
                    if not isinstance(value, torch.Tensor):
                        raise TypeError(f"{where} {slot.name} must be a tensor, got {type(value).__name__}")
                    if value.dtype.is_floating_point:  # torch's layout (8-bit blocks are numbaopt's own)
                        if tuple(value.shape) != torch_shape:
                            raise ValueError(f"{where} {slot.name} has shape {tuple(value.shape)}, but its parameter keeps one of {torch_shape}")
                        if slot.dtype is None or slot.dtype == "float32":  # as torch casts state to its parameter's dtype
                            value = value.to(slot_dtype(p))
                        value = value.reshape(slot.shape_of(tuple(p.shape)) if slot.dtype != "q8" else tuple(p.shape))
                    array = stored.slot_array(value, p, slot, f"{where} {slot.name}")
                else:
                    array = np.zeros(slot.shape_of(tuple(p.shape)), slot.dtype_of(param_dtype))
                slots[slot.name].append(stored.laid_out(array, slot, self._working.order(p)))
        return scalars, slots

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """A group added after a step starts as torch's would: zero slots (``TorchOptimizer``)
        and per-parameter scalars at their values before a first step."""
        scalars = self._core.parameter_scalars() if "_core" in self.__dict__ else {}
        super().add_param_group(param_group)
        added = len(self._parameters()) - len(scalars.get("step", ()))
        if scalars and added > 0:
            if not self._core.slots:  # no slots to extend: a core bound to the old parameters, made anew
                core = self._core.__class__(**self._core.get_config())
                core.load_state(OptimizerState(self._core.iterations, {}, {}))
                self._set_core(core)
            self._core.load_parameter_scalars({
                key: np.concatenate([scalars[key], np.full(added, initial, scalars[key].dtype)])
                for key, initial in self._core.parameter_state
            })


class TorchOptimState(SlotState):
    """One parameter's state in torch.optim's layout: a slot written is written into the
    core's memory (``SlotState``), a per-parameter scalar (``step``) through ``set_scalar``."""

    def __init__(self, entry: dict[str, Any], scalar_names: frozenset[str], set_scalar: Callable[[str, Any], None]) -> None:
        super().__init__(entry)
        self._scalar_names = scalar_names
        self._set_scalar = set_scalar

    def __setitem__(self, key: str, value: Any) -> None:
        if key in self and key in self._scalar_names:
            self._set_scalar(key, value)
            dict.__setitem__(self, key, torch.as_tensor(value, dtype=dict.__getitem__(self, key).dtype))
        else:
            super().__setitem__(key, value)


def _host(value: object, where: str) -> npt.NDArray[Any]:
    """A saved tensor (or number) as a host array."""
    if isinstance(value, torch.Tensor):
        return np.asarray(value.detach().cpu().numpy())
    if isinstance(value, (int, float, np.ndarray, np.number)) and not isinstance(value, bool):
        return np.asarray(value)
    raise TypeError(f"{where} must be a tensor, got {type(value).__name__}")


def _cores() -> dict[str, type[torch_optim.TorchOptimOptimizer]]:
    """The registered torch.optim optimizers by class name."""
    return {cls.__name__: cls for cls in registry.rule_based("torch_optim")}


#: The 8-bit classes made so far, by name (one class each, which pickle finds here).
_MADE_8BIT: dict[str, type[TorchOptim]] = {}


def _eight_bit_names() -> dict[str, str]:
    """bitsandbytes' and torchao's names for 8-bit optimizers (``AdamW8bit``), each of the
    torch.optim optimizer that declares it (``eight_bit_name``)."""
    return {core.eight_bit_name: name for name, core in _cores().items() if core.eight_bit_name}


#: bitsandbytes' keyword arguments of ``AdamW8bit`` and ``Adam8bit`` (0.50, and
#: ``percentile_clipping`` / ``block_wise`` of earlier versions): the one value each that
#: means what numbaopt does, and why no other. ``min_8bit_size`` is taken at any value and
#: not applied: numbaopt quantizes every tensor's slots (docs/memory.md, "In PyTorch").
_BITSANDBYTES_KEYWORDS = {
    "optim_bits": (32, "bitsandbytes itself takes only 32 here, for compatibility"),
    "args": (None, "bitsandbytes' per-parameter overrides (GlobalOptimManager) have no counterpart"),
    "is_paged": (False, "the state is ordinary memory of the parameters' device, not CUDA paged memory"),
    "percentile_clipping": (100, "clip gradients with clipnorm or clipvalue instead"),
    "block_wise": (True, "the state is always quantized in blocks"),
}


def _eight_bit(name: str) -> type[TorchOptim]:
    """``AdamW8bit`` or ``Adam8bit``: torchao's keyword arguments (``block_size``, which
    must be numbaopt's 256, and ``bf16_stochastic_round``) and bitsandbytes' (at the values
    that mean what numbaopt does: ``_BITSANDBYTES_KEYWORDS``) over torch.optim's class of
    that rule."""
    made = _MADE_8BIT.get(name)
    if made is not None:
        return made
    rule = _eight_bit_names()[name]
    base: type[TorchOptim] = __getattr__(rule)

    def __init__(self: TorchOptim, params: Any, *args: Any, block_size: int = quantization.BLOCK,
                 bf16_stochastic_round: bool = False, min_8bit_size: int = 4096, **kwargs: Any) -> None:
        if block_size != quantization.BLOCK:
            raise ValueError(f"{name} quantizes in blocks of {quantization.BLOCK} elements (numbaopt.quantization), "
                             f"got block_size={block_size!r}")
        for keyword, (value, why) in _BITSANDBYTES_KEYWORDS.items():
            given = kwargs.pop(keyword, value)
            if not (given is value or (isinstance(given, numbers.Real) and given == value)):
                raise ValueError(f"{name} takes bitsandbytes' {keyword}={value!r} only, got {keyword}={given!r}: {why}")
        kwargs.setdefault("slot_dtype", "q8")
        if bf16_stochastic_round:
            kwargs.setdefault("stochastic_rounding", True)
        base.__init__(self, params, *args, **kwargs)

    signature = inspect.signature(base)
    parameters = [p.replace(default="q8") if p.name == "slot_dtype" else p for p in signature.parameters.values()]
    keywords = {"block_size": quantization.BLOCK, "bf16_stochastic_round": False, "min_8bit_size": 4096,
                **{keyword: value for keyword, (value, _) in _BITSANDBYTES_KEYWORDS.items()}}
    parameters += [inspect.Parameter(keyword, inspect.Parameter.KEYWORD_ONLY, default=value)
                   for keyword, value in keywords.items()]
    namespace = {"__init__": __init__, "__module__": __name__, "__qualname__": name,
                 "__signature__": signature.replace(parameters=parameters),
                 "__doc__": f"torch.optim's {rule} with 8-bit block-wise quantized slots (slot_dtype='q8'), "
                            "under the name bitsandbytes and torchao give it."}
    made = _MADE_8BIT[name] = type(name, (base,), namespace)
    return made


def __getattr__(name: str) -> Any:
    if name == "__all__":
        return [*_cores(), *_eight_bit_names(), "TorchOptim"]
    if name in _eight_bit_names():
        return _eight_bit(name)
    core = _cores().get(name)
    if core is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return torch_class(core, TorchOptim)


def __dir__() -> list[str]:
    return sorted({*globals(), *_cores(), *_eight_bit_names()})
