"""A numbaopt optimizer as a ``torch.optim.Optimizer``: param groups, ``step``, ``state_dict``.

One core optimizer (``numbaopt.optimizers.<Same>``) holds the whole state: every
parameter's slots, ``iterations`` and the scalar state. Each ``step`` hands it the tensors
and their gradients (NumPy views of the same memory, no copies) in one call of
``apply_gradient_parts``: one part per param group with the group's hyperparameters,
parameters whose ``.grad`` is None in no part. So the arithmetic is the core's, bitwise:
the clip norm is over every gradient of the step across groups, and ``iterations`` counts
steps.

``opt.state[p]`` and ``state_dict()["state"]`` show each parameter's slots as tensors of
the core's own slot memory (``_parameter_state``), so a write into them is the next step's
state, as in torch; slots kept in 16 or 8 bits show as ``numbaopt.torch.stored`` says. The
step runs eagerly under ``torch.compile`` (a graph break). float16 and bfloat16 CPU
parameters step in their own memory (elsewhere as float32 working copies), parameters of
other strides in their memory's order (``numbaopt.torch.working``).
"""
from __future__ import annotations

import inspect
import math
import numbers
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import torch
from torch._compile import _disable_dynamo as eager  # torch.optim's own: imports torch._dynamo at the first call

from numbaopt import devices, quantization, registry
from numbaopt.declarations import scalar_state_advances_with
from numbaopt.optimizers.base import Hyperparameter
from numbaopt.state import OptimizerState, Slot
from numbaopt.optimizers.base import Optimizer as CoreOptimizer
from numbaopt.torch import stored
from numbaopt.torch.arguments import check_group_keys, check_torch_arguments
from numbaopt.torch.betas import BETAS, join_betas, sync_betas
from numbaopt.torch.states import ParameterStates, SlotState
from numbaopt.torch.working import Order, WorkingCopies, slot_dtype

#: Keys of a state dict's own entry: what torch's layout (``state``, ``param_groups``) lacks.
STATE_KEY = "numbaopt"

#: The layout of a dense tensor.
_STRIDED = torch.strided

#: ``iterations`` is an int64 in checkpoints and in the core's weights.
_ITERATIONS_LIMIT = 2**63


#: torch's name for the learning rate in a param group.
_LR = "lr"


def _plain(value: Any) -> Any:
    """A setting as a number: a tensor's (torch takes a 0-d tensor ``lr``), read at each step."""
    return value.item() if isinstance(value, torch.Tensor) else value


