"""CPU kernels: one loop per shape of rule, over the chunks of all tensors at once.

A step of a parameter group is one kernel call, whatever the number of tensors: the
kernel gets the data addresses of the parameters and gradients, the group's slots as one
buffer (a row per slot kind), a table of chunks ``(tensor, start, stop)`` and the
launch's ``work`` counters. The threads of a launch claim chunks one at a time from
``work`` until none is left: Numba's team, in the parallel build of a kernel, or, in the
other build, the calling thread and the helper threads of ``numbaopt.threads`` that are
free (``numbaopt.kernels.handoff`` hands them the launch). Each chunk is one thread's,
with the same code, so results never depend on which threads ran, or how many. The
per-element math is each optimizer's rule, handed to ``update_kernel`` and compiled here
with ``njit``; the CUDA kernels compile the same functions.

What makes the loops run at the speed of the memory:

- ``error_model="numpy"`` everywhere. Numba's default ("python") checks every float
  division for zero in order to raise ``ZeroDivisionError``; that branch per element
  stops LLVM from vectorising the loop, and it is not Keras's arithmetic anyway (a
  division by zero gives Inf or NaN in TensorFlow, as it does here).
- Parameters, gradients and slot rows are raw typed pointers indexed from 0 upwards: no
  negative-index wraparound code, so the inner loop is a plain counted loop that LLVM
  turns into packed vector code, 512-bit with AVX-512 (checked by ``tests/test_kernels.py``).
- Two inner loops per kernel, from one written loop: the clipped one applies
  ``clip_gradient`` (a division per element), the other ``_unclipped``, taken when
  clipping is off, where ``clip_gradient`` would return every value unchanged anyway
  (``g * 1 / 1``, clipvalue +Inf). The results are bitwise the same; the division is saved.
- The element loops are ``inline="always"`` templates that take the rule as an argument;
  the kernel that calls them names its rule as a global (``numbaopt.kernels.specialise``),
  which keeps both the on-disk cache and the vector code.

Imported only when a kernel is first needed, so ``import numbaopt`` does not import Numba.
The callers check every address, size and dtype before a kernel runs: nothing here
checks bounds.
"""
import contextlib
import math
from collections.abc import Callable
from typing import Any

import numba
import numpy as np
import numpy.typing as npt
from numba import njit, prange, types
from llvmlite import binding as llvm, ir  # type: ignore[import-untyped]
from numba.extending import intrinsic

from numbaopt import halves, quantization
from numbaopt.clipping import clip_gradient as _clip_gradient
from numbaopt.kernels import cached, code_digest, helpers, loop_for, renamed, specialise, with_helpers
from numbaopt.kernels.handoff import CLAIMED, DONE, WORKERS, fetch_add

#: The compile options of every function here (see the module docstring for why).
_element = njit(error_model="numpy")
_template = njit(inline="always", error_model="numpy")
#: Two builds of each kernel, the same loops and results: one whose chunks Numba's threads
#: share (``parallel``), and one that releases the GIL, run on the calling thread alone or
#: beside ``numbaopt.threads``'s helper threads.
_kernel = cached(njit, parallel=True, error_model="numpy")
_serial_kernel = cached(njit, nogil=True, error_model="numpy")

clip_gradient = _element(_clip_gradient)


@intrinsic
def pointer(typingctx: Any, address: Any, like: Any) -> tuple[Any, Callable[..., Any]]:
    """A typed pointer to the memory at integer ``address``, of ``like``'s element type."""
    pointer_type = types.CPointer(like.dtype)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.inttoptr(args[0], context.get_value_type(pointer_type))

    return pointer_type(types.intp, like), codegen


@intrinsic
def _row(typingctx: Any, slots: Any, kind: Any, offset: Any) -> tuple[Any, Callable[..., Any]]:
    """A typed pointer to element ``offset`` of row ``kind`` of the 2-d C-contiguous ``slots``."""
    pointer_type = types.CPointer(slots.dtype)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        array = context.make_array(signature.args[0])(context, builder, value=args[0])
        width = builder.extract_value(array.shape, 1)
        return builder.gep(array.data, [builder.add(builder.mul(args[1], width), args[2])])

    return pointer_type(slots, types.intp, types.intp), codegen


@intrinsic
def _prefetch(typingctx: Any, base: Any, index: Any) -> tuple[Any, Callable[..., Any]]:
    """Ask the processor to bring element ``index`` of typed pointer ``base`` into its
    caches (``llvm.prefetch``): a hint, which never faults, whatever the address, and
    changes no value."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        byte_pointer = ir.IntType(8).as_pointer()
        address = builder.bitcast(builder.gep(args[0], [args[1]]), byte_pointer)
        i32 = ir.IntType(32)
        function = builder.module.declare_intrinsic("llvm.prefetch", [byte_pointer],
                                                    ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32]))
        builder.call(function, [address, i32(0), i32(3), i32(1)])  # for reading, kept in every cache level, data
        return context.get_dummy_value()

    return types.none(base, types.intp), codegen


#: Processors whose 512-bit vectors slow the core's clock enough to lose what they gain
#: (Intel's first AVX-512 servers); LLVM's names.
_NARROW_VECTOR_CPUS = frozenset({"skylake-avx512", "cascadelake", "cooperlake"})


@intrinsic
def _wide_vectors(typingctx: Any) -> tuple[Any, Callable[..., Any]]:
    """Let LLVM vectorise the function this is called in with 512-bit vectors where the
    processor has them (its ``prefer-vector-width``; by default 256). The 8-bit loops are
    limited by integer instructions, not memory: 16 lanes made a step over 5e7 parameters
    some 15% faster on an AVX-512 Intel processor (docs/benchmarks.md). The float32 loops,
    limited by memory and the divider, gained nothing. A hint: results are bitwise the same."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        if (numba.config.CPU_NAME or llvm.get_host_cpu_name()) not in _NARROW_VECTOR_CPUS:
            # llvmlite checks attribute names against the keywords it knows, and prints its
            # set of them as it is: a string attribute goes in past the check.
            with contextlib.suppress(TypeError, AttributeError):  # an llvmlite that keeps them otherwise: no hint
                set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()

    return types.none(), codegen


