"""The fast path's reading of CPython and NumPy object layouts, quarantined in one module.

A step over a thousand small tensors would spend more time asking each array for its
``__array_interface__`` (a dict per array) than in the kernel. So the usual step reads
what it needs (list and tuple items, an array's type, data, shape, dtype and flags)
straight from the objects' memory, in compiled loops. Nothing else in numbaopt reads an
object's memory; ``numbaopt.devices`` asks only through ``data_addresses`` and
``pair_reader`` below.

What it assumes, and why each read is safe:

- **The GIL.** Every object read is alive and unchanging while a compiled function
  (which holds the GIL: none here is ``nogil``) reads it: the callers pass objects
  they hold references to, and no other thread runs meanwhile. A free-threaded Python
  (``sys._is_gil_enabled()`` false) gives no such promise: ``object_fields`` is None
  there, and every step takes the checked path (``__array_interface__`` of exact arrays).
- **References held for the whole step.** The addresses found here are used by the
  kernels later, after the GIL may have passed to other threads: the caller keeps the
  arrays in a container of its own (not the user's list, which another thread may
  clear) until the kernels finish. ``data_addresses`` reads a tuple it makes itself;
  ``pair_reader``'s reader is given the step's own private list.
- **Exact type identity.** An object is read as a list, tuple or ndarray only when its
  type pointer *is* that type (never ``isinstance``, which a ``weakref.proxy``, a
  ``wrapt.ObjectProxy`` or a ``__class__`` property passes). Subclasses are not read
  (their Python-level ``shape`` may lie): they take the checked path, which views them
  as exact arrays.
- **Sizes from C fields, never from Python attributes**: an array's shape is read from
  its ``dimensions``, compared with the bound shape; the kernels then touch only the
  bound number of elements of memory that has exactly that shape.
- **The layouts**: CPython's object header (``object.__basicsize__`` bytes, the type
  pointer last), a list's size and item pointer after its header, a tuple's size and
  inline items; NumPy's ``PyArrayObject`` (``data``, ``nd``, ``dimensions``,
  ``strides``, ``base``, ``descr``, ``flags`` after the header: the C ABI that every
  compiled extension reads through ``PyArray_DATA`` and friends). ``object_fields``
  checks them once, on probes whose answers Python knows, before any step trusts them;
  where a probe disagrees, every step takes the checked path.
"""

import functools
import sys
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit

from numbaopt.kernels import cached
from numbaopt.kernels.cpu import pointer

#: Indices into ``fields``: where CPython and NumPy keep what is read, in bytes from the
#: start of an object (ids of the type objects for the first three), and which flags must be set.
(LIST_TYPE, TUPLE_TYPE, NDARRAY_TYPE, OB_TYPE, LIST_SIZE, LIST_ITEMS, TUPLE_SIZE, TUPLE_ITEMS,
 DATA, NDIM, DIMENSIONS, DESCR, FLAGS, GRADIENT_FLAGS, PARAMETER_FLAGS) = range(15)

#: NumPy's array flags asked for (``NPY_ARRAY_C_CONTIGUOUS``, ``NPY_ARRAY_WRITEABLE``).
_C_CONTIGUOUS, _WRITEABLE = 0x0001, 0x0400


def gil_enabled() -> bool:
    """Whether this Python has a GIL (a free-threaded build may run without one)."""
    is_enabled: Callable[[], bool] | None = getattr(sys, "_is_gil_enabled", None)
    return True if is_enabled is None else bool(is_enabled())


@cached(njit)
def _read_data(objects: int, fields: npt.NDArray[np.int64], out: npt.NDArray[np.int64]) -> int:
    """``out[k]`` = the data address of item ``k`` of the tuple at address ``objects``;
    -1, or the first item that is not exactly an ``np.ndarray`` (-2: a tuple of another size)."""
    word = np.empty(1, np.int64)
    if pointer(objects + fields[OB_TYPE], word)[0] != fields[TUPLE_TYPE]:
        return -2
    if pointer(objects + fields[TUPLE_SIZE], word)[0] != out.shape[0]:
        return -2
    for k in range(out.shape[0]):
        array = pointer(objects + fields[TUPLE_ITEMS] + 8 * k, word)[0]
        if pointer(array + fields[OB_TYPE], word)[0] != fields[NDARRAY_TYPE]:
            return k
        out[k] = pointer(array + fields[DATA], word)[0]
    return -1


def data_addresses(arrays: Sequence[Any]) -> npt.NDArray[np.int64]:
    """The data addresses of exact NumPy arrays, as an int64 array for the kernels; a
    TypeError for any other object (an ndarray subclass included: check it first).

    The caller keeps ``arrays`` alive until the kernels that use the addresses finish.
    """
    held = tuple(arrays)  # a snapshot that no other thread can change while it is read
    out = np.empty(len(held), np.int64)
    fields = object_fields()
    if fields is None:
        for k, array in enumerate(held):
            if type(array) is not np.ndarray:
                raise _not_an_array(array, k)
            out[k] = array.__array_interface__["data"][0]
        return out
    found = _read_data(id(held), fields, out)
    if found >= 0:
        raise _not_an_array(held[found], found)
    if found != -1:  # cannot happen: ``held`` is a tuple of ``len(out)`` items
        raise RuntimeError("numbaopt: the tuple of arrays read back wrong")
    return out


