"""How the threads of a CPU launch share it: the atomic counters of a launch's chunks, and
the hand-off of a launch to helper threads that never take the GIL.

Why no GIL. A helper that has to take the GIL to start its share waits for whichever
thread holds it; beside busy processes that thread is often off its core, and the helper
comes too late to help (docs/benchmarks.md, "Two busy processes beside the step"). So a helper of
``numbaopt.threads`` stays in compiled code for its whole life: it watches for launches,
sleeps on a futex when none comes, and runs each launch's kernel through a *trampoline*.

How a launch is handed over (``launch``). The calling thread writes the kernel's address
and the launch's arguments into a *packet* of 64-bit words (an array's address, shape and
strides; a number's bits), publishes the packet and the address of the trampoline (a C
function compiled per argument types, which rebuilds the arguments from the words and
calls the kernel's compiled code by its address), announces the launch and runs its own
share through the trampoline too. ``signals``:

- ``LAUNCHES``, launches announced (its low 32 bits are the futex word sleepers wait on);
- ``OPEN``, the number of the launch whose packet is valid, 0 between launches;
- ``ACTIVE``, helpers that may be reading the packet or running its kernel;
- ``SLEEPERS``, helpers asleep or about to sleep (the caller wakes them only then);
- ``PACKET``, ``TRAMPOLINE``, ``WANTED`` (helpers the launch asks for), ``CALLER_CPU``
  (the CPU the calling thread announced the launch from).

A helper that finds itself on the calling thread's CPU moves to another (it narrows its
affinity to the others, then restores it): the two cannot run at once there, and on a busy
machine the scheduler, having woken the helper there, often leaves it there; measured
beside two busy processes on 2 cores, a helper on the caller's CPU joined 40% of the steps
and slowed those it joined, where elsewhere it joined 97%.

Memory safety. A helper counts itself ``ACTIVE`` and only then checks that the launch it
saw is still ``OPEN``; the caller closes the launch and waits for ``ACTIVE`` to drop to 0
before it returns. All of these are sequentially consistent, so either the caller sees the
helper active and waits, or the helper sees the launch closed and touches nothing: no
helper reads an argument after the call that owns it returned.

Helpers need Linux's futex (a thread that sleeps and wakes without the GIL): ``AVAILABLE``
says whether this process has it; where it does not, steps use no helpers.
"""
from __future__ import annotations

import hashlib
import platform
import sys
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
from llvmlite import ir  # type: ignore[import-untyped]
from numba import cfunc, njit, types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.arrayobj import populate_array
from numba.np.numpy_support import as_dtype

try:  # the key Numba's dispatchers find an overload by: a fast one
    from numba._dispatcher import compute_fingerprint as _fingerprint
except ImportError:  # another Numba: the types themselves (slower)
    def _fingerprint(arguments: Any) -> Any:
        from numba import typeof

        return str(typeof(arguments))

from numbaopt.kernels import cached, renamed

#: A launch's ``work``: ``work[CLAIMED]``, chunks claimed so far (the next one to claim);
#: ``work[DONE]``, chunks done; ``work[WORKERS]``, the loops the parallel build runs, one
#: per thread of Numba's team (1 for the other build, whose loop is the calling thread's).
CLAIMED, DONE, WORKERS = 0, 1, 2

#: The words of ``signals`` (see the module's doc).
LAUNCHES, OPEN, ACTIVE, SLEEPERS, PACKET, TRAMPOLINE, WANTED, CALLER_CPU = range(8)
SIGNALS = 8
#: Words of a CPU mask (glibc's ``cpu_set_t``: 1024 CPUs).
MASK_WORDS = 16

#: Linux's futex system call number, by machine (the generic table's 98 where it has one).
_SYS_FUTEX = {"x86_64": 202, "aarch64": 98, "riscv64": 98, "ppc64le": 221}
_FUTEX_WAIT_PRIVATE, _FUTEX_WAKE_PRIVATE = 128, 129
#: Whether helpers can run here: Linux, a known futex number, and a little-endian word
#: (the futex word is the low half of ``signals[LAUNCHES]``).
AVAILABLE = sys.platform == "linux" and sys.byteorder == "little" and platform.machine().lower() in _SYS_FUTEX
_FUTEX = _SYS_FUTEX.get(platform.machine().lower(), -1)


