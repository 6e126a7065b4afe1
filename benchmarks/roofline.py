"""The roofline: Numba kernels with an optimizer's memory traffic and trivial arithmetic.

A step reads the parameters, the gradients and every slot, and writes the parameters and
every slot, once each; nothing it computes per element is expensive next to that on a
CPU of this decade. These kernels make exactly that traffic (an add per array) with the
same thread count, so the time they take is what memory allows here and now: measured in
the same process as the optimizers, it turns each step time into a fraction of the
attainable bandwidth, whatever else the machine is doing.
"""
from numba import njit, prange


@njit(parallel=True, cache=True)
def _one_slot(p, g, a):
    for i in prange(p.size):
        x = g[i]
        p[i] += x
        a[i] += x


@njit(parallel=True, cache=True)
def _two_slots(p, g, a, b):
    for i in prange(p.size):
        x = g[i]
        p[i] += x
        a[i] += x
        b[i] += x


@njit(parallel=True, cache=True, fastmath=True)
def _read(g):
    # fastmath lets LLVM reorder the sum into vector lanes: only the memory traffic counts.
    total = 0.0
    for i in prange(g.size):
        total += g[i]
    return total


def bytes_per_element(n_slots, itemsize):
    """Bytes a step moves per parameter: reads p, g and the slots, writes p and the slots."""
    return (3 + 2 * n_slots) * itemsize


def build(n_slots, n, dtype):
    """``step()`` for the roofline of an optimizer with ``n_slots`` slots over ``n`` elements;
    ``n_slots=0`` is a read of the gradients alone (the global norm's pass)."""
    import numpy as np

    g = np.full(n, 1e-30, dtype)  # tiny adds: the arrays never overflow however long it runs
    arrays = [np.zeros(n, dtype) for _ in range(1 + n_slots)]
    kernel = {0: lambda: _read(g), 1: lambda: _one_slot(arrays[0], g, arrays[1]),
              2: lambda: _two_slots(arrays[0], g, arrays[1], arrays[2])}[n_slots]
    return kernel
