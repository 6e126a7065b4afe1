"""Slots bound to parameters: layout, storage and the per-call kernel plumbing.

Slots belong to parameters by position. Parameters of one dtype form a group; a group
keeps all its slots in one buffer with a row per slot kind, each parameter's slots a
contiguous range of its row, and a table of chunks that splits every tensor of the group
into pieces of at most ``tuning.CHUNK_ELEMENTS`` elements. One kernel call then updates
the whole group, and the global norm sums fixed chunks in a fixed order.
"""
import threading
from operator import attrgetter
from typing import NamedTuple

import numpy as np

from numbaopt import tuning

#: One kernel launch at a time in this process. Numba's "workqueue" threading layer (the
#: fallback where neither OpenMP nor TBB is present, as on macOS wheels) aborts the process
#: when two Python threads launch parallel kernels at once; each launch already uses every
#: core, so serialising launches costs nothing but a lock.
_LAUNCH = threading.Lock()


_shape, _dtype = attrgetter("shape"), attrgetter("dtype")


class Layout:
    """The parameters an optimizer is bound to: their count, shapes, dtypes and device.

    Made at the first step (which refuses parameters that share memory); ``check`` holds
    every later step to it. Used by the slots and by ``TFOptimizer``, whose state is not
    numbaopt slots but is bound to its parameters all the same.
    """

    def __init__(self, params, backend):
        self.shapes = tuple(p.shape for p in params)
        self.dtypes = tuple(p.dtype for p in params)
        self.backend = backend
        self.n_params = len(params)
        backend.check_distinct(params)
        self.addresses = backend.addresses(params)  # of the parameters of the current call
        self._distinct_at = self.addresses.tobytes()  # of the last parameters found not to overlap

    def check(self, params, backend):
        """Raise unless ``params`` have the bound count, shapes, dtypes and device."""
        if backend is not self.backend:
            raise ValueError(f"the slots live on {self.backend.name}, but the parameters are on {backend.name}")
        if len(params) != self.n_params:
            raise ValueError(f"apply_gradients got {len(params)} parameters, but the slots were made for {self.n_params}")
        # One C-level pass when all is well (every step), the loop only to name a mismatch.
        same = tuple(map(_shape, params)) == self.shapes and tuple(map(_dtype, params)) == self.dtypes
        for i, p in enumerate(() if same else params):
            if p.shape != self.shapes[i]:
                raise ValueError(f"parameter {i} has shape {p.shape}, but its slots have shape {self.shapes[i]}")
            if p.dtype != self.dtypes[i]:
                raise TypeError(f"parameter {i} has dtype {p.dtype}, but its slots have dtype {self.dtypes[i]}")
        # The sizes are bound, so parameters at the addresses already found distinct still are.
        # The addresses serve the kernels of this call too.
        addresses = backend.addresses(params)
        if addresses.tobytes() != self._distinct_at:  # bytes compare in one C call
            backend.check_distinct(params)
            self._distinct_at = addresses.tobytes()
        self.addresses = addresses


class ParamGroup(NamedTuple):
    """The parameters of one dtype: their positions in the call and their slots."""

    dtype: np.dtype
    positions: np.ndarray  # positions of the group's parameters in the call
    offsets: np.ndarray  # int64: where each parameter's slots start in a row of ``slots``
    chunks: np.ndarray  # int64 (n_chunks, 3): tensor (within the group), start, stop
    slots: object  # (n_kinds, total elements) array on the group's device


def _chunk_table(sizes, chunk):
    rows = [(j, start, min(start + chunk, size)) for j, size in enumerate(sizes) for start in range(0, size, chunk)]
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