@intrinsic
def fetch_add(typingctx: Any, counters: Any, index: Any, delta: Any) -> tuple[Any, Callable[..., Any]]:
    """Atomically add ``delta`` to ``counters[index]`` (int64) and return the value it had."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        array = context.make_array(signature.args[0])(context, builder, value=args[0])
        delta = context.cast(builder, args[2], signature.args[2], types.int64)
        return builder.atomic_rmw("add", builder.gep(array.data, [args[1]]), delta, "seq_cst")

    return types.int64(counters, types.intp, delta), codegen


@intrinsic
def atomic_load(typingctx: Any, counters: Any, index: Any) -> tuple[Any, Callable[..., Any]]:
    """``counters[index]`` (int64), read atomically: what other threads wrote before it is seen."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        array = context.make_array(signature.args[0])(context, builder, value=args[0])
        return builder.load_atomic(builder.gep(array.data, [args[1]]), "seq_cst", 8)

    return types.int64(counters, types.intp), codegen


@intrinsic
def atomic_store(typingctx: Any, counters: Any, index: Any, value: Any) -> tuple[Any, Callable[..., Any]]:
    """``counters[index] = value`` (int64), atomically and in order with the other atomics."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        array = context.make_array(signature.args[0])(context, builder, value=args[0])
        value = context.cast(builder, args[2], signature.args[2], types.int64)
        builder.store_atomic(value, builder.gep(array.data, [args[1]]), "seq_cst", 8)
        return context.get_dummy_value()

    return types.none(counters, types.intp, value), codegen


#: Whether the cycle counter below is x86's time-stamp counter, readable by any program.
#: (Arm's ``llvm.readcyclecounter`` reads a performance counter that Linux usually keeps
#: from user programs, which would kill the process; there the spins below end at once.)
_HAS_CYCLE_COUNTER = platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")


@intrinsic
def _cycles(typingctx: Any) -> tuple[Any, Callable[..., Any]]:
    """The processor's cycle counter, a clock for spins: x86's time-stamp counter, else 0."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        if not _HAS_CYCLE_COUNTER:
            return context.get_constant(types.int64, 0)
        function = builder.module.declare_intrinsic("llvm.readcyclecounter", fnty=ir.FunctionType(ir.IntType(64), []))
        return builder.call(function, [])

    return types.int64(), codegen


@cached(njit, nogil=True)
def cycles() -> int:
    """The cycle counter the spins here are timed with (0 where there is none: they then
    end at once, and helpers sleep between launches)."""
    return int(_cycles())