@njit(inline="always")
def _claim(work: npt.NDArray[np.int64]) -> int:
    """The next unclaimed chunk (>= the chunk count once all are claimed)."""
    return int(fetch_add(work, CLAIMED, 1))


@njit(inline="always")
def _done(work: npt.NDArray[np.int64]) -> None:
    fetch_add(work, DONE, 1)


#: Accumulators per chunk of the global norm: enough independent float64 sums that the
#: loop is limited by memory, not by the latency of one vector addition after another.
_LANES = 64


#: The global of each copy of ``_sum_of_squares``: how a gradient element is read.
READ: Callable[[Any], float]


def _sum_of_squares(
    grads: npt.NDArray[np.int64], chunks: npt.NDArray[np.int64], like: npt.NDArray[Any], partial_sums: npt.NDArray[np.float64],
    work: npt.NDArray[np.int64],
) -> None:
    """``partial_sums[c]`` = the float64 sum of squares of chunk ``c`` of the gradients.

    Each chunk is summed by one thread in a fixed order: element ``i`` goes to accumulator
    ``i % 64`` (counted from the chunk's start), and the 64 sums are then added pairwise
    in a fixed tree. So the result never depends on the thread count (a reduction
    would), and LLVM can keep the accumulators in vector registers without reordering a
    single float64 addition. Eight accumulators were latency-bound at half the bandwidth.
    """
    for _ in prange(work[WORKERS]):
        c = _claim(work)
        while c < chunks.shape[0]:
            tensor, start, stop = chunks[c, 0], chunks[c, 1], chunks[c, 2]
            g = pointer(grads[tensor], like)
            acc = np.zeros(_LANES)
            blocks = (stop - start) // _LANES
            for k in range(blocks):
                base = start + _LANES * k
                for lane in range(_LANES):
                    x = numba.float64(READ(g[base + lane]))  # noqa: F821
                    acc[lane] += x * x
            for i in range(start + _LANES * blocks, stop):
                x = numba.float64(READ(g[i]))  # noqa: F821
                acc[i - start - _LANES * blocks] += x * x
            width = _LANES
            while width > 1:
                width //= 2
                for lane in range(width):
                    acc[lane] += acc[lane + width]
            partial_sums[c] = acc[0]
            _done(work)
            c = _claim(work)


@njit(inline="always")
def _clipping(clip: tuple[float, float, float]) -> bool:
    """Whether ``clip_gradient(g, *clip)`` can change a value: not when it is ``g * 1 / 1``
    with clipvalue +Inf, the arguments for clipping off. (A factor ``c / c`` with ``c != 1``
    could: ``g * c`` is rounded before the division.)"""
    return not (clip[0] == 1 and clip[1] == 1 and clip[2] == math.inf)


@_element
def _unclipped(g: float, norm_numerator: float, norm_denominator: float, clipvalue: float) -> float:
    """``g`` itself: what ``clip_gradient`` returns when clipping is off, without its division."""
    return g


# The element loops, one per number of slots: ``rule`` on elements ``start:stop`` of one
# tensor, its gradient passed through ``gradient`` (``clip_gradient`` or ``_unclipped``).
# ``p``, ``g`` and the slot rows are typed pointers (``pointer``, ``_row``), hence ``Any``.


@_template
def _no_slot(
    rule: Callable[..., tuple[float, ...]], gradient: Callable[..., float], p: Any, g: Any, slots: npt.NDArray[Any],
    offset: int, start: int, stop: int, clip: tuple[float, float, float], scalars: tuple[float, ...],
) -> None:
    for i in range(start, stop):
        (p[i],) = rule(p[i], gradient(g[i], *clip), *scalars)


@_template
def _one_slot(
    rule: Callable[..., tuple[float, ...]], gradient: Callable[..., float], p: Any, g: Any, slots: npt.NDArray[Any],
    offset: int, start: int, stop: int, clip: tuple[float, float, float], scalars: tuple[float, ...],
) -> None:
    a = _row(slots, 0, offset)
    for i in range(start, stop):
        p[i], a[i] = rule(p[i], gradient(g[i], *clip), a[i], *scalars)


@_template
def _two_slots(
    rule: Callable[..., tuple[float, ...]], gradient: Callable[..., float], p: Any, g: Any, slots: npt.NDArray[Any],
    offset: int, start: int, stop: int, clip: tuple[float, float, float], scalars: tuple[float, ...],
) -> None:
    a, b = _row(slots, 0, offset), _row(slots, 1, offset)
    for i in range(start, stop):
        p[i], a[i], b[i] = rule(p[i], gradient(g[i], *clip), a[i], b[i], *scalars)


@_template
def _three_slots(
    rule: Callable[..., tuple[float, ...]], gradient: Callable[..., float], p: Any, g: Any, slots: npt.NDArray[Any],
    offset: int, start: int, stop: int, clip: tuple[float, float, float], scalars: tuple[float, ...],
) -> None:
    a, b, c = _row(slots, 0, offset), _row(slots, 1, offset), _row(slots, 2, offset)
    for i in range(start, stop):
        p[i], a[i], b[i], c[i] = rule(p[i], gradient(g[i], *clip), a[i], b[i], c[i], *scalars)


