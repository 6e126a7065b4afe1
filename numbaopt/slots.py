"""Slots bound to parameters: layout, storage and the per-call kernel plumbing.

Slots belong to parameters by position. Parameters of one dtype form a group; a group
keeps all its slots in one buffer with a row per slot kind, each parameter's slots a
contiguous range of its row, and a table of chunks that splits every tensor of the group
into pieces of at most ``tuning.CHUNK_ELEMENTS`` elements. One kernel call then updates
the whole group, and the global norm sums fixed chunks in a fixed order.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import numpy.typing as npt

from numbaopt import halves, quantization, threads, tuning
from numbaopt.phases import ElementPass, Phase
from numbaopt.state import Slot

if TYPE_CHECKING:
    from numbaopt.devices import Backend



_shape, _dtype = attrgetter("shape"), attrgetter("dtype")


class Layout:
    """The parameters an optimizer is bound to: their count, shapes, dtypes and device.

    Made at the first step (which refuses parameters that share memory); ``check`` holds
    every later step to it. Used by the slots and by ``TFOptimizer``, whose state is not
    numbaopt slots but is bound to its parameters all the same.
    """

    def __init__(self, params: Sequence[Any], backend: Backend) -> None:
        self.shapes: tuple[tuple[int, ...], ...] = tuple(p.shape for p in params)
        self.dtypes: tuple[np.dtype[Any], ...] = tuple(p.dtype for p in params)
        self.distinct_dtypes = tuple(dict.fromkeys(self.dtypes))  # in order of first use
        self.backend = backend
        self.n_params = len(params)
        self.nbytes = np.array([p.nbytes for p in params], np.int64)
        backend.check_distinct(params)
        self.addresses = backend.addresses(params)  # of the parameters of the current call
        self._distinct_at = self.addresses.tobytes()  # of the last parameters found not to overlap
        self._apart_at: bytes | None = None  # parameter and gradient addresses last found not to overlap
        self._read_pairs = backend.pair_reader(self.shapes, self.dtypes)

    def check(self, params: Sequence[Any], backend: Backend) -> None:
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

    def plain_pairs(self, pairs: list[Any]) -> npt.NDArray[np.int64] | None:
        """The gradients' addresses when ``pairs`` are plainly the bound parameters with
        fitting gradients, found in one compiled pass (``Backend.pair_reader``), or None:
        then ``check`` and the backend's per-array checks judge the pairs. The parameter
        addresses become this call's, as ``check`` makes them."""
        if self._read_pairs is None:
            return None
        found = self._read_pairs(pairs)
        if found is None:
            return None
        param_at, grad_at = found
        if param_at.tobytes() != self._distinct_at:
            return None  # parameters at new addresses: ``check`` looks for overlaps
        self.addresses = param_at
        return grad_at

    def check_gradients(self, grad_addresses: npt.NDArray[np.int64]) -> None:
        """Refuse a gradient that shares memory with a parameter of the call, other than
        being exactly its own parameter's memory: the kernels write the parameters while
        other threads still read the gradients, so the result would depend on timing."""
        key = self.addresses.tobytes() + grad_addresses.tobytes()
        if key == self._apart_at:
            return
        _refuse_gradient_overlaps(self.addresses, grad_addresses, self.nbytes)
        self._apart_at = key


