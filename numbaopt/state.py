"""An optimizer's state as data: what each slot is, and the one object that carries it all.

A slot is declared once, on the optimizer's class, as a ``Slot``: its name, the shape it
takes from its parameter (one value per element, per row, per column or per tensor) and
the dtype it is stored in. Everything that holds or moves state (the slot storage, the
kernels, checkpoints, the Keras weights list, ``numbaopt.torch``, ``ShardedOptimizer``,
Keras files) reads these declarations; none assumes a slot is shaped like its parameter.

``OptimizerState`` is the state's one interchange form: ``Optimizer.state()`` gives it and
``Optimizer.load_state()`` takes it; the Keras weights list is a view of it.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from numbaopt import halves, quantization

#: The shapes a slot may take from its parameter of shape ``s``:
#: ``element`` ``s``; ``rows`` ``s[:-1]`` and ``columns`` ``s[:-2] + s[-1:]`` (a factored
#: second moment, as Keras 3's and optax's Adafactor keep it; a parameter of fewer than two
#: dimensions has no rows or columns, and gets one value, shape ``()``); ``tensor`` ``()``.
SHAPES = ("element", "rows", "columns", "tensor")

#: The storage a slot may declare besides its parameter's dtype (``None``): float32,
#: bfloat16 (``numbaopt.halves``), or 8-bit block-wise quantization (``numbaopt.quantization``).
STORAGE = ("float32", "bfloat16", "q8")


class Slot(NamedTuple):
    """One kind of optimizer state, kept per parameter.

    ``shape`` is one of ``SHAPES``; ``dtype`` is None (the parameter's dtype, float32 for
    a 16-bit parameter) or one of ``STORAGE``; ``sign`` is ``"nonnegative"`` for a slot
    that never holds a negative value (a second moment), which 8-bit storage quantizes
    with a finer map of [0, 1]. How it shards over ranks follows from its shape (``shards``).
    """

    name: str
    shape: str = "element"
    dtype: str | None = None
    sign: str = "signed"

    def shape_of(self, param_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of the slot's host arrays for a parameter of ``param_shape``: one
        record per block for 8-bit storage (``quantization.HOST_DTYPE``)."""
        param_shape = tuple(param_shape)
        if self.dtype == "q8":
            return (quantization.blocks(int(np.prod(param_shape, dtype=np.int64))),)
        if self.shape == "element":
            return tuple(param_shape)
        if self.shape == "tensor" or len(param_shape) < 2:
            return ()
        if self.shape == "rows":
            return tuple(param_shape[:-1])
        return tuple(param_shape[:-2]) + tuple(param_shape[-1:])

    def dtype_of(self, param_dtype: npt.DTypeLike) -> np.dtype[Any]:
        """The dtype of the slot's host arrays for a parameter of ``param_dtype``."""
        if self.dtype is None:
            return halves.compute_dtype(param_dtype)
        if self.dtype == "bfloat16":
            return halves.bfloat16()
        return quantization.HOST_DTYPE if self.dtype == "q8" else np.dtype(self.dtype)

    def stored_as(self, dtype: str | None) -> Slot:
        """This slot kept in storage ``dtype`` (an optimizer's ``slot_dtype``), or as
        declared when None."""
        return self if dtype is None else self._replace(dtype=dtype)

    @property
    def shards(self) -> str:
        """``"elements"``: any range of elements can live on a rank of its own, as today's
        element-wise state does; ``"tensors"``: a parameter's slot lives whole on one rank
        (also an 8-bit slot, whose blocks start at its tensor's first element)."""
        return "elements" if self.shape == "element" and self.dtype != "q8" else "tensors"

    def describe(self) -> dict[str, Any]:
        """The declaration as JSON types (what checkpoints of format 3 record)."""
        described: dict[str, Any] = {"name": self.name, "shape": self.shape, "dtype": self.dtype}
        if self.dtype == "q8":  # the only storage the sign changes: older files read the same
            described["sign"] = self.sign
        return described


def check_slots(owner: str, slots: tuple[Slot, ...]) -> None:
    """Raise unless ``slots`` is a valid declaration: distinct names, known shapes and
    storage, one storage for all (a parameter group keeps its slots in one buffer)."""
    names = [slot.name for slot in slots]
    if len(set(names)) != len(names):
        raise TypeError(f"{owner} declares a slot name twice: {names}")
    for slot in slots:
        if not isinstance(slot, Slot):
            raise TypeError(f"{owner}.slots must hold numbaopt.state.Slot declarations, got {slot!r}")
        if slot.shape not in SHAPES:
            raise TypeError(f"{owner}: slot {slot.name!r} has shape {slot.shape!r}; a slot's shape is one of {SHAPES}")
        if slot.dtype is not None and slot.dtype not in STORAGE:
            raise TypeError(f"{owner}: slot {slot.name!r} has dtype {slot.dtype!r}; a slot is stored as its parameter's dtype (None) or {STORAGE}")
        if slot.sign not in quantization.SIGNS:
            raise TypeError(f"{owner}: slot {slot.name!r} has sign {slot.sign!r}; a slot's sign is one of {quantization.SIGNS}")
        if slot.dtype == "q8" and slot.shape != "element":
            raise TypeError(f"{owner}: slot {slot.name!r} is quantized (q8) but shaped {slot.shape!r}; only element slots quantize")
    if len({slot.dtype for slot in slots}) > 1:
        raise TypeError(f"{owner}: every slot must declare the same dtype (a parameter group keeps its slots in one buffer)")


def shards_by_tensor(slots: tuple[Slot, ...]) -> bool:
    """Whether state of these slots must keep each parameter's slots whole on one rank."""
    return any(slot.shards == "tensors" for slot in slots)


class OptimizerState(NamedTuple):
    """A copy of an optimizer's whole state: what ``Optimizer.state()`` gives and
    ``Optimizer.load_state()`` takes; ``get_weights`` is its Keras list view.

    ``scalars`` holds the extra scalar state by name (Nadam's ``m_schedule``); ``slots``
    maps each slot name to one array per parameter, in parameter order, each of the
    shape and dtype its ``Slot`` declares (empty before the first step); ``names`` is the
    tuple of parameter names, or None when none were given; ``parameters`` the
    ``(shape, dtype name)`` of each parameter the slots belong to, or None where unknown
    (no step yet, or state given without them).
    """

    iterations: int
    scalars: dict[str, float]
    slots: dict[str, list[npt.NDArray[Any]]]
    names: tuple[str, ...] | None = None
    parameters: tuple[tuple[tuple[int, ...], str], ...] | None = None
