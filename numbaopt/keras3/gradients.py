"""What Keras 3's base optimizer does to the gradients before ``update_step``, in its
order and arithmetic (TensorFlow backend): unscale by ``loss_scale_factor``, accumulate
over ``gradient_accumulation_steps``, then clip (``clipnorm`` per variable,
``global_clipnorm`` over all, or ``clipvalue``).

Each works on host arrays of the parameters' dtypes and returns new arrays: the user's
gradients are never written. A step with none of these settings skips this module.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

Arrays = list[npt.NDArray[Any]]


def unscaled(grads: Sequence[npt.NDArray[Any]], factor: float) -> Arrays:
    """``g / loss_scale_factor``: Keras divides by the Python float, converted to ``g``'s dtype."""
    return [g / g.dtype.type(factor) for g in grads]


def accumulated(grads: Sequence[npt.NDArray[Any]], accumulators: Sequence[npt.NDArray[Any]], steps: int) -> Arrays:
    """The gradients of an update step with accumulation: ``(g + accumulator) / steps``."""
    return [(g + a) / g.dtype.type(steps) for g, a in zip(grads, accumulators)]


def clipped(
    grads: Sequence[npt.NDArray[Any]], clipnorm: float | None, global_clipnorm: float | None, clipvalue: float | None
) -> Arrays:
    """Keras 3's ``_clip_gradients``: the first of the three settings that is set and > 0."""
    if clipnorm:
        return [_clip_by_norm(g, clipnorm) for g in grads]
    if global_clipnorm:
        return _clip_by_global_norm(grads, global_clipnorm)
    if clipvalue:
        return [np.clip(g, -g.dtype.type(clipvalue), g.dtype.type(clipvalue)) for g in grads]
    return list(grads)


def _clip_by_norm(g: npt.NDArray[Any], clip_norm: float) -> npt.NDArray[Any]:
    """``tf.clip_by_norm``: ``g * c / max(||g||, c)``, with a zero gradient left as it is."""
    kind = g.dtype.type
    l2sum = np.sum(g * g, dtype=g.dtype)
    l2norm = np.sqrt(l2sum) if l2sum > 0 else l2sum
    return (g * kind(clip_norm)) / np.maximum(l2norm, kind(clip_norm))


def _clip_by_global_norm(grads: Sequence[npt.NDArray[Any]], clip_norm: float) -> Arrays:
    """Keras 3's ``clip_by_global_norm``: every gradient times
    ``c * min(1 / norm, 1 / c)``; a non-finite norm makes every gradient NaN, as in Keras."""
    kind = grads[0].dtype.type
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        use_norm = np.sqrt(np.sum(np.array([np.sum(g * g, dtype=g.dtype) for g in grads], dtype=grads[0].dtype)))
        scale = kind(clip_norm) * np.minimum(kind(1.0) / use_norm, kind(1.0 / clip_norm))
        scale = scale + (use_norm - use_norm)
        return [g * scale.astype(g.dtype) for g in grads]
