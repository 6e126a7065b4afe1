"""Adadelta (torch.optim 2.13).

Per parameter::

    g <- -g if maximize;   g <- g + weight_decay * p   (weight_decay != 0)
    s <- s * rho + (1 - rho) * g * g
    delta = sqrt(a + eps) / sqrt(s + eps) * g
    a <- a * rho + (1 - rho) * delta * delta
    p <- p + (-lr) * delta
"""
import math
from typing import Any

import numpy as np

from numbaopt.hyperparameters import StepInputs
from numbaopt.state import Slot
from numbaopt.torch_optim.base import Argument, TorchOptimOptimizer, at_least_zero
from numbaopt.torch_optim.elements import coupled


def adadelta_rule(p: float, g: float, s: float, a: float, maximize: bool, weight_decay: float, rho: float,
                  one_minus_rho: float, eps: float, neg_lr: float) -> tuple[float, float, float]:
    """One element of Adadelta; returns the new (p, s, a). Compiled for the CPU and for CUDA."""
    g = coupled(p, g, maximize, weight_decay)
    s = s * rho + one_minus_rho * g * g
    delta = math.sqrt(a + eps) / math.sqrt(s + eps) * g
    a = a * rho + one_minus_rho * delta * delta
    return p + neg_lr * delta, s, a


class Adadelta(TorchOptimOptimizer):
    """Adadelta (torch's ``torch.optim.Adadelta``)."""

    arguments = (
        Argument("lr", 1.0, "real"),
        Argument("rho", 0.9, "real"),
        Argument("eps", 1e-6, "real"),
        Argument("weight_decay", 0, "real"),
        Argument("foreach", None, "optional_flag"),
        Argument("capturable", False, "refused"),
        Argument("maximize", False, "flag"),
        Argument("differentiable", False, "refused"),
    )
    keyword_only = ("capturable", "maximize", "differentiable")
    slots = (Slot("square_avg", sign="nonnegative"), Slot("acc_delta", sign="nonnegative"))
    rule = staticmethod(adadelta_rule)

    @classmethod
    def check_settings(cls, hyper: Any) -> None:
        at_least_zero(hyper["lr"], "Invalid learning rate")
        if not 0.0 <= hyper["rho"] <= 1.0:
            raise ValueError(f"Invalid rho value: {hyper['rho']}")
        at_least_zero(hyper["eps"], "Invalid epsilon value")
        at_least_zero(hyper["weight_decay"], "Invalid weight_decay value")

    @staticmethod
    def step_scalars(h: StepInputs, dtype: type[np.floating[Any]]) -> tuple[np.floating[Any] | bool, ...]:
        return (bool(h.maximize), dtype(h.weight_decay), dtype(h.rho), dtype(1 - h.rho), dtype(h.eps), dtype(-h.lr))