class TorchOptimizer(torch.optim.Optimizer):
    """Base class of ``numbaopt.torch``'s optimizers; a subclass names its ``core`` class.

    ``Adam(params, lr=1e-3, clipnorm=1.0)``: ``params`` as torch's optimizers take them
    (tensors, or a list of param group dicts with per-group hyperparameters), then the
    Keras 2.0 arguments of the core class of the same name, with the same names, defaults
    and checks (``lr`` or ``learning_rate``, ``clipnorm``, ``clipvalue``, ...).
    """

    core: ClassVar[type[CoreOptimizer]]

    def __init_subclass__(cls, core: type[CoreOptimizer] | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if core is not None:
            cls.core = core
            # help() and IDEs show params, then the core's own arguments.
            own = list(inspect.signature(core).parameters.values())
            params = inspect.Parameter("params", inspect.Parameter.POSITIONAL_OR_KEYWORD)
            cls.__signature__ = inspect.Signature([params, *(p for p in own if p.name != "device")])  # type: ignore[attr-defined, unused-ignore]

    def __init__(self, params: Iterable[Any], *args: Any, **kwargs: Any) -> None:
        if "device" in kwargs:
            raise TypeError(f"{type(self).__name__} takes no device argument: the step runs where the tensors live")
        check_torch_arguments(type(self).__name__, self.core, kwargs)
        tensors = {name: value for name, value in kwargs.items() if isinstance(value, torch.Tensor)}  # a tensor lr
        for name, value in tensors.items():
            if value.numel() != 1:
                raise ValueError(f"Tensor {name} must be 1-element")
        self._core = self.core(*args, **{**kwargs, **{name: value.item() for name, value in tensors.items()}})
        self._core.check_part_stepping()
        config = self._core.hyperparameter_values()
        # A group's keys are the core's settings a part of a step may set, with torch's
        # ``lr`` for the learning rate (torch's schedulers write it), whatever the core calls it.
        self._settable: dict[str, Hyperparameter] = {
            _LR if name == self.core.lr_name else name: self._core.settable[name] for name in self.core.part_settings()
        }
        defaults = {key: config.get(self._core_name(key), h.default) for key, h in self._settable.items()}
        # torch's ``betas`` beside Keras's beta_1 and beta_2, kept equal (``numbaopt.torch.betas``).
        self._has_betas = {"beta_1", "beta_2"} <= set(self._settable)
        for name, value in tensors.items():
            defaults[_LR if name == "learning_rate" else name] = value
        if self._has_betas:
            defaults[BETAS] = (defaults["beta_1"], defaults["beta_2"])
        self._seen_betas: list[tuple[Any, Any]] = []  # per group: (beta_1, beta_2) at the last step
        self._checked: list[tuple[tuple[Any, ...], dict[str, Any]]] = []  # per group: values seen, hyperparameters
        self._views_key: list[tuple[int, Any, Any]] = []  # what _host_views saw
        self._layout_key: list[tuple[int, Any, Any]] = []  # the parameters' memory, shapes and strides at the last step
        self._copied: list[int] = []  # the positions of those that step through working copies
        self._on_meta = False  # whether some of those are meta tensors
        self._views: list[npt.NDArray[Any]] = []
        self._view_pointers: list[int] = []
        core = self._core
        self._working = WorkingCopies(not core.phases and all(slot.shape == "element" for slot in core.slots))
        self._orders: list[Order] = []  # per parameter, the order its slots lie in (numbaopt.torch.working)
        self._shown: list[SlotState] | None = None  # each parameter's slots as tensors (_slot_tensors)
        self._shown_live = False  # whether those are views of the core's memory, or copies the next step loads
        self._meta_stepped = False
        self._own_state: defaultdict[Any, dict[Any, Any]] = defaultdict(dict)  # users' state under other keys
        self._positions: dict[int, int] = {}  # id of a parameter: its position (_position)
        super().__init__(params, defaults)

    @property  # type: ignore[override]
    def state(self) -> ParameterStates:
        """Each parameter's state (``_parameter_state``), keyed by the parameter, as torch's."""
        return ParameterStates(self._parameters, self._position, self._parameter_state, self._own_state)

    @state.setter
    def state(self, value: Mapping[Any, Any]) -> None:
        if value:  # torch's constructor sets it empty
            raise AttributeError("opt.state shows the core optimizer's state; replace it with load_state_dict")

    # ------------------------------------------------------------- param groups

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group of parameters, with its own hyperparameters (checked as the
        constructor checks them); it starts with zero slots, as a first step would."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        group = dict(param_group)
        if "learning_rate" in group:
            if "lr" in group:
                raise TypeError("a param group got both lr and learning_rate")
            group["lr"] = group.pop("learning_rate")
        if "device" in group:
            raise TypeError("a param group takes no device: the step runs where the tensors live")
        check_group_keys(type(self).__name__, self.core, self._settable, group)
        for name, value in group.items():
            if name in self._settable:
                checked = self._check(name, value)
                group[name] = value if isinstance(value, torch.Tensor) else checked
        if self._has_betas:
            join_betas(group, self.defaults, self._check, "a param group")
        before = len(self._parameters())
        super().add_param_group(group)  # torch's checks: a parameter in two groups is its ValueError
        params = self.param_groups[-1]["params"]
        if len(set(params)) != len(params):
            self.param_groups.pop()
            raise ValueError(
                "a parameter appears twice in a param group; torch.optim warns and steps it twice, numbaopt "
                "steps each parameter once: give each once"
            )
        if self._has_betas:
            added = self.param_groups[-1]
            self._seen_betas.append((added["beta_1"], added["beta_2"]))
        self._orders += [self._working.order(p) for p in params]
        self._check_shared_state()
        if before and self._core.state().slots:
            self._extend_slots(params)

    def _core_name(self, key: str) -> str:
        """The core's name for the group key ``key``."""
        return self.core.lr_name if key == _LR else key

    def _check(self, name: str, value: object) -> Any:
        """A hyperparameter value as the core takes it (None: clipping off; a one-element
        tensor: its value, as torch takes a tensor ``lr``)."""
        if value is None and name in ("clipnorm", "clipvalue"):
            return None
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ValueError(f"Tensor {name} must be 1-element")
            value = value.item()
        return self._settable[name].check(value)

    def _parameters(self) -> list[Any]:
        """Every parameter, group after group: the order of the core's slots."""
        return [p for group in self.param_groups for p in group["params"]]

    def _position(self, param: Any) -> int | None:
        """The position of ``param`` among ``_parameters()``, None if it is not one of them."""
        params = self._parameters()
        i = self._positions.get(id(param))
        if i is None or i >= len(params) or params[i] is not param:
            self._positions = {id(p): j for j, p in enumerate(params)}
            i = self._positions.get(id(param))
        return i

    def _check_shared_state(self) -> None:
        """Refuse groups that differ in a hyperparameter the shared scalar state advances with
        (the core class's ``scalar_state_advances_with``)."""
        advances_with = scalar_state_advances_with(self.core)
        for state, _ in self.core.scalar_state:
            for name in advances_with.get(state, ()):
                values = {_plain(group[name]) for group in self.param_groups}
                if len(values) > 1:
                    raise ValueError(
                        f"{type(self).__name__}'s {state} is shared by every parameter, so every param "
                        f"group needs the same {name}; got {sorted(values)}"
                    )

    def _extend_slots(self, added: list[Any]) -> None:
        """Zero slots for ``added`` parameters after those the core holds (a group added after a step)."""
        state = self._core.state()
        new = [(tuple(p.shape), self._working.core_dtype_name(p)) for p in added]
        slots = {slot.name: state.slots[slot.name] + [np.zeros(slot.shape_of(shape), slot.dtype_of(dtype)) for shape, dtype in new]
                 for slot in self._core.slots}
        core = self.core(**self._core.get_config())
        core.load_state(state._replace(slots=slots, names=None, parameters=(state.parameters or ()) + tuple(new)))
        self._set_core(core)

    def _set_core(self, core: CoreOptimizer) -> None:
        """Hold ``core`` (a new state) from now on."""
        self._core = core
        self._shown = None
        self._checked.clear()

    def _parts(self) -> list[tuple[dict[str, Any], list[int]]]:
        """Per group: its hyperparameters (checked when they changed: a scheduler writes
        ``group['lr']``) and the positions of its parameters that have a gradient."""
        parts = []
        position = 0
        del self._checked[len(self.param_groups):]
        for k, group in enumerate(self.param_groups):
            if self._has_betas:
                self._seen_betas[k] = sync_betas(group, self._seen_betas[k], k)
            values = tuple(_plain(group[name]) for name in self._settable)
            if k == len(self._checked) or self._checked[k][0] != values:
                hyper = {self._core_name(name): self._check(name, group[name]) for name in self._settable}
                hyper = {name: value for name, value in hyper.items() if value is not None}
                self._checked[k:k + 1] = [(values, hyper)]
            params = group["params"]
            parts.append((self._checked[k][1], [position + j for j, p in enumerate(params) if p.grad is not None]))
            position += len(params)
        return parts

    # ------------------------------------------------------------------ the step

    @eager  # NumPy views and Numba kernels: under torch.compile, a graph break
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override, unused-ignore]
        """One step over every parameter that has a gradient; returns ``closure()``'s loss.

        A parameter whose ``.grad`` is None is skipped: it and its slots stay as they are,
        while ``iterations`` still counts the step. Everything is checked before anything
        changes: a bad gradient raises and leaves the parameters and the state as they were.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.core.scalar_state and len(self.param_groups) > 1:
            self._check_shared_state()
        parts = self._parts()
        params = self._parameters()
        self._load_shown_state()
        key = [(p.data_ptr(), p.shape, p.stride()) for p in params]
        if key != self._layout_key:  # new memory, shapes or strides: meta tensors, or some that step through copies
            self._on_meta = any(p.is_meta for p in params)
            self._copied = [] if self._on_meta else self._working.positions(params)
            self._reorder_slots([self._working.order(p) for p in params])
            self._layout_key = key
        if self._on_meta:
            self._meta_step(params)
            return loss
        tensors, grads = self._working.stepped(params, [p.grad for p in params], self._copied)
        views = self._host_views(key, tensors)
        addresses = None if views is None else self._gradient_addresses(tensors, grads)
        if views is None or addresses is None:  # tensors as they are: the core checks and casts them
            self._core.apply_gradient_parts(grads, tensors, parts)
        else:
            self._core.apply_gradient_parts(grads, views, parts, grad_addresses=addresses)
        stepped = [i for _, at in parts for i in at]
        self._working.write_back(params, stepped)
        devices.mark_modified([params[i] for i in stepped])
        if not self._shown_live:
            self._shown = None  # the slots are bound now: shown as views from here on
        return loss

    def _reorder_slots(self, orders: list[Order]) -> None:
        """Lay the slots out in ``orders`` (parameters that changed strides since the last step)."""
        if orders == self._orders:
            return
        state = self._core.state()
        if state.slots:
            declared = self._declared()
            slots = {kind: [a if old == new else stored.host(stored.shown(a, declared[kind], old), declared[kind], new)
                            for a, old, new in zip(listed, self._orders, orders)] for kind, listed in state.slots.items()}
            self._core.load_state(state._replace(slots=slots))
        self._orders = orders
        self._shown = None

    def _meta_step(self, params: list[Any]) -> None:
        """A step over meta tensors, as torch.optim's: nothing to compute; the state shows
        meta tensors of the slots' shapes from now on."""
        if not all(p.is_meta for p in params):
            raise ValueError("some parameters are meta tensors and some are not; move all of them to one device "
                             "(module.to_empty(device=...)) before stepping")
        self._meta_stepped = True

    def _host_views(self, key: list[tuple[int, Any, Any]], tensors: list[Any]) -> list[npt.NDArray[Any]] | None:
        """NumPy views of the memory of the CPU ``tensors`` the core steps (None for others),
        kept between steps while every parameter keeps its memory, shape and strides (its
        ``key``; a working copy keeps its own memory then): making them is most of a small
        step's cost."""
        if key != self._views_key:
            if any(t.device.type != "cpu" for t in tensors):
                return None
            self._views = [devices.torch_parameter_view(t, i) for i, t in enumerate(tensors)]
            self._views_key = key
            self._view_pointers = [t.data_ptr() for t in tensors]
        return self._views

    def _gradient_addresses(self, params: list[Any], grads: list[Any]) -> npt.NDArray[np.int64] | None:
        """The gradients' data addresses (a skipped parameter's own), if every gradient is a
        dense contiguous CPU tensor of exactly its parameter's dtype and shape; else None,
        and the core reads them through the cast policy (``numbaopt.devices``)."""
        pointers = self._view_pointers.copy()
        for i, (p, g) in enumerate(zip(params, grads)):
            if g is not None:
                if not (type(g) is torch.Tensor and g.dtype is p.dtype and g.layout is _STRIDED and g.is_cpu
                        and g.shape == p.shape and g.is_contiguous() and not g.is_neg()):
                    return None  # a negative view's memory holds the negated values: read resolved by the core
                pointers[i] = g.data_ptr()
        return np.array(pointers, np.int64)

    def __getstate__(self) -> dict[str, Any]:
        """What ``pickle`` and ``copy.deepcopy`` keep: the core with its state, the groups and
        the settings, but not the hooks (torch's own drops them too) nor what the next step
        makes anew for the tensors it then has: views of their memory, working copies."""
        self._load_shown_state()  # writes into opt.state before the first step are the state
        state = {k: v for k, v in self.__dict__.items() if not k.startswith("_optimizer_")}
        state.update(_views_key=[], _views=[], _view_pointers=[], _layout_key=[], _copied=[], _on_meta=False,
                     _working=WorkingCopies(self._working.element_wise), _shown=None, _positions={})
        return state

    @property
    def iterations(self) -> int:
        """The number of steps applied so far."""
        return self._core.iterations

    # ----------------------------------------------------------------- the state

    def _parameter_state(self, i: int) -> dict[str, Any]:
        """Parameter ``i``'s state as ``opt.state[p]`` and ``state_dict()["state"][i]`` show
        it: its slots by the core's names, tensors of the core's memory (empty before the
        first step). A dialect with torch.optim's layout overrides it and ``_checked_core``."""
        shown = self._slot_tensors()
        return shown[i] if i < len(shown) else {}

    def _slot_tensors(self) -> list[SlotState]:
        """Each parameter's slots as tensors: views of the core's slot memory once the slots
        are bound (the first step); before, copies that the next step loads into the core,
        so a write into either is the next step's state."""
        if self._shown is None:
            declared = self._declared()
            # 8-bit slots: their blocks, copies (a view of the codes alone would lack the scales)
            views = None if any(slot.dtype == "q8" for slot in self._core.slots) else self._core.slot_views()
            if views is not None:
                n = len(next(iter(views.values()), []))
                self._shown = [SlotState({kind: stored.shown(listed[i], declared[kind], self._orders[i]) for kind, listed in views.items()})
                               for i in range(n)]
            else:
                state = self._core.state()
                n = len(next(iter(state.slots.values()), []))
                if not n and self._meta_stepped:
                    self._shown = self._meta_slots()
                    return self._shown
                self._shown = [SlotState({kind: stored.shown(listed[i], declared[kind], self._orders[i])
                                          for kind, listed in state.slots.items()}) for i in range(n)]
            self._shown_live = views is not None
        return self._shown

    def _declared(self) -> dict[str, Slot]:
        """The core's slot declarations by name."""
        return {slot.name: slot for slot in self._core.slots}

    def _meta_slots(self) -> list[SlotState]:
        """The slots of meta parameters: meta tensors of their shapes and dtypes."""
        return [SlotState({slot.name: torch.empty(slot.shape_of(tuple(p.shape)), dtype=slot_dtype(p), device="meta")
                           for slot in self._core.slots}) for p in self._parameters()]

    def _load_shown_state(self) -> None:
        """Load the slots shown before the first step (and maybe written) into the core."""
        if self._shown is None or self._shown_live or self._meta_stepped or not self._shown:
            return
        state = self._core.state()
        declared = self._declared()
        slots = {kind: [stored.host(entry[kind], declared[kind], order) for entry, order in zip(self._shown, self._orders)]
                 for kind in state.slots}
        self._core.load_state(state._replace(slots=slots))
        self._shown = None

    @eager
    def state_dict(self) -> dict[str, Any]:
        """torch's layout: ``state`` (each parameter's state by index, ``_parameter_state``:
        the tensors ``opt.state`` holds, empty before the first step) and ``param_groups``
        (settings, ``params`` as index lists), plus ``numbaopt``: the class name,
        ``iterations``, the scalar state and the format of 8-bit codes. Tensors, numbers
        and strings only, so ``torch.load`` reads it with ``weights_only=True``. The state dict hooks run as
        torch's run them."""
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        params = self._parameters()
        entries = {i: dict(self._parameter_state(i)) for i in range(len(params))}
        slots = {i: entry for i, entry in entries.items() if entry}
        groups, position = [], 0
        for group in self.param_groups:
            n = len(group["params"])
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": list(range(position, position + n))})
            position += n
        state_dict = {"state": slots, "param_groups": groups, **self._own_entry()}
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def _own_entry(self) -> dict[str, Any]:
        """What a state dict holds beside torch's layout: ``numbaopt``, the class name,
        ``iterations``, the scalar state, and ``codes``: the checkpoint format whose codes
        8-bit slots hold (``quantization.FORMAT``), so that a later numbaopt converts them."""
        return {STATE_KEY: {"class_name": registry.qualified_name(self.core), "iterations": self._core.iterations,
                            "scalar_state": dict(self._core.state().scalars) if self.core.scalar_state else {},
                            "codes": quantization.FORMAT}}

    @eager
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Resume from ``state_dict()``'s output, bitwise. Everything is checked first (the
        class, the number of groups and parameters, every slot's shape and dtype, every
        hyperparameter, ``iterations``); a mismatch raises and changes nothing. The load
        hooks run as torch's run them (a pre-hook may return the state dict to load)."""
        state_dict = dict(state_dict)  # a shallow copy, as torch's
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        groups, core = self._checked_core(state_dict)
        for group, saved in zip(self.param_groups, groups):
            group.update(saved)
        self._set_core(core)
        self._orders = [self._working.order(p) for p in self._parameters()]
        self._meta_stepped = False
        self._seen_betas = [(g["beta_1"], g["beta_2"]) for g in self.param_groups] if self._has_betas else []
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _checked_core(self, state_dict: Mapping[str, Any]) -> tuple[list[dict[str, Any]], CoreOptimizer]:
        """The param groups' new values and a core holding the state, from a checked ``state_dict``."""
        name = type(self).__name__
        if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(state_dict):
            raise ValueError(f"{name}.load_state_dict takes a state dict with 'state' and 'param_groups'")
        own = state_dict.get(STATE_KEY)
        if not isinstance(own, Mapping):
            raise ValueError(
                f"{name}.load_state_dict: the state dict has no {STATE_KEY!r} entry, so it is not from a "
                "numbaopt.torch optimizer (a torch.optim state dict keeps other state)"
            )
        if own.get("class_name") != registry.qualified_name(self.core):
            raise ValueError(f"{name}.load_state_dict: the state dict is of {own.get('class_name')!r}, "
                             f"not {registry.qualified_name(self.core)}")
        iterations = own.get("iterations")
        if isinstance(iterations, bool) or not isinstance(iterations, int) or not 0 <= iterations < _ITERATIONS_LIMIT:
            raise ValueError(f"{name}.load_state_dict: iterations must be an integer from 0 to 2**63 - 1, got {iterations!r}")
        scalars = own.get("scalar_state")
        expected = [s for s, _ in self.core.scalar_state]
        if not isinstance(scalars, Mapping) or sorted(scalars) != sorted(expected):
            raise ValueError(f"{name}.load_state_dict: scalar_state must hold {expected}, got {scalars!r}")
        for key, value in scalars.items():
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"{name}.load_state_dict: scalar state {key} must be a finite number, got {value!r}")
        codes = own.get("codes", quantization.FORMAT)  # state dicts before format 5 name none
        if type(codes) is not int or codes not in (*quantization.EARLIER_FORMATS, quantization.FORMAT):
            raise ValueError(f"{name}.load_state_dict: codes must be the checkpoint format of its 8-bit codes, "
                             f"{quantization.EARLIER_FORMATS[0]} to {quantization.FORMAT}, got {codes!r} "
                             "(a later numbaopt's state dict?)")

        groups = self._checked_groups(state_dict["param_groups"])
        params = self._parameters()
        state = state_dict["state"]
        if not isinstance(state, Mapping) or (state and sorted(state) != list(range(len(params)))):
            raise ValueError(
                f"{name}.load_state_dict: 'state' must be empty (before the first step) or hold one entry "
                f"per parameter, keyed 0 to {len(params) - 1}: the optimizer has {len(params)} parameters"
            )
        slots: dict[str, list[npt.NDArray[Any]]] = {kind: [] for kind in self._core.slot_names}
        for i, p in enumerate(params if state else []):
            entry = state[i] if isinstance(state[i], Mapping) else None
            if entry is None or sorted(entry) != sorted(self._core.slot_names):
                raise ValueError(f"{name}.load_state_dict: state {i} must hold {list(self._core.slot_names)}")
            for slot in self._core.slots:
                array = stored.slot_array(entry[slot.name], p, slot, f"{name}.load_state_dict: state {i} {slot.name}", codes)
                slots[slot.name].append(stored.laid_out(array, slot, self._working.order(p)))
        parameters = tuple((tuple(p.shape), self._working.core_dtype_name(p)) for p in params) if state else None
        core = self.core(**self._core.get_config())
        core.load_state(OptimizerState(iterations, {s: float(scalars[s]) for s in expected}, slots if state else {},
                                       parameters=parameters))
        return groups, core

    def _checked_groups(self, saved_groups: Any) -> list[dict[str, Any]]:
        """The param groups' saved values (``params`` aside), each setting checked."""
        name = type(self).__name__
        if not isinstance(saved_groups, list) or len(saved_groups) != len(self.param_groups):
            count = len(saved_groups) if isinstance(saved_groups, list) else saved_groups
            raise ValueError(f"{name}.load_state_dict: {count} param groups saved, the optimizer has {len(self.param_groups)}")
        groups = []
        for k, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if not isinstance(saved, Mapping) or len(saved.get("params", ())) != len(group["params"]):
                raise ValueError(
                    f"{name}.load_state_dict: param group {k} was saved with "
                    f"{len(saved.get('params', ())) if isinstance(saved, Mapping) else '?'} parameters, "
                    f"it has {len(group['params'])}"
                )
            values = {key: value for key, value in saved.items() if key != "params"}
            for key in self._settable:
                if key not in values:
                    raise ValueError(f"{name}.load_state_dict: param group {k} has no {key}")
                checked = self._check(key, values[key])
                values[key] = values[key] if isinstance(values[key], torch.Tensor) else checked
            if self._has_betas:
                values.setdefault(BETAS, (values["beta_1"], values["beta_2"]))
                join_betas(values, self.defaults, self._check, f"{name}.load_state_dict: param group {k}")
            groups.append(values)
        return groups

    def shared_config(self) -> dict[str, Any]:
        """The core's config for every group: a numbaopt checkpoint holds one config, so
        param groups that differ in a hyperparameter cannot be saved in one (ValueError)."""
        base = self._core.get_config()
        configs = [{**base, **hyper} for hyper, _ in self._parts()]
        if any(config != configs[0] for config in configs):
            different = sorted({k for config in configs for k in config if config.get(k) != configs[0].get(k)})
            raise ValueError(
                f"the param groups differ in {different}; a numbaopt checkpoint holds one config "
                "(save the state_dict() with torch.save instead)"
            )
        return configs[0]

    def core_optimizer(self) -> CoreOptimizer:
        """A core optimizer (NumPy API) with this one's config and a copy of its state: what
        a numbaopt checkpoint saves, and where a run can go on without torch."""
        core = self.core(**self.shared_config())
        self._load_shown_state()
        state = self._core.state()
        declared = self._declared()
        if any(slot.dtype == "q8" for slot in declared.values()) and any(order is not None for order in self._orders):
            raise ValueError("8-bit slots of parameters that step in another memory order (channels_last, transposed) "
                             "are quantized in blocks of that order; a numbaopt checkpoint keeps blocks in the "
                             "parameters' logical order: save the state_dict() with torch.save instead")
        slots = {kind: [stored.host(stored.shown(a, declared[kind], order), declared[kind], None) for a, order in zip(listed, self._orders)]
                 for kind, listed in state.slots.items()}  # in the parameters' logical order
        core.load_state(state._replace(slots=slots, names=None))
        return core

    def save_numbaopt_checkpoint(self, path: Any) -> None:
        """``numbaopt.save_optimizer(opt, path)``: the same file as from the NumPy API."""
        from numbaopt.checkpoint import save_optimizer

        save_optimizer(self.core_optimizer(), path)