#: The element loop for each number of slots a rule keeps per element.
ELEMENT_LOOPS: dict[int, Any] = {0: _no_slot, 1: _one_slot, 2: _two_slots, 3: _three_slots}

# The globals of each per-rule copy of ``_update_step`` (declared for the type checker only:
# this module itself binds neither).
RULE: Callable[..., tuple[float, ...]]
ELEMENTS: Callable[..., None]


def _update_step(
    params: npt.NDArray[np.int64], grads: npt.NDArray[np.int64], slots: npt.NDArray[Any], offsets: npt.NDArray[np.int64],
    chunks: npt.NDArray[np.int64], clip: tuple[float, float, float], scalars: tuple[float, ...], like: npt.NDArray[Any],
    work: npt.NDArray[np.int64],
) -> None:
    """One step of ``RULE`` over every chunk of a group, in place (``RULE`` and ``ELEMENTS``
    are the globals ``update_kernel`` binds). ``like`` has the parameters' dtype, which
    may differ from the slots'."""
    clipping = _clipping(clip)
    for _ in prange(work[WORKERS]):
        c = _claim(work)
        while c < chunks.shape[0]:
            j, start, stop = chunks[c, 0], chunks[c, 1], chunks[c, 2]
            p, g = pointer(params[j], like), pointer(grads[j], like)
            if clipping:
                ELEMENTS(RULE, clip_gradient, p, g, slots, offsets[j], start, stop, clip, scalars)  # noqa: F821
            else:
                ELEMENTS(RULE, _unclipped, p, g, slots, offsets[j], start, stop, clip, scalars)  # noqa: F821
            _done(work)
            c = _claim(work)



# ------------------------------------------------------------ 16-bit and 8-bit storage
#
# Parameters of 16 bits (``numbaopt.halves``) and slots stored in bfloat16 or 8 bits
# (``numbaopt.quantization``) take copies of the loops above that convert what they read
# and write: the float32 and float64 loops stay exactly as they were. The converters are
# the globals of each copy: ``READ_P`` / ``WRITE_P`` for parameters and gradients,
# ``READ_S`` / ``WRITE_S`` for slots. ``WRITE_P(x, seed, index)`` may round
# stochastically, from ``seed`` and the element's index in its group's rows;
# ``WRITE_S(x, row, random)`` (``quantization.SLOT_WRITERS``) does for a slot of map
# ``row``, by the slot's random bits (``quantization.random_for``, which float32 slots
# leave unused and LLVM drops). ``MAPS``: the slots' maps (``quantization.map_index``),
# constants of the kernel.

READ_P: Callable[[Any], Any]
WRITE_P: Callable[[Any, Any, Any], Any]
READ_S: Callable[[Any], Any]
WRITE_S: Callable[[Any, Any, Any], Any]
MAPS: tuple[int, ...]


@_template
def _random_bits(stream: Any, i: int) -> Any:
    """Element ``i``'s random bits in its slot's ``stream``, which a chunk's elements share
    (``slots.chunk_table``): ``quantization.random_for`` without a stream per element."""
    low = np.uint32(i)  # the index's low 32 bits: the key's are 0
    return _HALF(_WORD(stream, np.uint32(low >> np.uint32(1))), low)


@_template
def _converted_no_slot(rule: Any, gradient: Any, read_p: Any, write_p: Any, read_s: Any, write_s: Any, p: Any, g: Any, slots: Any, offset: int, start: int, stop: int,
                       clip: Any, scalars: Any, seed: Any, key: Any, quantized: Any) -> None:
    for i in range(start, stop):
        (x,) = rule(read_p(p[i]), gradient(read_p(g[i]), *clip), *scalars)
        p[i] = write_p(x, seed, key + i)


@_template
def _converted_one_slot(rule: Any, gradient: Any, read_p: Any, write_p: Any, read_s: Any, write_s: Any, p: Any, g: Any, slots: Any, offset: int, start: int, stop: int,
                        clip: Any, scalars: Any, seed: Any, key: Any, quantized: Any) -> None:
    _, maps = quantized
    a = _row(slots, 0, offset)
    ra = _STREAM(seed, 0, key + np.uint64(start))
    for i in range(start, stop):
        x, y = rule(read_p(p[i]), gradient(read_p(g[i]), *clip), read_s(a[i]), *scalars)
        p[i], a[i] = write_p(x, seed, key + i), write_s(y, maps[0], _random_bits(ra, i))


@_template
def _converted_two_slots(rule: Any, gradient: Any, read_p: Any, write_p: Any, read_s: Any, write_s: Any, p: Any, g: Any, slots: Any, offset: int, start: int, stop: int,
                         clip: Any, scalars: Any, seed: Any, key: Any, quantized: Any) -> None:
    _, maps = quantized
    a, b = _row(slots, 0, offset), _row(slots, 1, offset)
    first = key + np.uint64(start)
    ra, rb = _STREAM(seed, 0, first), _STREAM(seed, 1, first)
    for i in range(start, stop):
        x, y, z = rule(read_p(p[i]), gradient(read_p(g[i]), *clip), read_s(a[i]), read_s(b[i]), *scalars)
        p[i] = write_p(x, seed, key + i)
        a[i], b[i] = write_s(y, maps[0], _random_bits(ra, i)), write_s(z, maps[1], _random_bits(rb, i))


