"""The step of an optimizer, which ``Optimizer`` inherits: checks, clipping, the slots
bound to the parameters, the kernels of each phase per dtype group, the iteration counter.

What it steps with comes from the declarations (``rule`` or ``phases``, ``slots``) and
from ``step_scalars``, a pure function of the hyperparameters, the step and the scalar state.
"""
from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Concatenate, ParamSpec, TypeVar

import numpy as np
import numpy.typing as npt

from numbaopt import devices, halves
from numbaopt.clipping import clip_arguments
from numbaopt.hyperparameters import SLOT_DTYPES, StepInputs
from numbaopt.phases import Phase
from numbaopt.slots import Layout, SlotStore
from numbaopt.state import Slot
from numbaopt.step_checks import checked_arrays, checked_names, listed_pairs, split_pairs

_S = TypeVar("_S", bound="Step")
_P = ParamSpec("_P")
_R = TypeVar("_R")


def locked(method: Callable[Concatenate[_S, _P], _R]) -> Callable[Concatenate[_S, _P], _R]:
    """Run ``method`` under the optimizer's lock: a step, a read or a load of the state is
    atomic with respect to the others, whichever threads call them."""

    @functools.wraps(method)
    def run_locked(self: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self._lock:
            return method(self, *args, **kwargs)

    return run_locked


class Step:
    """The step of ``numbaopt.optimizers.base.Optimizer`` (its only subclass here)."""

    slots: tuple[Slot, ...] = ()  # a class's declaration; an instance may hold its own (numbaopt.keras3)
    #: The slot storage (``slot_dtype``) the class can keep besides its declaration's: a
    #: class that updates slots outside the kernels (Keras 3's Muon) declares fewer.
    slot_dtypes: ClassVar[tuple[str, ...]] = SLOT_DTYPES
    phases: tuple[Phase, ...] = ()
    rule: Callable[..., tuple[float, ...]] | None = None
    #: Whether the kernels clip the gradients (Keras 2.0's clipnorm by the global norm, and
    #: clipvalue); Keras 3's family clips before its kernels run, as Keras 3 does.
    kernel_clipping: ClassVar[bool] = True
    _lock: threading.RLock
    _hyper: dict[str, Any]
    _fitting: set[np.dtype[Any]]
    _iterations: int
    _scalars: dict[str, float]
    _slots: SlotStore | None
    _pending_slots: dict[str, list[npt.NDArray[Any]]] | None
    _pending_origin: str
    _pending_parameters: tuple[tuple[tuple[int, ...], str], ...] | None
    _names: tuple[str, ...] | None

    @staticmethod
    def step_scalars(h: StepInputs, dtype: type[np.floating[Any]]) -> tuple[np.floating[Any] | bool, ...]:
        """The kernel's scalar arguments for a step, as values of ``dtype``: a pure function
        of the hyperparameters, the step and the scalar state (``h``, a ``StepInputs``).

        Everything that depends on the step but not on the element (decayed learning rate,
        bias corrections, schedules) is computed here once per call, in the parameters'
        dtype as Keras computes it, so float32 kernels stay in float32.
        """
        raise NotImplementedError("this optimizer does not define step_scalars; use one of the optimizers")

    @staticmethod
    def advance_scalar_state(h: StepInputs) -> dict[str, float]:
        """The extra scalar state after a step of ``h`` (Nadam's ``m_schedule``): a pure function too."""
        return {}

    @classmethod
    def stored_slots(cls, owner: str, slots: tuple[Slot, ...], phases: tuple[Phase, ...], slot_dtype: str | None) -> tuple[Slot, ...]:
        """``slots`` kept in the storage ``slot_dtype`` asks for (None: as declared), or a
        ValueError naming ``slot_dtype`` where the step cannot keep them so: one the class
        does not take (``slot_dtypes``), or 16-bit and 8-bit storage for phases (tensor
        passes over the state, factored or per-tensor slots), which read float32 or the
        parameters' dtype only."""
        if slot_dtype is None:
            return slots
        if slot_dtype not in cls.slot_dtypes:
            taken = ", ".join(repr(d) for d in cls.slot_dtypes) or "none"
            raise ValueError(f"slot_dtype={slot_dtype!r}: {owner} keeps its slots as declared (slot_dtype None); "
                             f"other storage it takes: {taken}")
        if slot_dtype in ("bfloat16", "q8") and (phases or any(slot.shape != "element" for slot in slots)):
            raise ValueError(
                f"slot_dtype={slot_dtype!r}: {owner} steps in phases over state not shaped like its parameters, "
                "which keep their slots as declared or in float32 (slot_dtype None or 'float32')"
            )
        if slot_dtype == "bfloat16":
            halves.bfloat16()  # an ImportError naming the extra, now rather than at the first step
        return tuple(slot.stored_as(slot_dtype) for slot in slots)

    def step_inputs(self, hyper: Mapping[str, Any] | None = None) -> StepInputs:
        """What this step's scalars are computed from: ``hyper`` (a param group's) or the
        optimizer's own hyperparameters, its step count and its scalar state."""
        return StepInputs(self._hyper if hyper is None else hyper, self._iterations, self._scalars)

    def apply_gradients(self, grads_and_vars: Iterable[tuple[npt.ArrayLike, Any]], names: Sequence[str] | None = None) -> None:
        """Apply one step to ``(gradient, parameter)`` pairs, updating parameters in place.

        ``names`` (optional, one distinct string per pair) names the parameters: slots
        belong to parameters by position, and names let a resumed run catch parameters
        that were renamed or reordered since the names were recorded (ValueError).
        Everything is checked before anything changes: a bad pair raises and leaves the
        parameters, the slots and ``iterations`` as they were.
        """
        self._apply_gradients(grads_and_vars, names, None)

    @locked
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

    @locked
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
        hypers: list[Mapping[str, Any] | None] = [None] if parts is None else [hyper for hyper, _ in parts]
        for hyper in hypers:
            for dtype in layout.distinct_dtypes:
                self._check_fits(halves.compute_dtype(dtype), hyper)
        layout.check_gradients(addresses)
        store = self._slots if self._slots is not None else self._create_slots(layout)
        rounding = (self._iterations, bool(self._hyper.get("stochastic_rounding")))
        grad_at = store.split(addresses)
        norm = global_norm
        clipping = self.kernel_clipping and (
            self._hyper.get("clipnorm") if parts is None else any(hyper.get("clipnorm") for hyper, _ in parts)
        )
        if norm is None and clipping:
            norm = store.global_norm(grad_at, None if stepped is None else store.chunks_of(stepped))
        arguments = [self._step_arguments(store, norm, hyper) for hyper in hypers]
        parameter_at = store.parameter_addresses()
        if parts is None and not self.phases:  # the usual step, in the fewest calls: it is per step
            rule = self.rule
            for group, params, grads, (clip, scalars) in zip(store.groups, parameter_at, grad_at, arguments[0]):
                store.run(rule, group, params, grads, clip, scalars, None, *rounding)  # type: ignore[arg-type]  # as in _launch
        else:
            for at, part_arguments in zip([None] if parts is None else [at for _, at in parts], arguments):
                self._launch(store, parameter_at, grad_at, part_arguments, at, rounding)
        if self._scalars:  # extra scalar state (Nadam's schedule) advances with the first part's settings
            self._scalars.update(self.advance_scalar_state(self.step_inputs(hypers[0])))
        self._iterations += 1

    def _launch(
        self,
        store: SlotStore,
        parameter_at: list[npt.NDArray[np.int64]],
        grad_at: list[npt.NDArray[np.int64]],
        arguments: list[tuple[tuple[Any, ...], tuple[Any, ...]]],
        at: npt.NDArray[np.intp] | None,
        rounding: tuple[int, bool] = (0, False),
    ) -> None:
        """The kernels of one part of a step (every parameter when ``at`` is None), group by
        group; ``rounding``: the step's seed and whether 16-bit parameters round
        stochastically (``SlotStore.run``)."""
        chunks = store.chunks_of(at)
        if self.phases:
            for group, params, grads, (clip, scalars), table, tensors in zip(
                store.groups, parameter_at, grad_at, arguments, chunks, store.tensors_of(at)
            ):
                store.run_phases(self.phases, group, params, grads, clip, scalars, table, tensors)
            return
        rule = self.rule
        for group, params, grads, (clip, scalars), table in zip(store.groups, parameter_at, grad_at, arguments, chunks):
            store.run(rule, group, params, grads, clip, scalars, None if at is None else table, *rounding)  # type: ignore[arg-type]  # rule is None only on the abstract base, whose step_scalars raised

    def _step_arguments(
        self, store: SlotStore, norm: float | None, hyper: Mapping[str, Any] | None = None
    ) -> list[tuple[tuple[Any, ...], tuple[Any, ...]]]:
        """The clip and step scalars of each group of ``store``, in its dtype, with ``hyper``
        (a part's) or the optimizer's own hyperparameters.

        IEEE arithmetic as in Keras: beta_2**t may underflow to zero in a long float32 run,
        and a user's np.seterr(all="raise") or warnings-as-errors must not stop that (the
        hyperparameters fit). The usual error state needs no np.errstate (microseconds).
        """
        inputs = self.step_inputs(hyper)
        try:
            return self._group_arguments(store, norm, inputs)
        except (FloatingPointError, RuntimeWarning):
            with np.errstate(all="ignore"):
                return self._group_arguments(store, norm, inputs)

    def _group_arguments(
        self, store: SlotStore, norm: float | None, inputs: StepInputs
    ) -> list[tuple[tuple[Any, ...], tuple[Any, ...]]]:
        clipnorm, clipvalue = (inputs.get("clipnorm"), inputs.get("clipvalue")) if self.kernel_clipping else (None, None)
        return [
            (clip_arguments(clipnorm, clipvalue, norm, group.compute.type), self.step_scalars(inputs, group.compute.type))
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

