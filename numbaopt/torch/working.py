"""What the core steps in place of a parameter it cannot update as it lies.

The kernels update C-contiguous float32 and float64 memory. An element-wise rule does not
care in which order it meets the elements, so a dense parameter of other strides
(``channels_last``, a transposed weight) steps where it lies, in the order of its memory: the
core gets a C-contiguous alias of that memory, and its gradient the same (its own memory
when it has the parameter's strides, a copy with them otherwise). Its slots then lie in
that order too; ``logical`` and ``in_order`` turn them to the parameter's indexing and back.
A float16 or bfloat16 CPU parameter steps in its own memory (the core's 16-bit path: the
arithmetic in float32, float32 slots unless ``slot_dtype`` says otherwise, rounded once);
one on another device, or a bfloat16 one where ml_dtypes is not installed, steps as a
float32 working copy of the same strides, rounded once back by ``copy_`` (to nearest, ties
to even), the same result. Where the rule is not element-wise (per-row, per-tensor state), or
the parameter is not dense, or has its negation bit set, it steps as a contiguous copy
written back, its slots in its logical order. Each copy is kept between steps: its memory,
and with it the step's fast path, stays the same.
"""
from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from typing import Any

import torch

#: The 16-bit parameter dtypes, whose slots are float32 by default.
HALVES = (torch.float16, torch.bfloat16)


@functools.cache
def _bfloat16_arrays() -> bool:
    """Whether NumPy can hold bfloat16 here (ml_dtypes, the bfloat16 extra)."""
    return importlib.util.find_spec("ml_dtypes") is not None


def _widened(param: torch.Tensor, native_halves: bool) -> bool:
    """Whether ``param`` steps as a float32 working copy: 16-bit, and not a CPU tensor the
    core steps in place (where its rule is element-wise; bfloat16 needs ml_dtypes)."""
    return param.dtype in HALVES and (not native_halves or param.device.type != "cpu"
                                      or (param.dtype is torch.bfloat16 and not _bfloat16_arrays()))


#: The order of a parameter's slots: its strides (its memory's order), or None (C order).
Order = tuple[int, ...] | None


def slot_dtype(param: torch.Tensor) -> torch.dtype:
    """The dtype of ``param``'s slots kept as declared (``slot_dtype`` None): float32 for 16 bits."""
    return torch.float32 if param.dtype in HALVES else param.dtype


def check_updatable(param: torch.Tensor, index: int) -> None:
    """Refuse a parameter whose elements share memory (an ``expand``-ed view): no step can
    update its elements one by one, and torch's in-place operations refuse it too."""
    shared = any(size > 1 and stride == 0 for size, stride in zip(param.shape, param.stride()))
    if shared or (param.layout is torch.strided and torch._debug_has_internal_overlap(param) == 1):
        raise ValueError(
            f"parameter {index} is an expanded or overlapping view: several of its elements share "
            "memory, so it cannot be updated element by element; pass a tensor of its own (.clone())"
        )


def _dense(shape: Sequence[int], strides: Sequence[int]) -> bool:
    """Whether a tensor of ``shape`` and ``strides`` covers one range of memory exactly once."""
    expected = 1
    for size, stride in sorted(zip(shape, strides), key=lambda dim: dim[1]):
        if size != 1:
            if stride != expected:
                return False
            expected *= size
    return True


