"""CUDA kernels: the CPU kernels' layout and rules, launched on the GPU.

The arguments are the CPU kernels' (``numbaopt.kernels.cpu``): the data addresses of a
group's parameters and gradients, the group's slots as one ``(n_kinds, total)`` device
buffer, the offset of each tensor's slots in a row, the chunk table ``(tensor, start,
stop)``, the clip scalars and the step scalars. One launch updates every tensor of a
group: blocks take chunks in a grid-stride loop, the threads of a block take the elements
of a chunk in a block-stride loop, so neighbouring threads touch neighbouring elements.

The per-element math is the optimizer's rule, handed to ``update_kernel``, and
``clip_gradient``, compiled here with ``cuda.jit(device=True)``; nothing in this module
restates a formula or imports an optimizer.

Under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) the same kernels run as Python.
The only part that differs is ``_tensor``, the primitive that turns an integer address
into something indexable: a typed pointer on the GPU (an LLVM ``inttoptr``, which the
simulator cannot run), a NumPy view of the simulator's host memory otherwise.

Imported only when a CUDA array is first updated. The callers check every address, size
and dtype before a kernel runs: nothing here checks bounds.
"""
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import cuda, float32, float64, types
from numba.core import config

from numbaopt import halves, quantization, tuning
from numbaopt.clipping import clip_gradient as _clip_gradient
from numbaopt.kernels import cached, code_digest, helpers, loop_for, renamed, specialise, with_helpers

SIMULATOR = bool(config.ENABLE_CUDASIM)

#: CUDA's limit of threads per block.
MAX_THREADS_PER_BLOCK = 1024

_device = cuda.jit(device=True)

clip_gradient = _device(_clip_gradient)

if SIMULATOR:
    import ctypes

    def _tensor(address: int, size: int, like: Any) -> Any:
        """The ``size`` elements of ``like``'s dtype at ``address``, as a NumPy view.

        The simulator's device memory is host memory, so the address the backend took
        from a simulated device array points at a NumPy buffer.
        """
        ctype = np.ctypeslib.as_ctypes_type(like.dtype)
        return np.ctypeslib.as_array(ctypes.cast(int(address), ctypes.POINTER(ctype)), (int(size),))

else:
    from numba.cuda.extending import intrinsic

    @intrinsic
    def _pointer(typingctx: Any, address: Any, like: Any) -> tuple[Any, Callable[..., Any]]:
        """A typed pointer to the device memory at integer ``address``, of ``like``'s dtype."""
        pointer_type = types.CPointer(like.dtype)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            return builder.inttoptr(args[0], context.get_value_type(pointer_type))

        return pointer_type(types.int64, like), codegen

    @_device
    def _tensor(address: int, size: int, like: Any) -> Any:
        """The elements at ``address`` as a typed pointer (``size`` is the simulator's)."""
        return _pointer(address, like)


@_device
def _chunk(params: Any, grads: Any, offsets: Any, chunks: Any, c: int, like: Any) -> tuple[Any, Any, int, int, int]:
    """Chunk ``c``: its parameter and gradient, its tensor's slot offset, start and stop."""
    tensor, start, stop = chunks[c, 0], chunks[c, 1], chunks[c, 2]
    p = _tensor(params[tensor], stop, like)
    g = _tensor(grads[tensor], stop, like)
    return p, g, offsets[tensor], start, stop


# The update kernels, one per number of slots: blocks stride over chunks, threads over a
# chunk's elements. ``RULE`` is the global ``update_kernel`` binds to the optimizer's rule.
# The arrays are device arrays (Numba's, untyped), hence ``Any``.

#: Declared for the type checker only: this module itself never binds it.
RULE: Callable[..., tuple[float, ...]]


def _no_slot(
    params: Any, grads: Any, slots: Any, offsets: Any, chunks: Any, clip: tuple[float, float, float], scalars: tuple[float, ...],
    like: Any,
) -> None:
    for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
        p, g, o, start, stop = _chunk(params, grads, offsets, chunks, c, like)
        for i in range(start + cuda.threadIdx.x, stop, cuda.blockDim.x):
            (p[i],) = RULE(p[i], clip_gradient(g[i], *clip), *scalars)  # noqa: F821


def _one_slot(
    params: Any, grads: Any, slots: Any, offsets: Any, chunks: Any, clip: tuple[float, float, float], scalars: tuple[float, ...],
    like: Any,
) -> None:
    a = slots[0]
    for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
        p, g, o, start, stop = _chunk(params, grads, offsets, chunks, c, like)
        for i in range(start + cuda.threadIdx.x, stop, cuda.blockDim.x):
            p[i], a[o + i] = RULE(p[i], clip_gradient(g[i], *clip), a[o + i], *scalars)  # noqa: F821


def _two_slots(
    params: Any, grads: Any, slots: Any, offsets: Any, chunks: Any, clip: tuple[float, float, float], scalars: tuple[float, ...],
    like: Any,
) -> None:
    a, b = slots[0], slots[1]
    for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
        p, g, o, start, stop = _chunk(params, grads, offsets, chunks, c, like)
        for i in range(start + cuda.threadIdx.x, stop, cuda.blockDim.x):
            p[i], a[o + i], b[o + i] = RULE(p[i], clip_gradient(g[i], *clip), a[o + i], b[o + i], *scalars)  # noqa: F821


