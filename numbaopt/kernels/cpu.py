"""CPU kernels: one parallel loop per update rule, over the chunks of all tensors at once.

A step of a parameter group is one kernel call, whatever the number of tensors: the
kernel gets the data addresses of the parameters and gradients, the group's slots as one
buffer (a row per slot kind), and a table of chunks ``(tensor, start, stop)``; the
threads share out the chunks. The per-element math is each optimizer's rule, compiled
here with ``njit``; the CUDA kernels compile the same functions.

Imported only when a kernel is first needed, so ``import numbaopt`` does not import Numba.
The callers check every address, size and dtype before a kernel runs: nothing here
checks bounds.
"""
import numba
from numba import njit, prange, types
from numba.extending import intrinsic

from numbaopt.clipping import clip_gradient as _clip_gradient
from numbaopt.optimizers.adadelta import adadelta_rule as _adadelta_rule
from numbaopt.optimizers.adagrad import adagrad_rule as _adagrad_rule
from numbaopt.optimizers.adam import adam_rule as _adam_rule
from numbaopt.optimizers.adamax import adamax_rule as _adamax_rule
from numbaopt.optimizers.nadam import nadam_rule as _nadam_rule
from numbaopt.optimizers.rmsprop import rmsprop_rule as _rmsprop_rule
from numbaopt.optimizers.sgd import sgd_rule as _sgd_rule

clip_gradient = njit(_clip_gradient)
sgd_rule = njit(_sgd_rule)
rmsprop_rule = njit(_rmsprop_rule)
adagrad_rule = njit(_adagrad_rule)
adadelta_rule = njit(_adadelta_rule)
adam_rule = njit(_adam_rule)
adamax_rule = njit(_adamax_rule)
nadam_rule = njit(_nadam_rule)


@intrinsic
def _pointer(typingctx, address, like):
    """A typed pointer to the memory at integer ``address``, of ``like``'s element type."""
    pointer_type = types.CPointer(like.dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer_type))

    return pointer_type(types.intp, like), codegen


@njit(inline="always")
def _chunk(addresses, chunks, c, like):
    """Chunk ``c``'s tensor as a 1-d array, and the chunk's tensor index, start and stop."""
    tensor, start, stop = chunks[c, 0], chunks[c, 1], chunks[c, 2]
    return numba.carray(_pointer(addresses[tensor], like), stop), tensor, start, stop


@njit(parallel=True, cache=True)
def sum_of_squares(grads, chunks, like, partial_sums):
    """``partial_sums[c]`` = the float64 sum of squares of chunk ``c`` of the gradients.

    Each chunk is summed by one thread in a fixed order, with eight interleaved
    accumulators combined in a fixed order, so the result never depends on the thread
    count (a prange reduction would).
    """
    for c in prange(chunks.shape[0]):
        g, _, start, stop = _chunk(grads, chunks, c, like)
        lanes = (stop - start) // 8
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
        for k in range(lanes):
            i = start + 8 * k
            x0, x1, x2, x3 = numba.float64(g[i]), numba.float64(g[i + 1]), numba.float64(g[i + 2]), numba.float64(g[i + 3])
            x4, x5, x6, x7 = numba.float64(g[i + 4]), numba.float64(g[i + 5]), numba.float64(g[i + 6]), numba.float64(g[i + 7])
            s0 += x0 * x0
            s1 += x1 * x1
            s2 += x2 * x2
            s3 += x3 * x3
            s4 += x4 * x4
            s5 += x5 * x5
            s6 += x6 * x6
            s7 += x7 * x7
        for i in range(start + 8 * lanes, stop):
            x = numba.float64(g[i])
            s0 += x * x
        partial_sums[c] = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@njit(parallel=True, cache=True)
def sgd_step(params, grads, slots, offsets, chunks, clip, scalars):
    m = slots[0]
    for c in prange(chunks.shape[0]):
        p, j, start, stop = _chunk(params, chunks, c, slots)
        g = _chunk(grads, chunks, c, slots)[0]
        o = offsets[j]
        for i in range(start, stop):
            p[i], m[o + i] = sgd_rule(p[i], clip_gradient(g[i], *clip), m[o + i], *scalars)


@njit(parallel=True, cache=True)
def rmsprop_step(params, grads, slots, offsets, chunks, clip, scalars):
    a = slots[0]
    for c in prange(chunks.shape[0]):
        p, j, start, stop = _chunk(params, chunks, c, slots)
        g = _chunk(grads, chunks, c, slots)[0]
        o = offsets[j]
        for i in range(start, stop):
            p[i], a[o + i] = rmsprop_rule(p[i], clip_gradient(g[i], *clip), a[o + i], *scalars)


@njit(parallel=True, cache=True)
def adagrad_step(params, grads, slots, offsets, chunks, clip, scalars):
    a = slots[0]
    for c in prange(chunks.shape[0]):
        p, j, start, stop = _chunk(params, chunks, c, slots)
        g = _chunk(grads, chunks, c, slots)[0]
        o = offsets[j]
        for i in range(start, stop):
            p[i], a[o + i] = adagrad_rule(p[i], clip_gradient(g[i], *clip), a[o + i], *scalars)


@njit(parallel=True, cache=True)
def adadelta_step(params, grads, slots, offsets, chunks, clip, scalars):
    a, d = slots[0], slots[1]
    for c in prange(chunks.shape[0]):
        p, j, start, stop = _chunk(params, chunks, c, slots)
        g = _chunk(grads, chunks, c, slots)[0]
        o = offsets[j]
        for i in range(start, stop):
            p[i], a[o + i], d[o + i] = adadelta_rule(
                p[i], clip_gradient(g[i], *clip), a[o + i], d[o + i], *scalars
            )


@njit(parallel=True, cache=True)
def adam_step(params, grads, slots, offsets, chunks, clip, scalars):
    m, v = slots[0], slots[1]
    for c in prange(chunks.shape[0]):
        p, j, start, stop = _chunk(params, chunks, c, slots)
        g = _chunk(grads, chunks, c, slots)[0]
        o = offsets[j]
        for i in range(start, stop):
            p[i], m[o + i], v[o + i] = adam_rule(p[i], clip_gradient(g[i], *clip), m[o + i], v[o + i], *scalars)


@njit(parallel=True, cache=True)
def adamax_step(params, grads, slots, offsets, chunks, clip, scalars):
    m, u = slots[0], slots[1]
    for c in prange(chunks.shape[0]):
        p, j, start, stop = _chunk(params, chunks, c, slots)
        g = _chunk(grads, chunks, c, slots)[0]
        o = offsets[j]
        for i in range(start, stop):
            p[i], m[o + i], u[o + i] = adamax_rule(p[i], clip_gradient(g[i], *clip), m[o + i], u[o + i], *scalars)


@njit(parallel=True, cache=True)
def nadam_step(params, grads, slots, offsets, chunks, clip, scalars):
    m, v = slots[0], slots[1]
    for c in prange(chunks.shape[0]):
        p, j, start, stop = _chunk(params, chunks, c, slots)
        g = _chunk(grads, chunks, c, slots)[0]
        o = offsets[j]
        for i in range(start, stop):
            p[i], m[o + i], v[o + i] = nadam_rule(p[i], clip_gradient(g[i], *clip), m[o + i], v[o + i], *scalars)
