"""Learning-rate schedules of Keras 2.0, computed once per step in the parameters' dtype."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, TypeVar

if TYPE_CHECKING:
    import numpy as np

#: A scalar of the parameters' dtype (a NumPy float type), or a Python float.
_F = TypeVar("_F", float, "np.floating[Any]")


def decayed_lr(lr: float, decay: float, iterations: int, dtype: Callable[[float], _F]) -> _F:
    """Keras 2.0's time-based decay, ``lr / (1 + decay * iterations)``, in ``dtype``."""
    if not decay:
        return dtype(lr)
    # NumPy >= 2.3's stubs import typing.Self (Python 3.11), so under mypy's python_version 3.10
    # its scalar arithmetic is Any; with older NumPy it is not, hence also unused-ignore.
    return dtype(lr) / (dtype(1) + dtype(decay) * dtype(iterations))  # type: ignore[no-any-return, unused-ignore]