def _not_an_array(array: object, k: int) -> TypeError:
    return TypeError(f"array {k} is a {type(array).__name__}, not exactly a NumPy array (np.ndarray)")


@cached(njit)
def _read_pairs(
    pairs: int,
    fields: npt.NDArray[np.int64],
    descrs: npt.NDArray[np.int64],
    shape_starts: npt.NDArray[np.int64],
    dims: npt.NDArray[np.int64],
    param_at: npt.NDArray[np.int64],
    grad_at: npt.NDArray[np.int64],
) -> int:
    """Check a list of ``(gradient, parameter)`` pairs against a bound layout in one pass;
    return -1 and fill ``param_at`` / ``grad_at`` with data addresses, or the first pair
    that is not plainly fine (-2: not a list of ``len(descrs)`` items).

    ``pairs`` is the object address of a live object. Plainly fine: a list of
    ``len(descrs)`` items (its size read here, under the GIL, not before), each a 2-tuple
    of two exact ``np.ndarray`` objects whose dtype object is ``descrs[k]`` (the canonical
    float32 or float64 descriptor, compared by address, never read), whose shape (its C
    ``dimensions``) is ``dims[shape_starts[k]:shape_starts[k+1]]``, both C-contiguous and
    the parameter writeable. Anything else (another type, a cast, a view, an error) is
    the Python checks' to judge and name: this pass only saves them work on the usual
    step, it never refuses or accepts anything they would not.
    """
    word = np.empty(1, np.int64)
    half = np.empty(1, np.int32)
    if pointer(pairs + fields[OB_TYPE], word)[0] != fields[LIST_TYPE]:
        return -2
    if pointer(pairs + fields[LIST_SIZE], word)[0] != descrs.shape[0]:
        return -2
    items = pointer(pointer(pairs + fields[LIST_ITEMS], word)[0], word)
    for k in range(descrs.shape[0]):
        pair = items[k]
        if pointer(pair + fields[OB_TYPE], word)[0] != fields[TUPLE_TYPE]:
            return k
        if pointer(pair + fields[TUPLE_SIZE], word)[0] != 2:
            return k
        for side in range(2):
            array = pointer(pair + fields[TUPLE_ITEMS] + 8 * side, word)[0]
            if pointer(array + fields[OB_TYPE], word)[0] != fields[NDARRAY_TYPE]:
                return k
            if pointer(array + fields[DESCR], word)[0] != descrs[k]:
                return k
            flags = pointer(array + fields[FLAGS], half)[0]
            required = fields[PARAMETER_FLAGS] if side == 1 else fields[GRADIENT_FLAGS]
            if flags & required != required:
                return k
            ndim = shape_starts[k + 1] - shape_starts[k]
            if pointer(array + fields[NDIM], half)[0] != ndim:
                return k
            shape = pointer(pointer(array + fields[DIMENSIONS], word)[0], word)
            for d in range(ndim):
                if shape[d] != dims[shape_starts[k] + d]:
                    return k
            address = pointer(array + fields[DATA], word)[0]
            if side == 0:
                grad_at[k] = address
            else:
                param_at[k] = address
    return -1


#: A reader of a step's pairs (``pair_reader``): their parameter and gradient addresses, or None.
PairReader = Callable[[list[Any]], "tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None"]


