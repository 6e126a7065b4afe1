"""torch.optim's base optimizer on numbaopt's step: what every ``numbaopt.torch_optim`` class shares.

A module here declares torch.optim's constructor (``arguments`` in torch 2.13's order, the
names after ``*`` in ``keyword_only``), torch's argument checks (``check_settings``), the
slots and rule of each setting (``variant``), the per-parameter scalars torch keeps in
``state[p]`` (``parameter_state``: ``step``, NAdam's ``mu_product``, ASGD's ``eta`` and
``mu``) and how one step advances them (``parameter_update``), and ``step_scalars``.

torch keeps a step count per parameter (a parameter without a gradient does not advance),
so a step runs in parts of parameters whose per-parameter scalars are equal: each part's
scalars are computed once and its kernels stay plain element rules; the common case, every
count equal, is one part. The per-parameter scalars are float32, as torch keeps them when
its default dtype is float32 (``_get_scalar_dtype()``): NAdam's ``mu_product`` and ASGD's
``eta`` are rounded to float32 every step, for float64 parameters too. ``scalar_dtype=
"float64"`` (numbaopt's keyword; ``numbaopt.torch.optim`` passes it when torch's default
dtype is float64) keeps them as torch does then.

The arithmetic is torch's single-tensor path (``foreach=False``): scalars torch computes in
Python floats are computed in float64 here and cast to the parameters' dtype where torch
passes them to a tensor op; everything on tensors is in the parameters' dtype.
"""
from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import numpy as np
import numpy.typing as npt

from numbaopt.hyperparameters import DEVICE, MEMORY, Hyperparameter, StepInputs
from numbaopt.optimizers.base import Optimizer
from numbaopt.phases import Phase
from numbaopt.state import Slot, check_slots
from numbaopt.step_checks import checked_names

#: Why a setting torch accepts is refused at True: what it would change, or cannot be honoured.
REFUSED = {
    "capturable": "capturable=True keeps the step count on the device and computes the bias corrections in "
                  "tensors (other roundings); numbaopt reads the count on the host and reproduces the "
                  "single-tensor arithmetic: leave capturable=False",
    "differentiable": "differentiable=True records the step for autograd; numbaopt's step runs outside "
                      "autograd: leave differentiable=False",
    "fused": "fused=True is torch's fused kernel, whose roundings differ from the single-tensor arithmetic "
             "numbaopt reproduces (numbaopt's step is one fused pass already): leave fused None or False",
}

#: The dtypes of the per-parameter scalars (torch's ``_get_scalar_dtype()``): float32 unless
#: torch's default dtype is float64. numbaopt's keyword ``scalar_dtype`` chooses.
SCALAR_DTYPES = ("float32", "float64")


class Argument(Hyperparameter):
    """A torch.optim constructor argument: its name, torch's default and kind.

    Kinds: ``"real"`` (a number, kept as given: torch keeps an int an int in its param
    groups), ``"pair"`` (two numbers, a tuple), ``"eps_pair"`` (None or a number, then a
    number: Adafactor's ``eps``), ``"flag"`` (a bool), ``"optional_flag"`` (None or a bool:
    ``foreach``), ``"refused"`` (a bool that must be False, or None: ``REFUSED`` says why).
    torch's range checks, with its messages, are each class's ``check_settings``.
    """

    def check(self, value: object) -> Any:
        kind, name = self.kind, self.name
        if kind == "real":
            return _number(name, value)
        if kind in ("pair", "eps_pair"):
            if isinstance(value, (str, bytes)) or not isinstance(value, Iterable) or len(items := tuple(value)) != 2:
                raise TypeError(f"{name} must be a pair of numbers, got {value!r}")
            first = None if kind == "eps_pair" and items[0] is None else _number(f"{name}[0]", items[0])
            return (first, _number(f"{name}[1]", items[1]))
        if kind in ("optional_flag", "refused") and value is None:
            return None
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be a bool, got {value!r}")
        if kind == "refused" and value:
            raise ValueError(REFUSED[name])
        return bool(value)


def _number(name: str, value: object) -> Any:
    """``value`` as torch keeps it (an int stays an int; a NumPy number becomes Python's)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def at_least_zero(value: Any, message: str) -> None:
    """torch's ``if not 0.0 <= value: raise ValueError(f"{message}: {value}")``."""
    if not 0.0 <= value:
        raise ValueError(f"{message}: {value}")