def _three_slots(
    params: Any, grads: Any, slots: Any, offsets: Any, chunks: Any, clip: tuple[float, float, float], scalars: tuple[float, ...],
    like: Any,
) -> None:
    a, b, d = slots[0], slots[1], slots[2]
    for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
        p, g, o, start, stop = _chunk(params, grads, offsets, chunks, c, like)
        for i in range(start + cuda.threadIdx.x, stop, cuda.blockDim.x):
            p[i], a[o + i], b[o + i], d[o + i] = RULE(  # noqa: F821
                p[i], clip_gradient(g[i], *clip), a[o + i], b[o + i], d[o + i], *scalars
            )


#: The update kernel template for each number of slots a rule keeps per element.
UPDATE_TEMPLATES: dict[int, Callable[..., None]] = {0: _no_slot, 1: _one_slot, 2: _two_slots, 3: _three_slots}


# The global norm: fixed pieces summed in a fixed order, so it is the same on every run.
#
# A block combines its threads' sums in a row of a global ``scratch`` array rather than in
# shared memory: the simulator allocates shared arrays without a lock, so two of a block's
# threads can get different buffers, and the reduction goes quietly wrong. Global memory
# keeps one code path; the tree touches a few thousand numbers per launch, against the
# millions of gradient elements the kernel reads.


@_device
def _block_sum(row: Any, value: float) -> Any:
    """The sum of ``value`` over the threads of a block, by a fixed tree in ``row``.

    The block size is a power of two (checked at launch); each level adds the upper half
    of the row onto the lower, so the order of additions never depends on timing.
    """
    t = cuda.threadIdx.x
    row[t] = value
    cuda.syncthreads()
    half = cuda.blockDim.x // 2
    while half > 0:
        if t < half:
            row[t] += row[t + half]
        cuda.syncthreads()
        half //= 2
    total = row[0]
    cuda.syncthreads()  # the row is reused for the block's next chunk
    return total


#: How ``_sum_of_squares`` reads a gradient element: as it is here; converted in the
#: copies ``sum_of_squares_kernel`` makes for 16-bit gradients.
READ = _device(halves.same)


@cached(cuda.jit)
def _sum_of_squares(grads: Any, chunks: Any, like: Any, partial_sums: Any, scratch: Any) -> None:
    row = scratch[cuda.blockIdx.x]
    for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
        tensor, start, stop = chunks[c, 0], chunks[c, 1], chunks[c, 2]
        g = _tensor(grads[tensor], stop, like)
        s = 0.0
        for i in range(start + cuda.threadIdx.x, stop, cuda.blockDim.x):
            x = float64(READ(g[i]))  # noqa: F821
            s += x * x
        total = _block_sum(row, s)
        if cuda.threadIdx.x == 0:
            partial_sums[c] = total


@cached(cuda.jit)
def _total(values: Any, out: Any, scratch: Any) -> None:
    """``out[0]`` = the sum of ``values``, by one block in a fixed order."""
    s = 0.0
    for i in range(cuda.threadIdx.x, values.shape[0], cuda.blockDim.x):
        s += values[i]
    total = _block_sum(scratch[0], s)
    if cuda.threadIdx.x == 0:
        out[0] = total


@cached(cuda.jit)
def _fill_zero(rows: Any) -> None:
    """Every element of the 2-d ``rows`` set to zero (new slots start at zero)."""
    start = cuda.grid(1)
    for i in range(start, rows.shape[1], cuda.gridsize(1)):
        for k in range(rows.shape[0]):
            rows[k, i] = 0


#: The kernels besides the update kernels, by name (for the PTX check).
HELPER_KERNELS: dict[str, Any] = {"sum_of_squares": _sum_of_squares, "total": _total, "fill_zero": _fill_zero}


# ------------------------------------------------------------------ launching


def _threads_per_block() -> int:
    threads = tuning.CUDA_THREADS_PER_BLOCK
    if not (0 < threads <= MAX_THREADS_PER_BLOCK and threads & (threads - 1) == 0):
        raise ValueError(
            f"tuning.CUDA_THREADS_PER_BLOCK must be a power of two from 1 to {MAX_THREADS_PER_BLOCK}, got {threads}"
        )
    return threads


def _blocks(units: int) -> int:
    """Blocks for ``units`` pieces of work: one each, up to what fills the device.

    The loops stride, so fewer blocks than pieces is correct; more would idle.
    """
    # The simulator's device has no multiprocessor count: it runs one block at a time.
    processors = getattr(cuda.get_current_device(), "MULTIPROCESSOR_COUNT", 1)
    return max(1, min(int(units), processors * tuning.CUDA_BLOCKS_PER_SM))


#: Device copies of the small host tables (addresses, offsets, chunks), by content.
_TABLES: OrderedDict[tuple[tuple[int, ...], bytes], Any] = OrderedDict()
_TABLES_KEPT = 256


def _on_device(table: npt.NDArray[np.int64]) -> Any:
    """A device copy of the small int64 host array ``table``, made once per content.

    Each step passes the same addresses, offsets and chunk tables; copying them again
    would cost a host-to-device transfer per kernel call.
    """
    key = (table.shape, table.tobytes())
    copy = _TABLES.get(key)
    if copy is None:
        copy = cuda.to_device(np.ascontiguousarray(table, dtype=np.int64))
        _TABLES[key] = copy
        if len(_TABLES) > _TABLES_KEPT:
            _TABLES.popitem(last=False)
    else:
        _TABLES.move_to_end(key)
    return copy


