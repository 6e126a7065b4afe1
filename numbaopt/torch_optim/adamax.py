"""Adamax (torch.optim 2.13): Adam with the infinity norm.

Per parameter, with its own ``step``::

    g <- -g if maximize;   g <- g + weight_decay * p   (weight_decay != 0)
    m <- lerp(m, g, 1 - beta1)
    u <- max(u * beta2, |g| + eps)
    p <- p + (-lr / (1 - beta1^step)) * m / u
"""
from typing import Any

import numpy as np

from numbaopt.hyperparameters import StepInputs
from numbaopt.state import Slot
from numbaopt.torch_optim.base import Argument, TorchOptimOptimizer, at_least_zero, check_betas, lerp_weight
from numbaopt.torch_optim.elements import coupled, lerped


def adamax_rule(p: float, g: float, m: float, u: float, maximize: bool, weight_decay: float, w: float, small: bool,
                w_complement: float, beta2: float, eps: float, neg_clr: float) -> tuple[float, float, float]:
    """One element of Adamax; returns the new (p, m, u). Compiled for the CPU and for CUDA."""
    g = coupled(p, g, maximize, weight_decay)
    m = lerped(m, g, w, small, w_complement)
    u = max(u * beta2, abs(g) + eps)
    return p + neg_clr * m / u, m, u


class Adamax(TorchOptimOptimizer):
    """Adamax, Adam's infinity-norm variant (torch's ``torch.optim.Adamax``)."""

    arguments = (
        Argument("lr", 2e-3, "real"),
        Argument("betas", (0.9, 0.999), "pair"),
        Argument("eps", 1e-8, "real"),
        Argument("weight_decay", 0, "real"),
        Argument("foreach", None, "optional_flag"),
        Argument("maximize", False, "flag"),
        Argument("differentiable", False, "refused"),
        Argument("capturable", False, "refused"),
    )
    keyword_only = ("maximize", "differentiable", "capturable")
    slots = (Slot("exp_avg"), Slot("exp_inf", sign="nonnegative"))
    rule = staticmethod(adamax_rule)

    @classmethod
    def check_settings(cls, hyper: Any) -> None:
        at_least_zero(hyper["lr"], "Invalid learning rate")
        at_least_zero(hyper["eps"], "Invalid epsilon value")
        check_betas(hyper["betas"])
        at_least_zero(hyper["weight_decay"], "Invalid weight_decay value")

    @staticmethod
    def step_scalars(h: StepInputs, dtype: type[np.floating[Any]]) -> tuple[np.floating[Any] | bool, ...]:
        beta1, beta2 = h.betas
        clr = h.lr / (1 - beta1 ** float(h.state["step"]))
        return (bool(h.maximize), dtype(h.weight_decay), *lerp_weight(1 - beta1, dtype), dtype(beta2), dtype(h.eps), dtype(-clr))