@intrinsic
def _futex(typingctx: Any, counters: Any, index: Any, operation: Any, value: Any) -> tuple[Any, Callable[..., Any]]:
    """Linux's futex system call on the low 32 bits of ``counters[index]``: wait while they
    are ``value``, or wake ``value`` waiters (``syscall``, resolved in the process's C library)."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        array = context.make_array(signature.args[0])(context, builder, value=args[0])
        i64 = ir.IntType(64)
        syscall = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [i64], var_arg=True), "syscall")
        address = builder.ptrtoint(builder.gep(array.data, [args[1]]), i64)
        i32 = ir.IntType(32)
        operation, word = builder.trunc(args[2], i32), builder.trunc(args[3], i32)
        builder.call(syscall, [i64(_FUTEX), address, operation, word, i64(0), i64(0), i32(0)])  # no timeout
        return context.get_dummy_value()

    return types.none(counters, types.intp, types.int64, types.int64), codegen


@intrinsic
def _getcpu(typingctx: Any) -> tuple[Any, Callable[..., Any]]:
    """The CPU the calling thread runs on (the C library's ``sched_getcpu``; -1 on failure)."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        function = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []), "sched_getcpu")
        return builder.sext(builder.call(function, []), ir.IntType(64))

    return types.int64(), codegen


@intrinsic
def _affinity(typingctx: Any, mask: Any, setting: Any) -> tuple[Any, Callable[..., Any]]:
    """The calling thread's CPU mask, read into ``mask`` (int64 words) or set from it
    (``setting``): the C library's ``sched_getaffinity`` / ``sched_setaffinity``; 0 on success."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        array = context.make_array(signature.args[0])(context, builder, value=args[0])
        i32, i64, byte_pointer = ir.IntType(32), ir.IntType(64), ir.IntType(8).as_pointer()
        function_type = ir.FunctionType(i32, [i32, i64, byte_pointer])
        get = cgutils.get_or_insert_function(builder.module, function_type, "sched_getaffinity")
        set_ = cgutils.get_or_insert_function(builder.module, function_type, "sched_setaffinity")
        size = builder.mul(builder.extract_value(array.shape, 0), i64(8))
        call_args = [i32(0), size, builder.bitcast(array.data, byte_pointer)]
        with builder.if_else(args[1]) as (then, otherwise):
            with then:
                set_result = builder.call(set_, call_args)
                then_block = builder.block
            with otherwise:
                get_result = builder.call(get, call_args)
                otherwise_block = builder.block
        result = builder.phi(i32)
        result.add_incoming(set_result, then_block)
        result.add_incoming(get_result, otherwise_block)
        return builder.sext(result, i64)

    return types.int64(mask, types.boolean), codegen


@njit(nogil=True, inline="always")
def _leave_cpu(cpu: int, masks: npt.NDArray[np.int64]) -> None:
    """Move the calling thread off ``cpu``, where the scheduler may put it again later:
    narrow its CPU mask (read into ``masks[0]``) to the others (``masks[1]``), and restore it."""
    if _affinity(masks[0], False) != 0:
        return
    others = 0
    for word in range(masks.shape[1]):
        masks[1, word] = masks[0, word]
        if word == cpu // 64:
            masks[1, word] &= ~(np.int64(1) << (cpu % 64))
        others |= masks[1, word]
    if others != 0 and _affinity(masks[1], True) == 0:
        _affinity(masks[0], True)


@cached(njit, nogil=True)
def serve(signals: npt.NDArray[np.int64], number: int, budget: int, masks: npt.NDArray[np.int64]) -> None:
    """A helper thread's life, in compiled code: watch ``signals`` for a launch for
    ``budget`` cycles, else sleep until one is announced; join it if it wants this helper
    (the ``number``-th); leave the calling thread's CPU (``masks``, two rows of
    ``MASK_WORDS``, are its room for CPU masks); forever."""
    seen = atomic_load(signals, LAUNCHES)
    while True:
        latest = seen
        start = _cycles()
        while latest == seen and _cycles() - start < budget:
            latest = atomic_load(signals, LAUNCHES)
        while latest == seen:
            fetch_add(signals, SLEEPERS, 1)
            latest = atomic_load(signals, LAUNCHES)
            if latest == seen:
                _futex(signals, LAUNCHES, _FUTEX_WAIT_PRIVATE, seen & 0xFFFFFFFF)
                latest = atomic_load(signals, LAUNCHES)
            fetch_add(signals, SLEEPERS, -1)
        seen = latest
        fetch_add(signals, ACTIVE, 1)
        if atomic_load(signals, OPEN) == latest and number < atomic_load(signals, WANTED):
            _call(atomic_load(signals, TRAMPOLINE), atomic_load(signals, PACKET))
        fetch_add(signals, ACTIVE, -1)
        cpu = signals[CALLER_CPU]
        if cpu >= 0 and cpu < 64 * masks.shape[1] and _getcpu() == cpu:
            _leave_cpu(cpu, masks)


@intrinsic
def _call(typingctx: Any, function: Any, argument: Any) -> tuple[Any, Callable[..., Any]]:
    """Call the C function ``void f(int64)`` at address ``function`` with ``argument``."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        i64 = ir.IntType(64)
        target = builder.inttoptr(args[0], ir.FunctionType(ir.VoidType(), [i64]).as_pointer())
        builder.call(target, [args[1]])
        return context.get_dummy_value()

    return types.none(types.int64, types.int64), codegen