class SlotStore:
    """The slots of an optimizer bound to its parameters (a ``Layout``)."""

    def __init__(self, layout, slot_names, groups):
        self.layout = layout
        self.slot_names = slot_names
        self.groups = groups
        self.backend = layout.backend
        self.shapes, self.dtypes, self.n_params = layout.shapes, layout.dtypes, layout.n_params

    @classmethod
    def create(cls, params, slot_names, backend, initial=None):
        """Zero slots for ``params``, or ``initial`` (host arrays from set_weights) once checked."""
        shapes = tuple(p.shape for p in params)
        dtypes = tuple(p.dtype for p in params)
        if initial is not None:
            _check_slots_match(initial, shapes, dtypes, "the slots given to set_weights")
        layout = Layout(params, backend)
        groups = []
        for dtype in dict.fromkeys(dtypes):
            positions = np.array([i for i, d in enumerate(dtypes) if d == dtype], np.intp)
            sizes = [int(np.prod(shapes[i], dtype=np.int64)) for i in positions]
            offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)[:-1]]).astype(np.int64)
            slots = backend.zeros((len(slot_names), int(sum(sizes))), dtype)
            chunks = _chunk_table(sizes, tuning.CHUNK_ELEMENTS)
            groups.append(ParamGroup(dtype, positions, offsets, chunks, slots))
        store = cls(layout, slot_names, groups)
        if initial is not None:
            store.load_host_slots(initial)
        return store

    # ---------------------------------------------------------------- checking

    def check_parameters(self, params, backend):
        """Raise unless ``params`` have the bound count, shapes, dtypes and device."""
        self.layout.check(params, backend)

    def check_host_slots(self, slot_lists):
        _check_slots_match(slot_lists, self.shapes, self.dtypes, "set_weights")

    # ------------------------------------------------------------------- views

    def _views(self, kind):
        """Per-parameter views (on the device) of slot kind ``kind``, in parameter order."""
        k = self.slot_names.index(kind)
        views = [None] * self.n_params
        for group in self.groups:
            for j, i in enumerate(group.positions.tolist()):
                size = int(np.prod(self.shapes[i], dtype=np.int64))
                start = int(group.offsets[j])
                views[i] = group.slots[k, start : start + size].reshape(self.shapes[i])
        return views

    def host_slots(self):
        """Every slot as a host copy: ``{kind: [array per parameter]}``."""
        return {kind: [self.backend.to_host(v) for v in self._views(kind)] for kind in self.slot_names}

    def load_host_slots(self, slot_lists):
        """Overwrite every slot from host arrays (already checked)."""
        for kind in self.slot_names:
            for view, source in zip(self._views(kind), slot_lists[kind]):
                self.backend.copy_from_host(view, np.asarray(source, dtype=view.dtype))

    # ------------------------------------------------------------------- a call

    def grouped_addresses(self, arrays):
        """The data addresses of one call's arrays (one per parameter), split by group."""
        return self._split(self.backend.addresses(arrays))

    def parameter_addresses(self):
        """The parameters' addresses, split by group, as the check of this call found them."""
        return self._split(self.layout.addresses)

    def _split(self, addresses):
        if len(self.groups) == 1:
            return [addresses]  # one dtype: the group holds every parameter, in order
        return [addresses[group.positions] for group in self.groups]

    def global_norm(self, grad_addresses):
        """``sqrt(sum of squares)`` over all gradients, the same for any thread count."""
        total = 0.0
        for group, addresses in zip(self.groups, grad_addresses):
            partial_sums = self.backend.zeros(len(group.chunks), np.float64)
            with _LAUNCH:
                self.backend.kernels.sum_of_squares(addresses, group.chunks, group.slots, partial_sums)
            total += self.backend.sum(partial_sums)
        return float(np.sqrt(total))

    def run(self, rule, group, param_addresses, grad_addresses, clip, scalars):
        """One step of the element ``rule`` over every tensor of ``group``."""
        step = self.backend.kernels.update_kernel(rule, len(self.slot_names))
        with _LAUNCH:
            step(param_addresses, grad_addresses, group.slots, group.offsets, group.chunks, clip, scalars)


def _check_slots_match(slot_lists, shapes, dtypes, where):
    for kind, arrays in slot_lists.items():
        if len(arrays) != len(shapes):
            raise ValueError(f"{where}: {len(arrays)} arrays for slot {kind!r}, expected {len(shapes)} (one per parameter)")
        for i, a in enumerate(arrays):
            a = np.asarray(a)
            if a.shape != shapes[i]:
                raise ValueError(f"{where}: {kind}[{i}] has shape {a.shape}, expected {shapes[i]}")
            if not np.can_cast(a.dtype, dtypes[i], "same_kind") or a.dtype.kind not in "fiu":
                raise TypeError(f"{where}: {kind}[{i}] has dtype {a.dtype}, expected {dtypes[i]}")