class ParamGroup(NamedTuple):
    """The parameters of one dtype: their positions in the call and their slots.

    Every slot of the group lives in one flat ``buffer`` (the slots' storage dtype): first
    the element-shaped slots, a row of ``total`` elements each (``slots`` is that
    ``(n_element_kinds, total)`` view, which the element kernels take), then the others.
    ``slot_offsets[k, j]`` and ``slot_sizes[k, j]`` place declared slot ``k`` of tensor
    ``j``; the per-tensor slots of a tensor sit side by side from ``tensor_base[j]``.
    """

    dtype: np.dtype[Any]
    positions: npt.NDArray[np.intp]  # positions of the group's parameters in the call
    offsets: npt.NDArray[np.int64]  # int64: where each parameter's elements start in a row of ``slots``
    chunks: npt.NDArray[np.int64]  # int64 (n_chunks, 3): tensor (within the group), start, stop
    slots: Any  # (n_element_kinds, total elements) view of ``buffer`` on the group's device
    buffer: Any  # every slot of the group, flat, on the group's device
    slot_offsets: npt.NDArray[np.int64]  # (n_slots, n_tensors)
    slot_sizes: npt.NDArray[np.int64]  # (n_slots, n_tensors)
    dims: npt.NDArray[np.int64]  # (n_tensors, 3): elements, last and second-last axis (0, 0 below two axes)
    tensor_base: npt.NDArray[np.int64]  # (n_tensors,): where the tensor's per-tensor slots start in ``buffer``
    like: Any  # an empty array of the parameters' memory dtype (uint16 for 16-bit floats) on the device: types their pointers
    compute: np.dtype[Any]  # the dtype the step computes in (``halves.compute_dtype``)
    formats: tuple[str, str]  # how the kernels read parameters and slots (``storage_formats``)
    scales: Any  # q8: the blocks' absmax, (n_element_kinds, total // BLOCK) float32 on the device; else empty
    maps: tuple[int, ...]  # each element slot's map (``quantization.map_index``), compiled into the converting
    # kernels: a q8 slot's codes, and whether a bfloat16 one rounds stochastically (``quantization.bfloat16_slot``)


#: The formats of float32 and float64 parameters with slots of their own dtype (or float32).
NATIVE = ("native", "native")


def storage_formats(dtype: np.dtype[Any], declared: Sequence[Slot]) -> tuple[str, str]:
    """How the kernels read and write the parameters of ``dtype`` (``"native"``,
    ``"bfloat16"``, ``"float16"``) and their ``declared`` slots (``"native"``,
    ``"bfloat16"``, ``"q8"``): 16-bit memory is read as uint16 and converted."""
    stored = declared[0].dtype if declared else None
    formats = (halves.format_of(dtype) or "native", stored if stored in ("bfloat16", "q8") else "native")
    return NATIVE if formats == NATIVE else formats  # the one object: ``run`` asks by identity


def chunk_table(sizes: Sequence[int], chunk: int) -> npt.NDArray[np.int64]:
    """Rows (tensor, start, stop) that split tensors of ``sizes`` elements into chunks of at
    most ``chunk`` elements, tensor by tensor: the global norm's fixed units of summation.
    No chunk spans a multiple of 2**32 elements, so that its elements share one stream of
    random bits (``quantization.random_stream``)."""
    rows = [(j, start, min(start + chunk, size, (start >> 32) + 1 << 32))
            for j, size in enumerate(sizes) for start in _chunk_starts(size, chunk)]
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def _chunk_starts(size: int, chunk: int) -> list[int]:
    """Every ``chunk`` elements, and at each multiple of 2**32."""
    return sorted({*range(0, size, chunk), *range(1 << 32, size, 1 << 32)})


