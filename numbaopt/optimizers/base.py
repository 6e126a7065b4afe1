"""The base class: an optimizer's declarations, arguments, config and state.

A subclass only declares (its hyperparameters, its slots, its extra scalar state, its
element ``rule`` or its ``phases``) and computes (``step_scalars``). The base class reads
the declarations, binds and checks the arguments (``numbaopt.hyperparameters``), gives the
config and holds the state; the step is ``numbaopt.optimizers.step``, which it inherits.
The Keras weights list is ``numbaopt.keras_weights``; later Keras versions' configs are
``numbaopt.keras_config``.
"""
from __future__ import annotations

import abc
import difflib
import inspect
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np
import numpy.typing as npt

from numbaopt import halves, keras_config, keras_weights, registry
from numbaopt.hyperparameters import (
    ALIASES,
    CLIPPING,
    DEVICE,
    MEMORY,
    Hyperparameter,
    StepInputs,
    bind_arguments,
    hyperparameter_property,
)
from numbaopt.optimizers.step import Step, locked
from numbaopt.phases import ElementPass, Phase, TensorPass
from numbaopt.slots import SlotStore, check_slots_match
from numbaopt.state import OptimizerState, Slot, check_slots
from numbaopt.step_checks import names_tuple

__all__ = ["ALIASES", "CLIPPING", "DEVICE", "MEMORY", "Hyperparameter", "Optimizer", "OptimizerState", "Slot", "StepInputs"]

_O = TypeVar("_O", bound="Optimizer")


def _check_phases(cls: type[Optimizer]) -> None:
    """Raise unless ``cls.phases`` is a non-empty tuple of phases whose slots the kernels
    have loops for."""
    if not isinstance(cls.phases, tuple) or not cls.phases or not all(isinstance(p, (ElementPass, TensorPass)) for p in cls.phases):
        raise TypeError(f"{cls.__name__}.phases must be a non-empty tuple of ElementPass and TensorPass")
    if not 1 <= len(cls.slots) <= 4:
        raise TypeError(f"{cls.__name__}: a phased optimizer keeps 1 to 4 kinds of slots, got {len(cls.slots)}")
    if sum(slot.shape == "element" for slot in cls.slots) > 3:
        raise TypeError(f"{cls.__name__}: an element pass reads at most 3 element-shaped slots")


