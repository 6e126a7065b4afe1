"""CPU kernels: one parallel loop per update rule, over the chunks of all tensors at once.

A step of a parameter group is one kernel call, whatever the number of tensors: the
kernel gets the data addresses of the parameters and gradients, the group's slots as one
buffer (a row per slot kind), and a table of chunks ``(tensor, start, stop)``; the
threads share out the chunks. The per-element math is each optimizer's rule, compiled
here with ``njit``; the CUDA kernels compile the same functions.

What makes the loops run at the speed of the memory:

- ``error_model="numpy"`` everywhere. Numba's default ("python") checks every float
  division for zero in order to raise ``ZeroDivisionError``; that branch per element
  stops LLVM from vectorising the loop, and it is not Keras's arithmetic anyway (a
  division by zero gives Inf or NaN in TensorFlow, as it does here).
- Parameters, gradients and slot rows are raw typed pointers indexed from 0 upwards: no
  negative-index wraparound code, so the inner loop is a plain counted loop that LLVM
  turns into 512-bit vector code (checked by ``tests/test_kernels.py``).
- Two inner loops per kernel: the clipped one applies ``clip_gradient`` (a division per
  element), the other is taken when clipping is off, where ``clip_gradient`` would
  return every value unchanged anyway (``g * 1 / 1``, clipvalue +Inf). The results are
  bitwise the same; the division is saved.

Imported only when a kernel is first needed, so ``import numbaopt`` does not import Numba.
The callers check every address, size and dtype before a kernel runs: nothing here
checks bounds.
"""
import math

import numba
import numpy as np
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

#: The compile options of every function here (see the module docstring for why).
_element = njit(error_model="numpy")
_kernel = njit(parallel=True, cache=True, error_model="numpy")

clip_gradient = _element(_clip_gradient)
sgd_rule = _element(_sgd_rule)
rmsprop_rule = _element(_rmsprop_rule)
adagrad_rule = _element(_adagrad_rule)
adadelta_rule = _element(_adadelta_rule)
adam_rule = _element(_adam_rule)
adamax_rule = _element(_adamax_rule)
nadam_rule = _element(_nadam_rule)


@intrinsic
def _pointer(typingctx, address, like):
    """A typed pointer to the memory at integer ``address``, of ``like``'s element type."""
    pointer_type = types.CPointer(like.dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer_type))

    return pointer_type(types.intp, like), codegen


@intrinsic
def _row(typingctx, slots, kind, offset):
    """A typed pointer to element ``offset`` of row ``kind`` of the 2-d C-contiguous ``slots``."""
    pointer_type = types.CPointer(slots.dtype)

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, value=args[0])
        width = builder.extract_value(array.shape, 1)
        return builder.gep(array.data, [builder.add(builder.mul(args[1], width), args[2])])

    return pointer_type(slots, types.intp, types.intp), codegen


#: Accumulators per chunk of the global norm: enough independent float64 sums that the
#: loop is limited by memory, not by the latency of one vector addition after another.
_LANES = 64


@_kernel
def sum_of_squares(grads, chunks, like, partial_sums):
    """``partial_sums[c]`` = the float64 sum of squares of chunk ``c`` of the gradients.

    Each chunk is summed by one thread in a fixed order: element ``i`` goes to accumulator
    ``i % 64`` (counted from the chunk's start), and the 64 sums are then added pairwise
    in a fixed tree. So the result never depends on the thread count (a prange reduction
    would), and LLVM can keep the accumulators in vector registers without reordering a
    single float64 addition. Eight accumulators were latency-bound at half the bandwidth.
    """
    for c in prange(chunks.shape[0]):
        tensor, start, stop = chunks[c, 0], chunks[c, 1], chunks[c, 2]
        g = _pointer(grads[tensor], like)
        acc = np.zeros(_LANES)
        blocks = (stop - start) // _LANES
        for k in range(blocks):
            base = start + _LANES * k
            for lane in range(_LANES):
                x = numba.float64(g[base + lane])
                acc[lane] += x * x
        for i in range(start + _LANES * blocks, stop):
            x = numba.float64(g[i])
            acc[i - start - _LANES * blocks] += x * x
        width = _LANES
        while width > 1:
            width //= 2
            for lane in range(width):
                acc[lane] += acc[lane + width]
        partial_sums[c] = acc[0]


@njit(cache=True)
def data_addresses(objects, data_field, out):
    """``out[k]`` = the data address of the ndarray whose object address is ``objects[k]``.

    Reads the ``data`` field of NumPy's ``PyArrayObject`` (the first field after the
    object header, at byte ``data_field``). Asking each array for
    ``__array_interface__`` builds a dict per array (about 0.8 us); this costs a few
    nanoseconds, which is what makes a step over thousands of small tensors cheap. The
    layout is NumPy's C ABI (every compiled extension reads ``PyArray_DATA`` through it);
    ``numbaopt.devices`` still checks it once against ``__array_interface__`` before
    trusting it. The callers pass only live ``np.ndarray`` objects.
    """
    for k in range(objects.shape[0]):
        out[k] = _pointer(objects[k] + data_field, out)[0]


@njit(inline="always")
def _clipping(clip):
    """Whether ``clip_gradient(g, *clip)`` can change a value: not when it is ``g * 1 / 1``
    with clipvalue +Inf, the arguments for clipping off. (A factor ``c / c`` with ``c != 1``
    could: ``g * c`` is rounded before the division.)"""
    return not (clip[0] == 1 and clip[1] == 1 and clip[2] == math.inf)