class UpdateLauncher:
    """Launches one rule's compiled kernel (``kernel``) with the CPU kernel's arguments."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel

    def __call__(
        self, params: npt.NDArray[np.int64], grads: npt.NDArray[np.int64], slots: Any, offsets: npt.NDArray[np.int64],
        chunks: npt.NDArray[np.int64], clip: tuple[float, float, float], scalars: tuple[float, ...], like: Any,
    ) -> None:
        self.kernel[_blocks(len(chunks)), _threads_per_block()](
            _on_device(params), _on_device(grads), slots, _on_device(offsets), _on_device(chunks), clip, scalars, like
        )


# ------------------------------------------------------------ 16-bit and 8-bit storage
#
# The CPU kernels' converting loops (``numbaopt.kernels.cpu``): 16-bit parameters and
# bfloat16 slots through ``READ_P`` / ``WRITE_P`` / ``READ_S`` / ``WRITE_S``, the globals of
# each copy (``numbaopt.halves``, ``quantization.SLOT_WRITERS``), laid out like the update
# kernels above; they and the 8-bit templates below read their slots' maps from ``MAPS``,
# as the CPU's.

READ_P: Callable[[Any], Any]
WRITE_P: Callable[[Any, Any, Any], Any]
READ_S: Callable[[Any], Any]
WRITE_S: Callable[[Any, Any, Any], Any]
MAPS: tuple[int, ...]


@_device
def _key(chunks: Any, c: int) -> Any:
    """Where the elements of chunk ``c``'s tensor start among stochastic rounding's keys
    (as the CPU kernels' ``_key``)."""
    return np.uint64(chunks[c, 0]) << np.uint64(40)


def _converted_no_slot(params: Any, grads: Any, slots: Any, offsets: Any, chunks: Any, clip: Any, scalars: Any, like: Any,
                       seed: Any) -> None:
    for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
        p, g, o, start, stop = _chunk(params, grads, offsets, chunks, c, like)
        for i in range(start + cuda.threadIdx.x, stop, cuda.blockDim.x):
            (x,) = RULE(READ_P(p[i]), clip_gradient(READ_P(g[i]), *clip), *scalars)  # noqa: F821
            p[i] = WRITE_P(x, seed, _key(chunks, c) + i)  # noqa: F821


def _converted_one_slot(params: Any, grads: Any, slots: Any, offsets: Any, chunks: Any, clip: Any, scalars: Any, like: Any,
                        seed: Any) -> None:
    a = slots[0]
    for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
        p, g, o, start, stop = _chunk(params, grads, offsets, chunks, c, like)
        for i in range(start + cuda.threadIdx.x, stop, cuda.blockDim.x):
            x, y = RULE(READ_P(p[i]), clip_gradient(READ_P(g[i]), *clip), READ_S(a[o + i]), *scalars)  # noqa: F821
            index = _key(chunks, c) + np.uint64(i)
            p[i], a[o + i] = WRITE_P(x, seed, _key(chunks, c) + i), WRITE_S(y, MAPS[0], _RANDOM(seed, 0, index))  # noqa: F821


def _converted_two_slots(params: Any, grads: Any, slots: Any, offsets: Any, chunks: Any, clip: Any, scalars: Any, like: Any,
                         seed: Any) -> None:
    a, b = slots[0], slots[1]
    for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
        p, g, o, start, stop = _chunk(params, grads, offsets, chunks, c, like)
        for i in range(start + cuda.threadIdx.x, stop, cuda.blockDim.x):
            x, y, z = RULE(READ_P(p[i]), clip_gradient(READ_P(g[i]), *clip), READ_S(a[o + i]), READ_S(b[o + i]),  # noqa: F821
                           *scalars)
            index = _key(chunks, c) + np.uint64(i)
            p[i] = WRITE_P(x, seed, _key(chunks, c) + i)  # noqa: F821
            a[o + i], b[o + i] = WRITE_S(y, MAPS[0], _RANDOM(seed, 0, index)), WRITE_S(z, MAPS[1], _RANDOM(seed, 1, index))  # noqa: F821


def _converted_three_slots(params: Any, grads: Any, slots: Any, offsets: Any, chunks: Any, clip: Any, scalars: Any,
                           like: Any, seed: Any) -> None:
    a, b, d = slots[0], slots[1], slots[2]
    for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
        p, g, o, start, stop = _chunk(params, grads, offsets, chunks, c, like)
        for i in range(start + cuda.threadIdx.x, stop, cuda.blockDim.x):
            x, y, z, w = RULE(READ_P(p[i]), clip_gradient(READ_P(g[i]), *clip), READ_S(a[o + i]),  # noqa: F821
                              READ_S(b[o + i]), READ_S(d[o + i]), *scalars)  # noqa: F821
            p[i] = WRITE_P(x, seed, _key(chunks, c) + i)  # noqa: F821
            index = _key(chunks, c) + np.uint64(i)
            a[o + i], b[o + i] = WRITE_S(y, MAPS[0], _RANDOM(seed, 0, index)), WRITE_S(z, MAPS[1], _RANDOM(seed, 1, index))  # noqa: F821
            d[o + i] = WRITE_S(w, MAPS[2], _RANDOM(seed, 2, index))  # noqa: F821


#: The converting kernel template for each number of slots.
CONVERTED_TEMPLATES: dict[int, Callable[..., None]] = {
    0: _converted_no_slot, 1: _converted_one_slot, 2: _converted_two_slots, 3: _converted_three_slots,
}

# 8-bit slots: one thread block per quantization block of ``BLOCK`` elements (the rows of
# ``blocks``, a chunk table cut at every block). Its threads decode, update and stage their
# elements (coalesced, as the update kernels; ``quantization.staged``: the unsigned map's
# roots), take the block's new absmax together (a tree
# over shared memory: a maximum is exact, so it is the CPU's serial absmax), then encode.
# One pass over the state, no float32 copy of it in global memory.

BLOCK = quantization.BLOCK
_SMALLEST_ABSMAX = quantization.SMALLEST_ABSMAX


@_device
def _largest(top: Any, x: Any) -> Any:
    """The running absmax (NaN and infinity are passed over, as on the CPU)."""
    magnitude = abs(x)
    return magnitude if magnitude > top and magnitude < math.inf else top


@_device
def _block_absmax(tops: Any, row: int, top: Any) -> Any:
    """The largest of every thread's ``top`` (each finite: ``_largest`` skips the others), in
    every thread, or 0 if subnormal (``quantization.SMALLEST_ABSMAX``). The block's thread
    count is a power of two (``_threads_per_block``)."""
    t = cuda.threadIdx.x
    tops[row, t] = top
    cuda.syncthreads()
    half = cuda.blockDim.x // 2
    while half > 0:
        if t < half:
            tops[row, t] = _largest(tops[row, t], tops[row, t + half])
        cuda.syncthreads()
        half //= 2
    largest = tops[row, 0]
    return largest if largest >= _SMALLEST_ABSMAX else float32(0)


@_device
def _encode(codes: Any, o: int, staged: Any, row: int, first: int, last: int, absmax: Any, sign: Any, seed: Any,
            slot: int, key: Any) -> None:
    """This thread's elements of the block, as codes of ``staged`` times the block's inverse
    scale (``quantization.inverse_scale``: of ``absmax``) rounded by slot
    kind ``slot``'s random bits (``quantization.encode`` and ``random_for``: a block's
    elements share one stream, as blocks are aligned)."""
    inverse = _INVERSE_SCALE(absmax, sign)
    stream = _STREAM(seed, slot, key + np.uint64(first))
    for i in range(first + cuda.threadIdx.x, last, cuda.blockDim.x):
        low = np.uint32(i)  # the index's low 32 bits: the key's are 0
        random = _ROUNDING(sign, _HALF(_WORD(stream, np.uint32(low >> np.uint32(1))), low))
        codes[o + i] = _ENCODE(float32(staged[row, i - first] * inverse), sign, random)


def _q8_one_slot(params: Any, grads: Any, slots: Any, offsets: Any, blocks: Any, clip: Any, scalars: Any, like: Any,
                 seed: Any, scales: Any) -> None:
    a = slots[0]
    shared = cuda.shared.array((2, 1, BLOCK), float32)  # one array: the simulator keys them by line
    staged, tops = shared[0], shared[1]
    for q in range(cuda.blockIdx.x, blocks.shape[0], cuda.gridDim.x):
        p, g, o, first, last = _chunk(params, grads, offsets, blocks, q, like)
        k, key = (o + first) // BLOCK, _key(blocks, q)
        scale_a, top_a = scales[0, k], float32(0)
        for i in range(first + cuda.threadIdx.x, last, cuda.blockDim.x):
            x, y = RULE(READ_P(p[i]), clip_gradient(READ_P(g[i]), *clip), _DECODE(a[o + i], MAPS[0]) * scale_a,  # noqa: F821
                        *scalars)
            p[i] = WRITE_P(x, seed, key + i)  # noqa: F821
            staged[0, i - first] = _STAGED(y, MAPS[0])  # noqa: F821
            top_a = _largest(top_a, float32(y))
        top_a = _block_absmax(tops, 0, top_a)
        if cuda.threadIdx.x == 0:
            scales[0, k] = top_a
        _encode(a, o, staged, 0, first, last, top_a, MAPS[0], seed, 0, key)  # noqa: F821
        cuda.syncthreads()


def _q8_two_slots(params: Any, grads: Any, slots: Any, offsets: Any, blocks: Any, clip: Any, scalars: Any, like: Any,
                  seed: Any, scales: Any) -> None:
    a, b = slots[0], slots[1]
    shared = cuda.shared.array((2, 2, BLOCK), float32)  # one array: the simulator keys them by line
    staged, tops = shared[0], shared[1]
    for q in range(cuda.blockIdx.x, blocks.shape[0], cuda.gridDim.x):
        p, g, o, first, last = _chunk(params, grads, offsets, blocks, q, like)
        k, key = (o + first) // BLOCK, _key(blocks, q)
        scale_a, scale_b, top_a, top_b = scales[0, k], scales[1, k], float32(0), float32(0)
        for i in range(first + cuda.threadIdx.x, last, cuda.blockDim.x):
            x, y, z = RULE(READ_P(p[i]), clip_gradient(READ_P(g[i]), *clip), _DECODE(a[o + i], MAPS[0]) * scale_a,  # noqa: F821
                           _DECODE(b[o + i], MAPS[1]) * scale_b, *scalars)  # noqa: F821
            p[i] = WRITE_P(x, seed, key + i)  # noqa: F821
            staged[0, i - first], staged[1, i - first] = _STAGED(y, MAPS[0]), _STAGED(z, MAPS[1])  # noqa: F821
            top_a, top_b = _largest(top_a, float32(y)), _largest(top_b, float32(z))
        top_a, top_b = _block_absmax(tops, 0, top_a), _block_absmax(tops, 1, top_b)
        if cuda.threadIdx.x == 0:
            scales[0, k], scales[1, k] = top_a, top_b
        _encode(a, o, staged, 0, first, last, top_a, MAPS[0], seed, 0, key)  # noqa: F821
        _encode(b, o, staged, 1, first, last, top_b, MAPS[1], seed, 1, key)  # noqa: F821
        cuda.syncthreads()


def _q8_three_slots(params: Any, grads: Any, slots: Any, offsets: Any, blocks: Any, clip: Any, scalars: Any, like: Any,
                    seed: Any, scales: Any) -> None:
    a, b, d = slots[0], slots[1], slots[2]
    shared = cuda.shared.array((2, 3, BLOCK), float32)  # one array: the simulator keys them by line
    staged, tops = shared[0], shared[1]
    for q in range(cuda.blockIdx.x, blocks.shape[0], cuda.gridDim.x):
        p, g, o, first, last = _chunk(params, grads, offsets, blocks, q, like)
        k, key = (o + first) // BLOCK, _key(blocks, q)
        scale_a, scale_b, scale_d = scales[0, k], scales[1, k], scales[2, k]
        top_a, top_b, top_d = float32(0), float32(0), float32(0)
        for i in range(first + cuda.threadIdx.x, last, cuda.blockDim.x):
            x, y, z, w = RULE(READ_P(p[i]), clip_gradient(READ_P(g[i]), *clip),  # noqa: F821
                              _DECODE(a[o + i], MAPS[0]) * scale_a, _DECODE(b[o + i], MAPS[1]) * scale_b,  # noqa: F821
                              _DECODE(d[o + i], MAPS[2]) * scale_d, *scalars)  # noqa: F821
            p[i] = WRITE_P(x, seed, key + i)  # noqa: F821
            staged[0, i - first], staged[1, i - first] = _STAGED(y, MAPS[0]), _STAGED(z, MAPS[1])  # noqa: F821
            staged[2, i - first] = _STAGED(w, MAPS[2])  # noqa: F821
            top_a, top_b, top_d = _largest(top_a, float32(y)), _largest(top_b, float32(z)), _largest(top_d, float32(w))
        top_a, top_b, top_d = _block_absmax(tops, 0, top_a), _block_absmax(tops, 1, top_b), _block_absmax(tops, 2, top_d)
        if cuda.threadIdx.x == 0:
            scales[0, k], scales[1, k], scales[2, k] = top_a, top_b, top_d
        _encode(a, o, staged, 0, first, last, top_a, MAPS[0], seed, 0, key)  # noqa: F821
        _encode(b, o, staged, 1, first, last, top_b, MAPS[1], seed, 1, key)  # noqa: F821
        _encode(d, o, staged, 2, first, last, top_d, MAPS[2], seed, 2, key)  # noqa: F821
        cuda.syncthreads()


#: The 8-bit kernel template for each number of slots.
Q8_TEMPLATES: dict[int, Callable[..., None]] = {1: _q8_one_slot, 2: _q8_two_slots, 3: _q8_three_slots}

_BLOCK_TABLES: OrderedDict[bytes, npt.NDArray[np.int64]] = OrderedDict()


def _block_table(chunks: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """The rows ``(tensor, first, last)`` of every block of ``chunks`` (whole blocks each),
    made once per chunk table."""
    key = chunks.tobytes()
    table = _BLOCK_TABLES.get(key)
    if table is None:
        rows = [(j, first, min(first + BLOCK, stop)) for j, start, stop in chunks.tolist() for first in range(start, stop, BLOCK)]
        table = _BLOCK_TABLES[key] = np.array(rows, np.int64).reshape(-1, 3)
        if len(_BLOCK_TABLES) > _TABLES_KEPT:
            _BLOCK_TABLES.popitem(last=False)
    return table


class StorageLauncher:
    """Launches a converting or 8-bit kernel with the CPU kernel's arguments."""

    def __init__(self, kernel: Any, quantized: bool) -> None:
        self.kernel, self.quantized = kernel, quantized

    def __call__(self, params: npt.NDArray[np.int64], grads: npt.NDArray[np.int64], slots: Any,
                 offsets: npt.NDArray[np.int64], chunks: npt.NDArray[np.int64], clip: tuple[float, float, float],
                 scalars: tuple[float, ...], like: Any, seed: Any, quantized: tuple[Any, ...]) -> None:
        threads = _threads_per_block()
        if self.quantized:
            blocks = _block_table(chunks)
            (scales,) = quantized
            self.kernel[_blocks(len(blocks)), min(threads, BLOCK)](
                _on_device(params), _on_device(grads), slots, _on_device(offsets), _on_device(blocks), clip, scalars,
                like, seed, scales,
            )
        else:
            self.kernel[_blocks(len(chunks)), threads](
                _on_device(params), _on_device(grads), slots, _on_device(offsets), _on_device(chunks), clip, scalars,
                like, seed,
            )


def _converter(function: Callable[..., Any]) -> Any:
    """A ``numbaopt.halves`` function as a device function, with the helpers it calls.
    Under the simulator it runs as NumPy scalar code, whose uint64 hash wraps around as
    on the GPU but warns: the warnings are silenced there."""
    compiled = with_helpers(function, _device, {})
    if SIMULATOR:
        def quiet(*args: Any) -> Any:
            with np.errstate(over="ignore"):
                return compiled(*args)

        return _device(quiet)
    return _device(compiled)


#: The 8-bit codes' functions, as device functions (the 8-bit templates call them).
_STAGED, _INVERSE_SCALE, _ENCODE, _DECODE, _ROUNDING, _STREAM, _WORD, _HALF = (
    _converter(function) for function in quantization.ELEMENT_FUNCTIONS)
_RANDOM = _converter(quantization.random_for)

_CONVERTERS: dict[Any, Any] = {}


def _converted(key: Any, function: Callable[..., Any]) -> Any:
    if key not in _CONVERTERS:
        _CONVERTERS[key] = _converter(function)
    return _CONVERTERS[key]


_STORAGE_KERNELS: dict[tuple[Any, ...], StorageLauncher] = {}


def _compiled_rule(rule: Callable[..., tuple[float, ...]]) -> Any:
    """``rule`` as a device function, with the helpers of its package it calls (``numbaopt.kernels.helpers``)."""
    return _device(with_helpers(rule, _device, {}))


def _storage_kernel(rule: Callable[..., tuple[float, ...]], n_slots: int, formats: tuple[str, str],
                    stochastic: bool, maps: tuple[int, ...]) -> StorageLauncher:
    parameters, slots = formats
    quantized = slots == "q8" and n_slots > 0
    stored = "bfloat16" if slots == "bfloat16" else "native"
    written = (parameters, stochastic and parameters != "native")
    compiled = {
        "RULE": _compiled_rule(rule), "MAPS": maps,
        "READ_P": _converted(parameters, halves.READERS[parameters]), "WRITE_P": _converted(written, halves.WRITERS[written]),
        "READ_S": _converted(stored, halves.READERS[stored]), "WRITE_S": _converted(("slot", stored), quantization.SLOT_WRITERS[stored]),
    }
    template = loop_for(Q8_TEMPLATES if quantized else CONVERTED_TEMPLATES, rule, n_slots)
    code: list[Callable[..., Any]] = [*halves.READERS.values(), *halves.WRITERS.values(), *quantization.ELEMENT_FUNCTIONS,
                                      *quantization.SLOT_WRITERS.values(), quantization.random_for]
    code += [helper for function in list(code) for helper in helpers(function)]
    variant = f"{parameters}_{slots}{''.join(map(str, maps))}_{'stochastic' if written[1] else 'nearest'}"
    function = specialise(template, rule, compiled, depends_on=(_clip_gradient, *code, *helpers(rule)), variant=variant)
    return StorageLauncher(cached(cuda.jit)(function), quantized)


_UPDATE_KERNELS: dict[tuple[Callable[..., tuple[float, ...]], int], UpdateLauncher] = {}


def update_kernel(
    rule: Callable[..., tuple[float, ...]], n_slots: int, parallel: bool = True,
    formats: tuple[str, str] = ("native", "native"), stochastic: bool = False, maps: tuple[int, ...] = (),
) -> UpdateLauncher | StorageLauncher:
    """The launcher of the CUDA kernel that applies ``rule`` with ``n_slots`` slots per
    element; made once per rule and process, compiled at its first launch (or loaded from
    the on-disk cache). ``parallel`` is the CPU kernels' choice: a launch always is.
    ``formats``, ``stochastic`` and ``maps`` as for ``numbaopt.kernels.cpu.update_kernel``."""
    if formats != ("native", "native"):
        key = (rule, n_slots, formats, stochastic, maps)
        if key not in _STORAGE_KERNELS:
            _STORAGE_KERNELS[key] = _storage_kernel(rule, n_slots, formats, stochastic, maps)
        return _STORAGE_KERNELS[key]
    launcher = _UPDATE_KERNELS.get((rule, n_slots))
    if launcher is None:
        template = loop_for(UPDATE_TEMPLATES, rule, n_slots)
        function = specialise(template, rule, {"RULE": _compiled_rule(rule)}, depends_on=(_clip_gradient, *helpers(rule)))
        launcher = _UPDATE_KERNELS[rule, n_slots] = UpdateLauncher(cached(cuda.jit)(function))
    return launcher


#: Device buffers the reductions reuse, by shape (launches on one stream run in order).
_SCRATCH: dict[tuple[int, ...], Any] = {}


def _scratch(shape: tuple[int, ...]) -> Any:
    buffer = _SCRATCH.get(shape)
    if buffer is None:
        buffer = _SCRATCH[shape] = cuda.device_array(shape, np.float64)
    return buffer


def sum_of_squares(grads: npt.NDArray[np.int64], chunks: npt.NDArray[np.int64], like: Any, partial_sums: Any) -> None:
    """``partial_sums[c]`` = the float64 sum of squares of chunk ``c``, on the device."""
    blocks, threads = _blocks(len(chunks)), _threads_per_block()
    _sum_of_squares[blocks, threads](
        _on_device(grads), _on_device(chunks), like, partial_sums, _scratch((blocks, threads))
    )


_SUMS: dict[str, Callable[..., None]] = {"native": sum_of_squares}


def sum_of_squares_kernel(form: str, parallel: bool) -> Callable[..., None]:
    """``sum_of_squares`` for gradients of format ``form`` (16-bit memory read through
    ``numbaopt.halves``): a copy whose global ``READ`` converts each element."""
    if form not in _SUMS:
        read = halves.READERS[form]
        name = f"sum_of_squares_{form}_{code_digest(read, *helpers(read))}"
        kernel = cached(cuda.jit)(renamed(_sum_of_squares.py_func, name, {"READ": _converter(read)}))

        def launch(grads: npt.NDArray[np.int64], chunks: npt.NDArray[np.int64], like: Any, partial_sums: Any) -> None:
            blocks, threads = _blocks(len(chunks)), _threads_per_block()
            kernel[blocks, threads](_on_device(grads), _on_device(chunks), like, partial_sums, _scratch((blocks, threads)))

        _SUMS[form] = launch
    return _SUMS[form]


def total(values: Any) -> float:
    """The sum of the device array ``values`` as a Python float: only this scalar crosses."""
    threads = _threads_per_block()
    out = _scratch((1,))
    _total[1, threads](values, out, _scratch((1, threads)))
    return float(out.copy_to_host()[0])


def zeros(shape: int | tuple[int, ...], dtype: npt.DTypeLike) -> Any:
    """A zeroed device array of ``shape`` (at most 2-d), filled on the device."""
    array = cuda.device_array(shape, dtype)
    rows = array.reshape((1, array.size)) if array.ndim < 2 else array
    if rows.size:
        _fill_zero[_blocks(math.ceil(rows.shape[1] / _threads_per_block())), _threads_per_block()](rows)
    return array


# ------------------------------------------------------------------ phases
#
# The CPU kernels' phases (``numbaopt.kernels.cpu``), launched on the GPU. An element pass
# is laid out like an update kernel; a tensor pass runs each tensor's function on one
# thread (the threads of the grid stride over the tensors): correct and deterministic,
# but a big tensor's reductions are not yet spread over a block.


def _phase_no_slot(params: Any, grads: Any, slots: Any, offsets: Any, chunks: Any, clip: tuple[float, float, float],
                   scalars: tuple[float, ...], like: Any, buffer: Any, tensor_base: Any, n_tensor_slots: int) -> None:
    for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
        p, g, o, start, stop = _chunk(params, grads, offsets, chunks, c, like)
        t = buffer[tensor_base[chunks[c, 0]] : tensor_base[chunks[c, 0]] + n_tensor_slots]
        for i in range(start + cuda.threadIdx.x, stop, cuda.blockDim.x):
            p[i] = RULE(p[i], clip_gradient(g[i], *clip), t, *scalars)[0]  # noqa: F821


def _phase_one_slot(params: Any, grads: Any, slots: Any, offsets: Any, chunks: Any, clip: tuple[float, float, float],
                    scalars: tuple[float, ...], like: Any, buffer: Any, tensor_base: Any, n_tensor_slots: int) -> None:
    a = slots[0]
    for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
        p, g, o, start, stop = _chunk(params, grads, offsets, chunks, c, like)
        t = buffer[tensor_base[chunks[c, 0]] : tensor_base[chunks[c, 0]] + n_tensor_slots]
        for i in range(start + cuda.threadIdx.x, stop, cuda.blockDim.x):
            p[i], a[o + i] = RULE(p[i], clip_gradient(g[i], *clip), a[o + i], t, *scalars)  # noqa: F821


def _phase_two_slots(params: Any, grads: Any, slots: Any, offsets: Any, chunks: Any, clip: tuple[float, float, float],
                     scalars: tuple[float, ...], like: Any, buffer: Any, tensor_base: Any, n_tensor_slots: int) -> None:
    a, b = slots[0], slots[1]
    for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
        p, g, o, start, stop = _chunk(params, grads, offsets, chunks, c, like)
        t = buffer[tensor_base[chunks[c, 0]] : tensor_base[chunks[c, 0]] + n_tensor_slots]
        for i in range(start + cuda.threadIdx.x, stop, cuda.blockDim.x):
            p[i], a[o + i], b[o + i] = RULE(p[i], clip_gradient(g[i], *clip), a[o + i], b[o + i], t, *scalars)  # noqa: F821


def _phase_three_slots(params: Any, grads: Any, slots: Any, offsets: Any, chunks: Any, clip: tuple[float, float, float],
                       scalars: tuple[float, ...], like: Any, buffer: Any, tensor_base: Any, n_tensor_slots: int) -> None:
    a, b, d = slots[0], slots[1], slots[2]
    for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
        p, g, o, start, stop = _chunk(params, grads, offsets, chunks, c, like)
        t = buffer[tensor_base[chunks[c, 0]] : tensor_base[chunks[c, 0]] + n_tensor_slots]
        for i in range(start + cuda.threadIdx.x, stop, cuda.blockDim.x):
            p[i], a[o + i], b[o + i], d[o + i] = RULE(  # noqa: F821
                p[i], clip_gradient(g[i], *clip), a[o + i], b[o + i], d[o + i], t, *scalars
            )


#: The element pass template per number of element-shaped slots.
PHASE_TEMPLATES: dict[int, Callable[..., None]] = {
    0: _phase_no_slot, 1: _phase_one_slot, 2: _phase_two_slots, 3: _phase_three_slots,
}


@_device
def _tensor_dims(params: Any, grads: Any, dims: Any, j: int, like: Any) -> tuple[Any, Any, int, int, int]:
    n = dims[j, 0]
    return _tensor(params[j], n, like), _tensor(grads[j], n, like), n, dims[j, 1], dims[j, 2]


def _tensor_one_slot(params: Any, grads: Any, buffer: Any, o: Any, s: Any, dims: Any, tensors: Any,
                     clip: tuple[float, float, float], scalars: tuple[float, ...], like: Any) -> None:
    for q in range(cuda.grid(1), tensors.shape[0], cuda.gridsize(1)):
        j = tensors[q]
        p, g, n, last, second = _tensor_dims(params, grads, dims, j, like)
        FUNCTION(p, g, buffer[o[0, j] : o[0, j] + s[0, j]], n, last, second, clip, *scalars)  # noqa: F821


def _tensor_two_slots(params: Any, grads: Any, buffer: Any, o: Any, s: Any, dims: Any, tensors: Any,
                      clip: tuple[float, float, float], scalars: tuple[float, ...], like: Any) -> None:
    for q in range(cuda.grid(1), tensors.shape[0], cuda.gridsize(1)):
        j = tensors[q]
        p, g, n, last, second = _tensor_dims(params, grads, dims, j, like)
        FUNCTION(p, g, buffer[o[0, j] : o[0, j] + s[0, j]], buffer[o[1, j] : o[1, j] + s[1, j]],  # noqa: F821
                 n, last, second, clip, *scalars)


def _tensor_three_slots(params: Any, grads: Any, buffer: Any, o: Any, s: Any, dims: Any, tensors: Any,
                        clip: tuple[float, float, float], scalars: tuple[float, ...], like: Any) -> None:
    for q in range(cuda.grid(1), tensors.shape[0], cuda.gridsize(1)):
        j = tensors[q]
        p, g, n, last, second = _tensor_dims(params, grads, dims, j, like)
        FUNCTION(p, g, buffer[o[0, j] : o[0, j] + s[0, j]], buffer[o[1, j] : o[1, j] + s[1, j]],  # noqa: F821
                 buffer[o[2, j] : o[2, j] + s[2, j]], n, last, second, clip, *scalars)


def _tensor_four_slots(params: Any, grads: Any, buffer: Any, o: Any, s: Any, dims: Any, tensors: Any,
                       clip: tuple[float, float, float], scalars: tuple[float, ...], like: Any) -> None:
    for q in range(cuda.grid(1), tensors.shape[0], cuda.gridsize(1)):
        j = tensors[q]
        p, g, n, last, second = _tensor_dims(params, grads, dims, j, like)
        FUNCTION(p, g, buffer[o[0, j] : o[0, j] + s[0, j]], buffer[o[1, j] : o[1, j] + s[1, j]],  # noqa: F821
                 buffer[o[2, j] : o[2, j] + s[2, j]], buffer[o[3, j] : o[3, j] + s[3, j]], n, last, second, clip, *scalars)


#: The tensor pass template per number of declared slots.
TENSOR_TEMPLATES: dict[int, Callable[..., None]] = {
    1: _tensor_one_slot, 2: _tensor_two_slots, 3: _tensor_three_slots, 4: _tensor_four_slots,
}

#: Declared for the type checker only: ``phase_kernel`` binds it per copy.
FUNCTION: Callable[..., None]


def _with_clipping(function: Callable[..., Any]) -> Any:
    """``function`` as a device function whose global ``clip_gradient`` is the device one."""
    return _device(with_helpers(function, _device, {"clip_gradient": clip_gradient}))


class PhaseLauncher:
    """Launches one phase's compiled kernel with the CPU phase kernel's arguments."""

    def __init__(self, kind: str, kernel: Any) -> None:
        self.kind, self.kernel = kind, kernel

    def __call__(self, *args: Any) -> None:
        if self.kind == "element":
            params, grads, slots, offsets, chunks, clip, scalars, like, buffer, tensor_base, n_tensor_slots = args
            self.kernel[_blocks(len(chunks)), _threads_per_block()](
                _on_device(params), _on_device(grads), slots, _on_device(offsets), _on_device(chunks), clip, scalars,
                like, buffer, _on_device(tensor_base), n_tensor_slots,
            )
        else:
            params, grads, buffer, offsets, sizes, dims, tensors, clip, scalars, like = args
            threads = _threads_per_block()
            self.kernel[_blocks(math.ceil(len(tensors) / threads)), threads](
                _on_device(params), _on_device(grads), buffer, _on_device(offsets), _on_device(sizes), _on_device(dims),
                _on_device(tensors), clip, scalars, like,
            )


_PHASE_KERNELS: dict[tuple[str, Callable[..., Any], int], PhaseLauncher] = {}


def phase_kernel(kind: str, function: Callable[..., Any], n_slots: int, parallel: bool = True) -> PhaseLauncher:
    """The launcher of one phase's CUDA kernel (see ``numbaopt.kernels.cpu.phase_kernel``)."""
    launcher = _PHASE_KERNELS.get((kind, function, n_slots))
    if launcher is None:
        if kind == "element":
            template, compiled = loop_for(PHASE_TEMPLATES, function, n_slots), {"RULE": _with_clipping(function)}
        else:
            template, compiled = loop_for(TENSOR_TEMPLATES, function, n_slots), {"FUNCTION": _with_clipping(function)}
        copy = specialise(template, function, compiled, depends_on=(_clip_gradient, *helpers(function)), variant=kind)
        launcher = _PHASE_KERNELS[kind, function, n_slots] = PhaseLauncher(kind, cached(cuda.jit)(copy))
    return launcher
