"""A numbaopt optimizer as a ``torch.optim.Optimizer``: param groups, ``step``, ``state_dict``.

One core optimizer (``numbaopt.optimizers.<Same>``) holds the whole state: every
parameter's slots, ``iterations`` and the scalar state. Each ``step`` hands it the tensors
and their gradients (NumPy views of the same memory, no copies) in one call of
``apply_gradient_parts``: one part per param group with the group's hyperparameters,
parameters whose ``.grad`` is None in no part. So the arithmetic is the core's, bitwise:
the clip norm is over every gradient of the step across groups, and ``iterations`` counts
steps.
"""
from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import torch

from numbaopt import devices, registry
from numbaopt.declarations import scalar_state_advances_with
from numbaopt.optimizers.base import Hyperparameter
from numbaopt.state import OptimizerState, Slot
from numbaopt.optimizers.base import Optimizer as CoreOptimizer

#: Keys of a state dict's own entry: what torch's layout (``state``, ``param_groups``) lacks.
STATE_KEY = "numbaopt"

#: The layout of a dense tensor.
_STRIDED = torch.strided

#: ``iterations`` is an int64 in checkpoints and in the core's weights.
_ITERATIONS_LIMIT = 2**63


#: torch's name for the learning rate in a param group.
_LR = "lr"


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
        self._core = self.core(*args, **kwargs)  # the core's checks and aliases; it holds the state
        self._core.check_part_stepping()
        config = self._core.hyperparameter_values()
        # A group's keys are the core's settings a part of a step may set, with torch's
        # ``lr`` for the learning rate (torch's schedulers write it), whatever the core calls it.
        self._settable: dict[str, Hyperparameter] = {
            _LR if name == self.core.lr_name else name: self._core.settable[name] for name in self.core.part_settings()
        }
        defaults = {key: config.get(self._core_name(key), h.default) for key, h in self._settable.items()}
        self._checked: list[tuple[tuple[Any, ...], dict[str, Any]]] = []  # per group: values seen, hyperparameters
        self._views_key: list[tuple[int, Any, Any]] = []  # what _host_views saw
        self._views: list[npt.NDArray[Any]] = []
        self._view_pointers: list[int] = []
        super().__init__(params, defaults)

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
        for name, value in group.items():
            if name in self._settable:
                group[name] = self._check(name, value)
        before = len(self._parameters())
        super().add_param_group(group)
        params = self.param_groups[-1]["params"]
        if len(set(params)) != len(params) or len(set(self._parameters())) != len(self._parameters()):
            self.param_groups.pop()
            raise ValueError("a parameter appears twice in the param groups; each must be given once")
        self._check_shared_state()
        if before and self._core.state().slots:
            self._extend_slots(params)

    def _core_name(self, key: str) -> str:
        """The core's name for the group key ``key``."""
        return self.core.lr_name if key == _LR else key

    def _check(self, name: str, value: object) -> Any:
        """A hyperparameter value as the core takes it (None: clipping off)."""
        if value is None and name in ("clipnorm", "clipvalue"):
            return None
        return self._settable[name].check(value)

    def _parameters(self) -> list[Any]:
        """Every parameter, group after group: the order of the core's slots."""
        return [p for group in self.param_groups for p in group["params"]]

    def _check_shared_state(self) -> None:
        """Refuse groups that differ in a hyperparameter the shared scalar state advances with
        (the core class's ``scalar_state_advances_with``)."""
        advances_with = scalar_state_advances_with(self.core)
        for state, _ in self.core.scalar_state:
            for name in advances_with.get(state, ()):
                values = {group[name] for group in self.param_groups}
                if len(values) > 1:
                    raise ValueError(
                        f"{type(self).__name__}'s {state} is shared by every parameter, so every param "
                        f"group needs the same {name}; got {sorted(values)}"
                    )

    def _extend_slots(self, added: list[Any]) -> None:
        """Zero slots for ``added`` parameters after those the core holds (a group added after a step)."""
        state = self._core.state()
        new = [(tuple(p.shape), devices.torch_dtype_name(p)) for p in added]
        slots = {slot.name: state.slots[slot.name] + [np.zeros(slot.shape_of(shape), slot.dtype_of(dtype)) for shape, dtype in new]
                 for slot in self._core.slots}
        core = self.core(**self._core.get_config())
        core.load_state(state._replace(slots=slots, names=None, parameters=(state.parameters or ()) + tuple(new)))
        self._core = core

    def _parts(self) -> list[tuple[dict[str, Any], list[int]]]:
        """Per group: its hyperparameters (checked when they changed: a scheduler writes
        ``group['lr']``) and the positions of its parameters that have a gradient."""
        parts = []
        position = 0
        del self._checked[len(self.param_groups):]
        for k, group in enumerate(self.param_groups):
            values = tuple(group[name] for name in self._settable)
            if k == len(self._checked) or self._checked[k][0] != values:
                hyper = {self._core_name(name): self._check(name, group[name]) for name in self._settable}
                hyper = {name: value for name, value in hyper.items() if value is not None}
                self._checked[k:k + 1] = [(values, hyper)]
            params = group["params"]
            parts.append((self._checked[k][1], [position + j for j, p in enumerate(params) if p.grad is not None]))
            position += len(params)
        return parts

    # ------------------------------------------------------------------ the step

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
        grads = [p.grad for p in params]
        views = self._host_views(params)
        addresses = None if views is None else self._gradient_addresses(params, grads)
        if views is None or addresses is None:  # tensors as they are: the core checks and casts them
            self._core.apply_gradient_parts(grads, params, parts)
        else:
            self._core.apply_gradient_parts(grads, views, parts, grad_addresses=addresses)
            devices.mark_modified([params[i] for _, at in parts for i in at])
        return loss

    def _host_views(self, params: list[Any]) -> list[npt.NDArray[Any]] | None:
        """NumPy views of CPU parameters' memory (None for others), kept between steps while
        every tensor keeps its memory, shape and strides: making them is most of a small
        step's cost."""
        key = [(p.data_ptr(), p.shape, p.stride()) for p in params]
        if key != self._views_key:
            if any(p.device.type != "cpu" for p in params):
                return None
            self._views = [devices.torch_parameter_view(p, i) for i, p in enumerate(params)]
            self._views_key = key
            self._view_pointers = [address for address, _, _ in key]
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
        """What ``pickle`` and ``copy.deepcopy`` keep: all of it (torch's own keeps only the
        groups and ``state``, which here is empty), but the views of the parameters' memory,
        which the next step makes anew for the tensors it then has."""
        state = dict(self.__dict__)
        state.update(_views_key=[], _views=[], _view_pointers=[])
        return state

    @property
    def iterations(self) -> int:
        """The number of steps applied so far."""
        return self._core.iterations

    # ----------------------------------------------------------------- the state

    def state_dict(self) -> dict[str, Any]:
        """torch's layout: ``state`` (slot tensors by parameter index, empty before the
        first step) and ``param_groups`` (hyperparameters, ``params`` as index lists), plus
        ``numbaopt``: the class name, ``iterations`` and the scalar state. Tensors, numbers
        and strings only, so ``torch.load`` reads it with ``weights_only=True``."""
        state = self._core.state()
        slots = {
            i: {kind: torch.from_numpy(state.slots[kind][i]) for kind in self._core.slot_names}
            for i in range(len(next(iter(state.slots.values()), [])))
        }
        groups, position = [], 0
        for group in self.param_groups:
            n = len(group["params"])
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": list(range(position, position + n))})
            position += n
        own = {"class_name": registry.qualified_name(self.core), "iterations": state.iterations, "scalar_state": dict(state.scalars)}
        return {"state": slots, "param_groups": groups, STATE_KEY: own}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Resume from ``state_dict()``'s output, bitwise. Everything is checked first (the
        class, the number of groups and parameters, every slot's shape and dtype, every
        hyperparameter, ``iterations``); a mismatch raises and changes nothing."""
        groups, state = self._checked_state(state_dict)
        core = self.core(**self._core.get_config())
        core.load_state(state)
        for group, saved in zip(self.param_groups, groups):
            group.update(saved)
        self._core = core
        self._checked.clear()

    def _checked_state(self, state_dict: Mapping[str, Any]) -> tuple[list[dict[str, Any]], OptimizerState]:
        """The param groups' new values and the core's state, from a checked ``state_dict``."""
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

        saved_groups = state_dict["param_groups"]
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
                values[key] = self._check(key, values[key])
            groups.append(values)

        params = self._parameters()
        state = state_dict["state"]
        if not isinstance(state, Mapping) or (state and sorted(state) != list(range(len(params)))):
            raise ValueError(
                f"{name}.load_state_dict: 'state' must be empty (before the first step) or hold one entry "
                f"per parameter, keyed 0 to {len(params) - 1}: the optimizer has {len(params)} parameters"
            )
        slots: dict[str, list[npt.NDArray[Any]]] = {kind: [] for kind in self._core.slot_names}
        for i, p in enumerate(params if state else []):
            entry = state[i]
            if not isinstance(entry, Mapping) or sorted(entry) != sorted(self._core.slot_names):
                raise ValueError(f"{name}.load_state_dict: state {i} must hold {list(self._core.slot_names)}")
            for slot in self._core.slots:
                slots[slot.name].append(_slot_array(entry[slot.name], p, slot, f"{name}.load_state_dict: state {i} {slot.name}"))
        parameters = tuple((tuple(p.shape), devices.torch_dtype_name(p)) for p in params) if state else None
        return groups, OptimizerState(iterations, {s: float(scalars[s]) for s in expected}, slots if state else {},
                                      parameters=parameters)

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
        core.load_state(self._core.state()._replace(names=None))
        return core

    def save_numbaopt_checkpoint(self, path: Any) -> None:
        """``numbaopt.save_optimizer(opt, path)``: the same file as from the NumPy API."""
        from numbaopt.checkpoint import save_optimizer

        save_optimizer(self.core_optimizer(), path)


def _slot_array(value: object, param: Any, slot: Slot, where: str) -> npt.NDArray[Any]:
    """A saved slot as a host array of the shape and exactly the dtype ``slot`` declares for ``param``."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        dtype = devices.torch_dtype_name(tensor)
        if dtype not in ("float32", "float64"):
            raise TypeError(f"{where} has dtype {dtype}; slots are float32 or float64")
        value = tensor.numpy()
    array = np.asarray(value)
    shape, kept = slot.shape_of(tuple(param.shape)), slot.dtype_of(devices.torch_dtype_name(param))
    if array.shape != shape:
        owned = "its parameter has shape" if slot.shape == "element" else f"its parameter of shape {tuple(param.shape)} keeps one of shape"
        raise ValueError(f"{where} has shape {array.shape}, but {owned} {shape}")
    if array.dtype != kept:
        owned = "its parameter has dtype" if slot.dtype is None else "it is kept as"
        raise TypeError(f"{where} has dtype {array.dtype}, but {owned} {kept.name}")
    return np.array(array, copy=True)
