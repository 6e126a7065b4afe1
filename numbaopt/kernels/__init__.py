"""The update kernels, one module per device: ``cpu`` (Numba ``njit``) and ``cuda``.

Each device has one loop per *shape* of rule (one slot, two slots, three slots); the
per-element math is the optimizer's rule (``adam_rule`` in ``numbaopt.optimizers.adam``),
which the optimizer hands to ``update_kernel(rule, n_slots)``. Nothing here imports an
optimizer: the rules come from above, so adding one touches no kernel code.

``specialise`` makes the per-rule kernel: a copy of a loop template whose global ``RULE``
is the compiled rule. The rule must be a global, not an argument: Numba never loads a
``cache=True`` kernel whose own arguments include a function from its on-disk cache.
"""
from __future__ import annotations

import hashlib
import types
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def _best_effort_cache(dispatcher: Any) -> Any:
    """``dispatcher``, a Numba ``cache=True`` dispatcher (CPU or CUDA), made to go on when
    its on-disk cache cannot be written: a kernel that cannot be saved (a full disk, a cache
    folder made read-only or removed) warns and stays compiled for the process, where
    Numba would raise ``OSError`` from the step that compiled it, leaving that step undone."""
    cache: Any = getattr(dispatcher, "_cache", None)
    save = getattr(cache, "save_overload", None)
    if save is None:  # no cache, or a Numba that keeps it elsewhere: nothing to guard
        return dispatcher

    def save_overload(signature: Any, data: Any) -> None:
        try:
            save(signature, data)
        except OSError as error:
            warnings.warn(f"numbaopt could not save a compiled kernel to Numba's cache ({error}); it stays compiled "
                          "in this process, and the next one compiles it again", RuntimeWarning, stacklevel=2)

    cache.save_overload = save_overload
    return dispatcher


def cached(jit: Callable[..., Any], **options: Any) -> Callable[[Callable[..., Any]], Any]:
    """The decorator ``jit(cache=True, **options)`` (``numba.njit``, ``numba.cuda.jit``), its
    dispatchers made by ``_best_effort_cache``: every kernel here is compiled through it."""
    def compile_cached(function: Callable[..., Any]) -> Any:
        return _best_effort_cache(jit(cache=True, **options)(function))

    return compile_cached


def _digest(code: types.CodeType, hasher: hashlib._Hash) -> None:
    """Feed what a code object computes (bytecode, names, constants, nested code) to ``hasher``."""
    hasher.update(code.co_code)
    hasher.update(repr((code.co_names, code.co_varnames)).encode())
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            _digest(constant, hasher)
        else:
            hasher.update(repr(constant).encode())


def code_digest(*functions: Callable[..., Any]) -> str:
    """A short hex digest of the code of ``functions``; it changes when any of them is edited."""
    hasher = hashlib.sha256()
    for function in functions:
        _digest(function.__code__, hasher)
    return hasher.hexdigest()[:16]


def specialise(
    template: Callable[..., Any],
    rule: Callable[..., Any],
    compiled_globals: Mapping[str, Any],
    depends_on: Iterable[Callable[..., Any]] = (),
    variant: str = "",
) -> types.FunctionType:
    """A copy of the function ``template`` whose globals also hold ``compiled_globals``.

    Numba names a kernel's cache files by its qualified name; the copy's name carries the
    rule's module and name and a digest of the code of the rule and of ``depends_on`` (the
    functions from other modules the template calls), so two rules never share cache files
    and an edited rule never loads a stale kernel. Edits to the template's own module are
    caught by Numba itself (it checks that file's time stamp). ``variant`` names a second
    compilation of the same copy with other options (``"serial"``): the cache index does not
    tell compile options apart, so each needs a name of its own.
    """
    digest = code_digest(rule, *depends_on)
    name = f"{template.__name__}__{rule.__module__}.{rule.__name__}__{digest}".replace("<", "").replace(">", "")
    function = renamed(template, name + (f"__{variant}" if variant else ""), compiled_globals)
    function.__doc__ = f"{template.__doc__ or ''}\n\nSpecialised for ``{rule.__module__}.{rule.__name__}``."
    return function


def renamed(
    function: Callable[..., Any], qualname: str, extra_globals: Mapping[str, Any] | None = None
) -> types.FunctionType:
    """A copy of ``function`` under another qualified name (hence other cache files), its
    globals extended by ``extra_globals``."""
    copy = types.FunctionType(function.__code__, {**function.__globals__, **(extra_globals or {})}, function.__name__)
    copy.__qualname__ = qualname
    copy.__doc__ = function.__doc__
    return copy


def helpers(function: Callable[..., Any]) -> list[types.FunctionType]:
    """The plain Python functions of ``function``'s own package that it calls, and theirs:
    a phase may share code between its passes, and the rules of a family their element
    arithmetic (``numbaopt.torch_optim.elements``); compiled with it, part of its digest."""
    package = function.__module__.rpartition(".")[0]
    found: dict[types.FunctionType, None] = {}

    def visit(f: Callable[..., Any]) -> None:
        for name in _names(f.__code__):
            target = f.__globals__.get(name)
            if isinstance(target, types.FunctionType) and target.__module__.rpartition(".")[0] == package and target not in found:
                if target is not function:
                    found[target] = None
                    visit(target)

    visit(function)
    return list(found)


def _names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= _names(constant)
    return names


def with_helpers(
    function: Callable[..., Any], compile: Callable[[Callable[..., Any]], Any], bound: Mapping[str, Any]
) -> types.FunctionType:
    """A copy of ``function`` whose globals hold ``bound`` (the device's ``clip_gradient``)
    and each of its ``helpers``, compiled by ``compile`` with the same globals."""
    copies: dict[Callable[..., Any], types.FunctionType] = {}

    def copy(f: Callable[..., Any]) -> types.FunctionType:
        if f not in copies:
            extra = dict(bound)
            copies[f] = renamed(f, f"{f.__module__}.{f.__qualname__}", extra)
            for helper in helpers(f):
                extra[helper.__name__] = compile(copy(helper))
            copies[f].__globals__.update(extra)
        return copies[f]

    return copy(function)


def loop_for(loops: Mapping[int, Any], rule: Callable[..., Any], n_slots: int) -> Any:
    """``loops[n_slots]``, the loop of a device for rules with ``n_slots`` slots per element,
    or a ValueError saying that there is none."""
    if n_slots not in loops:
        raise ValueError(
            f"{rule.__name__} keeps {n_slots} slots per element; the kernels have loops for "
            f"{sorted(loops)} (add one to numbaopt/kernels/cpu.py and cuda.py)"
        )
    return loops[n_slots]