@_kernel
def sgd_step(params, grads, slots, offsets, chunks, clip, scalars):
    """One SGD step over every chunk of a group: ``sgd_rule`` on each element, in place."""
    clipping = _clipping(clip)
    for c in prange(chunks.shape[0]):
        j, start, stop = chunks[c, 0], chunks[c, 1], chunks[c, 2]
        p, g = _pointer(params[j], slots), _pointer(grads[j], slots)
        m = _row(slots, 0, offsets[j])
        if clipping:
            for i in range(start, stop):
                p[i], m[i] = sgd_rule(p[i], clip_gradient(g[i], *clip), m[i], *scalars)
        else:
            for i in range(start, stop):
                p[i], m[i] = sgd_rule(p[i], g[i], m[i], *scalars)


@_kernel
def rmsprop_step(params, grads, slots, offsets, chunks, clip, scalars):
    """One RMSprop step over every chunk of a group: ``rmsprop_rule`` on each element, in place."""
    clipping = _clipping(clip)
    for c in prange(chunks.shape[0]):
        j, start, stop = chunks[c, 0], chunks[c, 1], chunks[c, 2]
        p, g = _pointer(params[j], slots), _pointer(grads[j], slots)
        a = _row(slots, 0, offsets[j])
        if clipping:
            for i in range(start, stop):
                p[i], a[i] = rmsprop_rule(p[i], clip_gradient(g[i], *clip), a[i], *scalars)
        else:
            for i in range(start, stop):
                p[i], a[i] = rmsprop_rule(p[i], g[i], a[i], *scalars)


@_kernel
def adagrad_step(params, grads, slots, offsets, chunks, clip, scalars):
    """One Adagrad step over every chunk of a group: ``adagrad_rule`` on each element, in place."""
    clipping = _clipping(clip)
    for c in prange(chunks.shape[0]):
        j, start, stop = chunks[c, 0], chunks[c, 1], chunks[c, 2]
        p, g = _pointer(params[j], slots), _pointer(grads[j], slots)
        a = _row(slots, 0, offsets[j])
        if clipping:
            for i in range(start, stop):
                p[i], a[i] = adagrad_rule(p[i], clip_gradient(g[i], *clip), a[i], *scalars)
        else:
            for i in range(start, stop):
                p[i], a[i] = adagrad_rule(p[i], g[i], a[i], *scalars)


@_kernel
def adadelta_step(params, grads, slots, offsets, chunks, clip, scalars):
    """One Adadelta step over every chunk of a group: ``adadelta_rule`` on each element, in place."""
    clipping = _clipping(clip)
    for c in prange(chunks.shape[0]):
        j, start, stop = chunks[c, 0], chunks[c, 1], chunks[c, 2]
        p, g = _pointer(params[j], slots), _pointer(grads[j], slots)
        a = _row(slots, 0, offsets[j])
        d = _row(slots, 1, offsets[j])
        if clipping:
            for i in range(start, stop):
                p[i], a[i], d[i] = adadelta_rule(p[i], clip_gradient(g[i], *clip), a[i], d[i], *scalars)
        else:
            for i in range(start, stop):
                p[i], a[i], d[i] = adadelta_rule(p[i], g[i], a[i], d[i], *scalars)


@_kernel
def adam_step(params, grads, slots, offsets, chunks, clip, scalars):
    """One Adam step over every chunk of a group: ``adam_rule`` on each element, in place."""
    clipping = _clipping(clip)
    for c in prange(chunks.shape[0]):
        j, start, stop = chunks[c, 0], chunks[c, 1], chunks[c, 2]
        p, g = _pointer(params[j], slots), _pointer(grads[j], slots)
        m = _row(slots, 0, offsets[j])
        v = _row(slots, 1, offsets[j])
        if clipping:
            for i in range(start, stop):
                p[i], m[i], v[i] = adam_rule(p[i], clip_gradient(g[i], *clip), m[i], v[i], *scalars)
        else:
            for i in range(start, stop):
                p[i], m[i], v[i] = adam_rule(p[i], g[i], m[i], v[i], *scalars)


@_kernel
def adamax_step(params, grads, slots, offsets, chunks, clip, scalars):
    """One Adamax step over every chunk of a group: ``adamax_rule`` on each element, in place."""
    clipping = _clipping(clip)
    for c in prange(chunks.shape[0]):
        j, start, stop = chunks[c, 0], chunks[c, 1], chunks[c, 2]
        p, g = _pointer(params[j], slots), _pointer(grads[j], slots)
        m = _row(slots, 0, offsets[j])
        u = _row(slots, 1, offsets[j])
        if clipping:
            for i in range(start, stop):
                p[i], m[i], u[i] = adamax_rule(p[i], clip_gradient(g[i], *clip), m[i], u[i], *scalars)
        else:
            for i in range(start, stop):
                p[i], m[i], u[i] = adamax_rule(p[i], g[i], m[i], u[i], *scalars)


@_kernel
def nadam_step(params, grads, slots, offsets, chunks, clip, scalars):
    """One Nadam step over every chunk of a group: ``nadam_rule`` on each element, in place."""
    clipping = _clipping(clip)
    for c in prange(chunks.shape[0]):
        j, start, stop = chunks[c, 0], chunks[c, 1], chunks[c, 2]
        p, g = _pointer(params[j], slots), _pointer(grads[j], slots)
        m = _row(slots, 0, offsets[j])
        v = _row(slots, 1, offsets[j])
        if clipping:
            for i in range(start, stop):
                p[i], m[i], v[i] = nadam_rule(p[i], clip_gradient(g[i], *clip), m[i], v[i], *scalars)
        else:
            for i in range(start, stop):
                p[i], m[i], v[i] = nadam_rule(p[i], g[i], m[i], v[i], *scalars)