@_template
def _converted_three_slots(rule: Any, gradient: Any, read_p: Any, write_p: Any, read_s: Any, write_s: Any, p: Any, g: Any, slots: Any, offset: int, start: int, stop: int,
                           clip: Any, scalars: Any, seed: Any, key: Any, quantized: Any) -> None:
    _, maps = quantized
    a, b, c = _row(slots, 0, offset), _row(slots, 1, offset), _row(slots, 2, offset)
    first = key + np.uint64(start)
    ra, rb, rc = _STREAM(seed, 0, first), _STREAM(seed, 1, first), _STREAM(seed, 2, first)
    for i in range(start, stop):
        x, y, z, w = rule(read_p(p[i]), gradient(read_p(g[i]), *clip), read_s(a[i]), read_s(b[i]), read_s(c[i]),
                          *scalars)
        p[i] = write_p(x, seed, key + i)
        a[i], b[i] = write_s(y, maps[0], _random_bits(ra, i)), write_s(z, maps[1], _random_bits(rb, i))
        c[i] = write_s(w, maps[2], _random_bits(rc, i))


#: The converting element loop for each number of slots.
CONVERTED_LOOPS: dict[int, Any] = {0: _converted_no_slot, 1: _converted_one_slot, 2: _converted_two_slots,
                                   3: _converted_three_slots}


def _stored_step(
    params: npt.NDArray[np.int64], grads: npt.NDArray[np.int64], slots: npt.NDArray[Any], offsets: npt.NDArray[np.int64],
    chunks: npt.NDArray[np.int64], clip: tuple[float, float, float], scalars: tuple[float, ...], like: npt.NDArray[Any],
    seed: np.uint64, quantized: tuple[Any, ...], work: npt.NDArray[np.int64],
) -> None:
    """``_update_step`` through the converters: 16-bit parameters, bfloat16 or 8-bit slots.
    ``quantized`` is ``(scales,)``: for 8-bit slots (whose ``slots`` are the codes) the
    blocks' absmax, else empty; the element loops get it with the slots' maps, ``MAPS``, a
    constant of the kernel (the converting loops use the maps only)."""
    clipping = _clipping(clip)
    for _ in prange(work[WORKERS]):
        c = _claim(work)
        while c < chunks.shape[0]:
            j, start, stop = chunks[c, 0], chunks[c, 1], chunks[c, 2]
            p, g = pointer(params[j], like), pointer(grads[j], like)
            if clipping:
                ELEMENTS(RULE, clip_gradient, READ_P, WRITE_P, READ_S, WRITE_S, p,  # noqa: F821
                         g, slots, offsets[j], start, stop, clip, scalars, seed, _key(j), quantized + (MAPS,))  # noqa: F821
            else:
                ELEMENTS(RULE, _unclipped, READ_P, WRITE_P, READ_S, WRITE_S, p,  # noqa: F821
                         g, slots, offsets[j], start, stop, clip, scalars, seed, _key(j), quantized + (MAPS,))  # noqa: F821
            _done(work)
            c = _claim(work)


@njit(inline="always")
def _key(j: int) -> Any:
    """Where tensor ``j``'s elements start among the keys of stochastic rounding's random
    bits (``halves.random_bits``): element ``i`` of it draws from key ``_key(j) + i``, the
    same whatever other tensors the group holds or which rank steps it."""
    return np.uint64(j) << np.uint64(40)


# 8-bit slots: a block of ``BLOCK`` elements at a time, in short loops over it that each
# vectorise (one loop doing it all ran 4 lanes a vector, and took twice as long): each
# slot's codes decoded (``quantization.decode`` times the block's absmax) into ``staged``
# (one block per slot, float32); the rule over ``staged`` in place, as the float32 loop,
# which also takes each slot's new absmax (the maximum of the magnitudes' bits: a
# non-negative float32 orders as its bits do, and an integer maximum vectorises; in a loop
# of its own it cost some 10% more) and stages the unsigned map's roots there
# (``quantization.staged``: the rule has just computed the same root, and LLVM computes it
# once; in the encode loop it cost 8%); then per slot the codes (``quantization.encode``), those of
# the unsigned map rounded by the slot's random bits, one hash (``quantization.random_word``) for
# each two elements. One pass over the state; a block is one thread's.
# Each block first prefetches the memory of the block ``_AHEAD`` elements on: these loops
# compute enough per element that the processor's own prefetching fell behind, and the
# step at 5e7 took 1.7-1.8 times the float32 step's time instead of 1.6 (``benchmarks/memory.py``).

BLOCK = quantization.BLOCK
_STAGED, _INVERSE_SCALE, _ENCODE, _DECODE, _ROUNDING, _STREAM, _WORD, _HALF = (
    _element(with_helpers(f, _element, {})) for f in quantization.ELEMENT_FUNCTIONS)
_MAGNITUDE, _INFINITY = np.int32(0x7FFFFFFF), np.int32(0x7F800000)
_SMALLEST_ABSMAX = quantization.SMALLEST_ABSMAX
#: Only slots of this map round by the random words (``quantization.rounding``): no words for the others.
_RANDOM_ROW = quantization.RANDOM_ROW


#: How far ahead of the block being updated the 8-bit loops prefetch (one block did as well, four no better).
_AHEAD = 2 * BLOCK


@_template
def _prefetch_block(p: Any, g: Any, first: int) -> None:
    """Prefetch the parameters and gradients of the block at ``first``: one hint per 64
    bytes of float32 (two per line of 16-bit ones, which costs nothing)."""
    for i in range(first, first + BLOCK, 16):
        _prefetch(p, i)
        _prefetch(g, i)


