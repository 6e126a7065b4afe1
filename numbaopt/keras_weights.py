"""The Keras weights list: an optimizer's state as ``get_weights`` / ``set_weights`` see it.

numbaopt's list is ``[iterations, *scalar state, *slots of kind 1, *slots of kind 2, ...]``,
one slot array per parameter in parameter order. Keras 2.0's own list is shorter: it
lacks the state Keras 2.0 did not save (``iterations`` for RMSprop, Adagrad and Adadelta,
Nadam's ``m_schedule``). ``split`` recognises either form by its length; everything here
works on the class's declarations (``slot_names``, ``scalar_state``,
``keras2_iterations``) and NumPy arrays only.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from numbaopt import halves, quantization
from numbaopt.state import OptimizerState, Slot

#: ``iterations`` is saved as an int64: larger counts could not be saved or read back.
ITERATIONS_LIMIT = 2**63


def as_arrays(weights: Iterable[npt.ArrayLike]) -> list[npt.NDArray[Any]]:
    """``weights`` as a list of numeric arrays, or a TypeError naming the first bad item."""
    if isinstance(weights, (str, bytes, dict)) or not hasattr(weights, "__iter__"):
        raise TypeError(f"set_weights takes a list of arrays, got {type(weights).__name__}")
    arrays = []
    for i, w in enumerate(weights):
        try:
            a = np.asarray(w)
        except Exception as error:  # noqa: BLE001 - any conversion failure means "not an array"
            raise TypeError(f"set_weights: item {i} is not an array: {error}") from None
        if a.dtype.kind not in "biuf" and a.dtype != quantization.HOST_DTYPE and a.dtype.name != "bfloat16":
            raise TypeError(f"set_weights: item {i} has dtype {a.dtype}, not a number type")
        arrays.append(a)
    return arrays


def _class_name(cls: Any) -> str:
    """The class name of ``cls``, an optimizer class or an optimizer."""
    return str(cls.__name__ if isinstance(cls, type) else type(cls).__name__)


def build(cls: Any, state: OptimizerState) -> list[npt.NDArray[Any]]:
    """The full weights list of an ``OptimizerState`` of an optimizer ``cls`` (its class, or
    the optimizer itself where its slots depend on its settings, as in ``numbaopt.keras3``)."""
    weights = [np.array(state.iterations, dtype=np.int64)]
    weights += [np.array(state.scalars[name], dtype=np.float64) for name, _ in cls.scalar_state]
    shapes = [tuple(shape) for shape, _ in state.parameters] if state.parameters is not None else None
    for slot in cls.slots:
        arrays = state.slots.get(slot.name, [])
        weights += [_as_values(slot, a, shapes[i] if shapes else None) for i, a in enumerate(arrays)]
    return weights


def values(cls: Any, state: OptimizerState) -> OptimizerState:
    """``state`` with every slot as its values (``build``'s view): float32 for bfloat16 and
    8-bit storage. What Keras files hold, whose optimizer variables are float arrays."""
    shapes = [tuple(shape) for shape, _ in state.parameters] if state.parameters is not None else None
    slots = {slot.name: [_as_values(slot, a, shapes[i] if shapes else None) for i, a in enumerate(state.slots[slot.name])]
             for slot in cls.slots if slot.name in state.slots}
    return state._replace(slots=slots)


def _as_values(slot: Slot, array: npt.NDArray[Any], shape: tuple[int, ...] | None) -> npt.NDArray[Any]:
    """A slot's host array as the Keras list shows it: its values, float32 for bfloat16 and
    8-bit storage (dequantized; without the parameter's shape, flat, padding included)."""
    if slot.dtype == "q8":
        return quantization.dequantize(array, shape if shape is not None else (array.size * quantization.BLOCK,), slot.sign)
    if slot.dtype == "bfloat16":
        return array.astype(np.float32)
    return array


def stored(cls: Any, slot_lists: dict[str, list[npt.NDArray[Any]]]) -> dict[str, list[npt.NDArray[Any]]]:
    """``slot_lists`` (from ``split``) with the values of slots kept in bfloat16 or 8 bits
    (float arrays, as ``build`` gives them) in that storage; arrays already in it as they are."""
    out = dict(slot_lists)
    for slot in cls.slots:
        if slot.dtype in ("bfloat16", "q8") and slot.name in out:
            out[slot.name] = [_to_storage(slot, a) for a in out[slot.name]]
    return out


def _to_storage(slot: Slot, array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    if array.dtype.kind != "f" or array.dtype == slot.dtype_of(np.float32):
        return array
    if slot.dtype == "q8":
        return quantization.quantize(array, slot.sign)
    return array.astype(halves.bfloat16())


def split(
    cls: Any, weights: list[npt.NDArray[Any]], n_params: int | None
) -> tuple[dict[str, npt.NDArray[Any]], dict[str, list[npt.NDArray[Any]]]]:
    """Cut a weights list into ``({scalar name: array}, {slot kind: [arrays]})``.

    The list is numbaopt's full one or Keras 2.0's shorter one, told apart by its length
    (and, when both fit, by whether it starts with an integer ``iterations``).
    ``n_params`` is the number of parameters the slots are bound to, or None.
    """
    n_kinds = len(cls.slot_names)
    full_scalars = 1 + len(cls.scalar_state)
    keras2_scalars = 1 if cls.keras2_iterations else 0
    candidates: list[tuple[int, list[str]]] = []
    for n_scalars, names in (
        (full_scalars, ["iterations"] + [n for n, _ in cls.scalar_state]),
        (keras2_scalars, ["iterations"] if cls.keras2_iterations else []),
    ):
        rest = len(weights) - n_scalars
        if rest < 0 or (rest % n_kinds if n_kinds else rest):  # no slot kinds (Keras 3's SGD): no slot arrays
            continue
        if n_params is not None and rest != n_params * n_kinds:
            continue
        if (n_scalars, names) not in candidates:
            candidates.append((n_scalars, names))
    if len(candidates) > 1:
        # Same remainder for both forms (RMSprop and Adagrad before the first step):
        # the full list starts with iterations, an integer scalar.
        first = weights[0] if weights else None
        full_form = first is not None and first.ndim == 0 and first.dtype.kind in "iu"
        candidates = [candidates[0] if full_form else candidates[1]]
    if not candidates:
        expected = f"{full_scalars} + {n_kinds} x (number of parameters)"
        if n_params is not None:
            expected = f"{full_scalars + n_kinds * n_params} (or the Keras 2.0 list of {keras2_scalars + n_kinds * n_params})"
        raise ValueError(f"{_class_name(cls)}.set_weights got {len(weights)} arrays, expected {expected}")
    n_scalars, names = candidates[0]
    scalars = dict(zip(names, weights[:n_scalars]))
    per_kind = (len(weights) - n_scalars) // max(n_kinds, 1)
    slot_lists = {
        kind: weights[n_scalars + k * per_kind : n_scalars + (k + 1) * per_kind]
        for k, kind in enumerate(cls.slot_names)
    }
    return scalars, slot_lists


def check_scalars(scalars: Mapping[str, npt.NDArray[Any]]) -> tuple[int | None, dict[str, float]]:
    """``(iterations or None, {name: float})`` from the scalar part of a weights list, checked."""
    iterations = None
    values: dict[str, float] = {}
    for name, value in scalars.items():
        if value.shape not in ((), (1,)):
            raise ValueError(f"set_weights: {name} must be a scalar, got shape {value.shape}")
        item = value.reshape(()).item()
        if name == "iterations":
            if isinstance(item, float) and not item.is_integer() or not 0 <= item < ITERATIONS_LIMIT:
                raise ValueError(
                    f"set_weights: iterations must be an integer from 0 to 2**63 - 1 (int64, as saved), got {item!r}"
                )
            iterations = int(item)
        else:
            if not math.isfinite(float(item)):
                raise ValueError(f"set_weights: {name} must be finite, got {item!r}")
            values[name] = float(item)
    return iterations, values


def check_unbound_slots(cls: Any, slot_lists: Mapping[str, Sequence[npt.NDArray[Any]]]) -> None:
    """Slot lists given before the first step: float arrays, one count for every kind, and
    the same shape and dtype for the kinds that ``cls`` declares alike (its ``slots``)."""
    declared = {slot.name: slot for slot in cls.slots}
    lists = list(slot_lists.items())
    if not lists:
        return
    first_kind, first = lists[0]
    for kind, arrays in lists:
        if len(arrays) != len(first):
            raise ValueError(f"set_weights: {len(arrays)} arrays of {kind}, but {len(first)} of {first_kind}")
        for i, a in enumerate(arrays):
            kept = declared[kind].dtype
            if a.dtype not in (np.float32, np.float64) and not (kept in ("bfloat16", "q8") and a.dtype == declared[kind].dtype_of(a.dtype)):
                raise TypeError(f"set_weights: {kind}[{i}] must be float32 or float64, got {a.dtype}")
    alike = [(kind, arrays) for kind, arrays in lists if declared[kind][1:] == declared[first_kind][1:]]
    for kind, arrays in alike:
        for i, a in enumerate(arrays):
            reference = alike[0][1][i]
            if a.shape != reference.shape or a.dtype != reference.dtype:
                raise ValueError(
                    f"set_weights: {kind}[{i}] has shape {a.shape} {a.dtype}, "
                    f"but {alike[0][0]}[{i}] has {reference.shape} {reference.dtype}"
                )