class Optimizer(Step, metaclass=abc.ABCMeta):
    """Base class of the Keras 2.0 optimizers.

    Subclasses declare ``hyperparameters`` (in Keras 2.0's positional order), ``slots``
    (``numbaopt.state.Slot``: name, shape, storage, in ``get_weights`` order; or
    ``slot_names`` alone for slots shaped like their parameters), ``scalar_state`` (extra scalar state and its
    initial value), ``keras2_iterations`` (whether Keras 2.0's ``get_weights`` lists
    ``iterations``) and ``rule`` (the per-element update, a plain function of the parameter,
    the gradient, the slots and the step scalars that returns the new parameter and slots),
    and implement ``step_scalars``; or, for state of other shapes, ``phases`` instead of
    ``rule`` (``numbaopt.phases``). A class that defines its own ``rule`` or ``phases`` is
    registered (``numbaopt.registry``) under its class name.

    ``TFOptimizer`` is registered as a virtual subclass: it has the same public API but
    composes the shared step checks (``numbaopt.step_checks``) rather than inheriting.
    """

    hyperparameters: ClassVar[tuple[Hyperparameter, ...]] = ()
    slots: tuple[Slot, ...] = ()  # a class's declaration; an instance may hold its own (numbaopt.keras3)
    slot_names: tuple[str, ...] = ()  # the names of ``slots``; declaring names alone means element slots
    phases: tuple[Phase, ...] = ()
    scalar_state: ClassVar[tuple[tuple[str, float], ...]] = ()
    keras2_iterations: ClassVar[bool] = True
    family: ClassVar[str] = "keras2"  # numbaopt.registry.FAMILIES
    rule: Callable[..., tuple[float, ...]] | None = None
    # name -> Hyperparameter of what assignment may change; set per subclass
    settable: ClassVar[dict[str, Hyperparameter]] = {}
    __signature__: ClassVar[inspect.Signature]  # set per subclass (declared only: the base keeps its own)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # State declared as ``slots`` (any shape and storage), or as ``slot_names`` alone:
        # slots shaped and typed like their parameters, the common case.
        if "slots" in cls.__dict__:
            cls.slot_names = tuple(slot.name for slot in cls.slots)
        elif "slot_names" in cls.__dict__:
            cls.slots = tuple(Slot(name) for name in cls.slot_names)
        check_slots(cls.__name__, cls.slots)
        if "rule" in cls.__dict__ and "phases" in cls.__dict__:
            raise TypeError(f"{cls.__name__} declares both a rule and phases; a rule is the one-phase step")
        if "phases" in cls.__dict__:
            _check_phases(cls)
        if "rule" in cls.__dict__ or "phases" in cls.__dict__:
            registry.register(cls)
        # The signature help() and IDEs show: the declared arguments in Keras 2.0's order,
        # then the keyword-only ones every optimizer takes; ``learning_rate`` comes in kwargs.
        parameters = [
            inspect.Parameter(h.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=h.default)
            for h in cls.hyperparameters
        ]
        declared = {h.name for h in cls.hyperparameters}
        parameters += [
            inspect.Parameter(h.name, inspect.Parameter.KEYWORD_ONLY, default=None)
            for h in CLIPPING + DEVICE + MEMORY if h.name not in declared
        ]
        parameters.append(inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD))
        cls.__signature__ = inspect.Signature(parameters)
        cls.settable = {h.name: h for h in cls.hyperparameters + CLIPPING + DEVICE + MEMORY}
        # Hyperparameters read as attributes, as in Keras (opt.lr, opt.beta_1, opt.clipnorm):
        # a property per name is read in a tenth of the time ``__getattr__`` takes (every
        # step reads several), which stays for the names a class does not declare.
        for attribute, name in [(name, name) for name in cls.settable] + list(ALIASES.items()):
            if name in cls.settable and attribute not in cls.__dict__:
                setattr(cls, attribute, hyperparameter_property(name))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._lock = threading.RLock()  # see _locked; reentrant: get_weights calls state
        self._hyper = self.bind_arguments(args, kwargs)
        self.slots = self.stored_slots(type(self).__name__, self.slots, self.phases, self._hyper.get("slot_dtype"))
        self._fitting: set[np.dtype[Any]] = set()  # dtypes the hyperparameters were found to fit
        self._iterations = 0
        self._scalars = {name: float(value) for name, value in self.scalar_state}
        self._slots: SlotStore | None = None  # SlotStore once bound to parameters
        self._pending_slots: dict[str, list[npt.NDArray[Any]]] | None = None  # host arrays from set_weights before the first step
        self._pending_origin = "set_weights"  # where they came from, for error messages
        self._pending_parameters: tuple[tuple[tuple[int, ...], str], ...] | None = None  # their parameters, when known
        self._names: tuple[str, ...] | None = None  # parameter names, from a named step, set_parameter_names or a checkpoint

    # ----------------------------------------------------------------- arguments

    @classmethod
    def bind_arguments(cls, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The checked hyperparameters of a constructor call: Keras 2.0's rules here
        (``numbaopt.hyperparameters.bind_arguments``); another family binds by its own."""
        return bind_arguments(cls.__name__, cls.hyperparameters, args, kwargs)

    def __getattr__(self, name: str) -> Any:
        # Hyperparameters a subclass has under a name of its own: read as attributes too.
        hyper = self.__dict__.get("_hyper")
        if hyper is not None and name in hyper:
            return hyper[name]
        if hyper is not None and ALIASES.get(name) in hyper:
            return hyper[ALIASES[name]]
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        # Assigning a hyperparameter (opt.lr = 0.01, say, for a schedule) checks the value
        # and takes effect at the next step, as Keras's K.set_value(opt.lr, ...) does.
        # A new public attribute on one of numbaopt's optimizers, or one named like a
        # hyperparameter on a user's subclass, is a typo (opt.lrr = 0.5) that would do nothing.
        key = ALIASES.get(name, name)
        declared = type(self).settable
        if key == "slot_dtype" and "_hyper" in self.__dict__:
            raise AttributeError("slot_dtype chooses how the slots are stored; set it when constructing the optimizer")
        if key in declared and "_hyper" in self.__dict__:
            checked = declared[key].check(value)
            with self._lock:  # never in the middle of another thread's step
                self._hyper[key] = checked
                self._fitting.clear()
        elif name.startswith("_") or hasattr(type(self), name) or not self._is_typo(name):
            super().__setattr__(name, value)
        else:
            raise AttributeError(
                f"{type(self).__name__} has no hyperparameter {name!r}; "
                f"it has {', '.join(sorted(declared))} (and learning_rate for lr)"
            )

    @classmethod
    def _is_typo(cls, name: str) -> bool:
        """Whether assigning the new attribute ``name`` must be a mistake: numbaopt's classes
        have no other public attributes; a subclass may, unless named like a hyperparameter."""
        if cls.__module__.startswith("numbaopt."):
            return True
        return bool(difflib.get_close_matches(name, cls.settable, n=1, cutoff=0.8))

    def __getstate__(self) -> dict[str, Any]:
        """What ``pickle`` and ``copy.deepcopy`` keep: the whole state, with the slots as host
        arrays that bind to the parameters at the next step (on the CPU or on a GPU)."""
        with self._lock:
            state = dict(self.__dict__)
            # copy.copy keeps this dict's values: the mutable ones must not be shared.
            state["_hyper"], state["_scalars"] = dict(self._hyper), dict(self._scalars)
            state["_fitting"] = set(self._fitting)
            slots = state.pop("_slots")
            if slots is not None:
                state["_pending_slots"] = slots.host_slots()
                state["_pending_origin"] = "unpickling"
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__["_lock"] = threading.RLock()
        self.__dict__["_slots"] = None

    @property
    def iterations(self) -> int:
        """The number of steps applied so far."""
        return self._iterations

    @property
    def parameter_names(self) -> tuple[str, ...] | None:
        """The recorded parameter names (from a named step, ``set_parameter_names`` or a
        checkpoint), or None."""
        return self._names

    # -------------------------------------------------------------------- config

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments as plain JSON types; clip settings only when given."""
        return dict(self._hyper)

    @classmethod
    def from_config(cls: type[_O], config: dict[str, Any]) -> _O:
        """An optimizer built from ``get_config()``'s output (or a later Keras's config)."""
        return cls(**keras_config.keras2_arguments(cls, config))

    def checkpoint_config(self) -> dict[str, Any]:
        """What a checkpoint records to rebuild this optimizer (JSON types): its config.

        Without ``device``: where the arrays live belongs to the run, not to the state, so a
        checkpoint written from GPU state loads on the CPU and the other way round.
        """
        return {key: value for key, value in self.get_config().items() if key != "device"}

    #: The name of the learning rate among the hyperparameters (Keras 2.0's ``lr``).
    lr_name: ClassVar[str] = "lr"

    @classmethod
    def part_settings(cls) -> tuple[str, ...]:
        """The settings a part of a step may give its own values (``apply_gradient_parts``:
        a torch param group's): every setting but the device and the memory settings (the
        slots' storage, and stochastic rounding, seeded once per step), here."""
        return tuple(name for name in cls.settable if name not in ("device", "slot_dtype", "stochastic_rounding"))

    def check_part_stepping(self) -> None:
        """Raise ValueError naming a setting that steps by parts (``apply_gradient_parts``,
        as ``numbaopt.torch`` steps) would not honour: none, here."""

    @classmethod
    def declared_slots(cls, config: dict[str, Any]) -> tuple[Slot, ...]:
        """The slots an optimizer built from ``config`` keeps: ``slots``, here; a class
        whose slots depend on its settings (``numbaopt.keras3``) answers per config."""
        return cls.stored_slots(cls.__name__, cls.slots, cls.phases, config.get("slot_dtype"))

    @classmethod
    def from_checkpoint_config(cls: type[_O], config: dict[str, Any], **options: Any) -> _O:
        """The inverse of ``checkpoint_config``; ``options`` come from ``load_optimizer``."""
        if options:
            raise TypeError(f"{cls.__name__} takes no loading options, got {sorted(options)}")
        return cls.from_config(config)

    def checkpoint_arrays(self) -> dict[str, npt.NDArray[Any]]:
        """State a checkpoint stores beside the slots, as ``{name: array}`` in a fixed order.

        For state that is not one float array per parameter and slot kind, such as the
        variables of the optimizer ``TFOptimizer`` wraps: each array becomes a checksummed
        dataset in ``/arrays`` (numbers only, see ``numbaopt.checkpoint.ARRAY_DTYPES``), which
        keeps large state out of the JSON config. The Keras 2.0 optimizers have none.
        """
        return {}

    def load_checkpoint_arrays(self, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
        """Take back what ``checkpoint_arrays`` saved; ``load_optimizer`` calls it after ``set_weights``.

        Raise ValueError or TypeError for arrays this optimizer cannot use. The Keras 2.0
        optimizers keep none, so any array means the file is not one of theirs.
        """
        if arrays:
            raise ValueError(f"{type(self).__name__} keeps no checkpoint arrays, got {sorted(arrays)}")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._hyper.items())
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------- state

    @locked
    def state(self) -> OptimizerState:
        """A copy of the whole state as an ``OptimizerState``."""
        parameters = self._pending_parameters
        if self._slots is not None:
            slots = self._slots.host_slots()
            parameters = tuple(zip(self._slots.shapes, (d.name for d in self._slots.dtypes)))
        elif self._pending_slots is not None:
            slots = {k: [a.copy() for a in v] for k, v in self._pending_slots.items()}
            like = next((slot for slot in self.slots if slot.shape == "element" and slot.dtype is None), None)
            if parameters is None and like is not None:  # element slots of the parameters' dtype tell
                parameters = tuple((a.shape, a.dtype.name) for a in slots[like.name])
        else:
            slots = {}
        return OptimizerState(self._iterations, dict(self._scalars), slots, self._names, parameters)

    @locked
    def slot_views(self) -> dict[str, list[Any]] | None:
        """Every slot kind as views of the memory the kernels update (on the slots' device),
        one per parameter: what a framework shows as its live state (``numbaopt.torch``'s
        ``opt.state``). None until the slots are bound to parameters, at the first step."""
        if self._slots is None:
            return None
        return {kind: self._slots.views(kind) for kind in self._slots.slot_names}

    @locked
    def load_state(self, state: OptimizerState) -> None:
        """Take a whole ``OptimizerState`` (``state()``'s, a checkpoint's, a framework's).

        Every slot array is checked against its declaration and, once the optimizer is
        bound, against the parameters (their shapes, with ``state.parameters`` before the
        first step) before anything changes; the slots bind at the next step otherwise.
        """
        weights = [np.array(state.iterations, np.int64)]
        weights += [np.array(state.scalars[name], np.float64) for name, _ in self.scalar_state]
        for kind in self.slot_names:
            weights += list(state.slots.get(kind, []))
        if state.parameters is not None and state.slots and self._slots is None:
            shapes = tuple(tuple(shape) for shape, _ in state.parameters)
            dtypes = tuple(halves.as_dtype(dtype) for _, dtype in state.parameters)
            check_slots_match(self.slots, state.slots, shapes, dtypes, "load_state")
        self.set_weights(weights)
        if state.parameters is not None and self._slots is None and (state.slots or not self.slots):
            self._pending_parameters = tuple((tuple(shape), str(dtype)) for shape, dtype in state.parameters)
        if state.names is not None:
            self.set_parameter_names(state.names)

    @locked
    def set_parameter_names(self, names: Sequence[str]) -> None:
        """Record names for the parameters the slots belong to; later named steps must match.

        Loading a checkpoint calls this; call it yourself to accept parameters that were
        renamed on purpose. Needs the slots (after a step, ``set_weights`` or a load).
        """
        if self._slots is not None:
            n_params = self._slots.n_params
        elif self._pending_slots is not None:
            n_params = len(next(iter(self._pending_slots.values())))
        elif self._pending_parameters is not None:  # an optimizer that keeps no slots, loaded
            n_params = len(self._pending_parameters)
        else:
            raise ValueError("set_parameter_names: no parameters yet; pass names= to apply_gradients instead")
        self._names = names_tuple(names, n_params)

    def hyperparameter_values(self) -> dict[str, Any]:
        """The hyperparameters as given (checked), by name: what ``get_config`` reports,
        before a family's config rounds or renames any (Keras 3 reports its learning rate
        as the float32 it keeps)."""
        return dict(self._hyper)

    @locked
    def get_weights(self) -> list[npt.NDArray[Any]]:
        """``[iterations]``, the extra scalar state, then each slot kind for all parameters."""
        return keras_weights.build(self, self.state())

    @locked
    def set_weights(self, weights: Iterable[npt.ArrayLike]) -> None:
        """Load a ``get_weights()`` list, or the shorter Keras 2.0 list of this optimizer.

        The Keras 2.0 list lacks the state Keras 2.0 did not save (``iterations`` for
        RMSprop, Adagrad and Adadelta, Nadam's ``m_schedule``); that state is left as it is.
        The count and every shape and dtype are checked before anything changes.
        """
        weights = keras_weights.as_arrays(weights)
        n_params = self._slots.n_params if self._slots is not None else None
        if n_params is None and self._pending_slots is not None:
            n_params = len(next(iter(self._pending_slots.values())))
        scalars, slot_lists = keras_weights.split(self, weights, n_params)
        slot_lists = keras_weights.stored(self, slot_lists)
        iterations, scalar_values = keras_weights.check_scalars(scalars)
        if self._slots is not None:
            self._slots.check_host_slots(slot_lists)
        else:
            keras_weights.check_unbound_slots(self, slot_lists)
        # Nothing below can fail.
        if iterations is not None:
            self._iterations = iterations
        self._scalars.update(scalar_values)
        if self._slots is not None:
            self._slots.load_host_slots(slot_lists)
        elif slot_lists and len(next(iter(slot_lists.values()))):
            self._pending_slots = {k: [np.array(a, copy=True) for a in v] for k, v in slot_lists.items()}
            self._pending_origin, self._pending_parameters = "set_weights", None

    def set_state_origin(self, origin: object) -> None:
        """Name where the state loaded before the first step came from (``load_optimizer``
        says "loading the checkpoint PATH"): the first step's errors about it say so."""
        self._pending_origin = str(origin)
