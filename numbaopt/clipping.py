"""Gradient processing shared by every optimizer: Keras 2.0's clipnorm, then clipvalue.

Keras 2.0 clips by the *global* norm of all gradients of a call,
``g <- g * clipnorm / n`` when ``n >= clipnorm``, and then by value. The norm is a
reduction over every gradient and is computed once per call (see ``global_norm``); the
factor and the value clip are applied element by element inside the update kernels, by
``clip_gradient``, so clipping costs one extra read of the gradients and no extra write.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, TypeVar

if TYPE_CHECKING:
    import numpy as np

#: A scalar of the parameters' dtype (a NumPy float type), or a Python float.
_F = TypeVar("_F", float, "np.floating[Any]")


def clip_gradient(g: float, norm_numerator: float, norm_denominator: float, clipvalue: float) -> float:
    """One gradient element after Keras 2.0's clipnorm then clipvalue.

    ``g * clipnorm / n`` keeps Keras's order of operations; when norm clipping is off
    the kernels get ``1 / 1``, which leaves every value (NaN and Inf included) exactly as
    it was. Comparisons rather than min/max let a NaN through unchanged, as Keras does.
    ``clipvalue`` is +Inf when value clipping is off. Written with ``math`` only: it is
    compiled for the CPU and for CUDA.
    """
    g = g * norm_numerator / norm_denominator
    if g > clipvalue:
        g = clipvalue
    elif g < -clipvalue:
        g = -clipvalue
    return g


def clip_arguments(
    clipnorm: float | None, clipvalue: float | None, norm: float | None, dtype: Callable[[float], _F]
) -> tuple[_F, _F, _F]:
    """The clip scalars for ``clip_gradient``, as values of ``dtype``.

    ``norm`` is the global norm of the call's gradients (or None when clipnorm is off).
    A NaN norm compares false, so NaN gradients pass through unclipped, as in Keras 2.0.
    """
    one = dtype(1)
    numerator, denominator = one, one
    if clipnorm and norm is not None and norm >= clipnorm:
        numerator, denominator = dtype(clipnorm), dtype(norm)
    value = dtype(clipvalue) if clipvalue and clipvalue > 0 else dtype(math.inf)
    return numerator, denominator, value