def pair_reader(shapes: Sequence[tuple[int, ...]], dtypes: Sequence[np.dtype[Any]]) -> PairReader | None:
    """A function that checks a step's list of ``(gradient, parameter)`` pairs against
    parameters of ``shapes`` and ``dtypes`` in one compiled pass and returns their
    parameter and gradient addresses, or None when a pair needs the full checks.

    The pass accepts only what the full checks accept unchanged (exact NumPy arrays of
    the bound dtype and shape, C-contiguous, parameters writeable); everything else goes
    to them, so every error is still theirs. None where the object layout cannot be
    trusted (``object_fields``).

    The reader's list must be the caller's own (``step_checks.listed_pairs`` makes it),
    kept until the kernels finish: it holds the pairs, which hold the arrays.
    """
    fields = object_fields()
    if fields is None:
        return None
    layout = _pair_layout(shapes, dtypes)
    n_pairs = len(shapes)

    def read(pairs: list[Any]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None:
        param_at, grad_at = np.empty(n_pairs, np.int64), np.empty(n_pairs, np.int64)
        # ``pairs`` is passed by reference to the call, so it is alive while it is read;
        # its type and size are read inside, under the GIL, so they cannot go stale.
        if _read_pairs(id(pairs), fields, *layout, param_at, grad_at) != -1:
            return None
        return param_at, grad_at

    return read


def _pair_layout(
    shapes: Sequence[tuple[int, ...]], dtypes: Sequence[np.dtype[Any]]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """``_read_pairs``' description of bound parameters: canonical dtype descriptors (by
    address), where each shape starts in the flat dimensions, and the flat dimensions."""
    descrs = np.array([id(np.dtype(d.name)) for d in dtypes], np.int64)
    shape_starts = np.cumsum([0] + [len(shape) for shape in shapes], dtype=np.int64)
    dims = np.array([n for shape in shapes for n in shape], np.int64)
    return descrs, shape_starts, dims


def object_fields() -> npt.NDArray[np.int64] | None:
    """Where CPython and NumPy keep what the readers here read, or None if that cannot be
    trusted: on a free-threaded Python without its GIL, or where the probes disagree."""
    return _probed_fields() if gil_enabled() else None


@functools.cache
def _probed_fields() -> npt.NDArray[np.int64] | None:
    """The fields of this interpreter's layouts, once checked on probes (module docstring)."""
    word = np.dtype(np.intp).itemsize
    header = object.__basicsize__
    fields = np.zeros(15, np.int64)
    fields[LIST_TYPE], fields[TUPLE_TYPE], fields[NDARRAY_TYPE] = id(list), id(tuple), id(np.ndarray)
    fields[OB_TYPE] = header - word
    fields[LIST_SIZE], fields[LIST_ITEMS] = header, header + word  # the list's size, then its items
    fields[TUPLE_SIZE], fields[TUPLE_ITEMS] = tuple.__basicsize__ - word, tuple.__basicsize__
    fields[DATA], fields[NDIM], fields[DIMENSIONS] = header, header + word, header + 2 * word
    fields[DESCR], fields[FLAGS] = header + 5 * word, header + 6 * word
    fields[GRADIENT_FLAGS], fields[PARAMETER_FLAGS] = _C_CONTIGUOUS, _C_CONTIGUOUS | _WRITEABLE
    return fields if word == 8 and _fields_hold(fields) else None


class _Subclass(np.ndarray):
    """A probe: an ndarray subclass, which the readers must not read."""


def _fields_hold(fields: npt.NDArray[np.int64]) -> bool:
    """Whether the readers with ``fields`` accept good probes, with their true addresses,
    and stop at every kind of object the full checks would judge."""
    base = np.zeros((3, 4), np.float32)
    good: list[tuple[npt.NDArray[Any], npt.NDArray[Any]]] = [
        (base[1:], base[1:].copy()), (np.ones(()), np.zeros(())), (np.empty(0), np.empty(0)),
        (np.ones((2, 3)), np.zeros((2, 3))),
    ]
    read_only = np.zeros(3)
    read_only.flags.writeable = False
    target = np.zeros(3)
    unfit: list[Any] = [
        [np.zeros(3), np.zeros(3)],  # a list, not a tuple
        (np.zeros(3), np.zeros(3), None),
        ([0.0, 0.0, 0.0], np.zeros(3)),
        (np.zeros(3), read_only),
        (np.zeros(6)[::2], np.zeros(3)),  # a gradient that is not C-contiguous
        (np.zeros(3), np.zeros(6)[::2]),
        (np.zeros(3, np.float32), np.zeros(3)),
        (np.zeros(3), np.zeros(3, np.float32)),
        (np.zeros(4), np.zeros(3)),
        (np.zeros((3, 1)), np.zeros((3, 1))),
        (np.zeros(3), np.zeros(3).view(_Subclass)),
        (np.zeros(3), weakref.proxy(target)),  # passes isinstance, is no ndarray
    ]

    def read(pairs: list[Any], shapes: list[tuple[int, ...]], dtypes: list[np.dtype[Any]]) -> tuple[int, list[int], list[int]]:
        param_at, grad_at = np.zeros(len(pairs), np.int64), np.zeros(len(pairs), np.int64)
        found = _read_pairs(id(pairs), fields, *_pair_layout(shapes, dtypes), param_at, grad_at)
        return int(found), param_at.tolist(), grad_at.tolist()

    addresses = [p.__array_interface__["data"][0] for _, p in good], [g.__array_interface__["data"][0] for g, _ in good]
    if read(good, [p.shape for _, p in good], [p.dtype for _, p in good]) != (-1, *addresses):
        return False
    if read(good[:1], [good[0][1].shape] * 2, [good[0][1].dtype] * 2)[0] != -2:  # a list of another size
        return False
    first = good[0]
    if not all(
        read([first, pair], [first[1].shape, (3,)], [first[1].dtype, np.dtype(np.float64)])[0] == 1 for pair in unfit
    ):
        return False
    arrays = (base, base[1:], np.empty(0), np.ones(()))
    out = np.zeros(len(arrays), np.int64)
    if _read_data(id(arrays), fields, out) != -1 or out.tolist() != [a.__array_interface__["data"][0] for a in arrays]:
        return False
    mixed = (base, read_only.view(_Subclass))  # held: an id is only an address while its object lives
    return bool(_read_data(id(mixed), fields, np.zeros(2, np.int64)) == 1)
