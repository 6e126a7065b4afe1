"""The base class: the life of an optimizer, shared by the Keras 2.0 optimizers.

A subclass only declares (its hyperparameters, its slots, its extra scalar state, its
element ``rule``) and computes (the once-per-call scalars). The base class owns the
arguments, the step (checks, clipping, slots bound to parameters, dispatch to the
kernels, the iteration counter) and the state. The Keras weights list is
``numbaopt.keras_weights``; later Keras versions' configs are ``numbaopt.keras_config``.
"""
from __future__ import annotations

import abc
import contextlib
import difflib
import functools
import inspect
import math
import numbers
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Concatenate, NamedTuple, ParamSpec, TypeVar

import numpy as np
import numpy.typing as npt

from numbaopt import devices, keras_config, keras_weights, registry
from numbaopt.clipping import clip_arguments
from numbaopt.schedules import decayed_lr
from numbaopt.phases import ElementPass, Phase, TensorPass
from numbaopt.slots import Layout, SlotStore, check_slots_match
from numbaopt.state import OptimizerState, Slot, check_slots
from numbaopt.step_checks import checked_arrays, checked_names, listed_pairs, names_tuple, split_pairs

_O = TypeVar("_O", bound="Optimizer")


class Hyperparameter(NamedTuple):
    """A constructor argument: its Keras 2.0 name, default and valid range.

    ``kind`` is ``"nonnegative"`` (a finite float >= 0), ``"fraction"`` (a float in
    [0, 1), for the betas), ``"flag"`` (a bool) or ``"device"`` ("auto", "cpu" or "cuda").
    """

    name: str
    default: Any
    kind: str = "nonnegative"

    def check(self, value: object) -> float | bool | str:
        """``value`` as a plain float or bool, or a TypeError / ValueError naming it."""
        if self.kind == "device":
            if not isinstance(value, str) or value not in ("auto", "cpu", "cuda"):
                raise ValueError(f"{self.name} must be 'auto', 'cpu' or 'cuda', got {value!r}")
            return value
        if self.kind == "flag":
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{self.name} must be a bool, got {value!r}")
            return bool(value)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(f"{self.name} must be a real number, got {value!r}")
        try:
            value = float(value)
        except OverflowError:  # an int or Fraction beyond the float range
            raise ValueError(f"{self.name} must be finite, got a number too large for a float") from None
        if not math.isfinite(value):
            raise ValueError(f"{self.name} must be finite, got {value!r}")
        if value < 0:
            raise ValueError(f"{self.name} must be >= 0, got {value!r}")
        if self.kind == "fraction" and value >= 1:
            raise ValueError(f"{self.name} must be in [0, 1), got {value!r}")
        return value


#: Keyword arguments every optimizer accepts besides its own (Keras 2.0: clipnorm, clipvalue).
CLIPPING = (Hyperparameter("clipnorm", None), Hyperparameter("clipvalue", None))

#: Where the step runs: "auto" (where the parameters live), or "cpu" / "cuda" to force and
#: check that. In the config only when given, like the clip settings.
DEVICE = (Hyperparameter("device", None, "device"),)