@_template
def _bits_magnitude(x: Any) -> Any:
    """The bits of ``|x|`` (a float32) as int32, or 0 for NaN and infinity: what the absmax
    takes the maximum of (int32 throughout: see ``numbaopt.quantization`` on why)."""
    bits = np.int32(np.float32(x).view(np.int32) & _MAGNITUDE)
    return bits if bits < _INFINITY else np.int32(0)


@_template
def _decode(staged: Any, codes: Any, first: int, last: int, row: Any, scale: Any) -> None:
    """Decodes ``codes[first:last]`` into ``staged``, having prefetched the codes ``_AHEAD``
    elements on (64 bytes a hint)."""
    for i in range(first + _AHEAD, first + _AHEAD + BLOCK, 64):
        _prefetch(codes, i)
    for i in range(first, last):
        staged[i - first] = _DECODE(codes[i], row) * scale


@_template
def _random_words(words: Any, first: int, last: int, seed: Any, slot: int, key: Any) -> None:
    """The block's random bits of slot kind ``slot``, one word for each two elements, each
    element its half: a block's elements share ``index >> 32`` (blocks are aligned), hence
    one stream, and start at an even index."""
    stream, pair = _STREAM(seed, slot, key + np.uint64(first)), np.uint32(first >> 1)  # the key's low 32 bits are 0
    for m in range((last - first + 1) // 2):
        word = _WORD(stream, np.uint32(pair + np.uint32(m)))
        words[2 * m] = _HALF(word, np.uint32(0))
        words[2 * m + 1] = _HALF(word, np.uint32(1))


@_template
def _encode(codes: Any, staged: Any, first: int, last: int, row: Any, top: Any, words: Any, seed: Any, slot: int, key: Any) -> Any:
    """Encodes ``staged`` into ``codes[first:last]`` over its absmax, whose bits are ``top``
    (the largest ``_bits_magnitude``: of the finite values; 0 if subnormal), in the unsigned
    map rounded by slot kind ``slot``'s random bits (``_random_words``, into ``words``);
    returns the absmax."""
    absmax = np.int32(top).view(np.float32)
    if absmax < _SMALLEST_ABSMAX:
        absmax = np.float32(0)
    inverse = _INVERSE_SCALE(absmax, row)
    if row == _RANDOM_ROW:
        _random_words(words, first, last, seed, slot, key)
    for i in range(first, last):
        codes[i] = _ENCODE(staged[i - first] * inverse, row, _ROUNDING(row, words[i - first]))
    return absmax


@_template
def _q8_one_slot(rule: Any, gradient: Any, read_p: Any, write_p: Any, read_s: Any, write_s: Any, p: Any, g: Any, slots: Any, offset: int, start: int, stop: int, clip: Any,
                 scalars: Any, seed: Any, key: Any, quantized: Any) -> None:
    _wide_vectors()
    scales, maps = quantized
    a = _row(slots, 0, offset)
    sa, words = np.empty(BLOCK, np.float32), np.empty(BLOCK, np.uint32)
    for first in range(start, stop, BLOCK):
        last, k = min(first + BLOCK, stop), (offset + first) // BLOCK
        _prefetch_block(p, g, first + _AHEAD)
        _decode(sa, a, first, last, maps[0], scales[0, k])
        ta = np.int32(0)
        for i in range(first, last):
            j = i - first
            x, ya = rule(read_p(p[i]), gradient(read_p(g[i]), *clip), sa[j], *scalars)
            sa[j], ta = _STAGED(ya, maps[0]), max(ta, _bits_magnitude(ya))
            p[i] = write_p(x, seed, key + i)
        scales[0, k] = _encode(a, sa, first, last, maps[0], ta, words, seed, 0, key)


@_template
def _q8_two_slots(rule: Any, gradient: Any, read_p: Any, write_p: Any, read_s: Any, write_s: Any, p: Any, g: Any, slots: Any, offset: int, start: int, stop: int, clip: Any,
                  scalars: Any, seed: Any, key: Any, quantized: Any) -> None:
    _wide_vectors()
    scales, maps = quantized
    a, b = _row(slots, 0, offset), _row(slots, 1, offset)
    sa, sb, words = np.empty(BLOCK, np.float32), np.empty(BLOCK, np.float32), np.empty(BLOCK, np.uint32)
    for first in range(start, stop, BLOCK):
        last, k = min(first + BLOCK, stop), (offset + first) // BLOCK
        _prefetch_block(p, g, first + _AHEAD)
        _decode(sa, a, first, last, maps[0], scales[0, k])
        _decode(sb, b, first, last, maps[1], scales[1, k])
        ta, tb = np.int32(0), np.int32(0)
        for i in range(first, last):
            j = i - first
            x, ya, yb = rule(read_p(p[i]), gradient(read_p(g[i]), *clip), sa[j], sb[j], *scalars)
            sa[j], ta = _STAGED(ya, maps[0]), max(ta, _bits_magnitude(ya))
            sb[j], tb = _STAGED(yb, maps[1]), max(tb, _bits_magnitude(yb))
            p[i] = write_p(x, seed, key + i)
        scales[0, k] = _encode(a, sa, first, last, maps[0], ta, words, seed, 0, key)
        scales[1, k] = _encode(b, sb, first, last, maps[1], tb, words, seed, 1, key)


@_template
def _q8_three_slots(rule: Any, gradient: Any, read_p: Any, write_p: Any, read_s: Any, write_s: Any, p: Any, g: Any, slots: Any, offset: int, start: int, stop: int, clip: Any,
                    scalars: Any, seed: Any, key: Any, quantized: Any) -> None:
    _wide_vectors()
    scales, maps = quantized
    a, b, c = _row(slots, 0, offset), _row(slots, 1, offset), _row(slots, 2, offset)
    sa, sb, sc = np.empty(BLOCK, np.float32), np.empty(BLOCK, np.float32), np.empty(BLOCK, np.float32)
    words = np.empty(BLOCK, np.uint32)
    for first in range(start, stop, BLOCK):
        last, k = min(first + BLOCK, stop), (offset + first) // BLOCK
        _prefetch_block(p, g, first + _AHEAD)
        _decode(sa, a, first, last, maps[0], scales[0, k])
        _decode(sb, b, first, last, maps[1], scales[1, k])
        _decode(sc, c, first, last, maps[2], scales[2, k])
        ta, tb, tc = np.int32(0), np.int32(0), np.int32(0)
        for i in range(first, last):
            j = i - first
            x, ya, yb, yc = rule(read_p(p[i]), gradient(read_p(g[i]), *clip), sa[j], sb[j], sc[j], *scalars)
            sa[j], ta = _STAGED(ya, maps[0]), max(ta, _bits_magnitude(ya))
            sb[j], tb = _STAGED(yb, maps[1]), max(tb, _bits_magnitude(yb))
            sc[j], tc = _STAGED(yc, maps[2]), max(tc, _bits_magnitude(yc))
            p[i] = write_p(x, seed, key + i)
        scales[0, k] = _encode(a, sa, first, last, maps[0], ta, words, seed, 0, key)
        scales[1, k] = _encode(b, sb, first, last, maps[1], tb, words, seed, 1, key)
        scales[2, k] = _encode(c, sc, first, last, maps[2], tc, words, seed, 2, key)


#: The 8-bit element loop for each number of slots.
Q8_LOOPS: dict[int, Any] = {1: _q8_one_slot, 2: _q8_two_slots, 3: _q8_three_slots}


def _converter(function: Callable[..., Any]) -> Any:
    """A ``numbaopt.halves`` function compiled for the CPU, with the helpers it calls."""
    return _element(with_helpers(function, _element, {}))


_READ = {form: _converter(function) for form, function in halves.READERS.items()}
_WRITE = {key: _converter(function) for key, function in halves.WRITERS.items()}
_WRITE_SLOT = {form: _converter(function) for form, function in quantization.SLOT_WRITERS.items()}
_CONVERTER_CODE: list[Callable[..., Any]] = [*halves.READERS.values(), *halves.WRITERS.values(), *quantization.ELEMENT_FUNCTIONS,
                                             *quantization.SLOT_WRITERS.values()]
_CONVERTER_CODE += [helper for function in list(_CONVERTER_CODE) for helper in helpers(function)]


def _compiled_rule(rule: Callable[..., tuple[float, ...]]) -> Any:
    """``rule`` compiled, with the helpers of its package it calls (``numbaopt.kernels.helpers``)."""
    return _element(with_helpers(rule, _element, {}))


def _storage_kernel(
    rule: Callable[..., tuple[float, ...]], n_slots: int, parallel: bool, formats: tuple[str, str], stochastic: bool,
    maps: tuple[int, ...],
) -> Any:
    """The kernel of ``rule`` for parameters and slots of ``formats`` (``slots.storage_formats``),
    8-bit slots in ``maps``."""
    parameters, slots = formats
    quantized = slots == "q8" and n_slots > 0
    compiled = {
        "RULE": _compiled_rule(rule), "MAPS": maps,
        "ELEMENTS": loop_for(Q8_LOOPS if quantized else CONVERTED_LOOPS, rule, n_slots),
        "READ_P": _READ[parameters], "WRITE_P": _WRITE[parameters, stochastic and parameters != "native"],
        "READ_S": _READ["bfloat16" if slots == "bfloat16" else "native"],
        "WRITE_S": _WRITE_SLOT["bfloat16" if slots == "bfloat16" else "native"],
    }
    rounding = "stochastic" if stochastic and parameters != "native" else "nearest"
    # The maps are compiled in (each map's own arithmetic, 10% faster than choosing per value):
    # Numba's cache does not tell globals apart, so the name does.
    variant = f"{parameters}_{slots}{''.join(map(str, maps))}_{rounding}" + ("" if parallel else "_serial")
    function = specialise(_stored_step, rule, compiled, depends_on=(_clip_gradient, *_CONVERTER_CODE, *helpers(rule)),
                          variant=variant)
    return (_kernel if parallel else _serial_kernel)(function)


_UPDATE_KERNELS: dict[tuple[Callable[..., tuple[float, ...]], int, bool], Any] = {}  # Numba dispatchers
_STORAGE_KERNELS: dict[tuple[Any, ...], Any] = {}


def update_kernel(
    rule: Callable[..., tuple[float, ...]], n_slots: int, parallel: bool = True,
    formats: tuple[str, str] = ("native", "native"), stochastic: bool = False, maps: tuple[int, ...] = (),
) -> Any:
    """The CPU kernel that applies ``rule`` (a plain Python element rule) with ``n_slots``
    slots per element: ``kernel(params, grads, slots, offsets, chunks, clip, scalars, like,
    work)`` (``like``: an empty array of the parameters' dtype; ``work``: the launch's
    counters, see the module's docstring). Made once per rule and process; compiled on
    its first call, or loaded from the on-disk cache.

    Other ``formats`` (16-bit parameters, bfloat16 or 8-bit slots: ``slots.storage_formats``)
    take a converting kernel whose arguments before ``work`` go on with a ``seed`` (uint64;
    8-bit and bfloat16 slots, and 16-bit parameters if ``stochastic``, round by random bits
    drawn from it) and a tuple ``(scales,)``: for 8-bit slots the blocks' absmax, else empty. ``maps`` has
    one ``quantization.map_index`` per slot: an 8-bit slot's map, and whether a bfloat16
    slot rounds stochastically."""
    if formats != ("native", "native"):
        key = (rule, n_slots, parallel, formats, stochastic, maps)
        kernel = _STORAGE_KERNELS.get(key)
        if kernel is None:
            kernel = _STORAGE_KERNELS[key] = _storage_kernel(rule, n_slots, parallel, formats, stochastic, maps)
        return kernel
    kernel = _UPDATE_KERNELS.get((rule, n_slots, parallel))
    if kernel is None:
        compiled = {"RULE": _compiled_rule(rule), "ELEMENTS": loop_for(ELEMENT_LOOPS, rule, n_slots)}
        variant = "" if parallel else "serial"
        function = specialise(_update_step, rule, compiled, depends_on=(_clip_gradient, *helpers(rule)), variant=variant)
        kernel = _UPDATE_KERNELS[rule, n_slots, parallel] = (_kernel if parallel else _serial_kernel)(function)
    return kernel


_SUMS: dict[tuple[str, bool], Any] = {}


def sum_of_squares_kernel(form: str, parallel: bool) -> Any:
    """The kernel of the global norm's chunk sums for gradients of format ``form``
    (``"native"``, ``"bfloat16"``, ``"float16"``: ``slots.storage_formats``), the same sums
    bitwise whatever the threads: ``kernel(grads, chunks, like, partial_sums, work)``."""
    kernel = _SUMS.get((form, parallel))
    if kernel is None:
        digest = "" if form == "native" else "_" + code_digest(halves.READERS[form], *helpers(halves.READERS[form]))
        name = "sum_of_squares" + ("" if form == "native" else f"_{form}{digest}") + ("" if parallel else "_serial")
        function = renamed(_sum_of_squares, name, {"READ": _READ[form]})
        kernel = _SUMS[form, parallel] = (_kernel if parallel else _serial_kernel)(function)
    return kernel


# ------------------------------------------------------------------ phases
#
# An optimizer whose state is not all shaped like its parameters steps in phases
# (``numbaopt.phases``): element passes, whose rule also reads the tensor's per-tensor
# slots (``t``, a view of them side by side), and tensor passes, a function run once per
# tensor over views of every slot of that tensor, which computes the reductions (sums over
# rows, columns or the whole tensor) that later phases read. The threads share out the
# chunks in an element pass, the tensors in a tensor pass; every sum is the function's own
# loop over one tensor, so results do not depend on the number of threads.


@_template
def _phase_no_slot(
    rule: Callable[..., tuple[float, ...]], p: Any, g: Any, slots: npt.NDArray[Any], offset: int, start: int, stop: int,
    clip: tuple[float, float, float], t: npt.NDArray[Any], scalars: tuple[float, ...],
) -> None:
    for i in range(start, stop):
        p[i] = rule(p[i], clip_gradient(g[i], *clip), t, *scalars)[0]


@_template
def _phase_one_slot(
    rule: Callable[..., tuple[float, ...]], p: Any, g: Any, slots: npt.NDArray[Any], offset: int, start: int, stop: int,
    clip: tuple[float, float, float], t: npt.NDArray[Any], scalars: tuple[float, ...],
) -> None:
    a = _row(slots, 0, offset)
    for i in range(start, stop):
        p[i], a[i] = rule(p[i], clip_gradient(g[i], *clip), a[i], t, *scalars)


@_template
def _phase_two_slots(
    rule: Callable[..., tuple[float, ...]], p: Any, g: Any, slots: npt.NDArray[Any], offset: int, start: int, stop: int,
    clip: tuple[float, float, float], t: npt.NDArray[Any], scalars: tuple[float, ...],
) -> None:
    a, b = _row(slots, 0, offset), _row(slots, 1, offset)
    for i in range(start, stop):
        p[i], a[i], b[i] = rule(p[i], clip_gradient(g[i], *clip), a[i], b[i], t, *scalars)


@_template
def _phase_three_slots(
    rule: Callable[..., tuple[float, ...]], p: Any, g: Any, slots: npt.NDArray[Any], offset: int, start: int, stop: int,
    clip: tuple[float, float, float], t: npt.NDArray[Any], scalars: tuple[float, ...],
) -> None:
    a, b, c = _row(slots, 0, offset), _row(slots, 1, offset), _row(slots, 2, offset)
    for i in range(start, stop):
        p[i], a[i], b[i], c[i] = rule(p[i], clip_gradient(g[i], *clip), a[i], b[i], c[i], t, *scalars)


#: The element loop of an element pass, per number of element-shaped slots.
PHASE_LOOPS: dict[int, Any] = {0: _phase_no_slot, 1: _phase_one_slot, 2: _phase_two_slots, 3: _phase_three_slots}


def _element_pass(
    params: npt.NDArray[np.int64], grads: npt.NDArray[np.int64], slots: npt.NDArray[Any], offsets: npt.NDArray[np.int64],
    chunks: npt.NDArray[np.int64], clip: tuple[float, float, float], scalars: tuple[float, ...], like: npt.NDArray[Any],
    buffer: npt.NDArray[Any], tensor_base: npt.NDArray[np.int64], n_tensor_slots: int,
    work: npt.NDArray[np.int64],
) -> None:
    """An element pass of ``RULE`` over every chunk of a group (``ELEMENTS``: its loop)."""
    for _ in prange(work[WORKERS]):
        c = _claim(work)
        while c < chunks.shape[0]:
            j, start, stop = chunks[c, 0], chunks[c, 1], chunks[c, 2]
            p, g = pointer(params[j], like), pointer(grads[j], like)
            t = buffer[tensor_base[j] : tensor_base[j] + n_tensor_slots]
            ELEMENTS(RULE, p, g, slots, offsets[j], start, stop, clip, t, scalars)  # noqa: F821
            _done(work)
            c = _claim(work)


# The call of a tensor pass's function, per number of declared slots: the views of slot
# ``k`` of tensor ``j`` are ``buffer[offsets[k, j] : offsets[k, j] + sizes[k, j]]``.


@_template
def _tensor_one_slot(function: Callable[..., None], p: Any, g: Any, buffer: npt.NDArray[Any], o: Any, s: Any, j: int,
                     dims: Any, clip: tuple[float, float, float], scalars: tuple[float, ...]) -> None:
    function(p, g, buffer[o[0, j] : o[0, j] + s[0, j]], dims[j, 0], dims[j, 1], dims[j, 2], clip, *scalars)


@_template
def _tensor_two_slots(function: Callable[..., None], p: Any, g: Any, buffer: npt.NDArray[Any], o: Any, s: Any, j: int,
                      dims: Any, clip: tuple[float, float, float], scalars: tuple[float, ...]) -> None:
    function(p, g, buffer[o[0, j] : o[0, j] + s[0, j]], buffer[o[1, j] : o[1, j] + s[1, j]],
             dims[j, 0], dims[j, 1], dims[j, 2], clip, *scalars)


@_template
def _tensor_three_slots(function: Callable[..., None], p: Any, g: Any, buffer: npt.NDArray[Any], o: Any, s: Any, j: int,
                        dims: Any, clip: tuple[float, float, float], scalars: tuple[float, ...]) -> None:
    function(p, g, buffer[o[0, j] : o[0, j] + s[0, j]], buffer[o[1, j] : o[1, j] + s[1, j]],
             buffer[o[2, j] : o[2, j] + s[2, j]], dims[j, 0], dims[j, 1], dims[j, 2], clip, *scalars)


@_template
def _tensor_four_slots(function: Callable[..., None], p: Any, g: Any, buffer: npt.NDArray[Any], o: Any, s: Any, j: int,
                       dims: Any, clip: tuple[float, float, float], scalars: tuple[float, ...]) -> None:
    function(p, g, buffer[o[0, j] : o[0, j] + s[0, j]], buffer[o[1, j] : o[1, j] + s[1, j]],
             buffer[o[2, j] : o[2, j] + s[2, j]], buffer[o[3, j] : o[3, j] + s[3, j]],
             dims[j, 0], dims[j, 1], dims[j, 2], clip, *scalars)


#: The call of a tensor pass's function, per number of declared slots.
TENSOR_CALLS: dict[int, Any] = {1: _tensor_one_slot, 2: _tensor_two_slots, 3: _tensor_three_slots, 4: _tensor_four_slots}

#: The global of each per-function copy of ``_tensor_pass`` (declared for the type checker).
FUNCTION: Callable[..., None]
CALL: Callable[..., None]


def _tensor_pass(
    params: npt.NDArray[np.int64], grads: npt.NDArray[np.int64], buffer: npt.NDArray[Any], offsets: npt.NDArray[np.int64],
    sizes: npt.NDArray[np.int64], dims: npt.NDArray[np.int64], tensors: npt.NDArray[np.int64],
    clip: tuple[float, float, float], scalars: tuple[float, ...], like: npt.NDArray[Any],
    work: npt.NDArray[np.int64],
) -> None:
    """A tensor pass of ``FUNCTION`` over the group's ``tensors``, a tensor at a time per thread."""
    for _ in prange(work[WORKERS]):
        q = _claim(work)
        while q < tensors.shape[0]:
            j = tensors[q]
            p, g = pointer(params[j], like), pointer(grads[j], like)
            CALL(FUNCTION, p, g, buffer, offsets, sizes, j, dims, clip, scalars)  # noqa: F821
            _done(work)
            q = _claim(work)


_PHASE_KERNELS: dict[tuple[str, Callable[..., Any], int, bool], Any] = {}


def _with_clipping(function: Callable[..., Any]) -> Any:
    """``function`` compiled with its global ``clip_gradient`` bound to the compiled one (a
    phase calls ``numbaopt.clipping.clip_gradient`` on the gradients it reads), and its
    module's helper functions compiled with it."""
    return _element(with_helpers(function, _element, {"clip_gradient": clip_gradient}))


def phase_kernel(kind: str, function: Callable[..., Any], n_slots: int, parallel: bool = True) -> Any:
    """The CPU kernel of one phase: ``kind`` ``"element"`` (``function`` an element rule of
    ``n_slots`` element-shaped slots) or ``"tensor"`` (``function`` a tensor function of
    ``n_slots`` declared slots). Made once per function and process; cached on disk."""
    key = (kind, function, n_slots, parallel)
    kernel = _PHASE_KERNELS.get(key)
    if kernel is None:
        template: Callable[..., None]
        if kind == "element":
            compiled = {"RULE": _with_clipping(function), "ELEMENTS": loop_for(PHASE_LOOPS, function, n_slots)}
            template = _element_pass
        else:
            compiled = {"FUNCTION": _with_clipping(function), "CALL": loop_for(TENSOR_CALLS, function, n_slots)}
            template = _tensor_pass
        variant = "" if parallel else "serial"
        copy = specialise(template, function, compiled, depends_on=(_clip_gradient, *helpers(function)), variant=variant)
        kernel = _PHASE_KERNELS[key] = (_kernel if parallel else _serial_kernel)(copy)
    return kernel
