"""SGD (torch.optim 2.13): plain, with momentum (and dampening), or Nesterov's.

Per parameter::

    g <- -g if maximize;   g <- g + weight_decay * p   (weight_decay != 0)
    momentum != 0:  b <- g at the parameter's first step, else b * momentum + (1 - dampening) * g
                    g <- g + momentum * b   (nesterov)   or   g <- b
    p <- p + (-lr) * g

torch's ``state[p]`` holds only ``momentum_buffer``, created at the parameter's first
step with momentum; numbaopt counts that parameter's steps as the other optimizers do.
"""
from typing import Any

import numpy as np

from numbaopt.hyperparameters import StepInputs
from numbaopt.state import Slot
from numbaopt.torch_optim.base import Argument, TorchOptimOptimizer, Variant
from numbaopt.torch_optim.elements import coupled


def sgd_rule(p: float, g: float, maximize: bool, weight_decay: float, neg_lr: float) -> tuple[float]:
    """One element of plain SGD; returns the new (p,). Compiled for the CPU and for CUDA."""
    g = coupled(p, g, maximize, weight_decay)
    return (p + neg_lr * g,)


def momentum_rule(p: float, g: float, b: float, maximize: bool, weight_decay: float, neg_lr: float, first: bool,
                  momentum: float, one_minus_dampening: float, nesterov: bool) -> tuple[float, float]:
    """One element of SGD with momentum; returns the new (p, b)."""
    g = coupled(p, g, maximize, weight_decay)
    b = g if first else b * momentum + one_minus_dampening * g
    if nesterov:
        g = g + momentum * b
    else:
        g = b
    return p + neg_lr * g, b


class SGD(TorchOptimOptimizer):
    """Stochastic gradient descent, optionally with momentum (torch's ``torch.optim.SGD``)."""

    arguments = (
        Argument("lr", 1e-3, "real"),
        Argument("momentum", 0, "real"),
        Argument("dampening", 0, "real"),
        Argument("weight_decay", 0, "real"),
        Argument("nesterov", False, "flag"),
        Argument("maximize", False, "flag"),
        Argument("foreach", None, "optional_flag"),
        Argument("differentiable", False, "refused"),
        Argument("fused", None, "refused"),
    )
    keyword_only = ("maximize", "foreach", "differentiable", "fused")
    slots = ()
    rule = staticmethod(sgd_rule)
    torch_keeps_step = False

    @classmethod
    def check_settings(cls, hyper: Any) -> None:
        if hyper["lr"] < 0.0:
            raise ValueError(f"Invalid learning rate: {hyper['lr']}")
        if hyper["momentum"] < 0.0:
            raise ValueError(f"Invalid momentum value: {hyper['momentum']}")
        if hyper["weight_decay"] < 0.0:
            raise ValueError(f"Invalid weight_decay value: {hyper['weight_decay']}")
        if hyper["nesterov"] and (hyper["momentum"] <= 0 or hyper["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    @classmethod
    def variant(cls, hyper: Any) -> Variant:
        if hyper["momentum"] != 0:
            return Variant((Slot("momentum_buffer"),), momentum_rule)
        return Variant((), sgd_rule)

    @classmethod
    def structural_settings(cls) -> tuple[str, ...]:
        return ("momentum",)

    @staticmethod
    def step_scalars(h: StepInputs, dtype: type[np.floating[Any]]) -> tuple[np.floating[Any] | bool, ...]:
        common = (bool(h.maximize), dtype(h.weight_decay), dtype(-h.lr))
        if h.momentum != 0:
            return (*common, bool(h.state["step"] == 1), dtype(h.momentum), dtype(1 - h.dampening), bool(h.nesterov))
        return common