def _c_strides(shape: Sequence[int]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def memory_view(tensor: torch.Tensor) -> torch.Tensor:
    """A C-contiguous tensor of ``tensor``'s shape over its memory (dense), in that memory's order."""
    return tensor.as_strided(tensor.shape, _c_strides(tensor.shape), tensor.storage_offset())


def logical(values: torch.Tensor, order: Order) -> torch.Tensor:
    """Slot ``values`` kept in memory ``order``, as a view indexed like its parameter."""
    return values if order is None else values.as_strided(values.shape, order, values.storage_offset())


def in_order(values: torch.Tensor, order: Order) -> torch.Tensor:
    """Slot ``values`` indexed like the parameter, as a C-contiguous tensor in memory ``order``."""
    if order is None:
        return values.contiguous()
    laid = torch.empty_strided(values.shape, order, dtype=values.dtype, device=values.device)
    return memory_view(laid.copy_(values))


class WorkingCopies:
    """The working copies and memory-order aliases of a torch optimizer's parameters, by position."""

    def __init__(self, element_wise: bool) -> None:
        self.element_wise = element_wise  # whether the core's rule may meet the elements in any order
        self._copies: dict[int, tuple[torch.Tensor | None, torch.Tensor | None]] = {}  # position: (parameter's, gradient's)

    def core_dtype(self, param: torch.Tensor) -> torch.dtype:
        """The dtype the core steps ``param`` in."""
        return torch.float32 if _widened(param, self.element_wise) else param.dtype

    def core_dtype_name(self, param: torch.Tensor) -> str:
        """``core_dtype`` as NumPy names it (``float32``)."""
        return str(self.core_dtype(param)).removeprefix("torch.")

    def _needs_copy(self, param: torch.Tensor) -> bool:
        return _widened(param, self.element_wise) or param.is_neg() or not param.is_contiguous()

    def order(self, param: torch.Tensor) -> Order:
        """The order ``param``'s slots lie in when it steps: its strides when it steps in the
        order of its memory, else None."""
        if not self.element_wise or param.is_contiguous() or param.is_neg() or not _dense(param.shape, param.stride()):
            return None
        return tuple(param.stride())

    def positions(self, params: Sequence[torch.Tensor]) -> list[int]:
        """The positions of the ``params`` that do not step as they are (checked: an
        expanded view raises); the others' copies are dropped."""
        wanted = [i for i, p in enumerate(params) if self._needs_copy(p)]
        for i in wanted:
            check_updatable(params[i], i)
        for i in set(self._copies) - set(wanted):
            del self._copies[i]
        return wanted

    def stepped(self, params: Sequence[torch.Tensor], grads: list[Any], positions: Sequence[int]) -> tuple[list[torch.Tensor], list[Any]]:
        """What the core steps for ``params`` and their ``grads``: each tensor itself, or at
        ``positions`` its memory-order alias or working copy, refreshed from it."""
        if not positions:
            return list(params), grads  # the usual case: it is per step
        tensors = list(params)
        for i in positions:
            tensors[i], grads[i] = self._stepped(i, params[i].detach(), grads[i])
        return tensors, grads

    def _stepped(self, i: int, p: torch.Tensor, g: Any) -> tuple[torch.Tensor, Any]:
        in_memory = self.order(p) is not None or (self.element_wise and p.is_contiguous() and not p.is_neg())
        work, grad_work = self._copies.get(i, (None, None))
        dtype = self.core_dtype(p)
        layout = p
        if dtype is p.dtype and in_memory:
            work = None  # the parameter's own memory
        else:
            if work is None or work.shape != p.shape or work.dtype is not dtype or work.stride() != (
                    p.stride() if in_memory else _c_strides(p.shape)) or work.device != p.device:
                work = torch.empty_like(p, dtype=dtype) if in_memory else torch.empty(p.shape, dtype=dtype, device=p.device)
            layout = work.copy_(p)
        if isinstance(g, torch.Tensor) and g.shape == p.shape and g.device == p.device:
            g = g.detach()
            same = g.dtype is dtype and g.stride() == layout.stride() and not g.is_neg()
            if not same:
                kept = dtype if g.dtype is p.dtype else g.dtype  # another dtype: the core's cast policy judges it
                if grad_work is None or grad_work.dtype is not kept or grad_work.shape != layout.shape or \
                        grad_work.stride() != layout.stride() or grad_work.device != layout.device:
                    grad_work = torch.empty_like(layout, dtype=kept)
                g = grad_work.copy_(g)
            g = memory_view(g) if in_memory else g
        self._copies[i] = (work, grad_work)
        stepped = p if work is None else work
        return (memory_view(stepped) if in_memory else stepped), g

    def write_back(self, params: Sequence[torch.Tensor], stepped: Sequence[int]) -> None:
        """Copy the stepped working copies into their parameters (rounded once to theirs)."""
        if not self._copies:
            return
        with torch.no_grad():
            for i in stepped:
                work = self._copies.get(i, (None, None))[0]
                if work is not None:
                    params[i].copy_(work)
