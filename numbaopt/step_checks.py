"""What every optimizer checks of an ``apply_gradients`` call before anything changes.

Shared by the kernel optimizers (``numbaopt.optimizers.base``) and ``TFOptimizer``, so
all of them refuse the same calls with the same messages.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing import Protocol

    class _Backend(Protocol):
        """What ``checked_arrays`` asks of a backend (``numbaopt.devices``, a layer above)."""

        def check_parameter(self, param: Any, index: int) -> Any: ...
        def check_gradient(self, grad: Any, param: Any, index: int) -> Any: ...


def listed_pairs(grads_and_vars: Iterable[tuple[Any, Any]]) -> list[Any]:
    """The items of ``grads_and_vars`` (a list, a ``zip``, ...) as a new list, read once.

    Always a list of the step's own, even from a list: it holds every pair, so every
    array, until the step ends, and no other thread can clear it or change its length
    under the step (the kernels use addresses read from the arrays it holds).
    """
    if type(grads_and_vars) is list:
        return grads_and_vars.copy()  # one C call: atomic under the GIL
    try:
        return list(grads_and_vars)
    except TypeError:
        raise TypeError("apply_gradients takes an iterable of (gradient, parameter) pairs") from None


def split_pairs(pairs: list[Any]) -> tuple[list[Any], list[Any]]:
    """The gradients and the parameters of a list of (gradient, parameter) pairs."""
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"apply_gradients: item {i} is not a (gradient, parameter) pair")
    if not pairs:
        raise ValueError("apply_gradients got no (gradient, parameter) pairs")
    for i, (grad, _) in enumerate(pairs):
        if grad is None:
            # What an autodiff framework returns for a parameter the loss does not depend on.
            raise ValueError(f"gradient {i} is None: the loss may not depend on parameter {i}")
    return [g for g, _ in pairs], [p for _, p in pairs]


def checked_arrays(grads: list[Any], params: list[Any], backend: _Backend) -> tuple[list[Any], list[Any]]:
    """``(grads, params)`` as ``backend`` takes them: each parameter updatable in place, each
    gradient on its parameter's device with its dtype and shape."""
    params = [backend.check_parameter(p, i) for i, p in enumerate(params)]
    grads = [backend.check_gradient(g, p, i) for i, (g, p) in enumerate(zip(grads, params))]
    return grads, params


def names_tuple(names: Iterable[str], n_params: int) -> tuple[str, ...]:
    """``names`` as a tuple of ``n_params`` distinct non-empty strings, or a TypeError / ValueError."""
    if isinstance(names, str):
        raise TypeError("parameter names must be a sequence of strings, not one string")
    names = tuple(names)
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name:
            raise TypeError(f"parameter name {i} must be a non-empty string, got {name!r}")
    if len(names) != n_params:
        raise ValueError(f"got {len(names)} parameter names for {n_params} parameters")
    if len(set(names)) != len(names):
        raise ValueError(f"parameter names must be distinct, got {sorted(n for n in set(names) if names.count(n) > 1)} twice")
    return names


def checked_names(names: Iterable[str] | None, n_params: int, recorded: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """``names`` of a call as a tuple (None passes), checked against the ``recorded`` ones."""
    if names is None:
        return None
    names = names_tuple(names, n_params)
    if recorded is not None and names != recorded:
        if sorted(names) == sorted(recorded):
            problem = "the same names in another order"
        else:
            problem = f"new {sorted(set(names) - set(recorded))}, missing {sorted(set(recorded) - set(names))}"
        position = next((i for i, (a, b) in enumerate(zip(names, recorded)) if a != b), len(names))
        raise ValueError(
            f"apply_gradients: parameter names differ from the recorded ones ({problem}); "
            f"first difference at position {position}. Slots belong to parameters by position; "
            "call set_parameter_names to accept the new names"
        )
    return names