def check_betas(betas: tuple[Any, Any]) -> None:
    """torch's checks of ``betas``, each in [0, 1)."""
    for index, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta parameter at index {index}: {beta}")


def lerp_weight(weight: float, dtype: type[np.floating[Any]]) -> tuple[np.floating[Any], bool, np.floating[Any]]:
    """``lerp_(end, weight)``'s scalars as torch's CPU kernel uses them: the weight in the
    tensor's dtype, whether it is small (``|w| < 0.5``: ``self + w * (end - self)``) and
    ``1 - w`` in that dtype (otherwise ``end - (end - self) * (1 - w)``)."""
    w = dtype(weight)
    return w, bool(abs(w) < 0.5), dtype(1) - w


class Variant(NamedTuple):
    """The state and update an optimizer runs with at some settings."""

    slots: tuple[Slot, ...]
    rule: Callable[..., tuple[float, ...]] | None = None
    phases: tuple[Phase, ...] = ()


#: Per-parameter scalars: name -> one value per parameter (float32 or float64).
ParameterState = dict[str, npt.NDArray[np.floating[Any]]]


#: numbaopt's keyword-only arguments after torch's: where the step runs, the dtype of the
#: per-parameter scalars, how the slots are stored and 16-bit parameters rounded.
_EXTRAS = ("device", "scalar_dtype", *(h.name for h in MEMORY))