@intrinsic
def _call_kernel(typingctx: Any, function: Any, arguments: Any) -> tuple[Any, Callable[..., Any]]:
    """Call the Numba-compiled function at address ``function`` with ``arguments`` (a tuple
    of its arguments' types), by Numba's own calling convention; its return value and
    status are dropped (a kernel returns nothing and raises nothing)."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        argument_types = list(signature.args[1].types)
        values = [builder.extract_value(args[1], i) for i in range(len(argument_types))]
        function_type = context.call_conv.get_function_type(types.none, argument_types)
        target = builder.inttoptr(args[0], function_type.as_pointer())
        result_type = function_type.args[0].pointee
        result = cgutils.alloca_once(builder, result_type)
        builder.store(cgutils.get_null_value(result_type), result)
        exception = cgutils.alloca_once(builder, function_type.args[1].pointee)
        packed = list(context.get_arg_packer(argument_types).as_arguments(builder, values))
        builder.call(target, [result, exception, *packed])
        return context.get_dummy_value()

    return types.none(types.int64, arguments), codegen


def _leaves(value_type: Any) -> list[Any]:
    """The arrays and numbers of ``value_type``, nested tuples flattened, in order."""
    if isinstance(value_type, types.BaseTuple):
        return [leaf for member in value_type.types for leaf in _leaves(member)]
    return [value_type]


def _words(leaf: Any) -> int:
    return 1 + 2 * leaf.ndim if isinstance(leaf, types.Array) else 1


def supported(value_type: Any) -> bool:
    """Whether ``value_type`` travels in a packet: C-contiguous arrays of numbers, numbers,
    booleans, and tuples of these."""
    for leaf in _leaves(value_type):
        if isinstance(leaf, types.Array):
            if leaf.layout != "C" or not isinstance(leaf.dtype, (types.Number, types.Boolean)):
                return False
        elif not isinstance(leaf, (types.Integer, types.Float, types.Boolean)):
            return False
    return True


def _split(builder: Any, value: Any, value_type: Any) -> list[tuple[Any, Any]]:
    if isinstance(value_type, types.BaseTuple):
        return [pair for i, member in enumerate(value_type.types)
                for pair in _split(builder, builder.extract_value(value, i), member)]
    return [(value, value_type)]


@intrinsic
def _pack(typingctx: Any, packet: Any, arguments: Any) -> tuple[Any, Callable[..., Any]]:
    """Write the words of ``arguments`` into ``packet`` (int64, long enough)."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        words = context.make_array(signature.args[0])(context, builder, value=args[0]).data
        i64 = ir.IntType(64)
        out = []
        for value, leaf in _split(builder, args[1], signature.args[1]):
            if isinstance(leaf, types.Array):
                array = context.make_array(leaf)(context, builder, value=value)
                out.append(builder.ptrtoint(array.data, i64))
                out.extend(cgutils.unpack_tuple(builder, array.shape, leaf.ndim))
                out.extend(cgutils.unpack_tuple(builder, array.strides, leaf.ndim))
            elif isinstance(leaf, types.Float):
                bits = builder.bitcast(value, ir.IntType(leaf.bitwidth))
                out.append(builder.zext(bits, i64) if leaf.bitwidth < 64 else bits)
            else:  # integers and booleans
                stored = context.get_value_type(leaf)
                out.append(builder.zext(value, i64) if stored.width < 64 else value)
        for k, word in enumerate(out):
            builder.store(word, builder.gep(words, [i64(k)]))
        return context.get_dummy_value()

    return types.none(packet, arguments), codegen


def _mutable(value_type: Any) -> Any:
    if isinstance(value_type, types.BaseTuple):
        return types.Tuple([_mutable(member) for member in value_type.types])
    if isinstance(value_type, types.Array):
        return types.Array(value_type.dtype, value_type.ndim, "C")
    return value_type


@intrinsic
def _unpack(typingctx: Any, address: Any, prototype: Any) -> tuple[Any, Callable[..., Any]]:
    """The arguments whose words are at ``address``, of ``prototype``'s types (its arrays
    writable: the prototype is a constant)."""
    result = _mutable(prototype)

    def build(context: Any, builder: Any, words: Any, index: list[int], value_type: Any) -> Any:
        i64 = ir.IntType(64)

        def word() -> Any:
            index[0] += 1
            return builder.load(builder.gep(words, [i64(index[0] - 1)]))

        if isinstance(value_type, types.BaseTuple):
            members = [build(context, builder, words, index, member) for member in value_type.types]
            return context.make_tuple(builder, value_type, members)
        if isinstance(value_type, types.Array):
            array = context.make_array(value_type)(context, builder)
            data = builder.inttoptr(word(), context.get_data_type(value_type.dtype).as_pointer())
            shape = [word() for _ in range(value_type.ndim)]
            strides = [word() for _ in range(value_type.ndim)]
            itemsize = context.get_constant(types.intp, context.get_abi_sizeof(context.get_data_type(value_type.dtype)))
            populate_array(array, data=data, shape=shape, strides=strides, itemsize=itemsize, meminfo=None)
            return array._getvalue()
        raw = word()
        if isinstance(value_type, types.Float):
            narrow = builder.trunc(raw, ir.IntType(value_type.bitwidth)) if value_type.bitwidth < 64 else raw
            return builder.bitcast(narrow, context.get_value_type(value_type))
        stored = context.get_value_type(value_type)
        return builder.trunc(raw, stored) if stored.width < 64 else raw

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        words = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
        return build(context, builder, words, [0], result)

    return result(types.int64, prototype), codegen


#: The global of each copy of ``_trampoline``: a constant of the kernel's address and
#: arguments' types.
PROTOTYPE: tuple[Any, ...]


