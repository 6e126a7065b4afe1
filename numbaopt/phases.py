"""The passes an optimizer's step is made of, declared on its class as ``phases``.

Most optimizers are one element rule over slots shaped like their parameters: they
declare ``rule`` and nothing here. An optimizer with state of other shapes (factored
second moments, a per-tensor trust ratio) declares its step as a short list of phases,
run in order over every tensor of the step, each compiled for the CPU and for CUDA:

* ``ElementPass(rule)``: ``rule(p, g, *element slots, t, *scalars)`` for every element,
  returning ``(p, *element slots)``, like a one-pass rule; ``t`` holds the tensor's
  per-tensor slots (``Slot(..., shape="tensor")``), in declaration order, to read.
* ``TensorPass(function)``: ``function(p, g, *slots, n, last, second_last, clip, *scalars)``
  once per tensor, with a 1-d view of each declared slot of that tensor (every slot, in
  declaration order), the tensor's element count and its last two axes (0, 0 for fewer
  than two axes). It computes reductions (sums over rows, columns or the tensor) into
  slots that later phases read, and may update anything it is given. It reads a gradient
  as ``clip_gradient(g[i], *clip)`` (``numbaopt.clipping``), as element passes do.

Every phase gets the same step scalars (``step_scalars``); every sum is a loop of the
phase's own over one tensor, so a result never depends on the number of threads.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from numbaopt.state import shards_by_tensor


class ElementPass(NamedTuple):
    """An element rule that also reads the tensor's per-tensor slots (``t``)."""

    rule: Callable[..., tuple[Any, ...]]


class TensorPass(NamedTuple):
    """A function run once per tensor over views of all its slots."""

    function: Callable[..., None]


Phase = ElementPass | TensorPass


def whole_tensors(cls: Any) -> bool:
    """Whether optimizer class ``cls`` (or an optimizer, whose slots may be its own) needs each parameter whole where it steps (sharded
    over ranks): a slot not shaped like its parameter (``Slot.shards``), a tensor pass, or an
    optimizer that rounds stochastically (an element's random bits are keyed by its index
    in its tensor, which a piece of the tensor would not know)."""
    values = None if isinstance(cls, type) else getattr(cls, "hyperparameter_values", None)
    stochastic = values is not None and bool(values().get("stochastic_rounding"))
    return shards_by_tensor(cls.slots) or any(isinstance(phase, TensorPass) for phase in cls.phases) or stochastic