class TorchOptimOptimizer(Optimizer):
    """Base class of ``numbaopt.torch_optim``'s optimizers: torch.optim's, on NumPy arrays."""

    family = "torch_optim"
    kernel_clipping = False
    lr_name = "lr"
    #: The class's constructor arguments in torch's order (``params`` aside).
    arguments: tuple[Argument, ...] = ()
    #: The names among ``arguments`` that torch takes by keyword only (after ``*``).
    keyword_only: tuple[str, ...] = ()
    #: The per-parameter scalars torch keeps in ``state[p]`` besides the slots, with their
    #: values before a parameter's first step; ``step`` always.
    parameter_state: ClassVar[tuple[tuple[str, float], ...]] = (("step", 0.0),)
    #: Settings torch reads from the optimizer's defaults, never from the param group.
    defaults_only: ClassVar[tuple[str, ...]] = ()
    #: Whether torch's ``state[p]`` holds ``step`` (SGD's holds only its buffer).
    torch_keeps_step: ClassVar[bool] = True
    #: Keys of torch's param groups that are not constructor arguments (AdamW's
    #: ``decoupled_weight_decay``).
    group_only: ClassVar[tuple[Argument, ...]] = ()
    #: The name bitsandbytes and torchao give this optimizer with 8-bit state, if any
    #: (``numbaopt.torch.optim.AdamW8bit``: this class at ``slot_dtype="q8"``).
    eight_bit_name: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        cls.hyperparameters = cls.arguments
        super().__init_subclass__(**kwargs)
        parameters = [
            inspect.Parameter(a.name, inspect.Parameter.KEYWORD_ONLY if a.name in cls.keyword_only
                              else inspect.Parameter.POSITIONAL_OR_KEYWORD, default=a.default)
            for a in cls.arguments
        ]
        parameters += [inspect.Parameter(extra, inspect.Parameter.KEYWORD_ONLY, default=None) for extra in _EXTRAS]
        cls.__signature__ = inspect.Signature(parameters)
        cls.settable = {h.name: h for h in cls.hyperparameters + cls.group_only + DEVICE + MEMORY}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        variant = self.variant(self._hyper)
        check_slots(type(self).__name__, variant.slots)
        self.slots = self.stored_slots(type(self).__name__, variant.slots, variant.phases, self._hyper.get("slot_dtype"))
        self.slot_names = tuple(slot.name for slot in self.slots)
        self.rule, self.phases = variant.rule, variant.phases
        self._parameter_state: ParameterState | None = None  # once the number of parameters is known
        self._uniform: tuple[dict[str, Any], ...] | None = None  # the per-parameter scalars of a step in one part
        self._common: tuple[ParameterState, dict[str, Any] | None] | None = None  # the arrays, and what they all hold

    # ----------------------------------------------------------------- arguments

    @classmethod
    def bind_arguments(cls, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """torch's constructor: positional up to ``*``, then keywords; Python's TypeErrors
        for a wrong call, torch's ValueErrors (``check_settings``) for a bad value."""
        names = [a.name for a in cls.arguments]
        positional = [name for name in names if name not in cls.keyword_only]
        where = f"{cls.__name__}.__init__()"
        if len(args) > len(positional):
            raise TypeError(f"{where} takes from 2 to {len(positional) + 2} positional arguments but {len(args) + 2} were given")
        given = dict(zip(positional, args))
        for key, value in kwargs.items():
            if key in given:
                raise TypeError(f"{where} got multiple values for argument '{key}'")
            if key not in names and key not in _EXTRAS:
                raise TypeError(f"{where} got an unexpected keyword argument '{key}'")
            given[key] = value
        hyper = {a.name: a.check(given[a.name]) if a.name in given else a.default for a in cls.arguments}
        for h in DEVICE + MEMORY:  # None is the default, absent from the config
            if given.get(h.name) is not None:
                hyper[h.name] = h.check(given[h.name])
        if given.get("scalar_dtype") not in (None, "float32"):  # in the config only when not the default
            if given["scalar_dtype"] not in SCALAR_DTYPES:
                raise ValueError(f"scalar_dtype must be one of {SCALAR_DTYPES}, got {given['scalar_dtype']!r}")
            hyper["scalar_dtype"] = given["scalar_dtype"]
        cls.check_settings(hyper)
        return hyper

    @classmethod
    def check_settings(cls, hyper: Mapping[str, Any]) -> None:
        """torch's checks of the values, in its order and with its messages (per class)."""

    def __setattr__(self, name: str, value: Any) -> None:
        # A setting assigned (opt.lr = 0.01) is checked as the constructor checks it.
        if name in type(self).settable and "_hyper" in self.__dict__:
            hyper = {**self._hyper, name: type(self).settable[name].check(value)}
            type(self).check_settings(hyper)
            self.check_variant(hyper)
        super().__setattr__(name, value)

    @classmethod
    def variant(cls, hyper: Mapping[str, Any]) -> Variant:
        """The slots and update at these settings: the class's own, unless a class says more."""
        return Variant(cls.slots, cls.rule, cls.phases)

    @classmethod
    def declared_slots(cls, config: dict[str, Any]) -> tuple[Slot, ...]:
        variant = cls.variant(cls.bind_arguments((), config))
        return cls.stored_slots(cls.__name__, variant.slots, variant.phases, config.get("slot_dtype"))

    def check_variant(self, hyper: Mapping[str, Any]) -> None:
        """Refuse settings (a param group's) whose state differs from the optimizer's: the
        slots are the optimizer's, chosen when it was built."""
        slots = self.variant(hyper).slots
        if [slot.name for slot in slots] != list(self.slot_names):
            chosen = [name for name in self.structural_settings() if hyper.get(name) != self._hyper.get(name)]
            raise ValueError(
                f"{type(self).__name__} keeps the state {list(self.slot_names)} chosen by its constructor's "
                f"settings; {', '.join(f'{n}={hyper.get(n)!r}' for n in chosen) or 'these settings'} would need "
                f"{[slot.name for slot in slots]}: build the optimizer with them"
            )

    @classmethod
    def structural_settings(cls) -> tuple[str, ...]:
        """The settings that choose the slots (named in errors): those ``variant`` reads."""
        return ()

    def get_config(self) -> dict[str, Any]:
        """torch's ``defaults``: every constructor argument as given (a pair as a tuple)."""
        return dict(self._hyper)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Any:
        """The optimizer ``get_config()`` describes (a checkpoint's JSON lists for pairs too)."""
        return cls(**config)

    @classmethod
    def part_settings(cls) -> tuple[str, ...]:
        """Every constructor argument is a param-group key, as in torch."""
        return tuple(a.name for a in cls.arguments + cls.group_only)

    @classmethod
    def torch_slot_shape(cls, slot: Slot, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """The shape torch's ``state[p][slot.name]`` has for a parameter of ``shape``, or
        None where torch keeps no such entry: factored moments keep their reduced axis
        (``[..., rows, 1]``, ``[..., 1, columns]``) and exist from two axes; a ``tensor``
        slot is numbaopt's own."""
        if slot.shape == "element":
            return tuple(shape)
        if slot.shape == "tensor" or len(shape) < 2:
            return None
        if slot.shape == "rows":
            return (*shape[:-1], 1)
        return (*shape[:-2], 1, shape[-1])

    # --------------------------------------------------- per-parameter scalars

    @staticmethod
    def parameter_update(h: StepInputs, stored: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """A parameter's scalars ``stored`` (NumPy scalars of their dtype, which every value
        is rounded to) as the step reads them, and as they are kept after it: torch's
        ``step_t += 1`` before the update, here."""
        scalar = type(stored["step"])
        during = {**stored, "step": scalar(stored["step"] + scalar(1))}
        return during, during

    def parameter_scalars(self) -> ParameterState:
        """A copy of the per-parameter scalars (``step`` ...), one value per parameter;
        empty before the first step."""
        with self._lock:
            return {} if self._parameter_state is None else {k: v.copy() for k, v in self._parameter_state.items()}

    def parameter_scalars_of(self, i: int) -> dict[str, npt.NDArray[Any]]:
        """Parameter ``i``'s per-parameter scalars as 0-d arrays (copies); empty before the
        first step."""
        with self._lock:
            held = self._parameter_state
            return {} if held is None else {k: v[i:i + 1].reshape(()).copy() for k, v in held.items()}

    def load_parameter_scalars(self, values: Mapping[str, npt.ArrayLike]) -> None:
        """Take the per-parameter scalars (``parameter_scalars``' form; empty: none yet),
        kept in their dtype if float64 (torch's at default dtype float64), else float32."""
        names = [name for name, _ in self.parameter_state]
        if not values:
            with self._lock:
                self._parameter_state = None
            return
        if sorted(values) != sorted(names):
            raise ValueError(f"{type(self).__name__} keeps the per-parameter scalars {names}, got {sorted(values)}")
        dtype = np.float64 if all(np.asarray(values[name]).dtype == np.float64 for name in names) else np.float32
        arrays: ParameterState = {name: np.array(values[name], dtype=dtype).reshape(-1) for name in names}
        if len({a.shape for a in arrays.values()}) != 1:
            raise ValueError(f"{type(self).__name__}: the per-parameter scalars have different lengths")
        steps = arrays["step"]
        if not np.all(np.isfinite(steps)) or np.any(steps < 0) or np.any(steps != np.floor(steps)):
            raise ValueError(f"{type(self).__name__}: step must hold whole numbers >= 0, got {steps}")
        with self._lock:
            self._parameter_state = arrays

    def checkpoint_arrays(self) -> dict[str, npt.NDArray[Any]]:
        """The per-parameter scalars (``parameter_state.<name>``)."""
        return {f"parameter_state.{name}": value for name, value in self.parameter_scalars().items()}

    def load_checkpoint_arrays(self, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
        unknown = [name for name in arrays if not name.startswith("parameter_state.")]
        if unknown:
            raise ValueError(f"{type(self).__name__} keeps the arrays parameter_state.*, got {sorted(arrays)}")
        self.load_parameter_scalars({name.split(".", 1)[1]: value for name, value in arrays.items()})

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_parameter_state"] = self.parameter_scalars() or None
        state["_common"] = None  # found again from the arrays
        return state

    def _stored(self, n_params: int) -> ParameterState:
        """The per-parameter scalars for a step over ``n_params`` parameters (their initial
        values before the first one: kept only if that step goes on)."""
        if self._parameter_state is None:
            dtype = np.dtype(self._hyper.get("scalar_dtype", "float32"))
            return {name: np.full(n_params, initial, dtype) for name, initial in self.parameter_state}
        held = len(self._parameter_state["step"])
        if held != n_params:
            raise ValueError(f"{type(self).__name__} holds the state of {held} parameters, got {n_params}")
        return self._parameter_state

    # ------------------------------------------------------------------ the step

    def step_inputs(self, hyper: Mapping[str, Any] | None = None) -> StepInputs:
        """``h.state``: the part's per-parameter scalars as the step reads them."""
        if hyper is None:
            assert self._uniform is not None, "a step without parts runs inside apply_gradients"
            values = {**self._hyper, "state": self._uniform[0]}
        else:
            values = {**self._hyper, **hyper, **{name: self._hyper[name] for name in self.defaults_only}}
        return StepInputs(values, self._iterations, self._scalars)

    def _common_scalars(self, stored: ParameterState) -> dict[str, Any] | None:
        """The per-parameter scalars every parameter shares (the usual case: no parameter
        was skipped), as NumPy scalars; None where they differ."""
        if self._common is not None and self._common[0] is stored:
            return self._common[1]
        if not len(stored["step"]):
            return None
        first = {name: value[0] for name, value in stored.items()}
        common = first if all(bool((value == value[0]).all()) for value in stored.values()) else None
        self._common = (stored, common) if stored is self._parameter_state else None
        return common

    def apply_gradients(self, grads_and_vars: Iterable[tuple[npt.ArrayLike, Any]], names: Sequence[str] | None = None) -> None:
        """One step over ``(gradient, parameter)`` pairs, the parameters updated in place:
        torch's ``step()`` with every parameter given a gradient."""
        pairs = list(grads_and_vars)
        if not pairs:
            super().apply_gradients(pairs, names)  # its error for an empty step
            return
        with self._lock:
            stored = self._stored(len(pairs))
            common = self._common_scalars(stored)
            if common is None:  # counts differ (after steps by parts): one part per count
                checked = checked_names(names, len(pairs), self._names)
                self._apply_parts([g for g, _ in pairs], [p for _, p in pairs], [(self._hyper, range(len(pairs)))])
                if checked is not None:
                    self._names = checked
                return
            during, after = self.parameter_update(StepInputs(self._hyper, self._iterations, self._scalars), common)
            self._uniform = (during, after)
            try:
                super().apply_gradients(pairs, names)
            finally:
                self._uniform = None
            self._keep({name: np.full(len(pairs), after[name], stored[name].dtype) for name in stored}, after)

    def apply_shard(self, grads_and_vars: Iterable[tuple[Any, Any]], global_norm: float | None) -> None:
        """Refused: a shard of a step (``ShardedOptimizer``) would split parameters whose
        step counts numbaopt keeps per parameter, which the sharded step does not carry."""
        raise TypeError(f"{type(self).__name__} keeps torch's step count per parameter, which numbaopt.distributed "
                        "does not shard: step it whole")

    def apply_gradient_parts(self, grads: Sequence[Any], params: Sequence[Any], parts: Sequence[tuple[Mapping[str, Any], Sequence[int]]],
                             *, grad_addresses: npt.NDArray[np.int64] | None = None) -> None:
        """A step by parts (torch's param groups, parameters without a gradient skipped):
        each part split further by its parameters' per-parameter scalars."""
        with self._lock:
            self._apply_parts(grads, params, parts, grad_addresses)

    def _keep(self, arrays: ParameterState, common: dict[str, Any] | None) -> None:
        """The per-parameter scalars after a step, and the values they all share (or None)."""
        self._parameter_state = arrays
        self._common = (arrays, common)

    def _apply_parts(self, grads: Sequence[Any], params: Sequence[Any], parts: Sequence[tuple[Mapping[str, Any], Sequence[int]]],
                     grad_addresses: npt.NDArray[np.int64] | None = None) -> None:
        stored = self._stored(len(params))
        common = self._common_scalars(stored)
        names = list(stored)
        structural = self.structural_settings()
        split: list[tuple[Mapping[str, Any], list[int]]] = []
        kept: list[tuple[list[int], dict[str, Any]]] = []
        for hyper, at in parts:
            full = {**self._hyper, **hyper}
            if any(full.get(name) != self._hyper.get(name) for name in structural):
                self.check_variant(full)
            listed = np.asarray(at, np.intp).reshape(-1).tolist()
            if listed and (min(listed) < 0 or max(listed) >= len(params)):
                raise ValueError("apply_gradient_parts: every position must name one parameter")
            by_scalars: list[tuple[dict[str, Any], list[int]]] = []
            if common is not None:
                by_scalars = [(common, listed)] if listed else []
            else:
                table = np.stack([stored[name] for name in names], axis=1)  # one row of scalars per parameter
                grouped: dict[tuple[Any, ...], list[int]] = {}
                for i, row in zip(listed, table[listed].tolist()):
                    grouped.setdefault(tuple(row), []).append(i)
                scalar = table.dtype.type
                by_scalars = [({name: scalar(value) for name, value in zip(names, key)}, at_key) for key, at_key in grouped.items()]
            for values, at_values in by_scalars:
                during, after = self.parameter_update(StepInputs(full, self._iterations, self._scalars), values)
                split.append(({**full, "state": during}, at_values))
                kept.append((at_values, after))
        super().apply_gradient_parts(grads, params, split, grad_addresses=grad_addresses)
        if sum(len(at_values) for at_values, _ in kept) == len(params) and all(after == kept[0][1] for _, after in kept):
            shared = kept[0][1]  # every parameter stepped to the same values: the usual case
            self._keep({name: np.full(len(params), shared[name], stored[name].dtype) for name in names}, shared)
            return
        advanced = {name: value.copy() for name, value in stored.items()}
        for at_values, after in kept:
            for name in names:
                advanced[name][at_values] = after[name]
        self._keep(advanced, None)