@cached(njit, nogil=True)
def launch(signals: npt.NDArray[np.int64], packet: npt.NDArray[np.int64], handoff: tuple[int, int], helpers: int,
           chunks: int, arguments: Any) -> None:
    """Run a launch of a kernel over ``arguments`` (the kernel's, its ``work`` last) on the
    calling thread and up to ``helpers`` helpers; return once every one of ``chunks`` is
    done and no helper can touch ``arguments`` any more. ``handoff`` is a ``Handoff``'s
    (trampoline, kernel) addresses. The calling thread runs its share through the
    trampoline too, so this function holds no kernel: it compiles once per argument types."""
    trampoline, kernel = handoff
    _pack(packet, (kernel, arguments))
    work = arguments[-1]
    signals[PACKET] = packet.ctypes.data
    signals[TRAMPOLINE] = trampoline
    signals[WANTED] = helpers
    signals[CALLER_CPU] = _getcpu()
    atomic_store(signals, OPEN, signals[LAUNCHES] + 1)
    fetch_add(signals, LAUNCHES, 1)
    if atomic_load(signals, SLEEPERS) > 0:
        _futex(signals, LAUNCHES, _FUTEX_WAKE_PRIVATE, 0x7FFFFFFF)  # all: the wanted ones may be any
    _call(trampoline, packet.ctypes.data)
    while atomic_load(work, DONE) < chunks:  # chunks that helpers still hold
        pass
    atomic_store(signals, OPEN, 0)
    while atomic_load(signals, ACTIVE) != 0:
        pass


def _trampoline(address: int) -> None:
    """Call the kernel whose address and arguments are packed at ``address``. Copied per
    argument types, whatever the kernel: it calls the kernel's compiled code by address."""
    kernel, arguments = _unpack(address, PROTOTYPE)
    _call_kernel(kernel, arguments)


class Handoff(NamedTuple):
    """What hands launches of one kernel, with arguments of one set of types, to helpers."""

    addresses: tuple[int, int]  # the trampoline's for the types, and the kernel's compiled code's
    words: int  # the packet's length


_HANDOFFS: dict[Hashable, Handoff | None] = {}
#: The compiled trampolines by the types they unpack (their code must live as long as
#: their addresses are used: for the process).
_TRAMPOLINES: dict[str, Any] = {}


def _prototype(value_type: Any) -> Any:
    """A constant of ``value_type``'s types: empty arrays and zeros."""
    if isinstance(value_type, types.BaseTuple):
        return tuple(_prototype(member) for member in value_type.types)
    if isinstance(value_type, types.Array):
        return np.empty((0,) * value_type.ndim, as_dtype(value_type.dtype))
    return as_dtype(value_type).type(0)


def launcher(kernel: Any, arguments: tuple[Any, ...]) -> Handoff | None:
    """The ``Handoff`` of ``kernel`` (the build that runs on the calling thread) for
    ``arguments`` (its work last); None where ``kernel`` is no Numba function or the
    arguments cannot travel in a packet. Its trampoline is compiled once per argument types, and
    kept in Numba's cache; found again by the types' fingerprint (under a microsecond)."""
    try:
        key: Hashable = (kernel, _fingerprint(arguments))
    except (TypeError, ValueError, NotImplementedError):  # a value Numba does not fingerprint: no helpers
        return None
    if key in _HANDOFFS:  # every launch but the first of its kind returns here
        return _HANDOFFS[key]
    from numba import typeof
    from numba.core.registry import CPUDispatcher

    try:
        value_type = typeof(arguments)
    except ValueError:  # a value Numba cannot type: the kernel would refuse it too
        return None
    handoff = None
    if isinstance(kernel, CPUDispatcher) and supported(value_type):
        signature = tuple(value_type.types)
        kernel.compile(signature)  # compiled already, or loaded from the cache
        overload = kernel.overloads[signature]
        address = overload.library.get_pointer_to_function(overload.fndesc.llvm_func_name)
        packed = types.Tuple([types.int64, value_type])
        name = str(packed)
        if name not in _TRAMPOLINES:
            digest = hashlib.sha256(name.encode()).hexdigest()[:16]
            trampoline = renamed(_trampoline, f"_trampoline__{digest}", {"PROTOTYPE": _prototype(packed)})
            _TRAMPOLINES[name] = cfunc(types.void(types.int64), cache=True)(trampoline)
        handoff = Handoff((_TRAMPOLINES[name].address, address), sum(_words(leaf) for leaf in _leaves(packed)))
    _HANDOFFS[key] = handoff
    return handoff
