"""Rprop (torch.optim 2.13): resilient backpropagation, a step size per element.

Per parameter (``step_size`` starts at the group's ``lr`` at the parameter's first step)::

    g <- -g if maximize
    s = sign(g * prev):  eta = etaplus (s > 0), etaminus (s < 0), 1 (s == 0)
    step_size <- clamp(step_size * eta, step_size_min, step_size_max)
    g <- 0 where s < 0
    p <- p + (-1 * sign(g)) * step_size;   prev <- g
"""
from typing import Any

import numpy as np

from numbaopt.hyperparameters import StepInputs
from numbaopt.state import Slot
from numbaopt.torch_optim.base import Argument, TorchOptimOptimizer, at_least_zero


def rprop_rule(p: float, g: float, prev: float, step_size: float, maximize: bool, first: bool, lr: float, etaminus: float,
               etaplus: float, one: float, step_size_min: float, step_size_max: float) -> tuple[float, float, float]:
    """One element of Rprop; returns the new (p, prev, step_size). Compiled for the CPU and for CUDA."""
    if maximize:
        g = -g
    if first:
        step_size = lr
    zero = one - one  # in the parameters' dtype: a literal 0 would make the arithmetic float64
    product = g * prev
    if product > 0:
        eta = etaplus
    elif product < 0:
        eta = etaminus
        g = zero
    else:
        eta = one
    step_size = min(max(step_size * eta, step_size_min), step_size_max)
    sign = one if g > 0 else (-one if g < 0 else zero)
    return p + (-one * sign) * step_size, g, step_size


class Rprop(TorchOptimOptimizer):
    """Rprop (torch's ``torch.optim.Rprop``)."""

    arguments = (
        Argument("lr", 1e-2, "real"),
        Argument("etas", (0.5, 1.2), "pair"),
        Argument("step_sizes", (1e-6, 50), "pair"),
        Argument("capturable", False, "refused"),
        Argument("foreach", None, "optional_flag"),
        Argument("maximize", False, "flag"),
        Argument("differentiable", False, "refused"),
    )
    keyword_only = ("capturable", "foreach", "maximize", "differentiable")
    slots = (Slot("prev"), Slot("step_size", sign="nonnegative"))
    rule = staticmethod(rprop_rule)

    @classmethod
    def check_settings(cls, hyper: Any) -> None:
        at_least_zero(hyper["lr"], "Invalid learning rate")
        etaminus, etaplus = hyper["etas"]
        if not 0.0 < etaminus < 1.0 < etaplus:
            raise ValueError(f"Invalid eta values: {etaminus}, {etaplus}")

    @staticmethod
    def step_scalars(h: StepInputs, dtype: type[np.floating[Any]]) -> tuple[np.floating[Any] | bool, ...]:
        (etaminus, etaplus), (step_size_min, step_size_max) = h.etas, h.step_sizes
        return (bool(h.maximize), bool(h.state["step"] == 1), dtype(h.lr), dtype(etaminus), dtype(etaplus), dtype(1),
                dtype(step_size_min), dtype(step_size_max))