def _size(shape: Sequence[int]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _group(layout: Layout, declared: tuple[Slot, ...], dtype: np.dtype[Any]) -> ParamGroup:
    """The zeroed storage of the parameters of ``dtype`` for the ``declared`` slots."""
    positions = np.array([i for i, d in enumerate(layout.dtypes) if d == dtype], np.intp)
    shapes = [tuple(layout.shapes[i]) for i in positions]
    sizes = [_size(shape) for shape in shapes]
    quantized = bool(declared) and declared[0].dtype == "q8"
    room = [quantization.blocks(size) * quantization.BLOCK for size in sizes] if quantized else sizes
    total = int(sum(room))
    offsets = np.concatenate([[0], np.cumsum(room, dtype=np.int64)[:-1]]).astype(np.int64)
    n_tensors = len(positions)
    slot_offsets = np.zeros((len(declared), n_tensors), np.int64)
    slot_sizes = np.zeros((len(declared), n_tensors), np.int64)
    element = [k for k, slot in enumerate(declared) if slot.shape == "element"]
    per_tensor = [k for k, slot in enumerate(declared) if slot.shape == "tensor"]
    for row, k in enumerate(element):
        slot_offsets[k], slot_sizes[k] = row * total + offsets, sizes
    end = len(element) * total
    tensor_base = end + len(per_tensor) * np.arange(n_tensors, dtype=np.int64)
    for place, k in enumerate(per_tensor):
        slot_offsets[k], slot_sizes[k] = tensor_base + place, 1
    end += len(per_tensor) * n_tensors
    for k, slot in enumerate(declared):
        if slot.shape in ("rows", "columns"):
            slot_sizes[k] = [_size(slot.shape_of(shape)) for shape in shapes]
            slot_offsets[k] = end + np.concatenate([[0], np.cumsum(slot_sizes[k])[:-1]]).astype(np.int64)
            end += int(slot_sizes[k].sum())
    dims = np.array([(size, *((shape[-1], shape[-2]) if len(shape) >= 2 else (0, 0)))
                     for shape, size in zip(shapes, sizes)], np.int64).reshape(-1, 3)
    formats = storage_formats(dtype, declared)
    memory: dict[str, npt.DTypeLike] = {"native": (declared[0] if declared else Slot("none")).dtype_of(dtype), "bfloat16": np.uint16,
                                        "q8": np.uint8}
    buffer = layout.backend.zeros(end, memory[formats[1]])
    rows = buffer[: len(element) * total].reshape((len(element), total))
    # A q8 chunk is whole blocks: each block's scale is one thread's to write.
    block = quantization.BLOCK if quantized else 1
    chunks = chunk_table(sizes, max(block, tuning.CHUNK_ELEMENTS // block * block))
    like = layout.backend.zeros(0, np.uint16 if formats[0] != "native" else dtype)
    # 8-bit slots: one scale per block of each tensor, the blocks aligned to the tensor (see
    # ``offsets``), so a chunk, a thread's work, is whole blocks, and no block spans tensors.
    scales = layout.backend.zeros((len(element), total // quantization.BLOCK if formats[1] == "q8" else 0), np.float32)
    maps = tuple(quantization.map_index(declared[k].sign) for k in element) if formats != NATIVE else ()
    return ParamGroup(dtype, positions, offsets, chunks, rows, buffer, slot_offsets, slot_sizes, dims, tensor_base, like,
                      halves.compute_dtype(dtype), formats, scales, maps)


class SlotStore:
    """The slots of an optimizer bound to its parameters (a ``Layout``), as its ``Slot``
    declarations shape them."""

    def __init__(self, layout: Layout, declared: tuple[Slot, ...], groups: list[ParamGroup]) -> None:
        self.layout = layout
        self.declared = declared
        self.slot_names = tuple(slot.name for slot in declared)
        self.groups = groups
        self.backend = layout.backend
        self.shapes, self.dtypes, self.n_params = layout.shapes, layout.dtypes, layout.n_params
        self.elements = sum(_size(shape) for shape in layout.shapes)  # of every tensor together
        self._chunks_of: dict[bytes, list[npt.NDArray[np.int64]]] = {}  # see chunks_of
        self._tensors_of: dict[bytes, list[npt.NDArray[np.int64]]] = {}  # see tensors_of
        self._every_tensor = [np.arange(len(group.positions), dtype=np.int64) for group in groups]
        self._n_element = sum(slot.shape == "element" for slot in declared)  # slots an element pass reads
        self._n_tensor = sum(slot.shape == "tensor" for slot in declared)

    @classmethod
    def create(
        cls,
        layout: Layout,
        declared: tuple[Slot, ...],
        initial: Mapping[str, Sequence[npt.ArrayLike]] | None = None,
        origin: str = "set_weights",
    ) -> SlotStore:
        """Zero slots for the parameters of ``layout``, or ``initial`` (host arrays given
        before the first step) once checked; ``origin`` says where those came from."""
        if initial is not None:
            check_slots_match(declared, initial, layout.shapes, layout.dtypes, origin)
        groups = [_group(layout, declared, dtype) for dtype in layout.distinct_dtypes]
        store = cls(layout, declared, groups)
        if initial is not None:
            store.load_host_slots(initial)
        return store

    # ---------------------------------------------------------------- checking

    def check_host_slots(self, slot_lists: Mapping[str, Sequence[npt.ArrayLike]]) -> None:
        check_slots_match(self.declared, slot_lists, self.shapes, self.dtypes, "set_weights")

    # ------------------------------------------------------------------- views

    def _views(self, kind: str) -> list[Any]:
        """Per-parameter views (on the device) of slot ``kind``, in parameter order: its
        memory as the kernels see it (uint16 for bfloat16, the codes for q8)."""
        k = self.slot_names.index(kind)
        slot = self.declared[k]
        views: list[Any] = [None] * self.n_params
        for group in self.groups:
            for j, i in enumerate(group.positions.tolist()):
                start, size = int(group.slot_offsets[k, j]), int(group.slot_sizes[k, j])
                shape = self.shapes[i] if slot.dtype == "q8" else slot.shape_of(self.shapes[i])
                views[i] = group.buffer[start : start + size].reshape(shape)
        return views

    def views(self, kind: str) -> list[Any]:
        """Per-parameter views of slot ``kind`` on the slots' device, in parameter order:
        for a step that updates some slots outside the kernels (Keras 3's Muon)."""
        return self._views(kind)

    def _blocks(self, k: int) -> list[tuple[Any, Any]]:
        """Per parameter, the device views of q8 slot ``k``'s whole blocks: codes
        ``(blocks, BLOCK)`` and scales ``(blocks,)``."""
        pieces: list[tuple[Any, Any]] = [(None, None)] * self.n_params
        for group in self.groups:
            for j, i in enumerate(group.positions.tolist()):
                n = quantization.blocks(int(group.slot_sizes[k, j]))
                start = int(group.offsets[j])
                codes = group.slots[k, start : start + n * quantization.BLOCK].reshape((n, quantization.BLOCK))
                first = start // quantization.BLOCK
                pieces[i] = (codes, group.scales[k, first : first + n])
        return pieces

    def host_slots(self) -> dict[str, list[npt.NDArray[Any]]]:
        """Every slot as a host copy, as its declaration gives it (``Slot.dtype_of``):
        ``{kind: [array per parameter]}``."""
        out: dict[str, list[npt.NDArray[Any]]] = {}
        to_host = self.backend.to_host
        for k, slot in enumerate(self.declared):
            if slot.dtype == "q8":
                arrays = []
                for codes, scales in self._blocks(k):
                    host = np.zeros(codes.shape[0], quantization.HOST_DTYPE)
                    host["codes"], host["absmax"] = to_host(codes), to_host(scales)
                    arrays.append(host)
                out[slot.name] = arrays
            elif slot.dtype == "bfloat16":
                out[slot.name] = [to_host(v).view(halves.bfloat16()) for v in self._views(slot.name)]
            else:
                out[slot.name] = [to_host(v) for v in self._views(slot.name)]
        return out

    def load_host_slots(self, slot_lists: Mapping[str, Sequence[npt.ArrayLike]]) -> None:
        """Overwrite every slot from host arrays (already checked)."""
        copy = self.backend.copy_from_host
        for k, slot in enumerate(self.declared):
            if slot.dtype == "q8":
                for (codes, scales), source in zip(self._blocks(k), slot_lists[slot.name]):
                    host = np.asarray(source, quantization.HOST_DTYPE)
                    copy(codes, np.ascontiguousarray(host["codes"]))
                    copy(scales, np.ascontiguousarray(host["absmax"]))
            elif slot.dtype == "bfloat16":
                for view, source in zip(self._views(slot.name), slot_lists[slot.name]):
                    copy(view, np.asarray(source, halves.bfloat16()).view(np.uint16))
            else:
                for view, source in zip(self._views(slot.name), slot_lists[slot.name]):
                    copy(view, np.asarray(source, dtype=view.dtype))

    # ------------------------------------------------------------------- a call

    def parameter_addresses(self) -> list[npt.NDArray[np.int64]]:
        """The parameters' addresses, split by group, as the check of this call found them."""
        return self.split(self.layout.addresses)

    def split(self, addresses: npt.NDArray[np.int64]) -> list[npt.NDArray[np.int64]]:
        """Per-parameter ``addresses`` (an int64 array in call order), split by group."""
        if len(self.groups) == 1:
            return [addresses]  # one dtype: the group holds every parameter, in order
        return [addresses[group.positions] for group in self.groups]

    def chunks_of(self, positions: npt.NDArray[np.intp] | None) -> list[npt.NDArray[np.int64]]:
        """Each group's chunk table, cut to the parameters at ``positions`` (all when None).

        A step over some of the parameters runs the kernels on the cut tables: the others,
        their slots and their gradients are not touched. The rows keep their order, so the
        cut table is the one a store of only those parameters would have.
        """
        if positions is None:
            return [group.chunks for group in self.groups]
        key = positions.tobytes()
        tables = self._chunks_of.get(key)
        if tables is None:
            wanted = np.zeros(self.n_params, bool)
            wanted[positions] = True
            tables = [group.chunks[wanted[group.positions[group.chunks[:, 0]]]] for group in self.groups]
            if len(self._chunks_of) >= 64:  # subsets come and go; a few recur every step
                self._chunks_of.clear()
                self._tensors_of.clear()
            self._chunks_of[key] = tables
            self._tensors_of[key] = [np.flatnonzero(wanted[group.positions]).astype(np.int64) for group in self.groups]
        return tables

    def tensors_of(self, positions: npt.NDArray[np.intp] | None) -> list[npt.NDArray[np.int64]]:
        """Each group's tensors (their indices within it) among the parameters at
        ``positions`` (all when None): what a tensor pass steps."""
        if positions is None:
            return self._every_tensor
        self.chunks_of(positions)
        return self._tensors_of[positions.tobytes()]

    def global_norm(
        self, grad_addresses: Sequence[npt.NDArray[np.int64]], chunks: Sequence[npt.NDArray[np.int64]] | None = None
    ) -> float:
        """``sqrt(sum of squares)`` over all gradients (or over ``chunks``, per group, from
        ``chunks_of``), the same for any thread count."""
        total = 0.0
        parallel = self.parallel()
        for group, addresses, table in zip(self.groups, grad_addresses, chunks or self.chunks_of(None)):
            if len(table):
                total += self.backend.sum(chunk_sums(self.backend, addresses, table, group.like, parallel, group.formats[0]))
        return float(np.sqrt(total))

    def parallel(self) -> bool:
        """Whether this step's kernels use every thread: not for a step smaller than
        ``tuning.PARALLEL_MIN_ELEMENTS``, which runs on the calling thread."""
        return self.elements >= tuning.PARALLEL_MIN_ELEMENTS

    def run(
        self,
        rule: Callable[..., tuple[float, ...]],
        group: ParamGroup,
        param_addresses: npt.NDArray[np.int64],
        grad_addresses: npt.NDArray[np.int64],
        clip: tuple[Any, Any, Any],
        scalars: tuple[Any, ...],
        chunks: npt.NDArray[np.int64] | None = None,
        seed: int = 0,
        stochastic: bool = False,
    ) -> None:
        """One step of the element ``rule`` over every tensor of ``group`` (or over its
        ``chunks``, a table from ``chunks_of``). ``seed`` (a step's own, from the
        optimizer's counter) rounds 8-bit and bfloat16 slots, and 16-bit parameters if
        ``stochastic`` (else they round to nearest)."""
        chunks = group.chunks if chunks is None else chunks
        if not len(chunks):
            return
        launch = threads.plan(self.backend.name, self.parallel(), rule, group.dtype, len(chunks))
        if group.formats is not NATIVE:  # 16-bit parameters, or slots in bfloat16 or 8 bits
            self._run_stored(rule, group, param_addresses, grad_addresses, clip, scalars, chunks, seed, stochastic, launch)
            return
        step = self.backend.kernels.update_kernel(rule, len(self.slot_names), launch.parallel)
        launch.run(step, (param_addresses, grad_addresses, group.slots, group.offsets, chunks, clip, scalars, group.like))

    def _run_stored(
        self, rule: Callable[..., tuple[float, ...]], group: ParamGroup, param_addresses: npt.NDArray[np.int64],
        grad_addresses: npt.NDArray[np.int64], clip: tuple[Any, Any, Any], scalars: tuple[Any, ...],
        chunks: npt.NDArray[np.int64], seed: int, stochastic: bool, launch: Any,
    ) -> None:
        """``run`` through the converting kernels (``storage_formats``): the seed of
        stochastic rounding, and the slots' maps and, for 8-bit slots, their scales."""
        step = self.backend.kernels.update_kernel(rule, len(self.slot_names), launch.parallel, group.formats, stochastic,
                                                  group.maps)
        # The group's first parameter tells the groups' random streams apart.
        quantized = (group.scales,)  # none for other storage, but the kernels' argument is of one kind
        launch.run(step, (param_addresses, grad_addresses, group.slots, group.offsets, chunks, clip, scalars, group.like,
                          np.uint64((seed * 0x10001 + int(group.positions[0])) % 2**64), quantized))

    def run_phases(
        self,
        phases: Sequence[Phase],
        group: ParamGroup,
        param_addresses: npt.NDArray[np.int64],
        grad_addresses: npt.NDArray[np.int64],
        clip: tuple[Any, Any, Any],
        scalars: tuple[Any, ...],
        chunks: npt.NDArray[np.int64],
        tensors: npt.NDArray[np.int64],
    ) -> None:
        """One step of ``phases`` over the ``tensors`` of ``group`` (from ``tensors_of``)
        and their ``chunks`` (from ``chunks_of``), phase after phase."""
        if not len(tensors):
            return
        if group.formats != NATIVE:
            raise TypeError(
                f"this optimizer steps in phases, which read {group.dtype} parameters or {self.declared[0].dtype} slots "
                "no more than 8-bit ones: pass float32 or float64 parameters, and slot_dtype None or 'float32'"
            )
        kernels = self.backend.kernels
        n_element, n_tensor = self._n_element, self._n_tensor
        for phase in phases:
            if isinstance(phase, ElementPass):
                if not len(chunks):
                    continue
                launch = threads.plan(self.backend.name, self.parallel(), phase.rule, group.dtype, len(chunks))
                kernel = kernels.phase_kernel("element", phase.rule, n_element, launch.parallel)
                arguments: tuple[Any, ...] = (param_addresses, grad_addresses, group.slots, group.offsets, chunks, clip,
                                              scalars, group.like, group.buffer, group.tensor_base, n_tensor)
            else:  # the threads share the tensors out
                launch = threads.plan(self.backend.name, self.parallel(), phase.function, group.dtype, len(tensors))
                kernel = kernels.phase_kernel("tensor", phase.function, len(self.declared), launch.parallel)
                arguments = (param_addresses, grad_addresses, group.buffer, group.slot_offsets, group.slot_sizes,
                             group.dims, tensors, clip, scalars, group.like)
            launch.run(kernel, arguments)



def chunk_sums(backend: Backend, addresses: npt.NDArray[np.int64], chunks: npt.NDArray[np.int64], like: Any,
               parallel: bool, form: str = "native") -> Any:
    """The float64 sum of squares of each chunk (rows of ``chunk_table``) of the arrays at
    ``addresses``, of ``like``'s dtype (uint16 memory for ``form`` ``"bfloat16"`` or
    ``"float16"``): the global norm's partial sums, on ``backend``.
    ``numbaopt.distributed`` sums a shard's chunks with it and adds them up across ranks."""
    launch = threads.plan(backend.name, parallel, "norm", like.dtype, len(chunks))
    kernel = backend.kernels.sum_of_squares_kernel(form, launch.parallel)
    partial_sums = backend.zeros(len(chunks), np.float64)
    launch.run(kernel, (addresses, chunks, like, partial_sums))
    return partial_sums


def _refuse_gradient_overlaps(
    param_starts: npt.NDArray[np.int64], grad_starts: npt.NDArray[np.int64], nbytes: npt.NDArray[np.int64]
) -> None:
    """Raise if gradient ``j``'s bytes overlap a parameter's, unless they are exactly its own."""
    sized = nbytes > 0
    if not sized.any():
        return
    order = np.argsort(param_starts, kind="stable")
    order = order[sized[order]]
    starts, ends = param_starts[order], param_starts[order] + nbytes[order]
    grad_ends = grad_starts + nbytes
    # The last parameter that starts before a gradient ends is the only one that can overlap
    # it: the parameters do not overlap each other (checked when they were bound).
    last = np.searchsorted(starts, grad_ends, side="left") - 1
    candidate = np.maximum(last, 0)
    overlaps = sized & (last >= 0) & (ends[candidate] > grad_starts)
    own = order[candidate] == np.arange(len(grad_starts))
    exactly_own = own & (starts[candidate] == grad_starts)
    bad = np.flatnonzero(overlaps & ~exactly_own)
    if bad.size:
        j = int(bad[0])
        k = int(order[candidate[j]])
        what = "is parameter" if starts[candidate[j]] == grad_starts[j] and nbytes[k] == nbytes[j] else "overlaps parameter"
        raise ValueError(
            f"gradient {j} {what} {k} of the same step; the step writes the parameters while it "
            "still reads the gradients, so pass a gradient in memory of its own (a copy)"
        )


def check_slots_match(
    declared: Sequence[Slot],
    slot_lists: Mapping[str, Sequence[npt.ArrayLike]],
    shapes: Sequence[tuple[int, ...]],
    dtypes: Sequence[np.dtype[Any]],
    where: str,
) -> None:
    """Raise unless every declared slot has one array per parameter, of the shape and
    exactly the dtype its declaration gives for that parameter (a cast would change the
    state: float64 slots rounded to float32). Counts and shapes are checked before dtypes,
    so a list cut in the wrong place reads as the wrong length."""
    arrays = {slot: [np.asarray(a) for a in slot_lists[slot.name]] for slot in declared}
    for slot, listed in arrays.items():
        if len(listed) != len(shapes):
            raise ValueError(f"{where}: {len(listed)} arrays for slot {slot.name!r}, expected {len(shapes)} (one per parameter)")
        for i, a in enumerate(listed):
            if a.shape != slot.shape_of(shapes[i]):
                expected = "" if slot.shape == "element" else f", so its {slot.shape} slot has shape {slot.shape_of(shapes[i])}"
                raise ValueError(f"{where}: {slot.name}[{i}] has shape {a.shape}, but parameter {i} has shape {shapes[i]}{expected}")
    for slot, listed in arrays.items():
        for i, a in enumerate(listed):
            if a.dtype != slot.dtype_of(dtypes[i]):
                kept = "" if slot.dtype is None else f", and keeps {slot.name} as {slot.dtype}"
                raise TypeError(f"{where}: {slot.name}[{i}] has dtype {a.dtype}, but parameter {i} has dtype {dtypes[i]}{kept}")