#: Later Keras versions spell ``lr`` as ``learning_rate``; both name the same setting.
ALIASES = {"learning_rate": "lr"}


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _locked(method: Callable[Concatenate[Optimizer, _P], _R]) -> Callable[Concatenate[Optimizer, _P], _R]:
    """Run ``method`` under the optimizer's lock: a step, a read or a load of the state is
    atomic with respect to the others, whichever threads call them."""

    @functools.wraps(method)
    def locked(self: Optimizer, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


def _check_phases(cls: type[Optimizer]) -> None:
    """Raise unless ``cls.phases`` is a non-empty tuple of phases whose slots the kernels
    have loops for."""
    if not isinstance(cls.phases, tuple) or not cls.phases or not all(isinstance(p, (ElementPass, TensorPass)) for p in cls.phases):
        raise TypeError(f"{cls.__name__}.phases must be a non-empty tuple of ElementPass and TensorPass")
    if not 1 <= len(cls.slots) <= 4:
        raise TypeError(f"{cls.__name__}: a phased optimizer keeps 1 to 4 kinds of slots, got {len(cls.slots)}")
    if sum(slot.shape == "element" for slot in cls.slots) > 3:
        raise TypeError(f"{cls.__name__}: an element pass reads at most 3 element-shaped slots")


def _hyperparameter(name: str) -> property:
    """The attribute ``opt.<name>``: the hyperparameter's value. A clip left off has none:
    AttributeError, from ``Optimizer.__getattr__`` (which Python asks next)."""

    def value(self: Optimizer) -> Any:
        try:
            return self.__dict__["_hyper"][name]
        except KeyError:
            raise AttributeError(name) from None

    return property(value, doc=f"The hyperparameter ``{name}``; assigning it checks the value.")


class Optimizer(metaclass=abc.ABCMeta):
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
    slots: ClassVar[tuple[Slot, ...]] = ()
    slot_names: ClassVar[tuple[str, ...]] = ()  # the names of ``slots``; declaring names alone means element slots
    phases: ClassVar[tuple[Phase, ...]] = ()
    scalar_state: ClassVar[tuple[tuple[str, float], ...]] = ()
    keras2_iterations: ClassVar[bool] = True
    rule: ClassVar[Callable[..., tuple[float, ...]] | None] = None
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
        parameters += [inspect.Parameter(h.name, inspect.Parameter.KEYWORD_ONLY, default=None) for h in CLIPPING + DEVICE]
        parameters.append(inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD))
        cls.__signature__ = inspect.Signature(parameters)
        cls.settable = {h.name: h for h in cls.hyperparameters + CLIPPING + DEVICE}
        # Hyperparameters read as attributes, as in Keras (opt.lr, opt.beta_1, opt.clipnorm):
        # a property per name is read in a tenth of the time ``__getattr__`` takes (every
        # step reads several), which stays for the names a class does not declare.
        for attribute, name in [(name, name) for name in cls.settable] + list(ALIASES.items()):
            if name in cls.settable and attribute not in cls.__dict__:
                setattr(cls, attribute, _hyperparameter(name))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._lock = threading.RLock()  # see _locked; reentrant: get_weights calls state
        self._hyper = self._bind_arguments(args, kwargs)
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
    def _bind_arguments(cls, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Keras 2.0's constructor rules: positional in declared order, clip keywords, TypeError otherwise."""
        names = [h.name for h in cls.hyperparameters]
        if len(args) > len(names):
            raise TypeError(
                f"{cls.__name__} takes at most {len(names)} positional arguments "
                f"({', '.join(names)}), got {len(args)}"
            )
        given = dict(zip(names, args))
        for key, value in kwargs.items():
            name = ALIASES.get(key, key)
            if name not in names and name not in ("clipnorm", "clipvalue", "device"):
                raise TypeError(f"Unexpected keyword argument passed to optimizer {cls.__name__}: {key}")
            if name in given:
                raise TypeError(f"{cls.__name__} got multiple values for argument {name!r}")
            given[name] = value
        checked: dict[str, Any] = {}
        for h in cls.hyperparameters + CLIPPING + DEVICE:
            if h.name in given:
                checked[h.name] = h.check(given[h.name])
            elif h.default is not None:
                checked[h.name] = h.default
        return checked

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

    # ------------------------------------------------------------------ the step

    def step_scalars(self, dtype: type[np.floating[Any]]) -> tuple[np.floating[Any] | bool, ...]:
        """The kernel's scalar arguments for this call, as values of ``dtype``.

        Everything that depends on the step but not on the element (decayed learning rate,
        bias corrections, schedules) is computed here once per call, in the parameters'
        dtype as Keras computes it, so float32 kernels stay in float32.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define step_scalars; use one of the optimizers")

    def advance_scalar_state(self) -> None:
        """Update the extra scalar state after a step (Nadam's ``m_schedule``)."""

    def _decayed_lr(self, dtype: type[np.floating[Any]]) -> np.floating[Any]:
        """The learning rate of the current step after Keras 2.0's decay, in ``dtype``."""
        return decayed_lr(self.lr, self._hyper.get("decay", 0.0), self._iterations, dtype)

    def apply_gradients(self, grads_and_vars: Iterable[tuple[npt.ArrayLike, Any]], names: Sequence[str] | None = None) -> None:
        """Apply one step to ``(gradient, parameter)`` pairs, updating parameters in place.

        ``names`` (optional, one distinct string per pair) names the parameters: slots
        belong to parameters by position, and names let a resumed run catch parameters
        that were renamed or reordered since the names were recorded (ValueError).
        Everything is checked before anything changes: a bad pair raises and leaves the
        parameters, the slots and ``iterations`` as they were.
        """
        self._apply_gradients(grads_and_vars, names, None)

    @_locked
    def _apply_gradients(
        self, grads_and_vars: Iterable[tuple[npt.ArrayLike, Any]], names: Sequence[str] | None, global_norm: float | None
    ) -> None:
        """The step of ``apply_gradients``. A given ``global_norm`` is the norm clipnorm uses
        instead of these gradients' own: ``numbaopt.distributed`` steps a shard of the
        elements with the norm of all of them."""
        pairs = listed_pairs(grads_and_vars)  # keeps every array of the call alive until the end
        names = checked_names(names, len(pairs), self._names)
        # The usual step of a bound optimizer, NumPy arrays as they were, takes one compiled
        # pass; anything else (and every error) takes the per-array checks.
        bound = self._slots.layout if self._slots is not None and self._hyper.get("device") != "cuda" else None
        addresses = bound.plain_pairs(pairs) if bound is not None else None
        if bound is not None and addresses is not None:
            self._run(bound, addresses, global_norm)
        else:
            grads, params = split_pairs(pairs)
            self._step(grads, params, global_norm=global_norm)
        if names is not None:
            self._names = names

    def apply_shard(self, grads_and_vars: Iterable[tuple[npt.ArrayLike, Any]], global_norm: float | None) -> None:
        """``apply_gradients`` over a shard of a larger step (``numbaopt.distributed``): its
        clipnorm uses ``global_norm``, the norm of the whole step's gradients, instead of
        these gradients' own."""
        self._apply_gradients(grads_and_vars, None, global_norm)

    @_locked
    def apply_gradient_parts(
        self,
        grads: Sequence[Any],
        params: Sequence[Any],
        parts: Sequence[tuple[Mapping[str, Any], Sequence[int]]],
        *,
        grad_addresses: npt.NDArray[np.int64] | None = None,
    ) -> None:
        """One step in which each part's parameters step with the part's hyperparameters:
        what ``numbaopt.torch`` runs for param groups and parameters without a gradient.

        ``parts`` is a list of ``(hyperparameters, positions)``: the hyperparameters as
        ``get_config`` gives them (each value already checked by its ``Hyperparameter``),
        and the positions of their parameters in ``params``, each in one part at most. A
        parameter in no part is skipped: its gradient may be None, and it and its slots are
        not touched. As in one call of ``apply_gradients``, the clip norm is the global norm
        of every gradient of the step, ``iterations`` and the scalar state advance once
        (the scalar state with the first part's hyperparameters), and a refused call
        changes nothing. With one part holding every parameter, the result is bitwise
        ``apply_gradients``' with those hyperparameters; with some skipped, it is bitwise
        ``apply_gradients`` over the others alone.

        ``grad_addresses`` is for a caller that checked the gradients itself (torch
        tensors of exactly their parameters' dtype, shape and device, C-contiguous, in
        ``numbaopt.torch``'s step): their data addresses, one per parameter (a skipped
        one's: its parameter's). ``grads`` then only keeps that memory alive.
        """
        if len(grads) != len(params):
            raise ValueError(f"apply_gradient_parts got {len(grads)} gradients for {len(params)} parameters")
        positions = [np.asarray(at, np.intp).reshape(-1) for _, at in parts]
        listed = [i for at in positions for i in at.tolist()]
        stepped = set(listed)
        if len(stepped) != len(listed) or (stepped and (min(stepped) < 0 or max(stepped) >= len(params))):
            raise ValueError("apply_gradient_parts: every position must name one parameter, in one part at most")
        taken = np.array(listed, np.intp)
        for i in stepped:
            if grads[i] is None:
                raise ValueError(f"gradient {i} is None, but parameter {i} is in a part of the step")
        if grad_addresses is not None and grad_addresses.shape != (len(params),):
            raise ValueError(f"apply_gradient_parts got {grad_addresses.shape} gradient addresses for {len(params)} parameters")
        # A skipped parameter's gradient is its parameter itself: checked like any, never read.
        grads = [g if i in stepped else p for i, (g, p) in enumerate(zip(grads, params))]
        with_positions = [(hyper, at) for (hyper, _), at in zip(parts, positions)]
        self._step(grads, list(params), with_positions, taken, grad_addresses)

    def _step(
        self,
        grads: list[Any],
        params: list[Any],
        parts: list[tuple[Mapping[str, Any], npt.NDArray[np.intp]]] | None = None,
        stepped: npt.NDArray[np.intp] | None = None,
        grad_addresses: npt.NDArray[np.int64] | None = None,
        global_norm: float | None = None,
    ) -> None:
        """The per-array checks of a step, then the step (``_run``); for torch tensors, their
        version counters after it, so autograd sees the update as torch's own optimizers'."""
        backend = devices.backend_for(params, self._hyper.get("device", "auto"))
        originals = params if stepped is None else [params[i] for i in stepped.tolist()]
        if grad_addresses is None:
            grads, params = checked_arrays(grads, params, backend)
        else:
            params = [backend.check_parameter(p, i) for i, p in enumerate(params)]
        if self._slots is not None:
            layout = self._slots.layout
            layout.check(params, backend)
        else:
            layout = Layout(params, backend)  # checked as it is made; kept only if the step goes on
        addresses = backend.addresses(grads) if grad_addresses is None else grad_addresses  # ``grads`` keeps the memory alive
        self._run(layout, addresses, global_norm, parts, stepped)
        devices.mark_modified(originals)

    def _run(
        self,
        layout: Layout,
        addresses: npt.NDArray[np.int64],
        global_norm: float | None = None,
        parts: list[tuple[Mapping[str, Any], npt.NDArray[np.intp]]] | None = None,
        stepped: npt.NDArray[np.intp] | None = None,
    ) -> None:
        """The step over checked parameters (``layout``, with this call's addresses) and
        gradients (their ``addresses``): ``parts`` None, every parameter with the optimizer's
        own hyperparameters; else the parameters at ``stepped``, part by part. Everything
        is checked, and every scalar computed, before any kernel runs."""
        every_part: list[tuple[Mapping[str, Any] | None, npt.NDArray[np.intp] | None]] = (
            [(None, None)] if parts is None else list(parts)
        )
        for hyper, _ in every_part:
            for dtype in layout.distinct_dtypes:
                self._check_fits(dtype, hyper)
        layout.check_gradients(addresses)
        store = self._slots if self._slots is not None else self._create_slots(layout)
        grad_at = store.split(addresses)
        norm = global_norm
        if norm is None and any((self._hyper if hyper is None else hyper).get("clipnorm") for hyper, _ in every_part):
            norm = store.global_norm(grad_at, None if stepped is None else store.chunks_of(stepped))
        arguments = [self._step_arguments(store, norm, hyper) for hyper, _ in every_part]
        parameter_at = store.parameter_addresses()
        for (_, at), part_arguments in zip(every_part, arguments):
            for group, group_param_at, group_grad_at, (clip, scalars), chunks, tensors in zip(
                store.groups, parameter_at, grad_at, part_arguments, store.chunks_of(at), store.tensors_of(at)
            ):
                if self.phases:
                    store.run_phases(self.phases, group, group_param_at, group_grad_at, clip, scalars, chunks, tensors)
                else:
                    store.run(type(self).rule, group, group_param_at, group_grad_at, clip, scalars,  # type: ignore[arg-type]  # rule is None only on the abstract base, whose step_scalars raised
                              None if at is None else chunks)
        with self._swapped(every_part[0][0] or self._hyper):
            self.advance_scalar_state()
        self._iterations += 1

    @contextlib.contextmanager
    def _swapped(self, hyper: Mapping[str, Any]) -> Iterator[None]:
        """The optimizer with ``hyper`` for its hyperparameters, for ``step_scalars`` and
        ``advance_scalar_state``, which read them as attributes (a part of a step)."""
        saved = self._hyper
        self.__dict__["_hyper"] = hyper
        try:
            yield
        finally:
            self.__dict__["_hyper"] = saved

    def _step_arguments(
        self, store: SlotStore, norm: float | None, hyper: Mapping[str, Any] | None = None
    ) -> list[tuple[tuple[Any, ...], tuple[Any, ...]]]:
        """The clip and step scalars of each group of ``store``, in its dtype, with ``hyper``
        (a part's) or the optimizer's own hyperparameters.

        IEEE arithmetic as in Keras: beta_2**t may underflow to zero in a long float32 run,
        and a user's np.seterr(all="raise") or warnings-as-errors must not stop that (the
        hyperparameters fit). The usual error state needs no np.errstate (microseconds).
        """
        if hyper is not None:
            with self._swapped(hyper):
                return self._step_arguments(store, norm)
        try:
            return self._group_arguments(store, norm)
        except (FloatingPointError, RuntimeWarning):
            with np.errstate(all="ignore"):
                return self._group_arguments(store, norm)

    def _group_arguments(self, store: SlotStore, norm: float | None) -> list[tuple[tuple[Any, ...], tuple[Any, ...]]]:
        clipnorm, clipvalue = self._hyper.get("clipnorm"), self._hyper.get("clipvalue")
        return [
            (clip_arguments(clipnorm, clipvalue, norm, group.dtype.type), self.step_scalars(group.dtype.type))
            for group in store.groups
        ]

    def _check_fits(self, dtype: np.dtype[Any], hyper: Mapping[str, Any] | None = None) -> None:
        """Refuse hyperparameters beyond the largest value of the parameters' ``dtype``:
        Keras computes the step in that dtype, where they would become infinite. Checked
        once per dtype until a hyperparameter changes (it is per step); a part's own
        ``hyper`` every time."""
        if hyper is None and dtype in self._fitting:
            return
        largest = float(np.finfo(dtype).max)
        for name, value in (self._hyper if hyper is None else hyper).items():
            if type(value) is float and value > largest:
                raise ValueError(
                    f"{name}={value!r} does not fit the {np.dtype(dtype).name} parameters "
                    f"(their largest value is {largest:.4g})"
                )
        if hyper is None:
            self._fitting.add(dtype)

    def _create_slots(self, layout: Layout) -> SlotStore:
        """The slots for a first step's parameters: zeros, or the state given before it."""
        store = SlotStore.create(
            layout, self.slots, initial=self._pending_slots,
            origin=f"the first step after {self._pending_origin}",
        )
        self._slots, self._pending_slots, self._pending_parameters = store, None, None
        return store

    # ------------------------------------------------------------------- weights

    @_locked
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

    @_locked
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
            dtypes = tuple(np.dtype(dtype) for _, dtype in state.parameters)
            check_slots_match(self.slots, state.slots, shapes, dtypes, "load_state")
        self.set_weights(weights)
        if state.parameters is not None and self._slots is None and state.slots:
            self._pending_parameters = tuple((tuple(shape), str(dtype)) for shape, dtype in state.parameters)
        if state.names is not None:
            self.set_parameter_names(state.names)

    @_locked
    def set_parameter_names(self, names: Sequence[str]) -> None:
        """Record names for the parameters the slots belong to; later named steps must match.

        Loading a checkpoint calls this; call it yourself to accept parameters that were
        renamed on purpose. Needs the slots (after a step, ``set_weights`` or a load).
        """
        if self._slots is not None:
            n_params = self._slots.n_params
        elif self._pending_slots is not None:
            n_params = len(next(iter(self._pending_slots.values())))
        else:
            raise ValueError("set_parameter_names: no parameters yet; pass names= to apply_gradients instead")
        self._names = names_tuple(names, n_params)

    @_locked
    def get_weights(self) -> list[npt.NDArray[Any]]:
        """``[iterations]``, the extra scalar state, then each slot kind for all parameters."""
        return keras_weights.build(type(self), self.state())

    @_locked
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
        scalars, slot_lists = keras_weights.split(type(self), weights, n_params)
        iterations, scalar_values = keras_weights.check_scalars(scalars)
        if self._slots is not None:
            self._slots.check_host_slots(slot_lists)
        else:
            keras_weights.check_unbound_slots(type(self), slot_lists)
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
